"""How commands print: tables with a header and aligned columns, the same rows as JSON
lines with ``--json``, and progress on a terminal only.

A listing command builds its rows as dicts (JSON-ready values: str, int, float, bool, None,
lists) and hands them to ``emit`` with its columns; the table shows the columns, ``--json``
prints every key of every row. Text from reports and mail is written by strangers, so the
table replaces control characters before they reach the operator's terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table: the row's key, its header, and whether it is right-aligned
    (numbers are)."""

    key: str
    header: str
    right: bool = False


def printable(text: str) -> str:
    """Mail is written by strangers: no control characters reach the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def cell(value: Any) -> str:
    """A value as the table shows it: ``-`` for nothing, lists joined with commas."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    return printable(str(value))


def table(columns: Sequence[Column], rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The lines of a table: the header, then one line a row, columns two spaces apart.
    The last column is not padded."""
    texts = [[cell(row.get(c.key)) for c in columns] for row in rows]
    widths = [len(c.header) for c in columns]
    for line in texts:
        widths = [max(w, len(t)) for w, t in zip(widths, line, strict=True)]

    def fmt(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if c.right else v.ljust(w)
            for c, v, w in zip(columns, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [fmt([c.header for c in columns]), *(fmt(line) for line in texts)]


def json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def emit(
    out: TextIO,
    columns: Sequence[Column],
    rows: Iterable[Mapping[str, Any]],
    *,
    as_json: bool,
    empty: str | None = None,
) -> int:
    """Print ``rows``: one JSON object a line, or a table. ``empty``, if given, is printed
    instead of a table without rows (never in JSON, where no rows is no lines). Returns the
    number of rows."""
    if as_json:
        count = 0
        for row in rows:
            out.write(json_line(dict(row)) + "\n")
            count += 1
        return count
    materialized = list(rows)
    if not materialized and empty is not None:
        out.write(empty + "\n")
        return 0
    for line in table(columns, materialized):
        out.write(line + "\n")
    return len(materialized)


class Progress:
    """A one-line counter on standard error, redrawn at most five times a second, and only
    when standard error is a terminal: logs and pipes never see it.

    >>> with Progress("ingest") as progress:
    ...     progress.step(records=1000)
    """

    INTERVAL = 0.2

    def __init__(self, label: str, *, total: int | None = None, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.done = 0
        self.counts: dict[str, int] = {}
        self._drawn = 0.0
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.clear()

    def step(self, n: int = 1, **counts: int) -> None:
        """``n`` more items done, and more of the named counts."""
        self.done += n
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        now = time.monotonic()
        if self.enabled and now - self._drawn >= self.INTERVAL:
            self._drawn = now
            self._draw()

    def _draw(self) -> None:
        done = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        extra = "".join(f", {value:,} {name}" for name, value in self.counts.items())
        text = f"{self.label}: {done}{extra}"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Remove the line, so that what is printed next starts at the left margin."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
