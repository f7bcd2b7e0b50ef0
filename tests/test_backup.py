"""Backup and restore as docs/operations.md tells it: the commands of its "Backup and
restore" section, run as written against a database a real `rua-sink serve` filled, and
`serve` started again on the restored copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from . import procs
from .pg import fetch, scratch_database
from .reports import gz, message, report_xml, signed, tls_message
from .smtpserver import Server, example_zone, running, send
from .test_failure_reports import RUF, arf

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
STORED = (250, "2.0.0 Report accepted")
DUPLICATE = (250, "2.0.0 Report already received, accepted")
#: the date ranges of report_xml, and of two later months: (begin, end) in Unix time
NOVEMBER = (1700000000, 1700086399)  # 2023-11-14
DECEMBER = (1702000000, 1702086399)  # 2023-12-08
JANUARY = (1705000000, 1705086399)  # 2024-01-11


def doc_block(name: str) -> str:
    """The shell block under ``<!-- backup: NAME -->`` in docs/operations.md."""
    found = re.search(
        rf"<!-- backup: {re.escape(name)} -->\n```sh\n(.*?)```", DOC.read_text(), re.DOTALL
    )
    assert found, f"docs/operations.md has no block <!-- backup: {name} -->"
    return found.group(1)


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: ./dev test installs them "
            "(Debian package postgresql-client)"
        )


def run_block(name: str, cwd: Path, **env: str) -> None:
    """A block of the docs, run by bash as written, with ``rua-sink`` on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", doc_block(name)],
        cwd=cwd,
        env={**os.environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name}: {done.stderr}"


def table_counts(url: str) -> dict[str, int]:
    """Every table of the schema (partitions and schema_migrations among them), with its
    row count."""
    names = [
        row["relname"]
        for row in fetch(
            url,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        )
    ]
    return {
        name: fetch(url, f'SELECT count(*) AS n FROM ONLY "{name}"')[0]["n"]  # noqa: S608
        for name in names
    }


def aggregate(report_id: str, days: tuple[int, int]) -> bytes:
    xml = report_xml(2, report_id=report_id).replace(
        b"<begin>1700000000</begin><end>1700086399</end>",
        f"<begin>{days[0]}</begin><end>{days[1]}</end>".encode(),
    )
    return signed(message((gz(xml), "application/gzip", "r!example.com!1!2.xml.gz")))


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = procs.traversable_tmpdir("rua-sink-backup-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sink(url: str) -> AbstractContextManager[Server]:
    """``rua-sink serve`` on ``url``, taking aggregate, TLS and failure reports."""
    return running(
        url, example_zone(), RUA_SINK_FAILURE_ADDRESSES=RUF, RUA_SINK_AUTHORIZED_DOMAINS="*"
    )


@pytest.mark.slow
def test_a_dump_restored_into_an_empty_database_serves_on(server_url: str, workdir: Path) -> None:
    need("pg_dump", "pg_restore")
    before = {
        "november": aggregate("backup-nov", NOVEMBER),
        "december": aggregate("backup-dec", DECEMBER),
        "tls": tls_message("backup-tls"),
    }
    with (
        scratch_database(server_url, "rua_sink_backup") as (original, _),
        scratch_database(server_url, "rua_sink_restored") as (restored, _),
    ):
        with sink(original) as srv:
            for data in before.values():
                assert send(srv, data) == STORED
            assert send(srv, arf("003.eml"), rcpt=RUF) == STORED
            # Dumped while serve runs, as a scheduled backup would be.
            run_block("dump", workdir, RUA_SINK_DATABASE_URL=original)
        counts = table_counts(original)
        assert {"aggregate_records_2023_11", "aggregate_records_2023_12"} <= set(counts)
        assert counts["schema_migrations"] > 0
        assert counts["tls_failure_details"] == counts["failure_reports"] == 1

        run_block("restore", workdir, RUA_SINK_DATABASE_URL=restored)
        assert table_counts(restored) == counts
        key = "SELECT report_key FROM failure_reports"
        assert fetch(restored, key) == fetch(original, key)

        with sink(restored) as srv:
            for data in before.values():
                assert send(srv, data) == DUPLICATE
            assert send(srv, arf("003.eml"), rcpt=RUF) == DUPLICATE
            # A new report, of a month with no partition in the dump.
            assert send(srv, aggregate("backup-jan", JANUARY)) == STORED
            assert srv.fetch("SELECT 1 FROM aggregate_reports WHERE report_id = 'backup-jan'")
        grown = table_counts(restored)
        assert grown["aggregate_reports"] == counts["aggregate_reports"] + 1
        assert grown["aggregate_records_2024_01"] == 2

        # Restored over itself, the database is the dump again: the new report, and
        # the partition made for it, are gone.
        run_block("restore in place", workdir, RUA_SINK_DATABASE_URL=restored)
        assert table_counts(restored) == counts


@pytest.mark.slow
def test_the_embedded_database_dumped_and_restored_into_a_new_data_dir(
    workdir: Path,
) -> None:
    first, second = workdir / "first", workdir / "second"
    unset = {"RUA_SINK_DATABASE_URL": "", "RUA_SINK_DATABASE_URL_FILE": ""}

    def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return procs.cli(*args, env={**unset, "RUA_SINK_DATA_DIR": str(data)})

    report = workdir / "report.eml"
    report.write_bytes(aggregate("embedded-1", NOVEMBER))
    try:
        stored = cli(first, "ingest", "--json", str(report))
        assert stored.returncode == 0, stored.stderr
        assert '"reports_new": 1' in stored.stdout
        run_block("embedded dump", workdir, RUA_SINK_DATA_DIR=str(first), **unset)
        dumped = table_counts(cli(first, "db", "url").stdout.strip())
        run_block("embedded restore", workdir, RUA_SINK_DATA_DIR=str(second), **unset)
        url = cli(second, "db", "url").stdout.strip()
        assert table_counts(url) == dumped
        again = cli(second, "ingest", "--json", str(report))
        assert again.returncode == 0, again.stderr
        assert '"messages_duplicate": 1' in again.stdout
    finally:
        for data in (first, second):
            cli(data, "db", "stop")
