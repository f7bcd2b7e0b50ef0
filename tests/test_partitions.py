"""A report whose month has no partition yet: the attempt that finds it missing is
abandoned and run again, and the second attempt reads the message as the first did."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rua_sink.core.model import Event, MessageInfo
from rua_sink.ingest.threads import events_in_thread

from .pg import fetch, scratch_database
from .procs import cli
from .reports import build_email, build_report, message
from .smtpserver import running_alone, send

RECORDS = 400_000


class _Abandoned(Exception):
    pass


def test_an_abandoned_parse_thread_is_joined_before_the_file_is_read_again() -> None:
    data = io.BytesIO(b"x" * (1 << 20))
    reads: list[str] = []

    def produce() -> Iterator[Event]:
        # Reads the file as the core does, a block an event, as long as it is let.
        while block := data.read(1024):
            reads.append(threading.current_thread().name)
            yield MessageInfo(str(len(block)), None, None, None, None, None)

    async def go() -> int:
        with contextlib.suppress(_Abandoned):
            async with contextlib.aclosing(events_in_thread(produce, batch=10)) as batches:
                async for _ in batches:
                    raise _Abandoned  # as MissingPartition does
        # The next attempt's file: nobody else reads it any more.
        data.seek(0)
        before = len(reads)
        await asyncio.sleep(0.3)
        return len(reads) - before

    assert asyncio.run(go()) == 0
    assert data.tell() == 0
    assert not [t for t in threading.enumerate() if t.name == "rua-sink-parse"]


@pytest.mark.slow
def test_a_400k_record_report_file_into_an_empty_database(server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "r400k.xml.gz"
    build_report(path, RECORDS)
    assert 7e6 < path.stat().st_size < 10e6
    with scratch_database(server_url, "rua_sink_empty") as (url, _):
        started = time.monotonic()
        proc = cli("ingest", "--json", str(path), env={"RUA_SINK_DATABASE_URL": url})
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["reports_new"] == 1 and summary["records"] == RECORDS, summary
        assert summary["not_a_report"] == summary["quarantined"] == 0
        rows = fetch(url, "SELECT status, reason FROM raw_messages")
        assert [(r["status"], r["reason"]) for r in rows] == [("stored", None)]
        n = fetch(url, "SELECT count(*) AS n FROM aggregate_records")[0]["n"]
        assert n == RECORDS
        assert time.monotonic() - started < 120


@pytest.mark.slow
def test_large_report_emails_into_months_without_their_partitions(
    server_url: str, tmp_path: Path
) -> None:
    # One large report; then messages with two, whose first report is parsed while the
    # rest of the message is still to be read, each in a month of its own.
    path = tmp_path / "big.eml"
    build_email(path, 12_000)
    messages = [(path.read_bytes(), 12_000)]
    for month in range(5):
        begin = int(datetime(2030, 1 + month, 3, tzinfo=UTC).timestamp())
        parts = []
        for n in (3_000, 9_000):
            report = tmp_path / f"{month}-{n}.xml.gz"
            build_report(report, n, seed=month, begin=begin, report_id=f"m{month}-{n}")
            parts.append((report.read_bytes(), "application/gzip", report.name))
        messages.append((message(*parts), 12_000))
    assert all(256 * 1024 < len(data) < 1 << 20 for data, _ in messages)  # parsed in a thread
    with running_alone(server_url, "rua_sink_month", RUA_SINK_MAX_MESSAGE_BYTES="4MiB") as (
        srv,
        _,
    ):
        # Only this month's and the next's, which serve makes ready (none of these months).
        ahead = srv.fetch(
            "SELECT inhrelid FROM pg_inherits WHERE inhparent = 'aggregate_records'::regclass"
        )
        assert len(ahead) == 2
        replies = [send(srv, data) for data, _ in messages]
        assert replies == [(250, "2.0.0 Report accepted")] * len(messages)
        rows = srv.fetch("SELECT status, reason FROM raw_messages ORDER BY id")
        assert [(r["status"], r["reason"]) for r in rows] == [("stored", None)] * len(messages)
        counts = srv.fetch(
            "SELECT m.id, sum(r.record_count) AS n FROM raw_messages m "
            "JOIN aggregate_reports r ON r.raw_message_id = m.id GROUP BY m.id ORDER BY m.id"
        )
        assert [c["n"] for c in counts] == [n for _, n in messages]
        total = srv.fetch("SELECT count(*) AS n FROM aggregate_records")[0]["n"]
        assert total == sum(n for _, n in messages)
        # reprocess meets the same: every month's partition gone, each message read again.
        partitions = srv.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits "
            "WHERE inhparent = 'aggregate_records'::regclass AND inhrelid <> ALL($1::oid[])",
            [r["inhrelid"] for r in ahead],
        )
        assert len(partitions) == len(messages)
        for row in partitions:
            srv.fetch(f"DROP TABLE {row['name']}")
        proc = cli("reprocess", "--all", "--json", env={"RUA_SINK_DATABASE_URL": srv.database_url})
        assert proc.returncode == 0, proc.stderr
        done = json.loads(proc.stdout)
        assert (done["reprocessed"], done["records"]) == (len(messages), total), done
        assert done["quarantined"] == done["not_a_report"] == 0
        assert srv.fetch("SELECT count(*) AS n FROM aggregate_records")[0]["n"] == total
