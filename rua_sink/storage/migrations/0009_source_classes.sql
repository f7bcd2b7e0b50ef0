-- Who sends as a domain, and is each sender legitimate: docs/classification.md.
--
-- The tables of change detection first, filled from the records already stored; then
-- source_hosts' new column and the function that reads it, so that the ACCESS EXCLUSIVE
-- lock of the ALTER is held for the end of the transaction only.

-- Change detection (docs/classification.md): the first time each source was seen for a
-- domain, and each aggregate report's totals, kept by a sweep in `rua-sink serve` over the
-- reports of newly received messages, off the path to the SMTP reply.
--
-- first_seen: the begin of the earliest report period that named the source;
-- noticed_at: when the first message whose report named it was received.
-- Rows outlive the records' retention: a source pruned away and seen again is not new.
CREATE TABLE domain_sources (
    policy_domain   text NOT NULL,
    source          text NOT NULL,
    ip              inet,
    first_seen      timestamptz NOT NULL,
    noticed_at      timestamptz NOT NULL,
    PRIMARY KEY (policy_domain, source)
);
CREATE INDEX domain_sources_noticed ON domain_sources (noticed_at);

-- One row per aggregate report received in the last 16 days or so (the sweep deletes older
-- rows): its messages and those passing DMARC, so that a domain's pass ratio over a day
-- and over the trailing fortnight reads a few thousand rows, not the records.
CREATE TABLE report_totals (
    report          bigint PRIMARY KEY,  -- aggregate_reports.id
    policy_domain   text NOT NULL,
    begin_at        timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    messages        bigint NOT NULL,
    passing         bigint NOT NULL
);
CREATE INDEX report_totals_received ON report_totals (received_at);

-- The sources already stored, once, at the upgrade: they are not new.
INSERT INTO domain_sources (policy_domain, source, ip, first_seen, noticed_at)
SELECT r.policy_domain, coalesce(host(r.source_ip), r.source_ip_text, ''), min(r.source_ip),
       min(r.begin_at), min(coalesce(m.received_at, a.stored_at))
FROM aggregate_records r
JOIN aggregate_reports a ON a.id = r.report
LEFT JOIN raw_messages m ON m.id = a.raw_message_id
WHERE a.authz_verdict IS DISTINCT FROM 'not_authorized'
GROUP BY 1, 2;

-- source_hosts.forwarder: the address's forward-confirmed name is a known forwarder (a
-- mailing list host, a forwarding service) in the service map's [forwarders] table; set
-- with service, at lookup and relabel.
ALTER TABLE source_hosts ADD COLUMN forwarder boolean NOT NULL DEFAULT false;

-- The classification of each source of a domain over a period, in one place, so that the
-- command line (rua-sink sources, rua-sink report), the dashboards and an operator's own
-- psql all apply the same rules. A source is a source address (its text when the report's
-- text is not an address). First rule that holds:
--   1. forwarded      the address is a known forwarder (source_hosts.forwarder);
--   2. authorized     more than half of its messages pass DMARC;
--   3. forwarded      more than half of its failing messages carry the receiver's policy
--                     override forwarded, mailing_list or trusted_forwarder;
--   4. misconfigured  its name belongs to a known service (source_hosts.service);
--   5. forwarded      more than half of its failing messages carry a DKIM signature that
--                     verified (of a domain not aligned with the From);
--   6. suspicious     anything else.
-- Changing a rule is a new migration with CREATE OR REPLACE FUNCTION.
CREATE FUNCTION dmarc_sources(domain text, since timestamptz, until timestamptz)
RETURNS TABLE (
    source          text,
    ip              inet,
    messages        bigint,
    passing         bigint,
    failing         bigint,
    overridden      bigint,   -- failing, with a forwarding override reason
    signed          bigint,   -- failing, with a DKIM signature that verified
    ptr_name        text,
    ptr_confirmed   boolean,
    service         text,
    forwarder       boolean,
    country         text,
    asn             bigint,
    as_org          text,
    classification  text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
WITH per AS (
    SELECT coalesce(host(r.source_ip), r.source_ip_text, '') AS source,
           min(r.source_ip) AS ip,
           sum(r.message_count)::bigint AS messages,
           coalesce(sum(r.message_count) FILTER (WHERE r.dmarc_pass), 0)::bigint AS passing,
           coalesce(sum(r.message_count) FILTER (
               WHERE r.dmarc_pass IS NOT TRUE
                 AND r.reason_types && ARRAY['forwarded', 'mailing_list', 'trusted_forwarder']
           ), 0)::bigint AS overridden,
           coalesce(sum(r.message_count) FILTER (
               WHERE r.dmarc_pass IS NOT TRUE AND 'pass' = ANY (r.dkim_results)
           ), 0)::bigint AS signed
    FROM aggregate_records r
    WHERE r.policy_domain = $1 AND r.begin_at >= $2 AND r.begin_at < $3
    GROUP BY 1
)
SELECT per.source, per.ip, per.messages, per.passing, per.messages - per.passing,
       per.overridden, per.signed,
       h.ptr_name, h.ptr_confirmed, h.service, coalesce(h.forwarder, false),
       h.country, h.asn, h.as_org,
       CASE
           WHEN h.forwarder THEN 'forwarded'
           WHEN 2 * per.passing > per.messages THEN 'authorized'
           WHEN 2 * per.overridden > per.messages - per.passing THEN 'forwarded'
           WHEN h.service IS NOT NULL THEN 'misconfigured'
           WHEN 2 * per.signed > per.messages - per.passing THEN 'forwarded'
           ELSE 'suspicious'
       END
FROM per LEFT JOIN source_hosts h ON h.ip = per.ip
$$;
