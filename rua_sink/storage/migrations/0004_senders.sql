-- Who sends from each source address of the aggregate reports (rua_sink.senders): the
-- name the address's PTR record gives, whether that name's A/AAAA records lead back to the
-- address (forward-confirmed), the name's organizational domain, and the service the name
-- belongs to. Filled in the background and shared by replicas: a replica claims rows
-- (claimed_at) before looking them up, so that two replicas do not look up one address at
-- once, and looks a row up again once looked_up_at is older than the refresh period.
CREATE TABLE source_hosts (
    ip              inet PRIMARY KEY,
    ptr_name        text,         -- NULL: no PTR record, or not looked up yet
    ptr_confirmed   boolean,      -- NULL when there is no name
    org_domain      text,         -- ptr_name's organizational domain
    service         text,         -- set only when ptr_name is forward-confirmed
    first_seen      timestamptz NOT NULL DEFAULT now(),
    looked_up_at    timestamptz,  -- the last complete lookup; NULL: never
    claimed_at      timestamptz,  -- when a replica took it (NULL once looked up)
    lookup_error    text          -- the last temporary DNS error, until a lookup succeeds
);
-- The rows due for a lookup: never looked up first, then the oldest.
CREATE INDEX source_hosts_due ON source_hosts (looked_up_at NULLS FIRST);
