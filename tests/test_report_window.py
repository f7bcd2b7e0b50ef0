"""``rua-sink report DOMAIN``: its window (--since, --until, --days), what it says when the
window is empty, and its tables; the real command on the stored corpus."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .pg import fetch
from .procs import cli
from .storage import DOMAIN, store_corpus


def report(db: str, *args: str) -> tuple[int, str, str]:
    done = cli("report", *args, env={"RUA_SINK_DATABASE_URL": db})
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def as_json(db: str, *args: str) -> tuple[int, dict[str, Any]]:
    status, out, err = report(db, *args, "--json")
    assert status in (0, 1), err
    return status, json.loads(out)


@pytest.fixture
def stored(db: str) -> dict[str, Any]:
    """The corpus stored; the count and span of DOMAIN's reports, from the table."""
    store_corpus(db)
    (row,) = fetch(
        db,
        "SELECT count(*) AS n, min(begin_at) AS first, max(end_at) AS last "
        "FROM aggregate_reports WHERE policy_domain = $1",
        DOMAIN,
    )
    assert row["n"] > 0
    return dict(row)


def test_an_empty_window_says_where_the_reports_are(db: str, stored: dict[str, Any]) -> None:
    first, last = stored["first"], stored["last"]
    since = f"{first:%Y-%m-%d}"
    until = f"{last + timedelta(days=1):%Y-%m-%d}"
    status, out, _ = report(db, DOMAIN)  # the last 30 days: the corpus is older
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{DOMAIN}: ") and lines[0].endswith(" (UTC)")
    assert lines[1].startswith("no reports between ")
    assert lines[1].endswith(
        f"; {stored['n']} reports exist from {since} to {last:%Y-%m-%d}: "
        f"try --since {since} --until {until}"
    )
    status, got = as_json(db, DOMAIN)
    assert status == 1
    assert (got["reports"], got["messages"], got["all_reports"]) == (0, 0, stored["n"])
    assert datetime.fromisoformat(got["first_report"]) == first
    assert datetime.fromisoformat(got["last_report"]) == last
    # The same words (the window's "now" may be a minute later on the second run).
    assert got["hint"].split("; ")[1:] == lines[1].split("; ")[1:]
    # Following the hint finds every one of them.
    status, got = as_json(db, DOMAIN, "--since", since, "--until", until)
    assert status == 0
    assert (got["reports"], got["all_reports"], got["hint"]) == (stored["n"], stored["n"], None)
    assert got["messages"] > 0


def test_a_window_after_the_reports_points_back_to_them(db: str, stored: dict[str, Any]) -> None:
    later = stored["last"] + timedelta(days=400)
    status, got = as_json(db, DOMAIN, "--until", f"{later:%Y-%m-%d}", "--days", "10")
    assert status == 1
    assert f"{stored['n']} reports exist from {stored['first']:%Y-%m-%d}" in got["hint"]


def test_a_domain_without_reports_says_so(db: str, stored: dict[str, Any]) -> None:
    status, out, _ = report(db, "nothing-here.example", "--days", "3650")
    assert status == 1
    assert out.splitlines()[1] == "no reports for nothing-here.example are stored"
    status, got = as_json(db, "nothing-here.example")
    assert (got["all_reports"], got["first_report"], got["hint"]) == (
        0,
        None,
        "no reports for nothing-here.example are stored",
    )


def test_since_until_and_days_combine(db: str) -> None:
    now = datetime.now(UTC)

    def window(*args: str) -> tuple[datetime, datetime]:
        _, got = as_json(db, "example.com", *args)
        return datetime.fromisoformat(got["since"]), datetime.fromisoformat(got["until"])

    since, until = window()
    assert until - since == timedelta(days=30) and abs(until - now) < timedelta(minutes=5)
    since, until = window("--since", "2024-05-01")  # alone: until now
    assert since == datetime(2024, 5, 1, tzinfo=UTC) and abs(until - now) < timedelta(minutes=5)
    since, until = window("--since", "2024-05-01", "--days", "7")
    assert (since, until) == (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC))
    since, until = window("--until", "2024-07-01")  # alone: the 30 days before
    assert (since, until) == (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    since, until = window("--until", "2024-07-01", "--days", "10")
    assert (since, until) == (datetime(2024, 6, 21, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    since, until = window("--days", "2")
    assert until - since == timedelta(days=2)

    status, out, err = report(db, "example.com", "--since", "2024-06-01", "--until", "2024-06-01")
    assert (status, out) == (2, "")
    assert err == "rua-sink: --since (2024-06-01) must be before --until (2024-06-01)\n"
    status, _, err = report(db, "example.com", "--since", "2099-01-01")  # in the future
    assert status == 2 and "must be before --until" in err
    status, _, err = report(
        db, "example.com", "--since", "2024-01-01", "--until", "2024-02-01", "--days", "3"
    )
    assert (status, err) == (2, "rua-sink: give at most two of --since, --until and --days\n")


def test_the_text_has_aligned_tables_with_headers(db: str, stored: dict[str, Any]) -> None:
    since = f"{stored['first']:%Y-%m-%d}"
    status, out, _ = report(db, DOMAIN, "--since", since)
    assert status == 0
    _, got = as_json(db, DOMAIN, "--since", since)
    blocks = out.split("\n\n")
    head, reporters, sources, failing = blocks
    assert head.splitlines()[1] == (
        f"{got['reports']} reports: {got['messages']} messages, {got['passing']} passing DMARC "
        f"({got['pass_rate']}%), from {got['source_count']} sources"  # each more than one
    )
    tables = {
        "REPORTER": (reporters, ["REPORTER", "REPORTS", "MESSAGES"], got["reporters"]),
        "SOURCE": (sources, ["SOURCE", "MESSAGES", "PASSING", "SENDER"], got["top_sources"]),
        "FAILING": (
            failing,
            ["FAILING SOURCE", "FAILING", "REPORTERS", "SENDER"],
            got["top_failing_sources"],
        ),
    }
    for block, headers, rows in tables.values():
        lines = block.rstrip("\n").splitlines()
        assert [h for h in headers if h in lines[0]] == headers
        assert len(lines) == 1 + len(rows) > 1
        # Right-aligned numbers: each row's count ends where its header does.
        number = headers[1]
        end = lines[0].index(number, len(headers[0])) + len(number)
        for line, row in zip(lines[1:], rows, strict=True):
            key = {"REPORTS": "reports", "MESSAGES": "messages", "FAILING": "failing"}[number]
            assert line[:end].endswith(f" {row[key]}"), (line, row)
    first = reporters.splitlines()[1]
    assert first.startswith(got["reporters"][0]["reporter"])
