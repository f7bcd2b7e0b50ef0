"""`rua-sink report DOMAIN`, run as a subprocess on the stored corpus."""

from __future__ import annotations

import json
from collections import Counter

from .procs import cli
from .storage import DOMAIN, PERIOD, parsed_records, store_corpus


def test_report_agrees_with_the_parser(db: str) -> None:
    store_corpus(db)
    done = cli(
        "report",
        DOMAIN.upper(),
        *("--since", PERIOD[0].date().isoformat(), "--until", PERIOD[1].date().isoformat()),
        *("--top", "100", "--json"),
        env={"RUA_SINK_DATABASE_URL": db},
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    records = parsed_records()
    per_source: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    passing = 0
    for _, rec, _ in records:
        ok = rec.dkim == "pass" or rec.spf == "pass"
        per_source[rec.source_ip] += rec.count
        passing += rec.count if ok else 0
        if not ok:
            failing[rec.source_ip] += rec.count
    assert got["domain"] == DOMAIN
    assert got["messages"] == sum(per_source.values())
    assert got["passing"] == passing
    assert got["source_count"] == len(per_source)
    assert {s["source"]: s["messages"] for s in got["top_sources"]} == dict(per_source)
    assert {s["source"]: s["failing"] for s in got["top_failing_sources"]} == dict(failing)
    assert {r["reporter"] for r in got["reporters"]} == {r for r, _, _ in records}
