-- Where each source address is, and which network announces it, as the operator's
-- MaxMind-format databases (RUA_SINK_IP_DATABASES) tell: the country (ISO 3166-1 alpha-2),
-- the autonomous system number and the organisation that holds it. Filled off the path to
-- the SMTP reply, like the PTR columns; NULL when no database is configured or none knows
-- the address. enriched_at is when the databases were last applied to the row, so that a
-- newer database file can be applied again.
ALTER TABLE source_hosts
    ADD COLUMN country      text,
    ADD COLUMN asn          bigint,
    ADD COLUMN as_org       text,
    ADD COLUMN enriched_at  timestamptz;
