-- A failure report is stored once, by its content, as aggregate and TLS reports are by
-- their dedup keys. Until now only the raw message's digest kept copies apart, so the
-- same report relayed twice (each relay adds a Received line) or backfilled after it came
-- by SMTP (other line ends) was stored again.
--
-- The key is a digest of what the reporter wrote about the failure: the feedback fields
-- (names lower-cased, values as the parser unfolded them, in order) and the reported
-- message's header block, each with every run of white space made one space, so that
-- line ends and refolding do not count. Left out:
--   - the report mail's own header block (Received, Return-Path, ARC and DKIM-Signature
--     fields added on the way, a Message-ID and Date of a re-sent copy): relays and
--     re-sends change it, the report stays the same;
--   - the MIME framing (boundaries, transfer encodings that a relay may change);
--   - DKIM-Canonicalized-Body, which is kept or dropped by RUA_SINK_FAILURE_KEEP_BODY.
-- The reporter is in the key through its own fields (User-Agent, Reporting-MTA, the
-- authserv-id of Authentication-Results) and through the trace fields its MTA added to
-- the reported message's header block; the reported message, through that block
-- (Message-ID, Date, the Received chain); the failure, through Source-IP, Arrival-Date,
-- Auth-Failure and the rest of the fields.
--
-- It is computed here, in the database, so that rows stored before this migration get
-- the very key that new rows get. IMMUTABLE holds although convert_to is only STABLE:
-- the UTF-8 bytes of a text value do not change.
CREATE FUNCTION failure_report_key(fields jsonb, original_headers text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to(
        coalesce((
            SELECT string_agg(
                lower(btrim(regexp_replace(f ->> 0, '[ \t\r\n\f\v]+', ' ', 'g'), ' '))
                || ': ' || btrim(regexp_replace(f ->> 1, '[ \t\r\n\f\v]+', ' ', 'g'), ' '),
                E'\n' ORDER BY n)
            FROM jsonb_array_elements(fields) WITH ORDINALITY AS t (f, n)
            WHERE lower(f ->> 0) <> 'dkim-canonicalized-body'
        ), '')
        || E'\n\n'
        || btrim(regexp_replace(coalesce(original_headers, ''), '[ \t\r\n\f\v]+', ' ', 'g'), ' '),
        'UTF8'))
$$;

-- How the report was written: 'arf' (message/feedback-report, RFC 5965), or 'exim' (the
-- plain-text report of Exim's DMARC module, read into the same columns).
ALTER TABLE failure_reports
    ADD COLUMN report_format text NOT NULL DEFAULT 'arf' CHECK (report_format IN ('arf', 'exim')),
    ADD COLUMN report_key bytea NOT NULL
        GENERATED ALWAYS AS (failure_report_key(fields, original_headers)) STORED;

-- Copies stored before this migration: the first one stays; the others' raw messages stay
-- too, as the raw message of any duplicate does.
DELETE FROM failure_reports later
USING failure_reports earlier
WHERE later.report_key = earlier.report_key AND later.id > earlier.id;

ALTER TABLE failure_reports ADD CONSTRAINT failure_reports_key UNIQUE (report_key);
