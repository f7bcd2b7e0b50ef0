-- rua-sink schema, version 1.
--
-- raw_messages keeps every message exactly as received (gzip-compressed), so that nothing
-- a reporter sent is lost and anything can be parsed again with newer code. Reports point
-- at the message they came from. aggregate_records is partitioned by month of the
-- report's begin time, so that retention drops whole partitions.

CREATE TABLE raw_messages (
    id              bigserial PRIMARY KEY,
    sha256          bytea NOT NULL UNIQUE,
    size_bytes      bigint NOT NULL CHECK (size_bytes >= 0),
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- the SMTP envelope (RFC 5321 3.3); a backfilled file has none
    peer_ip         inet,
    helo            text,
    mail_from       text,
    rcpt_to         text[] NOT NULL DEFAULT '{}',
    source          text NOT NULL,  -- 'smtp', or the path a backfilled file came from
    content_gzip    bytea NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('stored', 'quarantined', 'not_a_report')),
    -- for status quarantined: the first failure (rua_sink.core.errors.Reason)
    reason          text,
    detail          text,
    processed_at    timestamptz NOT NULL DEFAULT now(),
    parser_version  text NOT NULL
);
CREATE INDEX raw_messages_quarantined ON raw_messages (received_at) WHERE status <> 'stored';
CREATE INDEX raw_messages_received ON raw_messages (received_at);

CREATE TABLE aggregate_reports (
    id                  bigserial PRIMARY KEY,
    raw_message_id      bigint REFERENCES raw_messages (id) ON DELETE SET NULL,
    -- the dedup key (RFC 9990 3.1.4; SPEC.md B.14): reporter, report_id, domain, period
    reporter            text NOT NULL,  -- org_name, trimmed and lower-cased
    report_id           text NOT NULL,
    policy_domain       text NOT NULL,
    begin_at            timestamptz NOT NULL,
    end_at              timestamptz NOT NULL,
    org_name            text NOT NULL,
    email               text,
    extra_contact_info  text,
    generator           text,
    errors              text[] NOT NULL DEFAULT '{}',
    schema              text NOT NULL CHECK (schema IN ('rfc7489', 'rfc9990', 'draft')),
    version             text,
    adkim               text,
    aspf                text,
    p                   text,
    sp                  text,
    np                  text,
    pct                 integer,
    fo                  text,
    testing             text,
    discovery_method    text,
    extensions          text[] NOT NULL DEFAULT '{}',
    record_count        integer NOT NULL,
    message_count       bigint NOT NULL,
    repairs             text[] NOT NULL DEFAULT '{}',
    part_filename       text,
    part_layers         text[] NOT NULL DEFAULT '{}',
    stored_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT aggregate_reports_dedup
        UNIQUE (reporter, report_id, policy_domain, begin_at, end_at)
);
CREATE INDEX aggregate_reports_domain_begin ON aggregate_reports (policy_domain, begin_at);
CREATE INDEX aggregate_reports_raw ON aggregate_reports (raw_message_id);

-- One row per <record>. The report's begin time, domain and reporter are repeated here so
-- that the common questions (per domain, per period, per reporter) need no join, and so
-- that the table can be partitioned by time.
CREATE TABLE aggregate_records (
    report              bigint NOT NULL,  -- aggregate_reports.id
    begin_at            timestamptz NOT NULL,
    policy_domain       text NOT NULL,
    reporter            text NOT NULL,
    source_ip           inet,             -- NULL when the report's text is not an address
    source_ip_text      text,             -- that text, kept verbatim
    message_count       integer NOT NULL,
    disposition         text,
    dkim_aligned        text,             -- policy_evaluated/dkim: pass | fail
    spf_aligned         text,             -- policy_evaluated/spf
    dmarc_pass          boolean GENERATED ALWAYS AS
                        (dkim_aligned = 'pass' OR spf_aligned = 'pass') STORED,
    header_from         text,
    envelope_from       text,
    envelope_to         text,
    reason_types        text[] NOT NULL DEFAULT '{}',
    reason_comments     text[] NOT NULL DEFAULT '{}',
    -- auth_results, one array element per <dkim> / <spf>, in document order
    dkim_domains        text[] NOT NULL DEFAULT '{}',
    dkim_selectors      text[] NOT NULL DEFAULT '{}',
    dkim_results        text[] NOT NULL DEFAULT '{}',
    dkim_human_results  text[] NOT NULL DEFAULT '{}',
    spf_domains         text[] NOT NULL DEFAULT '{}',
    spf_scopes          text[] NOT NULL DEFAULT '{}',
    spf_results         text[] NOT NULL DEFAULT '{}',
    spf_human_results   text[] NOT NULL DEFAULT '{}',
    extensions          text[] NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (begin_at);
CREATE INDEX aggregate_records_domain_begin ON aggregate_records (policy_domain, begin_at);
CREATE INDEX aggregate_records_report ON aggregate_records (report);

CREATE TABLE tls_reports (
    id              bigserial PRIMARY KEY,
    raw_message_id  bigint REFERENCES raw_messages (id) ON DELETE SET NULL,
    reporter        text NOT NULL,
    report_id       text NOT NULL,
    begin_at        timestamptz NOT NULL,
    end_at          timestamptz NOT NULL,
    org_name        text NOT NULL,
    contact_info    text,
    success_count   bigint NOT NULL,
    failure_count   bigint NOT NULL,
    part_filename   text,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tls_reports_dedup UNIQUE (reporter, report_id, begin_at, end_at)
);
CREATE INDEX tls_reports_begin ON tls_reports (begin_at);

CREATE TABLE tls_policies (
    id              bigserial PRIMARY KEY,
    tls_report      bigint NOT NULL REFERENCES tls_reports (id) ON DELETE CASCADE,
    policy_type     text NOT NULL,
    policy_strings  text[] NOT NULL DEFAULT '{}',
    policy_domain   text NOT NULL,
    mx_hosts        text[] NOT NULL DEFAULT '{}',
    success_count   bigint NOT NULL,
    failure_count   bigint NOT NULL
);
CREATE INDEX tls_policies_report ON tls_policies (tls_report);
CREATE INDEX tls_policies_domain ON tls_policies (policy_domain);

CREATE TABLE tls_failure_details (
    tls_policy              bigint NOT NULL REFERENCES tls_policies (id) ON DELETE CASCADE,
    result_type             text NOT NULL,
    sending_mta_ip          inet,
    receiving_mx_hostname   text,
    receiving_mx_helo       text,
    receiving_ip            inet,
    failed_session_count    bigint NOT NULL,
    additional_information  text,
    failure_reason_code     text
);
CREATE INDEX tls_failure_details_policy ON tls_failure_details (tls_policy);

CREATE TABLE failure_reports (
    id                      bigserial PRIMARY KEY,
    raw_message_id          bigint NOT NULL REFERENCES raw_messages (id) ON DELETE CASCADE,
    feedback_type           text NOT NULL,
    version                 text,
    user_agent              text,
    auth_failure            text,
    delivery_result         text,
    identity_alignment      text,
    reported_domains        text[] NOT NULL DEFAULT '{}',
    source_ip               inet,
    arrival_date            text,
    original_mail_from      text,
    original_rcpt_to        text[] NOT NULL DEFAULT '{}',
    authentication_results  text[] NOT NULL DEFAULT '{}',
    dkim_domain             text,
    dkim_selector           text,
    fields                  jsonb NOT NULL,
    original_headers        text,
    stored_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT failure_reports_once UNIQUE (raw_message_id)
);
