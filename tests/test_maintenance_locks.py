"""Partitions ahead, and maintenance that never stalls delivery.

``serve`` creates the record partitions of this month and the next before it listens, one
replica at a time. ``migrate`` and ``prune`` take their table locks with a short
lock_timeout and try again, so that while a long ingest holds ``aggregate_records`` they
never queue deliveries behind their ACCESS EXCLUSIVE lock; they are done when it ends.
All through the real processes and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

import rua_sink
from rua_sink.storage.rows import month_start, next_month

from .dnsserver import serving
from .pg import fetch, scratch_database
from .procs import CLI, cli
from .reports import gz, message, report_message, report_xml
from .smtpserver import example_zone, running_alone, send, start_server, stop_server

PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'aggregate_records'::regclass ORDER BY c.relname"
)
#: A migration of the next version, as the checklist of docs/deployment.md wants it: it
#: only expands (a nullable column), so the running version keeps writing its records.
MIGRATION = "9001_records_note.sql"
MIGRATION_SQL = "ALTER TABLE aggregate_records ADD COLUMN note text;\n"
ACCEPTED = (250, "2.0.0 Report accepted")


def month_name(month: datetime) -> str:
    return f"aggregate_records_{month.year:04d}_{month.month:02d}"


def current_report(report_id: str) -> bytes:
    """An aggregate report of this month so far, in a message."""
    now = datetime.now(UTC)
    begin = int((month_start(now) + timedelta(minutes=1)).timestamp())
    xml = report_xml(2, report_id=report_id)
    xml = xml.replace(b"1700000000", str(begin).encode())
    xml = xml.replace(b"1700086399", str(int(now.timestamp())).encode())
    return message((gz(xml), "application/gzip", f"{report_id}.xml.gz"))


def test_serve_prepares_this_and_the_next_month_once_across_replicas(server_url: str) -> None:
    zone = example_zone()
    with (
        scratch_database(server_url, "rua_sink_ahead") as (url, _),
        serving(zone) as address,
        ThreadPoolExecutor(2) as pool,
    ):
        # Two replicas started together on a database that has no table yet.
        starting = [pool.submit(start_server, url, address, zone) for _ in range(2)]
        servers = [s.result(timeout=90) for s in starting]
        try:
            # Right after start, before any report: this month's and the next's.
            now = datetime.now(UTC)
            names = [r["relname"] for r in fetch(url, PARTITIONS)]
            assert names == [month_name(month_start(now)), month_name(next_month(now))]
            assert all(s.process.poll() is None for s in servers)
            # A current report goes straight into its partition, on either replica.
            for n, srv in enumerate(servers):
                assert send(srv, current_report(f"now-{n}")) == ACCEPTED
            assert [r["relname"] for r in fetch(url, PARTITIONS)] == names
            stored = fetch(url, "SELECT count(*) AS n FROM aggregate_records")
            assert stored[0]["n"] == 4
        finally:
            for srv in servers:
                srv.log.seek(0)
                log = srv.log.read()
                stop_server(srv)
                assert "partitions_not_prepared" not in log, log


@contextmanager
def holding(url: str, seconds: float) -> Iterator[threading.Event]:
    """A transaction holding aggregate_records as an ingest's COPY does (ROW EXCLUSIVE)
    for ``seconds``; the event is set once it has ended."""
    held, ended = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE aggregate_records IN ROW EXCLUSIVE MODE")
                held.set()
                await asyncio.sleep(seconds)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failures.append(exc)
        finally:
            held.set()
            ended.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(10)
    try:
        yield ended
    finally:
        thread.join()
    assert not failures, failures


@pytest.fixture
def next_version(tmp_path: Path) -> Path:
    """A copy of the package with one more migration: the next version's ``migrate``."""
    root = tmp_path / "next"
    shutil.copytree(
        Path(rua_sink.__file__).parent,
        root / "rua_sink",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "rua_sink" / "storage" / "migrations" / MIGRATION).write_text(MIGRATION_SQL)
    return root


def next_version_cli(root: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """``rua-sink ARGS`` of the copy (it comes first on the path: the working directory)."""
    return subprocess.Popen(
        [*CLI, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "RUA_SINK_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_migrate_and_prune_never_stall_deliveries(server_url: str, next_version: Path) -> None:
    with running_alone(server_url, "rua_sink_maint") as (srv, _):
        url = srv.database_url
        # A report of an old month: its partition is what prune drops.
        assert send(srv, report_message("old-1")) == ACCEPTED
        assert "aggregate_records_2023_11" in [r["relname"] for r in fetch(url, PARTITIONS)]
        timings: list[tuple[tuple[int, str], float]] = []
        with holding(url, 12) as ended:
            migrating = next_version_cli(next_version, url, "migrate")
            pruning = subprocess.Popen(
                [*CLI, "prune", "--older-than", "400d"],
                env={**os.environ, "RUA_SINK_DATABASE_URL": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            n = 0
            while not ended.is_set():
                started = time.monotonic()
                reply = send(srv, current_report(f"during-{n}"))
                timings.append((reply, time.monotonic() - started))
                n += 1
            # Both kept trying for as long as the transaction held the table.
            assert migrating.poll() is None and pruning.poll() is None
        migrated_out, migrated_err = migrating.communicate(timeout=60)
        pruned_out, pruned_err = pruning.communicate(timeout=60)
        # Every delivery answered at once, though the maintenance was waiting.
        assert len(timings) >= 4, timings
        assert all(reply == ACCEPTED for reply, _ in timings), timings
        assert max(seconds for _, seconds in timings) < 5, timings
        # The maintenance done once the transaction ended.
        assert migrating.returncode == 0, migrated_err
        assert json.loads(migrated_out) == {"applied": [MIGRATION]}
        assert pruning.returncode == 0, pruned_err
        assert json.loads(pruned_out)["partitions_dropped"] == 1
        names = [r["relname"] for r in fetch(url, PARTITIONS)]
        assert "aggregate_records_2023_11" not in names
        assert (
            fetch(url, "SELECT count(*) AS n FROM aggregate_reports WHERE report_id = 'old-1'")[0][
                "n"
            ]
            == 0
        )
        columns = fetch(
            url,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'aggregate_records' AND column_name = 'note'",
        )
        assert len(columns) == 1
        # This version keeps storing on the expanded schema; nothing was lost.
        assert send(srv, current_report("after")) == ACCEPTED
        ids = fetch(url, "SELECT report_id FROM aggregate_reports ORDER BY id")
        assert [r["report_id"] for r in ids] == [f"during-{i}" for i in range(n)] + ["after"]
        records = fetch(url, "SELECT count(*) AS n FROM aggregate_records")
        assert records[0]["n"] == 2 * (n + 1)


@pytest.mark.slow
def test_maintenance_that_cannot_lock_gives_up_with_a_clear_error(
    server_url: str, next_version: Path
) -> None:
    with scratch_database(server_url, "rua_sink_busy") as (url, _):
        env = {"RUA_SINK_DATABASE_URL": url}
        assert cli("migrate", env=env).returncode == 0
        fetch(
            url,
            "CREATE TABLE aggregate_records_2001_01 PARTITION OF aggregate_records "
            "FOR VALUES FROM ('2001-01-01 00:00+00') TO ('2001-02-01 00:00+00')",
        )
        with holding(url, 15):
            # Both at once, as a pre-upgrade hook and a CronJob may run.
            started = time.monotonic()
            migrating = next_version_cli(next_version, url, "migrate", "--lock-wait", "2")
            pruning = subprocess.Popen(
                [*CLI, "prune", "--older-than", "400d", "--lock-wait", "2"],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _, migrate_err = migrating.communicate(timeout=30)
            _, prune_err = pruning.communicate(timeout=30)
            elapsed = time.monotonic() - started
        assert migrating.returncode == 2, migrate_err
        assert migrate_err.startswith(
            f"rua-sink: migration {MIGRATION}: its tables stayed locked by other transactions"
        ), migrate_err
        assert pruning.returncode == 2, prune_err
        assert prune_err.startswith(
            "rua-sink: dropping partition aggregate_records_2001_01: its tables stayed locked"
        ), prune_err
        assert "Traceback" not in migrate_err + prune_err
        assert elapsed < 15  # given up while the table was still held
        # Nothing changed; done once the table is free.
        applied = fetch(url, "SELECT version FROM schema_migrations WHERE version = 9001")
        assert applied == []
        assert "aggregate_records_2001_01" in [r["relname"] for r in fetch(url, PARTITIONS)]
        migrating = next_version_cli(next_version, url, "migrate", "--lock-wait", "2")
        out, err = migrating.communicate(timeout=30)
        assert json.loads(out) == {"applied": [MIGRATION]}, err
        pruned = cli("prune", "--older-than", "400d", "--lock-wait", "2", env=env)
        assert json.loads(pruned.stdout)["partitions_dropped"] == 1, pruned.stderr


def test_the_copy_runs_its_own_migrations(next_version: Path) -> None:
    """The next version's command line is the copy's, not this checkout's."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rua_sink.storage import migrate; print(migrate.available()[-1].name)",
        ],
        cwd=next_version,
        env={**os.environ, "PYTHONPATH": str(next_version)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == MIGRATION
