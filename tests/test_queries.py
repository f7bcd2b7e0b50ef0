"""The example SQL of docs/database.md runs on the real schema and agrees with the parser."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from rua_sink.storage.store import Store

from .conftest import ROOT
from .storage import DOMAIN, PERIOD, parsed_records, store_corpus, with_store


def readme_queries() -> dict[str, str]:
    text = (ROOT / "docs" / "database.md").read_text()
    found = re.findall(r"<!-- sql: ([^>]+?) -->\n```sql\n(.*?)```", text, re.S)
    return dict(found)


def test_the_three_questions(db: str) -> None:
    queries = readme_queries()
    assert set(queries) == {
        "messages per source IP",
        "failing sources by reporter",
        "pass rate per day",
    }

    store_corpus(db)

    async def go(store: Store) -> dict[str, list[Any]]:
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
