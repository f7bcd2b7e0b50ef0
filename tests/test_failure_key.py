"""A failure report is stored once, by its content (migration 0005): the same report
relayed along other paths, or backfilled after it came by SMTP, is a duplicate, answered
and counted as a duplicate aggregate report is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from rua_sink.core.limits import Limits
from rua_sink.core.model import FailureReport
from rua_sink.core.pipeline import parse_file
from rua_sink.ingest.ingester import Ingester, IngestResult
from rua_sink.outcomes import Outcome
from rua_sink.smtp.replies import REPLY_DUPLICATE, REPLY_STORED
from rua_sink.storage import migrate
from rua_sink.storage.store import Store

from .conftest import corpus
from .pg import fetch, scratch_database
from .procs import cli
from .smtpserver import Server, deltas, scrape, send
from .storage import ingest_bytes, with_store
from .test_failure_reports import ARF_DIR, RUF, arf, emptied, failure_sink

NAMES = ["001.eml", "002.eml", "003.eml", "004.eml", "005.eml"]


def relayed(data: bytes, *hops: str) -> bytes:
    """``data`` as it arrives after passing the relays ``hops``: each adds its Received
    line on top (RFC 5321 4.4), the last one topmost."""
    for n, hop in enumerate(hops, 1):
        data = (
            f"Received: from relay-{hop}.example (relay-{hop}.example [198.51.100.{n}])\r\n"
            f"\tby mx-{hop}.example with ESMTPS id {hop * 6}{n};\r\n"
            f"\tMon, 2 Feb 2026 10:0{n}:00 +0000\r\n"
        ).encode() + data
    return data


@pytest.fixture(scope="module")
def ruf_alone(server_url: str) -> Iterator[Server]:
    with failure_sink(server_url, "rua_sink_failure_key") as srv:
        yield srv


@pytest.fixture
def ruf(ruf_alone: Server) -> Server:
    return emptied(ruf_alone)


def count(srv: Server, table: str) -> int:
    return int(srv.fetch(f"SELECT count(*) AS n FROM {table}")[0]["n"])  # noqa: S608


def test_a_report_relayed_twice_is_stored_once(ruf: Server) -> None:
    before = scrape(ruf)
    for name in NAMES:
        data = arf(name)
        # Two paths to us: one relay, or two others; the report is the same.
        assert send(ruf, relayed(data, "a"), rcpt=RUF) == (250, REPLY_STORED[4:])
        assert send(ruf, relayed(data, "b", "c"), rcpt=RUF) == (250, REPLY_DUPLICATE[4:])
    delta = deltas(before, scrape(ruf))
    assert count(ruf, "failure_reports") == len(NAMES)
    # Each copy's message is archived (redacted), as a duplicate aggregate report's is.
    rows = ruf.fetch("SELECT status, redacted FROM raw_messages")
    assert [(r["status"], r["redacted"]) for r in rows] == [("stored", True)] * 2 * len(NAMES)
    # Counted where duplicate aggregate reports are counted.
    assert delta("rua_sink_reports_total", type="failure", outcome="stored") == len(NAMES)
    assert delta("rua_sink_reports_total", type="failure", outcome="duplicate") == len(NAMES)
    assert delta("rua_sink_smtp_replies_total", reason="duplicate") == len(NAMES)
    assert delta("rua_sink_smtp_replies_total", reason="stored") == len(NAMES)


def test_another_failure_of_the_same_message_is_another_report(ruf: Server) -> None:
    # RFC 6591 3.1: one report per failure; a reporter whose DKIM and SPF checks both
    # failed sends two reports about one message, and both are kept.
    data = arf("003.eml")
    spf = data.replace(b"Auth-Failure: bodyhash", b"Auth-Failure: spf")
    assert spf != data
    assert send(ruf, data, rcpt=RUF) == (250, REPLY_STORED[4:])
    assert send(ruf, spf, rcpt=RUF) == (250, REPLY_STORED[4:])
    # Folded otherwise (a field, and a header field of the reported message), the first
    # is still the first: white space does not count.
    refolded = data.replace(b"dkim=fail\r\n    header.d", b"dkim=fail header.d").replace(
        b"mail.example.com\r\n    with SMTP id o3F52gxO029144",
        b"mail.example.com with SMTP\r\n  id o3F52gxO029144",
    )
    assert refolded.count(b"\r\n") == data.count(b"\r\n") - 1
    assert send(ruf, refolded, rcpt=RUF) == (250, REPLY_DUPLICATE[4:])
    assert count(ruf, "failure_reports") == 2


def test_a_backfill_after_smtp_stores_nothing_again(ruf: Server) -> None:
    for name in NAMES:
        assert send(ruf, arf(name), rcpt=RUF)[0] == 250
    folder = corpus(ARF_DIR + NAMES[0]).parent
    env = {"RUA_SINK_DATABASE_URL": ruf.database_url}
    done = cli("ingest", "--json", str(folder), env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # The files' bytes differ from what SMTP carried (line ends): new messages, old reports.
    assert (summary["messages"], summary["messages_duplicate"]) == (len(NAMES), 0)
    assert (summary["reports_new"], summary["reports_duplicate"]) == (0, len(NAMES))
    assert count(ruf, "failure_reports") == len(NAMES)
    assert count(ruf, "raw_messages") == 2 * len(NAMES)
    # And the other way round: a backfill first, then the same reports over SMTP.
    ruf.fetch("TRUNCATE failure_reports, raw_messages RESTART IDENTITY CASCADE")
    assert cli("ingest", str(folder), env=env).returncode == 0
    for name in NAMES:
        assert send(ruf, arf(name), rcpt=RUF) == (250, REPLY_DUPLICATE[4:])
    assert count(ruf, "failure_reports") == len(NAMES)


def test_copies_of_a_report_go_at_the_failure_retention(ruf: Server) -> None:
    data = arf("004.eml")
    assert send(ruf, relayed(data, "a"), rcpt=RUF)[0] == 250
    assert send(ruf, relayed(data, "b"), rcpt=RUF) == (250, REPLY_DUPLICATE[4:])
    ruf.fetch("UPDATE failure_reports SET stored_at = now() - interval '40 days'")
    ruf.fetch("UPDATE raw_messages SET received_at = now() - interval '40 days'")
    env = {"RUA_SINK_DATABASE_URL": ruf.database_url, "RUA_SINK_FAILURE_RETENTION": "30d"}
    done = cli("prune", "--older-than", "100y", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["failure_reports"], summary["raw_messages"]) == (1, 2)
    # The copy's message held the reported header fields too: it is gone with the report.
    assert count(ruf, "raw_messages") == 0


# -- databases stored in before the key ------------------------------------------------

_OLD_INSERT = """
INSERT INTO failure_reports (raw_message_id, feedback_type, auth_failure, reported_domains,
                             source_ip, fields, original_headers)
VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
"""


async def _store_as_before(url: str, reports: list[tuple[str, FailureReport]]) -> list[int]:
    """The database as the last version left it: schema 0004, and failure reports stored
    once per message, copies included (one raw message row each, as it stored them)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for mig in migrate.available():
            if mig.version <= 4:
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
        ids = []
        for n, (headers, report) in enumerate(reports):
            raw = await conn.fetchval(
                "INSERT INTO raw_messages (sha256, size_bytes, source, content_gzip, status,"
                " parser_version) VALUES ($1, 0, 'smtp', '', 'stored', '0') RETURNING id",
                n.to_bytes(32, "big"),
            )
            ids.append(
                await conn.fetchval(
                    _OLD_INSERT,
                    raw,
                    report.feedback_type,
                    report.auth_failure,
                    list(report.reported_domains),
                    report.source_ip if report.source_ip and "(" not in report.source_ip else None,
                    json.dumps([list(f) for f in report.fields]),
                    headers,
                )
            )
        return ids
    finally:
        await conn.close()


def _parsed(name: str) -> FailureReport:
    (report,) = [e for e in parse_file(corpus(ARF_DIR + name)) if isinstance(e, FailureReport)]
    return report


def test_migration_keeps_the_first_of_the_copies_stored_before(
    server_url: str, tmp_path: Path
) -> None:
    reports = [_parsed(name) for name in NAMES]
    original = [r.original_headers or "" for r in reports]
    # Each report stored by SMTP (CRLF) and again by a backfill (LF): ten rows.
    rows = [(h.replace("\n", "\r\n"), r) for h, r in zip(original, reports, strict=True)]
    rows += list(zip(original, reports, strict=True))
    with scratch_database(server_url, "rua_sink_key_migration") as (url, _):
        ids = asyncio.run(_store_as_before(url, rows))
        env = {"RUA_SINK_DATABASE_URL": url}
        done = cli("migrate", env=env)
        assert done.returncode == 0, done.stderr
        applied = json.loads(done.stdout)["applied"]
        assert applied == [m.name for m in migrate.available() if m.version >= 5]
        assert applied[0] == "0005_failure_report_key.sql"
        kept = fetch(url, "SELECT id, report_format FROM failure_reports")
        assert sorted(r["id"] for r in kept) == ids[: len(NAMES)]
        assert {r["report_format"] for r in kept} == {"arf"}
        # The keys of rows stored before are those new rows get: the files are duplicates.
        (path := tmp_path / "arf").mkdir()
        for name in NAMES:
            (path / name).write_bytes(corpus(ARF_DIR + name).read_bytes())
        done = cli("ingest", "--json", str(path), env=env)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["reports_new"], summary["reports_duplicate"]) == (0, len(NAMES))


def test_copies_arriving_at_once_are_stored_once(db: str) -> None:
    # Eight copies of one report, each relayed along its own path, in eight transactions
    # at once: the unique key lets one in, the others wait for it and are duplicates.
    data = arf("005.eml")
    copies = [relayed(data, f"r{i}") for i in range(8)]

    async def go(store: Store) -> tuple[list[IngestResult], int]:
        ingester = Ingester(store, limits=Limits())
        results = await asyncio.gather(*(ingest_bytes(ingester, c) for c in copies))
        return list(results), await store.pool.fetchval("SELECT count(*) FROM failure_reports")

    results, stored = with_store(db, go, size=10)
    assert sorted(r.outcome for r in results) == [Outcome.DUPLICATE] * 7 + [Outcome.STORED]
    assert [r.reports_duplicate for r in results].count(1) == 7
    assert stored == 1
