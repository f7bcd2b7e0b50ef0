"""``rua-sink report DOMAIN``: what the stored reports say about one domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rua_sink.storage.rows import Conn

_TOTALS = """
SELECT coalesce(sum(message_count), 0) AS messages,
       coalesce(sum(message_count) FILTER (WHERE dmarc_pass), 0) AS passing,
       count(DISTINCT coalesce(host(source_ip), source_ip_text)) AS sources
FROM aggregate_records
WHERE policy_domain = $1 AND begin_at >= $2 AND begin_at < $3
"""
# The top sources, then what sender identification knows of them: the PTR name and service
# (``dns.senders``), the country and network (``dns.ipdata``); and their class
# (``storage.classify``: the database's dmarc_sources).
_SOURCES = """
WITH top AS (
    SELECT coalesce(host(source_ip), source_ip_text) AS source, min(source_ip) AS ip,
           sum(message_count) AS messages,
           coalesce(sum(message_count) FILTER (WHERE dmarc_pass), 0) AS passing
    FROM aggregate_records
    WHERE policy_domain = $1 AND begin_at >= $2 AND begin_at < $3
    GROUP BY 1 ORDER BY messages DESC, source LIMIT $4
)
SELECT top.source, top.messages, top.passing, h.ptr_name, h.ptr_confirmed, h.service,
       h.country, h.asn, h.as_org, c.classification
FROM top LEFT JOIN source_hosts h ON h.ip = top.ip
LEFT JOIN dmarc_sources($1, $2, $3) c ON c.source = top.source
ORDER BY top.messages DESC, top.source
"""
_FAILING = """
WITH top AS (
    SELECT coalesce(host(source_ip), source_ip_text) AS source, min(source_ip) AS ip,
           sum(message_count) AS failing,
           array_agg(DISTINCT reporter ORDER BY reporter) AS reporters
    FROM aggregate_records
    WHERE policy_domain = $1 AND begin_at >= $2 AND begin_at < $3 AND dmarc_pass IS NOT TRUE
    GROUP BY 1 ORDER BY failing DESC, source LIMIT $4
)
SELECT top.source, top.failing, top.reporters, h.ptr_name, h.ptr_confirmed, h.service,
       h.country, h.asn, h.as_org, c.classification
FROM top LEFT JOIN source_hosts h ON h.ip = top.ip
LEFT JOIN dmarc_sources($1, $2, $3) c ON c.source = top.source
ORDER BY top.failing DESC, top.source
"""
# Every report of the domain, whatever the window: what to say when the window is empty.
_SPAN = """
SELECT count(*) AS reports,
       count(*) FILTER (WHERE begin_at >= $2 AND begin_at < $3) AS in_window,
       min(begin_at) AS first, max(end_at) AS last
FROM aggregate_reports
WHERE policy_domain = $1
"""
_REPORTERS = """
SELECT reporter, count(DISTINCT report) AS reports, sum(message_count) AS messages
FROM aggregate_records
WHERE policy_domain = $1 AND begin_at >= $2 AND begin_at < $3
GROUP BY 1 ORDER BY messages DESC, reporter
"""


@dataclass(frozen=True, slots=True)
class DomainSummary:
    domain: str
    since: datetime
    until: datetime
    messages: int
    passing: int
    reporters: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    failing: list[dict[str, Any]]
    source_count: int
    #: reports that began in the window
    reports: int = 0
    #: every report of the domain, whenever it began, and the span they cover
    all_reports: int = 0
    first_report: datetime | None = None
    last_report: datetime | None = None

    @property
    def pass_rate(self) -> float | None:
        return round(100.0 * self.passing / self.messages, 1) if self.messages else None

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "messages": self.messages,
            "passing": self.passing,
            "pass_rate": self.pass_rate,
            "source_count": self.source_count,
            "reports": self.reports,
            "all_reports": self.all_reports,
            "first_report": None if self.first_report is None else self.first_report.isoformat(),
            "last_report": None if self.last_report is None else self.last_report.isoformat(),
            "reporters": self.reporters,
            "top_sources": self.sources,
            "top_failing_sources": self.failing,
        }


async def summarize(
    conn: Conn, domain: str, since: datetime, until: datetime, top: int = 10
) -> DomainSummary:
    totals = await conn.fetchrow(_TOTALS, domain, since, until)
    span = await conn.fetchrow(_SPAN, domain, since, until)
    assert totals is not None
    assert span is not None
    return DomainSummary(
        domain=domain,
        since=since,
        until=until,
        messages=int(totals["messages"]),
        passing=int(totals["passing"]),
        source_count=int(totals["sources"]),
        reports=int(span["in_window"]),
        all_reports=int(span["reports"]),
        first_report=span["first"],
        last_report=span["last"],
        reporters=[dict(r) for r in await conn.fetch(_REPORTERS, domain, since, until)],
        sources=[dict(r) for r in await conn.fetch(_SOURCES, domain, since, until, top)],
        failing=[
            {**dict(r), "reporters": list(r["reporters"])}
            for r in await conn.fetch(_FAILING, domain, since, until, top)
        ],
    )
