"""Shared helpers: the real corpus (used in place), event collection, the tables of the docs,
and input cut into chunks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    Event,
    FailureReport,
    MessageInfo,
    PartFailed,
    Record,
    TlsReport,
)

pytest_plugins = ["tests.pg", "tests.dnsserver", "tests.smtpserver"]

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT / ".." / "shared" / "corpus" / "real").resolve()


#: The SPF results of invalid_casing.xml's one record, read off the file: the known ones
#: in lower case, an unknown one ("HardFail") as written.
INVALID_CASING_SPF_RESULTS = [
    "none",
    "neutral",
    "pass",
    "fail",
    "HardFail",
    "softfail",
    "temperror",
    "permerror",
]


@dataclass
class Collected:
    """Events of one message, grouped: each aggregate report with its records."""

    info: MessageInfo | None = None
    aggregates: list[tuple[AggregateReport, list[Record], AggregateEnd]] = field(
        default_factory=list
    )
    tls: list[TlsReport] = field(default_factory=list)
    failures: list[FailureReport] = field(default_factory=list)
    failed: list[PartFailed] = field(default_factory=list)

    @property
    def reports(self) -> int:
        return len(self.aggregates) + len(self.tls) + len(self.failures)


def collect(events: Iterable[Event]) -> Collected:
    out = Collected()
    head: AggregateReport | None = None
    records: list[Record] = []
    for ev in events:
        if isinstance(ev, MessageInfo):
            out.info = ev
        elif isinstance(ev, AggregateReport):
            head, records = ev, []
        elif isinstance(ev, Record):
            records.append(ev)
        elif isinstance(ev, AggregateEnd):
            assert head is not None and ev.report is head
            out.aggregates.append((head, records, ev))
            head = None
        elif isinstance(ev, TlsReport):
            out.tls.append(ev)
        elif isinstance(ev, FailureReport):
            out.failures.append(ev)
        elif isinstance(ev, PartFailed):
            out.failed.append(ev)
            head = None
        else:
            raise AssertionError(f"unexpected event without a fan-out: {ev!r}")
    return out


def corpus(rel: str) -> Path:
    path = CORPUS / rel
    if not path.is_file():
        pytest.fail(f"corpus file missing: {path} (the corpus must sit at ../shared)")
    return path


DOCS = ROOT / "docs"


def docs_text() -> str:
    """The README and every page of docs/, one after the other."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return "\n\n".join(page.read_text() for page in pages)


def readme_table(name: str) -> str:
    """The table marked ``<!-- NAME-table ... -->`` in the README or a page of docs/, to the
    blank line after it; exactly one page may hold it."""
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    found = [page for page in pages if f"<!-- {name}-table" in page.read_text()]
    assert len(found) == 1, f"{name}-table is on {len(found)} pages"
    text = found[0].read_text()
    return text.split(f"<!-- {name}-table")[1].split("\n\n")[0]


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of ``size`` bytes, as a socket or a file read would give it."""
    for at in range(0, len(data), size):
        yield data[at : at + size]
