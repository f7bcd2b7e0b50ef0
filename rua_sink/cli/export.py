"""``rua-sink export``: every aggregate record (or TLS policy and failure detail, or
failure report) of a window as CSV or JSON lines, streamed from the database to a file or
standard output. The columns are ``storage.export.COLUMNS``, described in docs/export.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

from rua_sink.cli.output import Progress, json_line
from rua_sink.cli.window import add_domain, add_window, domain_of, window
from rua_sink.storage.database import resolve_url
from rua_sink.storage.export import COLUMNS, LIST_SEPARATORS, ExportType, Window, stream

# A cell that starts with one of these is read as a formula by spreadsheet programs; report
# text comes from strangers (CWE-1236), so such a cell gets a leading apostrophe, which
# makes the program show it as text (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, separator: str = ",") -> str | int:
    """A value as one CSV cell: nothing is empty, booleans are ``True``/``False`` (as
    parsedmarc writes them), lists are joined with ``separator``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        value = separator.join("" if v is None else str(v) for v in value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class _Csv:
    def __init__(self, out: TextIO, columns: Sequence[str]) -> None:
        self.columns = columns
        self.separators = [LIST_SEPARATORS.get(c, ",") for c in columns]
        self.writer = csv.writer(out, lineterminator="\r\n")
        self.writer.writerow(columns)

    def rows(self, rows: list[dict[str, Any]]) -> None:
        pairs = list(zip(self.columns, self.separators, strict=True))
        self.writer.writerows([[csv_cell(row[c], sep) for c, sep in pairs] for row in rows])


class _JsonLines:
    def __init__(self, out: TextIO, columns: Sequence[str]) -> None:
        self.out = out
        self.columns = columns

    def rows(self, rows: list[dict[str, Any]]) -> None:
        self.out.write("".join(json_line(row) + "\n" for row in rows))


_WRITERS: Mapping[str, type[_Csv] | type[_JsonLines]] = {"csv": _Csv, "jsonl": _JsonLines}


def _export(args: argparse.Namespace, out: TextIO, kind: ExportType, where: Window) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    writer = _WRITERS[args.format](out, COLUMNS[kind])

    async def run() -> int:
        count = 0
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            with Progress(f"export {kind}") as progress:
                async for rows in stream(conn, kind, where, batch=args.batch):
                    writer.rows(rows)
                    count += len(rows)
                    progress.step(len(rows))
        return count

    return asyncio.run(run())


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    since, until = window(args)
    kind = ExportType(args.type)
    where = Window(since=since, until=until, domain=domain_of(args))
    if args.output is None:
        _export(args, out, kind, where)
        out.flush()
        return 0
    # Written beside the file, then renamed: the file is whole, or not there.
    target = Path(args.output)
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise SystemExit(f"rua-sink: cannot write {target}: {exc.strerror}") from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)  # as a file the shell creates, not mkstemp's 0600
        with open(fd, "w", encoding="utf-8", newline="") as f:
            _export(args, f, kind, where)
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    return 0


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="every stored aggregate record (or TLS report, or failure report) as CSV or "
        "JSON lines, streamed; parsedmarc's column names (docs/export.md)",
    )
    p.add_argument("--format", required=True, choices=tuple(_WRITERS), help="csv or jsonl")
    p.add_argument(
        "--type",
        default=ExportType.AGGREGATE.value,
        choices=[t.value for t in ExportType],
        help="aggregate: one row per record (default); tls: one per policy and one per "
        "failure detail; failure: one per failure report",
    )
    add_domain(p, "reports about this domain")
    add_window(p, default_days=None)
    p.add_argument("--output", metavar="FILE", help="write to FILE (default: standard output)")
    p.add_argument("--batch", type=int, default=2000, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export)
