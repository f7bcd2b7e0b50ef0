-- The external-destination verdict stored with each report (RFC 7489 7.1, RFC 9990 4):
-- authorized, same_organization, allow_list, not_authorized (kept when configured to
-- flag rather than reject), or NULL for reports that were not received over SMTP.
ALTER TABLE aggregate_reports ADD COLUMN authz_verdict text
    CHECK (authz_verdict IN ('authorized', 'same_organization', 'allow_list', 'not_authorized'));
ALTER TABLE tls_reports ADD COLUMN authz_verdict text
    CHECK (authz_verdict IN ('authorized', 'same_organization', 'allow_list', 'not_authorized'));
