"""The README's example SQL runs on the real schema and agrees with the parser."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateReport, Record
from rua_sink.core.pipeline import parse_file
from rua_sink.ingest import Ingester
from rua_sink.store import Store, reporter_key

from .conftest import CORPUS, ROOT
from .test_store import corpus_reports, ingest_files, with_store

DOMAIN = "stalw.art"  # six reporters in the corpus: Fastmail, Google, Microsoft, ...
PERIOD = (datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))


def readme_queries() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"<!-- sql: ([^>]+?) -->\n```sql\n(.*?)```", text, re.S)
    return dict(found)


def parsed_records(
    period: tuple[datetime, datetime] = PERIOD,
) -> list[tuple[str, Record, datetime]]:
    """(reporter, record, report begin) of every corpus report for DOMAIN, from the parser."""
    out = []
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.name in ("SOURCES.md", "MANIFEST.sha256"):
            continue
        head: AggregateReport | None = None
        for ev in parse_file(path):
            if isinstance(ev, AggregateReport):
                head = ev
            elif isinstance(ev, Record) and head is not None and head.policy.domain == DOMAIN:
                begin = datetime.fromtimestamp(head.metadata.begin, UTC)
                if period[0] <= begin < period[1]:
                    reporter = reporter_key(head.metadata.org_name, head.metadata.email)
                    out.append((reporter, ev, begin))
    return out


def test_the_three_questions(db: str) -> None:
    queries = readme_queries()
    assert set(queries) == {
        "messages per source IP",
        "failing sources by reporter",
        "pass rate per day",
    }

    async def go(store: Store) -> dict[str, list[Any]]:
        await ingest_files(Ingester(store, limits=Limits()), corpus_reports())
        return {
            name: [tuple(r) for r in await store.pool.fetch(sql, DOMAIN, *PERIOD)]
            for name, sql in queries.items()
        }

    rows = with_store(db, go)
    records = parsed_records()
    assert len({r[0] for r in records}) >= 5  # several reporters, so the grouping matters

    per_ip: Counter[str] = Counter()
    passing: Counter[str] = Counter()
    failing: Counter[tuple[str, str]] = Counter()
    per_day: defaultdict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    for reporter, rec, begin in records:
        ok = rec.dkim == "pass" or rec.spf == "pass"
        per_ip[rec.source_ip] += rec.count
        passing[rec.source_ip] += rec.count if ok else 0
        if not ok:
            failing[(reporter, rec.source_ip)] += rec.count
        day = begin.replace(hour=0, minute=0, second=0)
        per_day[day][0] += rec.count
        per_day[day][1] += rec.count if ok else 0

    assert {(str(ip), n, p) for ip, n, p in rows["messages per source IP"]} == {
        (ip, n, passing[ip]) for ip, n in per_ip.items()
    }
    assert {(rep, str(ip), n) for rep, ip, n in rows["failing sources by reporter"]} == {
        (rep, ip, n) for (rep, ip), n in failing.items()
    }
    got_days = {(day, n, float(rate)) for day, n, rate in rows["pass rate per day"]}
    assert got_days == {(day, n, round(100.0 * p / n, 1)) for day, (n, p) in per_day.items()}
    assert failing  # the corpus has failing sources for this domain
