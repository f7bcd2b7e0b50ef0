"""What changed for a domain: sources and services seen for the first time, and a DMARC pass
rate that dropped below the domain's own trailing average (docs/classification.md).

Nothing here runs on the path to the SMTP reply. A sweep (``sweep``: ``rua-sink serve``
every ``RUA_SINK_CHANGES_INTERVAL`` seconds, and ``rua-sink changes`` before it answers)
takes the aggregate reports of the messages received since its previous turn, once each:
it records each report's totals in ``report_totals`` and each (domain, source) pair not seen
before in ``domain_sources``. Its cost follows the mail received, not the reports stored;
the questions then read those two small tables.

A source is *new* in a window when the first message naming it was received in the window
and the first report period naming it began at most ``NEWS_AGE`` before that: reports come
a day or two after their period, while a backfill of old reports brings nothing new. The
pass ratio of a domain over a window counts the messages of the reports received in it, of
periods that began at most ``NEWS_AGE`` before they were received, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rua_sink.storage.rows import Conn

#: How old a report's period may be when it arrives and still be news.
NEWS_AGE = timedelta(days=7)
#: The windows of the pass ratios: the last day, and the fortnight before it.
DAY = timedelta(days=1)
TRAILING = timedelta(days=14)
#: report_totals rows older than this are deleted by the sweep.
KEEP_TOTALS = DAY + TRAILING + timedelta(days=1)
#: Reports per sweep transaction.
BATCH = 500

_SWEEP = """
WITH fresh AS (
    INSERT INTO report_totals (report, policy_domain, begin_at, received_at, messages, passing)
    SELECT a.id, a.policy_domain, a.begin_at, m.received_at,
           coalesce(t.messages, 0), coalesce(t.passing, 0)
    FROM raw_messages m
    JOIN aggregate_reports a ON a.raw_message_id = m.id
    LEFT JOIN LATERAL (
        SELECT sum(r.message_count) AS messages,
               sum(r.message_count) FILTER (WHERE r.dmarc_pass) AS passing
        FROM aggregate_records r
        WHERE r.report = a.id AND r.begin_at = a.begin_at
    ) t ON true
    WHERE m.received_at >= greatest($1::timestamptz, now() - $3::interval)
      AND a.authz_verdict IS DISTINCT FROM 'not_authorized'
      AND NOT EXISTS (SELECT 1 FROM report_totals x WHERE x.report = a.id)
    ORDER BY a.id
    LIMIT $2
    ON CONFLICT (report) DO NOTHING
    RETURNING report, begin_at, received_at
), seen AS (
    INSERT INTO domain_sources AS d (policy_domain, source, ip, first_seen, noticed_at)
    SELECT r.policy_domain, coalesce(host(r.source_ip), r.source_ip_text, ''),
           min(r.source_ip), min(r.begin_at), min(f.received_at)
    FROM fresh f
    JOIN aggregate_records r ON r.report = f.report AND r.begin_at = f.begin_at
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (policy_domain, source) DO UPDATE
        SET first_seen = least(d.first_seen, excluded.first_seen),
            noticed_at = least(d.noticed_at, excluded.noticed_at)
        WHERE excluded.first_seen < d.first_seen OR excluded.noticed_at < d.noticed_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM fresh) AS reports, (SELECT count(*) FROM seen) AS sources
"""
_FORGET = "DELETE FROM report_totals WHERE received_at < now() - $1::interval"

# The pairs noticed in [since, now) that were news then.
_NEW = """
SELECT d.policy_domain, d.source, d.first_seen, d.noticed_at, h.ptr_name, h.service
FROM domain_sources d LEFT JOIN source_hosts h ON h.ip = d.ip
WHERE d.noticed_at >= $1 AND d.first_seen >= d.noticed_at - $2::interval
"""
NEW_SOURCES = _NEW + "ORDER BY d.policy_domain, d.noticed_at, d.source"
NEW_SOURCE_COUNTS = """
SELECT policy_domain, count(*) AS sources FROM domain_sources
WHERE noticed_at >= $1 AND first_seen >= noticed_at - $2::interval
GROUP BY 1
"""
# A service is new to a domain when a new source has it and no source noticed before the
# window does.
NEW_SERVICES = (
    "WITH new AS ("  # noqa: S608 - constants only
    + _NEW
    + """)
SELECT new.policy_domain, new.service, min(new.noticed_at) AS noticed_at,
       min(new.first_seen) AS first_seen, count(*) AS sources,
       array_agg(new.source ORDER BY new.source) AS addresses
FROM new
WHERE new.service IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM domain_sources o JOIN source_hosts oh ON oh.ip = o.ip
      WHERE o.policy_domain = new.policy_domain AND oh.service = new.service
        AND o.noticed_at < $1
  )
GROUP BY 1, 2
ORDER BY 1, 3, 2
"""
)
# Messages and passing per domain: received in the last day, and in the fortnight before.
PASS_RATIOS = """
SELECT policy_domain,
       coalesce(sum(messages) FILTER (WHERE received_at >= $1), 0) AS day_messages,
       coalesce(sum(passing) FILTER (WHERE received_at >= $1), 0) AS day_passing,
       coalesce(sum(messages) FILTER (WHERE received_at < $1), 0) AS trailing_messages,
       coalesce(sum(passing) FILTER (WHERE received_at < $1), 0) AS trailing_passing
FROM report_totals
WHERE received_at >= $2 AND received_at < $3 AND begin_at >= received_at - $4::interval
GROUP BY 1
ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class PassRatio:
    """One domain's messages and those passing DMARC, in the last day and the trailing
    fortnight before it."""

    domain: str
    day_messages: int
    day_passing: int
    trailing_messages: int
    trailing_passing: int

    @property
    def day(self) -> float | None:
        return self.day_passing / self.day_messages if self.day_messages else None

    @property
    def trailing(self) -> float | None:
        return self.trailing_passing / self.trailing_messages if self.trailing_messages else None

    @property
    def drop(self) -> float | None:
        """How far the last day's ratio fell under the trailing one (negative: it rose)."""
        if self.day is None or self.trailing is None:
            return None
        return self.trailing - self.day

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "day_messages": self.day_messages,
            "day_pass_ratio": _round(self.day),
            "trailing_messages": self.trailing_messages,
            "trailing_pass_ratio": _round(self.trailing),
            "drop": _round(self.drop),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def sweep(conn: Conn, since: datetime, *, batch: int = BATCH) -> tuple[int, int]:
    """Take the reports of the messages received since ``since`` (at most ``KEEP_TOTALS``
    ago: older ones are past the windows, and their totals forgotten) not taken yet,
    ``batch`` at a time (a transaction each), and forget totals past ``KEEP_TOTALS``;
    returns how many reports were taken and how many sources were new or older than
    known."""
    reports = sources = 0
    while True:
        row = await conn.fetchrow(_SWEEP, since, batch, KEEP_TOTALS)
        assert row is not None
        reports += row["reports"]
        sources += row["sources"]
        if row["reports"] < batch:
            break
    await conn.execute(_FORGET, KEEP_TOTALS)
    return reports, sources


async def new_sources(conn: Conn, since: datetime) -> list[dict[str, Any]]:
    """The (domain, source) pairs new since ``since``, by domain then time noticed."""
    return [dict(r) for r in await conn.fetch(NEW_SOURCES, since, NEWS_AGE)]


async def new_source_counts(conn: Conn, since: datetime) -> dict[str, int]:
    """domain -> how many of its sources are new since ``since``."""
    rows = await conn.fetch(NEW_SOURCE_COUNTS, since, NEWS_AGE)
    return {r["policy_domain"]: int(r["sources"]) for r in rows}


async def new_services(conn: Conn, since: datetime) -> list[dict[str, Any]]:
    """The (domain, service) pairs new since ``since``: their first source noticed then."""
    rows = await conn.fetch(NEW_SERVICES, since, NEWS_AGE)
    return [{**dict(r), "addresses": list(r["addresses"])} for r in rows]


async def pass_ratios(conn: Conn, now: datetime) -> list[PassRatio]:
    """Each domain's pass ratio over the day before ``now`` and the fortnight before that."""
    rows = await conn.fetch(PASS_RATIOS, now - DAY, now - DAY - TRAILING, now, NEWS_AGE)
    return [
        PassRatio(
            r["policy_domain"],
            int(r["day_messages"]),
            int(r["day_passing"]),
            int(r["trailing_messages"]),
            int(r["trailing_passing"]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the gauges of change detection show: per domain, its new sources and services
    of the last day, and its pass ratios."""

    new_sources: dict[str, int]
    new_services: dict[str, int]
    ratios: list[PassRatio]

    def windows(self) -> list[tuple[str, str, int, int]]:
        """(domain, window, messages, passing) of each ratio: windows "1d" and "14d"."""
        out = []
        for r in self.ratios:
            out.append((r.domain, "1d", r.day_messages, r.day_passing))
            out.append((r.domain, "14d", r.trailing_messages, r.trailing_passing))
        return out


async def detect(conn: Conn, since: datetime, now: datetime) -> Snapshot:
    """A sweep of the messages received since ``since``, then what changed in the day
    before ``now``."""
    await sweep(conn, since)
    services: dict[str, int] = {}
    for row in await new_services(conn, now - DAY):
        services[row["policy_domain"]] = services.get(row["policy_domain"], 0) + 1
    return Snapshot(
        new_sources=await new_source_counts(conn, now - DAY),
        new_services=services,
        ratios=await pass_ratios(conn, now),
    )
