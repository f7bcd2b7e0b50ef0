"""Records as lines of PostgreSQL's COPY text format.

asyncpg's binary COPY encodes a row of eleven arrays in about 30 microseconds on this
project's benchmark machine, four times what parsing the record costs; the same row as
COPY text costs a few microseconds, mostly dictionary lookups, because the values of a
report repeat (domains, selectors, results) and their escaped forms are cached.

Text format (PostgreSQL docs, COPY, "Text Format"): columns separated by a tab, NULL as
``\\N``, and backslash, newline, carriage return and tab escaped with a backslash. Arrays
are array literals ("Arrays", "Array Input and Output Syntax"): ``{a,b}``, elements that
are empty, hold ``{}",\\`` or white space, or read NULL are double-quoted with ``"`` and
``\\`` escaped inside; a NULL element is the bare word NULL.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from datetime import datetime
from typing import Any

from rua_sink.core.model import DkimAuth, Record, SpfAuth

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ELEMENT_QUOTE = re.compile(r'[{}",\\\s]')
_NULL = "\\N"

_fields: dict[str, str] = {}
_elements: dict[str, str] = {}
_CACHE_MAX = 50_000


def field(value: str | None) -> str:
    """One text column."""
    if value is None:
        return _NULL
    cached = _fields.get(value)
    if cached is None:
        cached = value.translate(_COPY_ESCAPES)
        if len(_fields) >= _CACHE_MAX:
            _fields.clear()
        _fields[value] = cached
    return cached


def _element(value: str | None) -> str:
    """One array element, quoted for the array literal (not yet COPY-escaped)."""
    if value is None:
        return "NULL"
    cached = _elements.get(value)
    if cached is None:
        if value == "" or _ELEMENT_QUOTE.search(value) or value.upper() == "NULL":
            cached = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            cached = value
        if len(_elements) >= _CACHE_MAX:
            _elements.clear()
        _elements[value] = cached
    return cached


def array(values: list[str | None] | tuple[str | None, ...]) -> str:
    """One text[] column."""
    if not values:
        return "{}"
    if len(values) == 1:
        literal = "{" + _element(values[0]) + "}"
    else:
        literal = "{" + ",".join(map(_element, values)) + "}"
    return literal.translate(_COPY_ESCAPES) if "\\" in literal or "\t" in literal else literal


def timestamp(moment: datetime) -> str:
    return moment.isoformat(sep=" ")


def is_inet(text: str) -> bool:
    """Whether PostgreSQL's inet takes it (the core has canonicalized addresses)."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


# The four columns of a record's DKIM results, or of its SPF results (domain, selector or
# scope, result, human_result: both kinds in that order), by those results: a report
# repeats a few such combinations from record to record.
_result_columns: dict[tuple[DkimAuth, ...] | tuple[SpfAuth, ...], str] = {}
_RESULTS_CACHE_MAX = 4096


def _results(results: tuple[DkimAuth, ...] | tuple[SpfAuth, ...]) -> str:
    cached = _result_columns.get(results)
    if cached is None:
        cached = "\t".join(array([r[i] for r in results]) for i in range(4))
        if len(_result_columns) >= _RESULTS_CACHE_MAX:
            _result_columns.clear()
        _result_columns[results] = cached
    return cached


def record_line(prefix: str, r: Record) -> str:
    """The COPY line of a record, after ``prefix`` (the report's own columns:
    report id, begin_at, policy_domain, reporter, each followed by a tab)."""
    ip = r.source_ip
    # source_ip (inet), or source_ip_text when the report's text is not an address
    ip_columns = ip + "\t\\N" if is_inet(ip) else "\\N\t" + field(ip)
    reasons = r.reasons
    return "\t".join(
        (
            prefix + ip_columns,
            str(r.count),
            field(r.disposition),
            field(r.dkim),
            field(r.spf),
            field(r.header_from),
            field(r.envelope_from),
            field(r.envelope_to),
            array([x.type for x in reasons]) if reasons else "{}",
            array([x.comment for x in reasons]) if reasons else "{}",
            _results(r.dkim_results),
            _results(r.spf_results),
            array(r.extensions) if r.extensions else "{}",
        )
    )


def report_prefix(report: int, begin_at: datetime, domain: str, reporter: str) -> str:
    return f"{report}\t{timestamp(begin_at)}\t{field(domain)}\t{field(reporter)}\t"


def encode_records(records: list[Record]) -> tuple[str, Counter[tuple[Any, Any, Any]]]:
    """What a parse worker sends back for a run of records (see ``core.fanout``): their
    COPY lines without the report's columns, joined by newlines, and their message
    counts by (disposition, dkim, spf)."""
    tally: Counter[tuple[Any, Any, Any]] = Counter()
    for r in records:
        tally[(r.disposition, r.dkim, r.spf)] += r.count
    return "\n".join([record_line("", r) for r in records]), tally


def prefixed(prefix: str, lines: str) -> str:
    """Newline-joined lines from ``encode_records`` with the report's columns added."""
    return prefix + lines.replace("\n", "\n" + prefix)
