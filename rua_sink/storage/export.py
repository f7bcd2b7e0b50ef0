"""``rua-sink export``'s queries: every aggregate record, TLS report policy and failure
detail, or failure report of a window, streamed from a server-side cursor.

Each type's columns are named in ``COLUMNS``, in their order. The aggregate and TLS
columns that hold what parsedmarc's CSV files hold carry parsedmarc's names, in its order
(``parsed_aggregate_reports_to_csv`` and ``parsed_smtp_tls_reports_to_csv`` of parsedmarc
11.1; the failure columns after ``parsed_failure_reports_to_csv``), so that sheets built on
those files keep working; rua-sink's own columns follow. A column parsedmarc has and the
database does not (``source_type``, ``source_as_domain``, ``sample_headers_only``) is
kept, empty. docs/export.md describes every column.

The rows come in batches from a cursor inside a read-only transaction: a year of
records never sits in memory, on either side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from rua_sink.core.headers import header_text, parse_fields
from rua_sink.storage.rows import Conn


class ExportType(StrEnum):
    AGGREGATE = "aggregate"
    TLS = "tls"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Window:
    """What to export: ``[since, until)`` of the reports' begin times (failure reports:
    the arrival of the failing message, else when stored), and one domain or all."""

    since: datetime
    until: datetime
    domain: str | None = None


# Timestamps as parsedmarc writes them, YYYY-MM-DD HH:MM:SS, in UTC; the looked-up
# source columns from source_hosts (h).
_AGGREGATE = """
SELECT a.schema AS xml_schema, a.org_name, a.email AS org_email,
       a.extra_contact_info AS org_extra_contact_info, a.report_id,
       to_char(a.begin_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS begin_date,
       to_char(a.end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS end_date,
       false AS normalized_timespan, a.errors,
       a.policy_domain AS domain, a.adkim, a.aspf, a.p, a.sp, a.np, a.pct, a.fo, a.testing,
       a.discovery_method,
       coalesce(host(r.source_ip), r.source_ip_text) AS source_ip_address,
       h.country AS source_country, h.ptr_name AS source_reverse_dns,
       h.org_domain AS source_base_domain, h.service AS source_name,
       NULL::text AS source_type, h.asn AS source_asn, h.as_org AS source_as_name,
       NULL::text AS source_as_domain,
       r.message_count AS count, r.spf_aligned = 'pass' AS spf_aligned,
       r.dkim_aligned = 'pass' AS dkim_aligned, r.dmarc_pass AS dmarc_aligned,
       r.disposition, r.reason_types AS policy_override_reasons,
       r.reason_comments AS policy_override_comments,
       r.envelope_from, r.header_from, r.envelope_to,
       r.dkim_domains, r.dkim_selectors, r.dkim_results,
       r.spf_domains, r.spf_scopes, r.spf_results,
       coalesce(host(r.source_ip), r.source_ip_text) AS source_ip,
       a.reporter, a.id AS report_db_id, a.raw_message_id,
       h.ptr_confirmed AS source_reverse_dns_confirmed,
       r.dkim_human_results, r.spf_human_results,
       a.version AS xml_version, a.generator, a.authenticated, a.authz_verdict
FROM aggregate_records r
JOIN aggregate_reports a ON a.id = r.report
LEFT JOIN source_hosts h ON h.ip = r.source_ip
WHERE r.begin_at >= $1 AND r.begin_at < $2 AND ($3::text IS NULL OR r.policy_domain = $3)
ORDER BY r.begin_at, r.report
"""

# parsedmarc's rows of a TLS report: one a policy (its session counts), then one a
# failure detail of the policy (its result type and failed sessions).
_TLS = """
SELECT t.org_name AS organization_name,
       to_char(t.begin_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS begin_date,
       to_char(t.end_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS end_date,
       t.report_id, d.result_type,
       CASE WHEN d.detail THEN NULL ELSE p.success_count END AS successful_session_count,
       CASE WHEN d.detail THEN d.failed_session_count ELSE p.failure_count END
           AS failed_session_count,
       p.policy_domain, p.policy_type, p.policy_strings, p.mx_hosts AS mx_host_patterns,
       d.sending_mta_ip, d.receiving_ip, d.receiving_mx_hostname, d.receiving_mx_helo,
       d.additional_information AS additional_info_uri, d.failure_reason_code,
       CASE WHEN d.detail THEN 'failure_detail' ELSE 'policy' END AS row_type,
       t.reporter, t.contact_info, t.id AS report_db_id, t.raw_message_id,
       t.authenticated, t.authz_verdict
FROM tls_reports t
JOIN tls_policies p ON p.tls_report = t.id
CROSS JOIN LATERAL (
    SELECT false AS detail, NULL::text AS result_type, NULL::bigint AS failed_session_count,
           NULL::text AS sending_mta_ip, NULL::text AS receiving_ip,
           NULL::text AS receiving_mx_hostname, NULL::text AS receiving_mx_helo,
           NULL::text AS additional_information, NULL::text AS failure_reason_code
    UNION ALL
    SELECT true, f.result_type, f.failed_session_count, host(f.sending_mta_ip),
           host(f.receiving_ip), f.receiving_mx_hostname, f.receiving_mx_helo,
           f.additional_information, f.failure_reason_code
    FROM tls_failure_details f WHERE f.tls_policy = p.id
) d
WHERE t.begin_at >= $1 AND t.begin_at < $2 AND ($3::text IS NULL OR p.policy_domain = $3)
ORDER BY t.begin_at, t.id, p.id, d.detail, d.failed_session_count DESC, d.result_type
"""

_FAILURE = """
SELECT f.feedback_type, f.user_agent, f.version, f.original_envelope_id,
       f.original_mail_from, f.original_rcpt_to, f.arrival_date,
       to_char(f.arrived_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS arrival_date_utc,
       NULL::text AS subject, NULL::text AS message_id,
       f.authentication_results, f.dkim_domain,
       host(f.source_ip) AS source_ip_address,
       h.country AS source_country, h.ptr_name AS source_reverse_dns,
       h.org_domain AS source_base_domain, h.service AS source_name,
       NULL::text AS source_type, h.asn AS source_asn, h.as_org AS source_as_name,
       NULL::text AS source_as_domain,
       f.delivery_result, f.auth_failure, f.reported_domains AS reported_domain,
       f.identity_alignment AS authentication_mechanisms,
       NULL::boolean AS sample_headers_only,
       host(f.source_ip) AS source_ip,
       f.id AS report_db_id, f.raw_message_id,
       to_char(f.stored_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS stored_at,
       f.reporting_mta, f.dkim_selector, f.dkim_identity, f.spf_dns, f.incidents,
       f.report_format, f.alignment_spec, f.alignment_failed, f.authenticated,
       f.authz_verdict, f.original_headers
FROM failure_reports f
LEFT JOIN source_hosts h ON h.ip = f.source_ip
WHERE coalesce(f.arrived_at, f.stored_at) >= $1 AND coalesce(f.arrived_at, f.stored_at) < $2
  AND ($3::text IS NULL OR f.reported_domains @> ARRAY[$3::text])
ORDER BY coalesce(f.arrived_at, f.stored_at), f.id
"""

_SQL = {ExportType.AGGREGATE: _AGGREGATE, ExportType.TLS: _TLS, ExportType.FAILURE: _FAILURE}

_PARSEDMARC_SOURCE = (
    "source_country",
    "source_reverse_dns",
    "source_base_domain",
    "source_name",
    "source_type",
    "source_asn",
    "source_as_name",
    "source_as_domain",
)

#: Every type's columns, in order: parsedmarc's, then rua-sink's own.
COLUMNS: Mapping[ExportType, tuple[str, ...]] = {
    ExportType.AGGREGATE: (
        *("xml_schema", "org_name", "org_email", "org_extra_contact_info", "report_id"),
        *("begin_date", "end_date", "normalized_timespan", "errors", "domain"),
        *("adkim", "aspf", "p", "sp", "np", "pct", "fo", "testing", "discovery_method"),
        "source_ip_address",
        *_PARSEDMARC_SOURCE,
        *("count", "spf_aligned", "dkim_aligned", "dmarc_aligned", "disposition"),
        *("policy_override_reasons", "policy_override_comments"),
        *("envelope_from", "header_from", "envelope_to"),
        *("dkim_domains", "dkim_selectors", "dkim_results"),
        *("spf_domains", "spf_scopes", "spf_results"),
        # rua-sink's own
        *("source_ip", "reporter", "report_db_id", "raw_message_id"),
        "source_reverse_dns_confirmed",
        *("dkim_human_results", "spf_human_results", "xml_version", "generator"),
        *("authenticated", "authz_verdict"),
    ),
    ExportType.TLS: (
        *("organization_name", "begin_date", "end_date", "report_id", "result_type"),
        *("successful_session_count", "failed_session_count"),
        *("policy_domain", "policy_type", "policy_strings", "mx_host_patterns"),
        *("sending_mta_ip", "receiving_ip", "receiving_mx_hostname", "receiving_mx_helo"),
        *("additional_info_uri", "failure_reason_code"),
        # rua-sink's own
        *("row_type", "reporter", "contact_info", "report_db_id", "raw_message_id"),
        *("authenticated", "authz_verdict"),
    ),
    ExportType.FAILURE: (
        *("feedback_type", "user_agent", "version", "original_envelope_id"),
        *("original_mail_from", "original_rcpt_to", "arrival_date", "arrival_date_utc"),
        *("subject", "message_id", "authentication_results", "dkim_domain"),
        "source_ip_address",
        *_PARSEDMARC_SOURCE,
        *("delivery_result", "auth_failure", "reported_domain", "authentication_mechanisms"),
        "sample_headers_only",
        # rua-sink's own
        *("source_ip", "report_db_id", "raw_message_id", "stored_at", "reporting_mta"),
        "dkim_selector",
        *("dkim_identity", "spf_dns", "incidents", "report_format", "alignment_spec"),
        *("alignment_failed", "authenticated", "authz_verdict"),
    ),
}

#: How a list is one CSV cell: parsedmarc's separators where it has the column
#: (comments and errors may hold commas), ``|`` for the texts of rua-sink's own.
LIST_SEPARATORS: Mapping[str, str] = {
    "errors": "|",
    "policy_override_comments": "|",
    "policy_strings": "|",
    "mx_host_patterns": "|",
    "authentication_results": "|",
    "dkim_human_results": "|",
    "spf_human_results": "|",
}


_SUBJECT = COLUMNS[ExportType.FAILURE].index("subject")
_MESSAGE_ID = COLUMNS[ExportType.FAILURE].index("message_id")


def _failure_row(record: asyncpg.Record) -> list[Any]:
    """A failure report's values, with the reported message's Subject and Message-ID from
    its stored header block (the query's last column, not exported)."""
    *row, block = record
    if block:
        fields = parse_fields(block.encode("utf-8", "surrogateescape"))
        row[_SUBJECT] = header_text(fields, "subject")
        row[_MESSAGE_ID] = header_text(fields, "message-id")
    return row


class ValueKind(StrEnum):
    """What a column holds, as the database describes it."""

    TEXT = "text"
    LIST = "list"
    OTHER = "other"  # numbers, booleans


async def describe(conn: Conn, kind: ExportType) -> tuple[ValueKind, ...]:
    """The kind of each of ``COLUMNS[kind]``, from the query's result description."""
    statement = await conn.prepare(_SQL[kind])
    out = []
    for attribute, name in zip(statement.get_attributes(), COLUMNS[kind], strict=False):
        assert attribute.name == name, (attribute.name, name)
        if attribute.type.kind == "array":
            out.append(ValueKind.LIST)
        elif attribute.type.name in ("text", "varchar", "inet"):
            out.append(ValueKind.TEXT)
        else:
            out.append(ValueKind.OTHER)
    return tuple(out)


async def stream(
    conn: Conn, kind: ExportType, window: Window, *, batch: int = 2000
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """The rows of ``kind`` in ``window``, ``batch`` at a time, in time order, each the
    values of ``COLUMNS[kind]`` in order (lists as lists, numbers as numbers)."""
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(_SQL[kind], window.since, window.until, window.domain)
        while records := await cursor.fetch(batch):
            if kind is ExportType.FAILURE:
                yield [_failure_row(r) for r in records]
            else:
                yield records
