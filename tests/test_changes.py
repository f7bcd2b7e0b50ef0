"""Change detection: sources and services new to a domain, and pass rates that dropped under
the domain's trailing average, through the real `rua-sink changes` and a running `rua-sink
serve`'s gauges, on a real database."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rua_sink.core.limits import Limits
from rua_sink.ingest.ingester import Ingester
from rua_sink.storage import changes as sweeps
from rua_sink.storage.store import Store

from .pg import fetch, scratch_database
from .procs import cli
from .smtpserver import running, scrape, send
from .storage import ingest_bytes, store_corpus, with_store
from .test_classify import aligned, host, record, report

BASELINE = "192.0.2.1"  # sends every day, passing
NEWCOMER = "192.0.2.9"  # first seen in the last day, failing
OLD = "192.0.2.77"  # only in a report of 2023, backfilled today


def day(days_ago: float) -> datetime:
    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return now - timedelta(days=days_ago)


def store(db: str, *messages: tuple[bytes, datetime | None]) -> None:
    """Each message stored as if received at its time (None: now)."""

    async def go(s: Store) -> None:
        ingester = Ingester(s, limits=Limits())
        for data, when in messages:
            assert (await ingest_bytes(ingester, data, when=when)).reports_new == 1

    with_store(db, go)


def history(db: str) -> None:
    """A fortnight of one passing source, then a day in which a newcomer fails half the
    messages, and an old report backfilled."""
    now = datetime.now(UTC)
    store(
        db,
        *(
            (
                report(f"base-{n}", aligned(BASELINE, 100), begin=day(n + 1)),
                now - timedelta(days=n),
            )
            for n in range(2, 12)
        ),
        (
            report("today", aligned(BASELINE, 50), record(NEWCOMER, 50), begin=day(1)),
            None,
        ),
        (report("backfilled", record(OLD, 5)), None),  # report_xml's day of 2023
    )


def changes(db: str, *args: str) -> list[dict[str, Any]]:
    done = cli("changes", *args, "--json", env={"RUA_SINK_DATABASE_URL": db})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_changes_lists_new_sources_services_and_drops(db: str) -> None:
    history(db)
    host(db, NEWCOMER, ptr_name="o1.sendgrid.net", ptr_confirmed=True, service="SendGrid")
    host(db, BASELINE, ptr_name="mail-a.google.com", ptr_confirmed=True, service="Google")
    got = changes(db)
    by_kind = {(c["change"], c["domain"], c.get("what")): c for c in got}
    assert set(by_kind) == {
        ("new_source", "example.com", NEWCOMER),
        ("new_service", "example.com", "SendGrid"),
        ("pass_rate_drop", "example.com", "100.0% -> 50.0%"),
    }
    source = by_kind["new_source", "example.com", NEWCOMER]
    assert (source["service"], source["first_seen"][:10]) == ("SendGrid", day(1).date().isoformat())
    assert by_kind["new_service", "example.com", "SendGrid"]["sources"] == [NEWCOMER]
    drop = by_kind["pass_rate_drop", "example.com", "100.0% -> 50.0%"]
    assert (drop["day_messages"], drop["trailing_messages"]) == (100, 1000)
    assert (drop["day_pass_ratio"], drop["trailing_pass_ratio"], drop["drop"]) == (0.5, 1.0, 0.5)

    # Over a fortnight, the baseline and its service are new too; the backfill never is.
    fortnight = {(c["change"], c.get("what")) for c in changes(db, "--days", "14")}
    assert ("new_source", BASELINE) in fortnight and ("new_service", "Google") in fortnight
    assert not any(OLD in str(c) for c in changes(db, "--days", "14"))
    # A drop of 50 points is not over a threshold of 60.
    assert {c["change"] for c in changes(db, "--threshold", "0.6")} == {
        "new_source",
        "new_service",
    }
    # Each report is swept once: running again changes no totals.
    (totals,) = fetch(db, "SELECT count(*) AS n, sum(messages) AS m FROM report_totals")
    assert (totals["n"], totals["m"]) == (12, 1105)

    text = cli("changes", env={"RUA_SINK_DATABASE_URL": db})
    assert text.returncode == 0, text.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split()[:3] == ["CHANGE", "DOMAIN", "WHAT"]
    assert [line.split()[0] for line in lines] == ["new_source", "new_service", "pass_rate_drop"]
    assert "o1.sendgrid.net (SendGrid)" in lines[0]


def test_nothing_new_and_bad_arguments(db: str) -> None:
    done = cli("changes", env={"RUA_SINK_DATABASE_URL": db})
    assert (done.returncode, done.stdout) == (0, "no changes\n")
    for args in (("--days", "0"), ("--threshold", "2")):
        bad = cli("changes", *args, env={"RUA_SINK_DATABASE_URL": db})
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith("rua-sink"), bad.stderr
        assert "Traceback" not in bad.stderr


def gauges(samples: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_serve_exports_new_sources_and_pass_ratios(db: str) -> None:
    history(db)  # the baseline before serve starts; its first sweep takes it
    with running(db, RUA_SINK_CHANGES_INTERVAL="0.5") as server:
        begin = day(1)
        code, reply = send(
            server,
            report("smtp-1", record("192.0.2.10", 10), aligned(BASELINE, 10), begin=begin),
        )
        assert code == 250, reply
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            samples = scrape(server)
            new = gauges(samples, "rua_sink_new_sources")
            if new.get((("policy_domain", "example.com"),)) == 2:
                break
            time.sleep(0.3)
        assert new == {(("policy_domain", "example.com"),): 2}  # NEWCOMER and 192.0.2.10
        ratios = gauges(samples, "rua_sink_dmarc_pass_ratio")
        assert ratios == {
            (("policy_domain", "example.com"), ("window", "1d")): 60 / 120,
            (("policy_domain", "example.com"), ("window", "14d")): 1.0,
        }
        assert gauges(samples, "rua_sink_new_services") == {(("policy_domain", "example.com"),): 0}
    assert server.process.returncode == 0


def test_an_upgrade_knows_the_sources_already_stored(server_url: str) -> None:
    with scratch_database(server_url, "rua_sink_changes_upgrade") as (url, _):
        assert cli("migrate", env={"RUA_SINK_DATABASE_URL": url}).returncode == 0
        store_corpus(url)
        received = datetime.now(UTC) - timedelta(hours=5)
        store(url, (report("before", record(NEWCOMER, 2), begin=day(1)), received))
        # The schema as the version before 0009 left it.
        for sql in (
            "DROP FUNCTION dmarc_sources",
            "DROP TABLE domain_sources, report_totals",
            "ALTER TABLE source_hosts DROP COLUMN forwarder",
            "DELETE FROM schema_migrations WHERE version = 9",
        ):
            fetch(url, sql)
        done = cli("migrate", env={"RUA_SINK_DATABASE_URL": url})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"applied": ["0009_source_classes.sql"]}
        pairs = fetch(
            url,
            "SELECT policy_domain, coalesce(host(source_ip), source_ip_text) AS source,"
            " min(begin_at) AS first_seen FROM aggregate_records GROUP BY 1, 2",
        )
        known = fetch(
            url, "SELECT policy_domain, source, first_seen, noticed_at FROM domain_sources"
        )
        assert {tuple(r) for r in pairs} == {tuple(r)[:3] for r in known}
        (before,) = [r for r in known if r["source"] == NEWCOMER]
        assert before["noticed_at"] == received
        # What arrived before the upgrade is still news after it; the corpus never was.
        got = changes(url)
        assert [(c["change"], c["what"]) for c in got] == [("new_source", NEWCOMER)]


def test_the_sweep_takes_each_report_once_in_batches(db: str) -> None:
    history(db)  # twelve reports received in the last fortnight
    old = datetime.now(UTC) - timedelta(days=20)
    store(db, (report("old", record("192.0.2.60", 1), begin=day(21)), old))

    async def go(s: Store) -> list[tuple[int, int]]:
        async with s.pool.acquire() as conn:
            since = datetime(2000, 1, 1, tzinfo=UTC)
            return [await sweeps.sweep(conn, since, batch=5) for _ in range(2)]

    first, again = with_store(db, go)
    # 12 reports in three batches (in the order stored); 3 pairs, the baseline's twice: the
    # second batch holds older reports of its than the first. The report received 20 days
    # ago is past the windows: never taken.
    assert first == (12, 4) and again == (0, 0)
    (totals,) = fetch(db, "SELECT count(*) AS n, min(received_at) AS oldest FROM report_totals")
    assert totals["n"] == 12
    assert totals["oldest"] > datetime.now(UTC) - sweeps.KEEP_TOTALS
    assert fetch(db, "SELECT 1 FROM domain_sources WHERE source = '192.0.2.60'") == []
    # Ten days later, the totals past the windows are forgotten, and not taken again.
    for table in ("report_totals", "raw_messages"):
        fetch(db, f"UPDATE {table} SET received_at = received_at - interval '10 days'")  # noqa: S608
    assert with_store(db, go) == [(0, 0), (0, 0)]
    (totals,) = fetch(db, "SELECT count(*) AS n FROM report_totals")
    assert totals["n"] == 6  # today's, the backfill, and those received 2 to 5 days before
