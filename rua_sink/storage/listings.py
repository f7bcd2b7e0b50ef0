"""What is stored, listed: the policy domains with reports (``rua-sink domains``), the SMTP
TLS reports (``rua-sink tls-reports``) and the DMARC failure reports
(``rua-sink failure-reports``).

Each query takes a window ``[since, until)`` on when a report's period began (a failure
report: when the failing message arrived, else when the report was stored) and returns
JSON-ready dicts: timestamps as ISO 8601 text, addresses as text, arrays as lists.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from rua_sink.storage.rows import Conn

# Reports, messages and reporters from the reports' rows, passing messages from the
# records: two grouped scans of the window, joined by domain.
_DOMAINS = """
WITH reports AS (
    SELECT policy_domain, count(*) AS reports, sum(message_count) AS messages,
           count(DISTINCT reporter) AS reporters, max(end_at) AS last_report
    FROM aggregate_reports
    WHERE begin_at >= $1 AND begin_at < $2
    GROUP BY policy_domain
), passing AS (
    SELECT policy_domain, sum(message_count) AS passing
    FROM aggregate_records
    WHERE begin_at >= $1 AND begin_at < $2 AND dmarc_pass
    GROUP BY policy_domain
)
SELECT r.policy_domain, r.reports, r.messages, coalesce(p.passing, 0) AS passing,
       r.reporters, r.last_report
FROM reports r LEFT JOIN passing p USING (policy_domain)
ORDER BY r.messages DESC, r.policy_domain
"""

# One row a policy of a report; its failure details as a JSON array, largest first.
_TLS = """
SELECT t.id, t.raw_message_id, t.org_name, t.reporter, t.report_id, t.begin_at, t.end_at,
       t.contact_info, p.id AS policy_id, p.policy_domain, p.policy_type, p.policy_strings,
       p.mx_hosts, p.success_count, p.failure_count,
       coalesce((
           SELECT json_agg(json_build_object(
                      'result_type', d.result_type,
                      'failed_session_count', d.failed_session_count,
                      'receiving_mx_hostname', d.receiving_mx_hostname,
                      'receiving_mx_helo', d.receiving_mx_helo,
                      'receiving_ip', host(d.receiving_ip),
                      'sending_mta_ip', host(d.sending_mta_ip),
                      'additional_information', d.additional_information,
                      'failure_reason_code', d.failure_reason_code)
                  ORDER BY d.failed_session_count DESC, d.result_type)
           FROM tls_failure_details d WHERE d.tls_policy = p.id), '[]') AS failure_details
FROM tls_reports t JOIN tls_policies p ON p.tls_report = t.id
WHERE t.begin_at >= $1 AND t.begin_at < $2
  AND ($3::text IS NULL OR p.policy_domain = $3)
  AND (NOT $4 OR p.failure_count > 0)
  AND (NOT $5 OR p.failure_count = 0)
ORDER BY t.begin_at DESC, t.id DESC, p.id
LIMIT $6
"""

_FAILURES = """
SELECT f.id, f.raw_message_id, coalesce(f.arrived_at, f.stored_at) AS arrived_at,
       f.arrived_at IS NULL AS arrival_unknown, f.arrival_date, f.stored_at,
       f.reported_domains, host(f.source_ip) AS source_ip, f.feedback_type,
       f.auth_failure, f.delivery_result, f.identity_alignment, f.original_mail_from,
       f.original_rcpt_to, f.user_agent, f.reporting_mta, f.dkim_domain, f.dkim_selector,
       f.incidents, f.report_format
FROM failure_reports f
WHERE coalesce(f.arrived_at, f.stored_at) >= $1 AND coalesce(f.arrived_at, f.stored_at) < $2
  AND ($3::text IS NULL OR f.reported_domains @> ARRAY[$3::text])
ORDER BY coalesce(f.arrived_at, f.stored_at) DESC, f.id DESC
LIMIT $4
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def domains(conn: Conn, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Every policy domain with aggregate reports that began in the window, the most
    messages first."""
    rows = await conn.fetch(_DOMAINS, since, until)
    return [
        {
            "domain": r["policy_domain"],
            "reports": int(r["reports"]),
            "messages": int(r["messages"]),
            "passing": int(r["passing"]),
            "pass_rate": (
                round(100.0 * int(r["passing"]) / int(r["messages"]), 1) if r["messages"] else None
            ),
            "reporters": int(r["reporters"]),
            "last_report": _iso(r["last_report"]),
        }
        for r in rows
    ]


async def tls_reports(
    conn: Conn,
    since: datetime,
    until: datetime,
    *,
    domain: str | None = None,
    result: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The policies of the TLS reports whose period began in the window, newest report
    first; ``result``: ``failure`` (only policies with failed sessions) or ``success``
    (only those without)."""
    rows = await conn.fetch(
        _TLS, since, until, domain, result == "failure", result == "success", limit
    )
    return [_tls_row(r) for r in rows]


def _tls_row(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "raw_message_id": r["raw_message_id"],
        "reporter": r["org_name"],
        "reporter_key": r["reporter"],
        "report_id": r["report_id"],
        "begin": _iso(r["begin_at"]),
        "end": _iso(r["end_at"]),
        "contact_info": r["contact_info"],
        "policy_domain": r["policy_domain"],
        "policy_type": r["policy_type"],
        "policy_strings": list(r["policy_strings"]),
        "mx_hosts": list(r["mx_hosts"]),
        "success_count": int(r["success_count"]),
        "failure_count": int(r["failure_count"]),
        # asyncpg hands json over as text
        "failure_details": json.loads(r["failure_details"]),
    }


async def failure_reports(
    conn: Conn,
    since: datetime,
    until: datetime,
    *,
    domain: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The failure reports whose failing message arrived in the window (when the report
    does not say, when it was stored), newest first."""
    rows = await conn.fetch(_FAILURES, since, until, domain, limit)
    return [
        {
            "id": r["id"],
            "raw_message_id": r["raw_message_id"],
            "arrived_at": _iso(r["arrived_at"]),
            "arrival_unknown": r["arrival_unknown"],
            "arrival_date": r["arrival_date"],
            "stored_at": _iso(r["stored_at"]),
            "reported_domains": list(r["reported_domains"]),
            "source_ip": r["source_ip"],
            "feedback_type": r["feedback_type"],
            "auth_failure": r["auth_failure"],
            "delivery_result": r["delivery_result"],
            "identity_alignment": r["identity_alignment"],
            "original_mail_from": r["original_mail_from"],
            "original_rcpt_to": list(r["original_rcpt_to"]),
            "user_agent": r["user_agent"],
            "reporting_mta": r["reporting_mta"],
            "dkim_domain": r["dkim_domain"],
            "dkim_selector": r["dkim_selector"],
            "incidents": r["incidents"],
            "report_format": r["report_format"],
        }
        for r in rows
    ]
