"""`rua-sink export`, run as a subprocess on a database holding the corpus: CSV that
csv.DictReader reads and JSON lines that json reads, with the columns docs/export.md
describes, the rows the parser reads from the same files, its filters, and memory that
does not grow with the number of records."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from rua_sink.cli.export import CsvRows
from rua_sink.core.limits import Limits
from rua_sink.core.names import domain as a_label
from rua_sink.ingest.ingester import Ingester
from rua_sink.storage import migrate
from rua_sink.storage.export import COLUMNS, ExportType, ValueKind
from rua_sink.storage.store import Store

from .conftest import readme_table
from .listed import FORMULA, HOSTILE, Parsed, parsed, store_all
from .pg import run, scratch_database
from .procs import CLI, cli, proc_status
from .reports import build_report
from .storage import ingest_files, with_store


def migrated(url: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()

    run(go())


@pytest.fixture(scope="module")
def stored(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Parsed]]:
    """A database of its own with the corpus and the hostile reports, shared by the
    module's tests: export only reads it."""
    tmp = tmp_path_factory.mktemp("exported")
    with scratch_database(server_url, "rua_sink_export") as (url, _):
        migrated(url)
        store_all(url, tmp)
        yield url, parsed(tmp)


def export(url: str, *args: str) -> str:
    """``rua-sink export ARGS``'s output; it must succeed, silent on a stderr that is not a
    terminal."""
    done = cli("export", *args, env={"RUA_SINK_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def csv_rows(text: str, kind: ExportType) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    assert reader.fieldnames == list(COLUMNS[kind])
    return rows


def json_rows(text: str, kind: ExportType) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        assert list(row) == list(COLUMNS[kind])
    return rows


def records(ref: Parsed) -> Counter[tuple[str, str, int]]:
    return Counter(
        (a_label(head.policy.domain) or head.policy.domain, rec.source_ip, rec.count)
        for head, recs in ref.aggregates
        for rec in recs
    )


# --- the columns -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ExportType))
def test_the_documented_columns_are_the_exported_ones(kind: ExportType) -> None:
    table = readme_table(f"export-{kind}")
    names = [
        line.split("|")[1].strip().strip("`")
        for line in table.splitlines()
        if line.startswith("| `")
    ]
    assert names == list(COLUMNS[kind])


def test_csv_cells() -> None:
    out = io.StringIO(newline="")
    text, lists, other = ValueKind.TEXT, ValueKind.LIST, ValueKind.OTHER
    writer = CsvRows(out, ["t", "errors", "l", "n", "b"], [text, lists, lists, other, other])
    writer.rows(
        [
            (None, [], None, None, None),
            ("2001:db8::1", ["x, y", "z"], ["a", None, "b"], 42, True),
            *((start + "1+1", ["=1"], ["-1", "2"], -1, False) for start in "=+-@\t\r"),
        ]
    )
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows[0] == ["t", "errors", "l", "n", "b"]
    assert rows[1] == ["", "", "", "", ""]
    # errors are joined with |, other lists with a comma; booleans as parsedmarc writes them
    assert rows[2] == ["2001:db8::1", "x, y|z", "a,,b", "42", "True"]
    # a cell a spreadsheet would run is quoted with an apostrophe; numbers are numbers
    for row, start in zip(rows[3:], "=+-@\t\r", strict=True):
        assert row == ["'" + start + "1+1", "'=1", "'-1,2", "-1", "False"]


# --- aggregate records ---------------------------------------------------------------------


def test_csv_holds_every_record(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    rows = csv_rows(export(url, "--format", "csv"), ExportType.AGGREGATE)
    assert Counter(
        (row["domain"], row["source_ip_address"], int(row["count"])) for row in rows
    ) == records(ref)
    assert all(row["source_ip"] == row["source_ip_address"] for row in rows)
    by_report = {
        (head.metadata.report_id, a_label(head.policy.domain)): (head, recs)
        for head, recs in ref.aggregates
    }
    for row in rows:
        head, recs = by_report[(row["report_id"], row["domain"])]
        assert row["org_name"] == head.metadata.org_name
        assert row["begin_date"] == datetime.fromtimestamp(head.metadata.begin, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        rec = next(r for r in recs if r.source_ip == row["source_ip_address"])
        assert row["spf_aligned"] == ("" if rec.spf is None else str(rec.spf == "pass"))
        assert row["dkim_results"] == ",".join(str(d.result or "") for d in rec.dkim_results)
        assert row["report_db_id"].isdigit() and row["raw_message_id"].isdigit()
    # in time order
    begins = [row["begin_date"] for row in rows]
    assert begins == sorted(begins)


def test_jsonl_holds_every_record(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    rows = json_rows(export(url, "--format", "jsonl"), ExportType.AGGREGATE)
    assert Counter((r["domain"], r["source_ip_address"], r["count"]) for r in rows) == records(ref)
    for row in rows:
        assert isinstance(row["dkim_domains"], list)
        assert row["dmarc_aligned"] in (True, False, None)


def test_filters_and_batches(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    everything = export(url, "--format", "jsonl")
    # a cursor read three rows at a time gives the very same output
    assert export(url, "--format", "jsonl", "--batch", "3") == everything
    one = json_rows(export(url, "--format", "jsonl", "--domain", "STALW.ART"), ExportType.AGGREGATE)
    assert one and {r["domain"] for r in one} == {"stalw.art"}
    assert len(one) == sum(n for (name, _, _), n in records(ref).items() if name == "stalw.art")
    window = ("--since", "2024-01-01", "--until", "2025-01-01")
    in_2024 = json_rows(export(url, "--format", "jsonl", *window), ExportType.AGGREGATE)
    assert in_2024 and all(r["begin_date"].startswith("2024-") for r in in_2024)
    assert len(in_2024) == sum(
        len(recs)
        for head, recs in ref.aggregates
        if datetime.fromtimestamp(head.metadata.begin, UTC).year == 2024
    )
    assert export(url, "--format", "csv", "--domain", "nothing.example").splitlines() == [
        ",".join(COLUMNS[ExportType.AGGREGATE])
    ]


def test_output_file(stored: tuple[str, Parsed], tmp_path: Path) -> None:
    url, _ = stored
    target = tmp_path / "records.csv"
    assert export(url, "--format", "csv", "--output", str(target)) == ""
    with target.open(newline="") as f:
        written = f.read()
    # (standard output read as text: its CRLF line ends read as LF)
    assert written.replace("\r\n", "\n") == export(url, "--format", "csv")
    assert csv_rows(written, ExportType.AGGREGATE)
    assert [p.name for p in tmp_path.iterdir()] == ["records.csv"]  # no temporary file left
    assert target.stat().st_mode & 0o044 == 0o044 & ~_umask()
    done = cli(
        "export",
        "--format",
        "csv",
        "--output",
        str(tmp_path / "no" / "such" / "dir.csv"),
        env={"RUA_SINK_DATABASE_URL": url},
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("rua-sink: cannot write")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_progress_on_a_terminal_only(stored: tuple[str, Parsed]) -> None:
    url, _ = stored
    master, slave = pty.openpty()
    with subprocess.Popen(
        [*CLI, "export", "--format", "csv", "--batch", "5"],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, "RUA_SINK_DATABASE_URL": url},
    ) as proc:
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other side has closed
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    os.close(master)
    assert b"export aggregate: " in seen
    assert b"Traceback" not in seen


# --- TLS and failure reports ---------------------------------------------------------------


def test_tls_rows(stored: tuple[str, Parsed], tmp_path: Path) -> None:
    url, ref = stored
    # to a file, read as bytes are: the carriage return inside a field stays one
    target = tmp_path / "tls.csv"
    export(url, "--format", "csv", "--type", "tls", "--output", str(target))
    with target.open(newline="") as f:
        rows = csv_rows(f.read(), ExportType.TLS)
    policies = [p for r in ref.tls for p in r.policies]
    details = [d for p in policies for d in p.failure_details]
    assert Counter(r["row_type"] for r in rows) == {
        "policy": len(policies),
        "failure_detail": len(details),
    }
    assert Counter(
        (r["policy_domain"], int(r["successful_session_count"]), int(r["failed_session_count"]))
        for r in rows
        if r["row_type"] == "policy"
    ) == Counter((p.policy_domain, p.success_count, p.failure_count) for p in policies)
    assert Counter(
        (r["result_type"], int(r["failed_session_count"]), r["sending_mta_ip"] or None)
        for r in rows
        if r["row_type"] == "failure_detail"
    ) == Counter((str(d.result_type), d.failed_session_count, d.sending_mta_ip) for d in details)
    # a cell a spreadsheet would run is written as text; JSON keeps what was sent
    (hostile,) = [
        r for r in rows if r["row_type"] == "policy" and r["policy_domain"] == "hostile.example"
    ]
    assert hostile["report_id"] == "'" + FORMULA
    assert hostile["organization_name"] == HOSTILE  # CSV quotes it, control characters and all
    assert hostile["policy_strings"] == "version: STSv1|mode: enforce"
    lines = json_rows(
        export(url, "--format", "jsonl", "--type", "tls", "--domain", "hostile.example"),
        ExportType.TLS,
    )
    assert [r["report_id"] for r in lines] == [FORMULA, FORMULA]
    assert lines[1]["receiving_mx_hostname"] == "mx\x1b[2j.hostile.example"


def test_failure_rows(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    rows = csv_rows(export(url, "--format", "csv", "--type", "failure"), ExportType.FAILURE)
    assert Counter((r["source_ip_address"], r["user_agent"]) for r in rows) == Counter(
        (f.source_ip or "", f.user_agent or "") for f in ref.failures
    )
    lines = json_rows(
        export(url, "--format", "jsonl", "--type", "failure", "--domain", "example.net"),
        ExportType.FAILURE,
    )
    assert {r["arrival_date_utc"] for r in lines} == {"2005-03-08 18:00:00", "2010-04-14 19:15:31"}
    (dkim,) = [r for r in lines if r["auth_failure"] == "bodyhash"]
    assert dkim["subject"] == "This is a test"  # from the reported message's header block
    assert dkim["reported_domain"] == ["example.net"]
    assert dkim["original_rcpt_to"] == ["<user@example.com>"]


# --- memory --------------------------------------------------------------------------------


def _export_peak(url: str) -> tuple[int, int]:
    """Rows exported as CSV to /dev/null, and the export's peak RSS."""
    with subprocess.Popen(
        [*CLI, "export", "--format", "csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "RUA_SINK_DATABASE_URL": url},
    ) as proc:
        assert proc.stdout is not None
        lines = 0
        peak = 0
        for _ in proc.stdout:
            lines += 1
            if lines % 500 == 0:
                peak = max(peak, proc_status(proc.pid))
        assert proc.wait(timeout=120) == 0
    return lines - 1, peak


def test_memory_does_not_grow_with_the_records(server_url: str, tmp_path: Path) -> None:
    peaks = {}
    for records in (3_000, 30_000):
        report = tmp_path / f"r{records}.xml.gz"
        build_report(report, records, report_id=f"mem-{records}")
        with scratch_database(server_url, "rua_sink_export_mem") as (url, _):
            migrated(url)

            async def go(store: Store, path: Path = report) -> None:
                await ingest_files(Ingester(store, limits=Limits()), [path])

            with_store(url, go)
            rows, peaks[records] = _export_peak(url)
        assert rows == records
    # ten times the records, the same memory (held: a batch of rows, not the export)
    assert peaks[30_000] - peaks[3_000] < 8 * 2**20, peaks
