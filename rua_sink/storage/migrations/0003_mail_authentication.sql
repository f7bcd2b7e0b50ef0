-- How the report mail itself authenticated (rua_sink.mailauth): SPF of the connecting
-- address for the MAIL FROM (or HELO) domain, each DKIM signature, and DMARC alignment
-- with the From domain. All NULL (arrays empty) when nothing was checked: files
-- backfilled from disk, or RUA_SINK_REQUIRE_AUTHENTICATED=off.
ALTER TABLE raw_messages
    ADD COLUMN auth_from_domain     text,
    ADD COLUMN auth_spf             text,
    ADD COLUMN auth_spf_domain      text,
    ADD COLUMN auth_dkim_domains    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN auth_dkim_selectors  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN auth_dkim_results    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN auth_dkim_aligned    boolean,
    ADD COLUMN auth_spf_aligned     boolean,
    ADD COLUMN auth_dmarc           text
        CHECK (auth_dmarc IN ('pass', 'fail', 'temperror', 'none')),
    -- a failure report's message kept without the reported message's body (RFC 9991 7)
    ADD COLUMN redacted             boolean NOT NULL DEFAULT false;

-- Each report repeats its message's verdict: true when the mail passed DMARC for its
-- From domain, NULL when not checked.
ALTER TABLE aggregate_reports ADD COLUMN authenticated boolean;
ALTER TABLE tls_reports ADD COLUMN authenticated boolean;

ALTER TABLE failure_reports
    ADD COLUMN authenticated            boolean,
    ADD COLUMN authz_verdict            text
        CHECK (authz_verdict IN ('authorized', 'same_organization', 'allow_list',
                                 'not_authorized')),
    -- Identity-Alignment's meaning was inverted between the specs (SPEC.md G.43): which
    -- one the report follows, as far as its values tell, and the mechanisms that failed
    -- to give an aligned pass under that reading.
    ADD COLUMN alignment_spec           text CHECK (alignment_spec IN ('rfc7489', 'rfc9991')),
    ADD COLUMN alignment_failed         text[],
    ADD COLUMN dkim_identity            text,
    ADD COLUMN spf_dns                  text,
    ADD COLUMN original_envelope_id     text,
    ADD COLUMN reporting_mta            text,
    ADD COLUMN incidents                integer,
    ADD COLUMN arrived_at               timestamptz;
CREATE INDEX failure_reports_stored ON failure_reports (stored_at);
CREATE INDEX failure_reports_domains ON failure_reports USING gin (reported_domains);
