"""Storage against a real PostgreSQL: exactly once, quarantine, reprocess, migrations."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rua_sink.core.limits import Limits
from rua_sink.ingest.ingester import READ_AHEAD, Ingester, IngestResult
from rua_sink.outcomes import Outcome
from rua_sink.storage import migrate
from rua_sink.storage.rows import reporter_key
from rua_sink.storage.store import Store

from .conftest import CORPUS, INVALID_CASING_SPF_RESULTS
from .pg import TABLES, run, scratch_database
from .procs import CLI, cli
from .reports import gz, message, report_message, report_xml
from .storage import ingest_bytes, ingest_files, with_store
from .test_corpus import AGGREGATES, ARF, TLS


async def counts(store: Store) -> dict[str, int]:
    out = {}
    for table in (
        "raw_messages",
        "aggregate_reports",
        "aggregate_records",
        "tls_reports",
        "failure_reports",
    ):
        out[table] = await store.pool.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
    return out


def expected_corpus() -> dict[str, int]:
    """What the corpus must store, from the values read off each file: a report whose
    dedup key was seen before is stored once."""
    keys: dict[tuple[str, ...], int] = {}
    for _, org, report_id, domain, begin, end, records, _ in AGGREGATES:
        keys.setdefault((reporter_key(org, None), report_id, domain, str(begin), str(end)), records)
    tls = {(reporter_key(org, None), rid, str(b), str(e)) for _, org, rid, b, e, *_ in TLS}
    return {
        "raw_messages": len(AGGREGATES) + len(TLS) + len(ARF),
        "aggregate_reports": len(keys),
        "aggregate_records": sum(keys.values()),
        "tls_reports": len(tls),
        "failure_reports": len(ARF),
    }


def test_corpus_ingests_exactly_once(db: str) -> None:
    files = sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in ("SOURCES.md", "MANIFEST.sha256")
    )

    async def go(
        store: Store,
    ) -> tuple[list[IngestResult], dict[str, int], list[IngestResult], dict[str, int]]:
        ingester = Ingester(store, limits=Limits())
        first = await ingest_files(ingester, files)
        after_first = await counts(store)
        second = await ingest_files(ingester, files)
        return first, after_first, second, await counts(store)

    first, after_first, second, after_second = with_store(db, go)
    assert after_first == expected_corpus()
    assert {r.outcome for r in first} <= {Outcome.STORED, Outcome.DUPLICATE}
    assert sum(r.reports_new for r in first) == (
        after_first["aggregate_reports"]
        + after_first["tls_reports"]
        + after_first["failure_reports"]
    )
    assert after_second == after_first
    assert all(r.outcome is Outcome.DUPLICATE and r.raw_message_id is None for r in second)


def test_record_rows_keep_the_results(db: str) -> None:
    path = CORPUS / "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/invalid_casing.xml"

    async def go(store: Store) -> asyncpg.Record:
        await ingest_files(Ingester(store, limits=Limits()), [path])
        row = await store.pool.fetchrow("SELECT * FROM aggregate_records")
        assert row is not None
        return row

    row = with_store(db, go)
    assert str(row["source_ip"]) == "42.42.42.42"
    assert row["spf_results"] == INVALID_CASING_SPF_RESULTS
    assert row["dkim_domains"] == [None] and row["dkim_results"] == ["fail"]
    assert (row["disposition"], row["dkim_aligned"], row["dmarc_pass"]) == (
        "quarantine",
        "fail",
        False,
    )
    assert row["begin_at"] == datetime(2024, 9, 23, tzinfo=UTC)


# Set by the database, not by the report: left out of the comparison below.
ASSIGNED = {"id", "raw_message_id", "report", "received_at", "processed_at", "stored_at"}


def test_one_statement_stores_what_the_transaction_path_stores(db: str) -> None:
    """A message of one whole aggregate report is stored in one statement; any other, in a
    transaction, part by part. Over the corpus (as SMTP messages, since report files sent
    by mail are what the first path is for) both give the same rows and results."""
    messages = [p.read_bytes() for p in sorted(CORPUS.rglob("*.eml"))]
    messages += [
        message((gz(p.read_bytes()), "application/gzip", p.name + ".gz"))
        for p in sorted(CORPUS.rglob("*.xml"))
    ]

    async def stored(store: Store, read_ahead: int) -> tuple[list[Any], list[list[Any]], int]:
        await store.pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        ingester = Ingester(store, limits=Limits(), read_ahead=read_ahead)
        when = datetime(2026, 1, 1, tzinfo=UTC)
        results = [await ingest_bytes(ingester, m, when=when) for m in messages]
        summary = [
            (r.outcome, r.records, r.reports, r.counts, r.dmarc, r.last_report, r.reason)
            for r in results
        ]
        tables = []
        for table in ("raw_messages", "aggregate_reports", "aggregate_records"):
            rows = await store.pool.fetch(f"SELECT * FROM {table}")  # noqa: S608
            tables.append(
                sorted(
                    repr(sorted((k, v) for k, v in r.items() if k not in ASSIGNED)) for r in rows
                )
            )
        return summary, tables, sum(r.one_statement for r in results)

    async def go(store: Store) -> None:
        summary, tables, fast = await stored(store, READ_AHEAD)
        assert (summary, tables, 0) == await stored(store, 0)
        assert fast >= 20  # most of the corpus's messages are one report
        assert len(tables[2]) >= 20  # records to compare

    with_store(db, go)


def test_concurrent_ingests_of_one_report_store_it_once(db: str) -> None:
    report = gz(report_xml(50, report_id="same"))
    # Eight different messages (their Message-IDs differ) carrying the same report.
    messages = [
        message((report, "application/gzip", "r.xml.gz")).replace(
            b"Subject:", f"Message-ID: <{i}@reporter.example>\r\nSubject:".encode(), 1
        )
        for i in range(8)
    ]

    async def go(store: Store) -> tuple[list[IngestResult], dict[str, int]]:
        ingester = Ingester(store, limits=Limits())
        results = await asyncio.gather(*(ingest_bytes(ingester, m) for m in messages))
        return list(results), await counts(store)

    results, after = with_store(db, go, size=10)
    assert sorted(r.outcome for r in results) == [Outcome.DUPLICATE] * 7 + [Outcome.STORED]
    assert after["raw_messages"] == 8
    assert after["aggregate_reports"] == 1
    assert after["aggregate_records"] == 50


def test_quarantined_message_reprocessed_after_a_fix(db: str) -> None:
    data = message((gz(report_xml(5)), "application/gzip", "r.xml.gz"))

    async def go(
        store: Store,
    ) -> tuple[IngestResult, asyncpg.Record, IngestResult, IngestResult, dict[str, int]]:
        strict = Ingester(store, limits=Limits(max_records=2))  # the "bug": too strict
        first = await ingest_bytes(strict, data)
        raw = await store.pool.fetchrow("SELECT status, reason, detail FROM raw_messages")
        assert raw is not None
        fixed = Ingester(store, limits=Limits())
        assert await store.raw_messages(any_version=True) == [first.raw_message_id]
        assert await store.raw_messages() == []  # read by this parser version
        again = await fixed.reprocess(first.raw_message_id or 0)
        twice = await fixed.reprocess(first.raw_message_id or 0)
        return first, raw, again, twice, await counts(store)

    first, raw, again, twice, after = with_store(db, go)
    assert first.outcome is Outcome.QUARANTINED
    assert (raw["status"], raw["reason"]) == ("quarantined", "too_many_records")
    assert again.outcome is Outcome.STORED and again.records == 5
    assert twice.outcome is Outcome.STORED  # idempotent: replaces what it made before
    assert after == {
        "raw_messages": 1,
        "aggregate_reports": 1,
        "aggregate_records": 5,
        "tls_reports": 0,
        "failure_reports": 0,
    }


def test_report_broken_half_way_is_rolled_back_alone(db: str) -> None:
    broken = gz(report_xml(300, report_id="broken"))[:-200]  # cut inside the records
    data = message(
        (gz(report_xml(3, report_id="good")), "application/gzip", "good.xml.gz"),
        (broken, "application/gzip", "broken.xml.gz"),
    )

    async def go(store: Store) -> tuple[IngestResult, list[str], int, str]:
        result = await ingest_bytes(Ingester(store, limits=Limits(), copy_batch=50), data)
        ids = [
            r["report_id"]
            for r in await store.pool.fetch("SELECT report_id FROM aggregate_reports")
        ]
        records = await store.pool.fetchval("SELECT count(*) FROM aggregate_records")
        status = await store.pool.fetchval("SELECT status FROM raw_messages")
        return result, ids, records, status

    result, ids, records, status = with_store(db, go)
    assert result.outcome is Outcome.QUARANTINED
    assert result.reason is not None and result.reason.value == "truncated_archive"
    assert ids == ["good"] and records == 3 and status == "quarantined"


def test_not_a_report_is_kept_for_backfill_and_dropped_for_smtp(db: str) -> None:
    text = b"From: a@example.org\r\nSubject: hi\r\n\r\njust text\r\n"

    async def go(store: Store) -> tuple[IngestResult, IngestResult, int]:
        kept = await ingest_bytes(Ingester(store, limits=Limits()), text, source="backfill/x.eml")
        dropped = await ingest_bytes(
            Ingester(store, limits=Limits(), keep_non_reports=False), text + b"\r\n"
        )
        return kept, dropped, await store.pool.fetchval("SELECT count(*) FROM raw_messages")

    kept, dropped, raw = with_store(db, go)
    assert kept.outcome is dropped.outcome is Outcome.NOT_A_REPORT
    assert raw == 1


def test_monthly_partitions_and_prune(db: str) -> None:
    def month_report(begin: int, rid: str) -> bytes:
        return (
            report_xml(2, report_id=rid)
            .replace(b"1700000000", str(begin).encode())
            .replace(b"1700086399", str(begin + 86399).encode())
        )

    jan, feb, jun = 1704067200, 1706745600, 1717200000  # 2024-01-01, 2024-02-01, 2024-06-01
    two_months = message(
        (month_report(jan, "jan"), "text/xml", "a.xml"),
        (month_report(feb, "feb"), "text/xml", "b.xml"),
    )

    async def partitions(store: Store) -> set[str]:
        rows = await store.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        )
        return {r["relname"] for r in rows}

    async def go(
        store: Store,
    ) -> tuple[set[str], dict[str, int], set[str], dict[str, int], set[str]]:
        ingester = Ingester(store, limits=Limits())
        old = datetime(2024, 1, 5, tzinfo=UTC)
        assert (await ingest_bytes(ingester, two_months, when=old)).records == 4
        await ingest_bytes(ingester, month_report(jun, "jun"), source="/x/jun.xml")
        names = await partitions(store)
        # looked-up sources: one still in a record, one no record names any more
        (named,) = await store.pool.fetch(
            "SELECT source_ip FROM aggregate_records WHERE begin_at >= '2024-06-01' LIMIT 1"
        )
        await store.pool.executemany(
            "INSERT INTO source_hosts (ip, first_seen) VALUES ($1, '2024-01-05')",
            [(named["source_ip"],), ("203.0.113.99",)],
        )
        pruned = await store.prune(datetime(2024, 3, 1, tzinfo=UTC))
        hosts = [r["ip"] for r in await store.pool.fetch("SELECT ip FROM source_hosts")]
        assert hosts == [named["source_ip"]] and pruned["source_hosts"] == 1
        left = {
            r["report_id"]
            for r in await store.pool.fetch("SELECT report_id FROM aggregate_reports")
        }
        return names, pruned, left, await counts(store), await partitions(store)

    names, pruned, left, after, remaining = with_store(db, go)
    months = {"aggregate_records_2024_01", "aggregate_records_2024_02", "aggregate_records_2024_06"}
    assert months <= names
    assert months & remaining == {"aggregate_records_2024_06"}
    assert pruned["partitions_dropped"] >= 2
    assert pruned["raw_messages"] == 1
    assert left == {"jun"}
    assert after["aggregate_records"] == 2


@pytest.mark.parametrize("read_ahead", [READ_AHEAD, 0], ids=["one-statement", "transaction"])
def test_a_partition_dropped_by_another_replica_is_made_again(db: str, read_ahead: int) -> None:
    """This replica believes January's partition exists; another one's prune dropped it.
    PostgreSQL finds no partition for the records: the partition is made again and the
    message stored, whichever path it takes."""
    january = (
        report_xml(3, report_id="again")
        .replace(b"1700000000", b"1704067200")  # 2024-01-01
        .replace(b"1700086399", b"1704153599")
    )

    async def go(store: Store) -> tuple[IngestResult, int]:
        ingester = Ingester(store, limits=Limits(), read_ahead=read_ahead)
        first = report_xml(1, report_id="first").replace(b"1700000000", b"1704067200")
        await ingest_bytes(ingester, first, source="/x/first.xml")
        assert store.has_partition(datetime(2024, 1, 1, tzinfo=UTC))
        pool = await asyncpg.create_pool(db, min_size=1, max_size=1)
        try:
            await Store(pool).prune(datetime(2024, 3, 1, tzinfo=UTC))  # the other replica
        finally:
            await pool.close()
        result = await ingest_bytes(ingester, message((gz(january), "application/gzip", "r.gz")))
        rows = await store.pool.fetchval(
            "SELECT count(*) FROM aggregate_records_2024_01 r "
            "JOIN aggregate_reports a ON a.id = r.report WHERE a.report_id = 'again'"
        )
        return result, rows

    result, rows = with_store(db, go)
    assert result.outcome is Outcome.STORED and result.one_statement == bool(read_ahead)
    assert rows == 3


def test_migrations_twice_and_at_once(server_url: str) -> None:
    async def go(url: str) -> tuple[list[list[migrate.Migration]], int]:
        conns = [await asyncpg.connect(url) for _ in range(3)]
        try:
            results = list(await asyncio.gather(*(migrate.migrate(c) for c in conns)))
            results.append(await migrate.migrate(conns[0]))
            rows = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            for c in conns:
                await c.close()
        return results, rows

    with scratch_database(server_url, "rua_sink_migrate") as (url, _):
        results, rows = run(go(url))
    applied = [len(r) for r in results]
    assert sorted(applied) == [0, 0, 0, len(migrate.available())]
    assert rows == len(migrate.available())


def test_migrate_command_in_two_processes(db: str) -> None:
    env = {**os.environ, "RUA_SINK_DATABASE_URL": db}
    procs = [
        subprocess.Popen(
            [*CLI, "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('"applied": []' in out for out, _ in outs)  # the db fixture migrated already


def test_tls_and_failure_rows(db: str) -> None:
    tls = CORPUS / "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/rfc-example.json"
    arf = CORPUS / "stalwartlabs__mail-auth/resources/arf/004.eml"

    async def go(store: Store) -> tuple[list[Any], list[Any], Any]:
        await ingest_files(Ingester(store, limits=Limits()), [tls, arf])
        policies = await store.pool.fetch("SELECT * FROM tls_policies")
        details = await store.pool.fetch("SELECT * FROM tls_failure_details ORDER BY result_type")
        failure = await store.pool.fetchrow("SELECT * FROM failure_reports")
        return list(policies), list(details), failure

    policies, details, failure = with_store(db, go)
    assert [(p["policy_type"], p["success_count"], p["failure_count"]) for p in policies] == [
        ("sts", 5326, 303)
    ]
    assert sum(d["failed_session_count"] for d in details) == 303
    assert failure["feedback_type"] == "auth-failure"
    assert str(failure["source_ip"]) == "148.163.85.135"
    assert failure["reported_domains"] == ["interpublication.org"]


def test_backfill_of_mbox_and_maildir(db: str, tmp_path: Path) -> None:
    mbox = tmp_path / "reports.mbox"
    with mbox.open("wb") as f:
        for rid in ("m1", "m2", "m3"):
            f.write(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n")
            f.write(report_message(rid).replace(b"\r\n", b"\n") + b"\n")
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1.host:2,S").write_bytes(report_message("d1"))
    (maildir / "new" / "2.host").write_bytes(report_message("d2"))
    proc = cli("ingest", "--json", str(mbox), str(maildir), env={"RUA_SINK_DATABASE_URL": db})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["messages"] == 5
    assert summary["reports_new"] == 5
    assert summary["records"] == 10
    assert summary["quarantined"] == 0


@pytest.mark.parametrize("read_ahead", [READ_AHEAD, 0], ids=["one-statement", "transaction"])
def test_awkward_values_survive_storage(db: str, read_ahead: int) -> None:
    # Values that need escaping in COPY text, in array literals or in JSON come back
    # unchanged, whichever way the report is stored.
    nasty = ["a,b", "{x}", 'q"uote', "back\\slash", "tab\there", "NULL", "sp ace", "ünï"]
    dkims = "".join(
        f"<dkim><domain>d{i}.example</domain><selector>{v.replace('&', '&amp;')}</selector>"
        f"<result>pass</result><human_result>{v}</human_result></dkim>"
        for i, v in enumerate(nasty)
    )
    body = (
        "<record><row><source_ip>not-an-ip\\x</source_ip><count>7</count></row>"
        "<identifiers><header_from>example.com</header_from></identifiers>"
        f"<auth_results>{dkims}<dkim><domain>e.example</domain><selector></selector>"
        "<result>fail</result></dkim></auth_results></record>"
    )
    data = report_xml(body=body)

    async def go(store: Store) -> asyncpg.Record:
        ingester = Ingester(store, limits=Limits(), read_ahead=read_ahead)
        await ingest_bytes(ingester, data, source="backfill/r.xml")
        row = await store.pool.fetchrow("SELECT * FROM aggregate_records")
        assert row is not None
        return row

    row = with_store(db, go)
    assert row["source_ip"] is None and row["source_ip_text"] == "not-an-ip\\x"
    assert row["dkim_selectors"] == [*nasty, None]
    assert row["dkim_human_results"] == [*nasty, None]
    assert row["dkim_results"] == ["pass"] * len(nasty) + ["fail"]
    assert row["message_count"] == 7
