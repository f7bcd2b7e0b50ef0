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
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TextIO

from rua_sink.cli.args import positive_int
from rua_sink.cli.output import Progress, json_line
from rua_sink.cli.window import add_domain, add_window, domain_of, window
from rua_sink.storage.database import resolve_url
from rua_sink.storage.export import (
    COLUMNS,
    LIST_SEPARATORS,
    ExportType,
    ValueKind,
    Window,
    describe,
    stream,
)

# A cell that starts with one of these is read as a formula by spreadsheet programs; report
# text comes from strangers (CWE-1236), so such a cell gets a leading apostrophe, which
# makes the program show it as text (OWASP, "CSV Injection").
_FORMULA_STARTS = frozenset("=+-@\t\r")


class CsvRows:
    """Rows as CSV: nothing is an empty field, booleans are ``True``/``False`` (as
    parsedmarc writes them, and as the csv module writes Python's), a list is one field
    joined with its column's separator, a text that a spreadsheet would run is quoted."""

    def __init__(self, out: TextIO, columns: Sequence[str], kinds: Sequence[ValueKind]) -> None:
        self.lists = [
            (i, LIST_SEPARATORS.get(c, ","))
            for i, (c, k) in enumerate(zip(columns, kinds, strict=True))
            if k is ValueKind.LIST
        ]
        self.texts = [i for i, k in enumerate(kinds) if k is not ValueKind.OTHER]
        self.writer = csv.writer(out, lineterminator="\r\n")
        self.writer.writerow(columns)

    def rows(self, batch: Iterable[Sequence[Any]]) -> None:
        out = []
        for values in batch:
            cells = list(values)
            for i, sep in self.lists:
                items = cells[i]
                if items is None:  # a nullable array: an empty field
                    continue
                cells[i] = sep.join(
                    items if None not in items else ["" if v is None else v for v in items]
                )
            for i in self.texts:
                text = cells[i]
                if text and text[0] in _FORMULA_STARTS:
                    cells[i] = "'" + text
            out.append(cells)
        self.writer.writerows(out)


class JsonRows:
    """Rows as JSON lines: one object a row, with every column, values as stored."""

    def __init__(self, out: TextIO, columns: Sequence[str], kinds: Sequence[ValueKind]) -> None:
        self.out = out
        self.columns = columns

    def rows(self, batch: Iterable[Sequence[Any]]) -> None:
        columns = self.columns
        self.out.write(
            "".join(json_line(dict(zip(columns, values, strict=True))) + "\n" for values in batch)
        )


_WRITERS: Mapping[str, type[CsvRows] | type[JsonRows]] = {"csv": CsvRows, "jsonl": JsonRows}


def _export(args: argparse.Namespace, out: TextIO, kind: ExportType, where: Window) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    async def run() -> int:
        count = 0
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            writer = _WRITERS[args.format](out, COLUMNS[kind], await describe(conn, kind))
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
    p.add_argument("--batch", type=positive_int, default=2000, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export)
