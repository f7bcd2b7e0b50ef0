"""One large aggregate report parsed on several cores.

A report of hundreds of thousands of records is one XML document, and one Python
process parses it at about one core's speed. Past its first ``segment_bytes`` (half a
MiB), the document's records are cut into segments of about that size at record end tags and
parsed in worker processes; the sequential parser of ``aggregate`` keeps everything
else (the head, the tail, counts and limits) and sees each parsed segment as if it had
read it: its records arrive as one ``RecordBatch``, in document order.

Cutting at the bytes ``</record>`` is a guess about the document's structure, and a
wrong guess never shows: a segment is only handed to a worker where the sequential
parser stands right after a top-level record, and a worker accepts its segment only if
it parses, standing alone inside a copy of the root element, into top-level records and
nothing else. A cut inside a comment, a CDATA section, an unknown element or a broken
record fails that test. Then the parser reads that segment and the rest of the document
itself, so errors and their messages are exactly those of a sequential parse; so it does
when a worker dies or the pool is broken.

Workers run ``encode`` on their records (for the database, COPY text): what crosses the
process boundary is that result, not the records.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from rua_sink.core.model import Record, RecordBatch
from rua_sink.core.records import record_of
from rua_sink.core.xmltree import local_name, new_tree_parser

MiB = 1024 * 1024

# An end tag of a record element, any prefix: where segments are cut.
_RECORD_END = re.compile(rb"</(?:[A-Za-z_][\w.\-]*:)?record\s*>")


@dataclass(frozen=True, slots=True)
class Fanout:
    """Where and how the records of large documents are parsed."""

    executor: Executor
    #: Runs in a worker on each segment's records; module-level, so that it pickles.
    encode: Callable[[list[Record]], Any]
    #: Bytes of XML read sequentially before the rest is cut, and the size of a cut:
    #: larger segments cost the receiving process more memory, smaller ones more trips.
    segment_bytes: int = 512 * 1024
    #: Segments of one document submitted and not yet consumed.
    in_flight: int = 4


class _Ineligible(Exception):
    """The segment holds something other than top-level records."""


def parse_segment(
    root_start: bytes,
    root_end: bytes,
    segment: bytes,
    max_depth: int,
    encode: Callable[[list[Record]], Any],
) -> tuple[RecordBatch, int] | None:
    """In a worker: the segment's records as a batch, and its newline count; None when
    the segment is not exactly a run of well-formed top-level records."""
    started = time.thread_time()
    try:
        records = _segment_records(root_start, root_end, segment, max_depth)
    except Exception:  # noqa: BLE001 - any failure: the sequential parser reads it instead
        return None
    batch = RecordBatch(
        payload=encode(records),
        count=len(records),
        messages=sum([r.count for r in records]),
        cpu_seconds=time.thread_time() - started,
    )
    return batch, segment.count(b"\n")


def _segment_records(
    root_start: bytes, root_end: bytes, segment: bytes, max_depth: int
) -> list[Record]:
    # A segment is small: parsed whole, without the pull parser's events, it parses
    # faster (libxml2's limits, such as its nesting cap, are the same).
    root = etree.fromstring(root_start + segment + root_end, new_tree_parser())
    records: list[Record] = []
    for el in root:
        if not isinstance(el.tag, str) or local_name(el.tag) != "record":
            raise _Ineligible("a top-level element other than a record")
        records.append(record_of(el, max_depth))
    return records


def root_tags(root: Any) -> tuple[bytes, bytes]:
    """Start and end tags that put a segment in the scope of the document's root: its
    name and namespace declarations (what the names inside records resolve against)."""
    qname = root.tag.rpartition("}")[2]
    if root.prefix:
        qname = f"{root.prefix}:{qname}"
    decls = "".join(
        f" xmlns:{prefix}={quoteattr(uri)}" if prefix else f" xmlns={quoteattr(uri)}"
        for prefix, uri in root.nsmap.items()
    )
    return f"<{qname}{decls}>".encode(), f"</{qname}>".encode()


class Splitter:
    """Decides, for one document, what the sequential parser reads and what workers do.

    ``pieces`` turns each cleaned chunk into bytes for the parser and ``RecordBatch``
    values, in document order. Before every resumption the parser sets ``at_record_end``
    (whether the bytes it last read ended with a top-level record's end tag) and
    ``ready`` (whether the report's head is complete)."""

    def __init__(self, fanout: Fanout, max_depth: int) -> None:
        self.fanout = fanout
        self.max_depth = max_depth
        self.seen = 0  # bytes passed through
        self.armed = False
        self.tries = 0
        self.off = False
        self.ready = False
        self.at_record_end = False
        self.root_start = self.root_end = b""
        self.held = bytearray()
        self.pending: deque[tuple[Future[Any], bytes]] = deque()

    def start(self, root: Any) -> None:
        """The parser has seen the root element: segments will be wrapped in its tags."""
        self.root_start, self.root_end = root_tags(root)

    def stop(self) -> None:
        """No more fan-out for this document (an unsupported encoding, say)."""
        self.off = True

    def pieces(self, data: bytes, final: bool) -> Iterator[bytes | RecordBatch]:
        if self.off:
            if data:
                yield data
            return
        if not self.armed:
            self.seen += len(data)
            if self.seen < self.fanout.segment_bytes or not self.root_start:
                if data:
                    yield data
                return
            data = yield from self._arm(data)
            if not self.armed:
                return
        self.held += data
        segment_bytes = self.fanout.segment_bytes
        while len(self.held) >= segment_bytes and not self.off:
            while len(self.pending) >= self.fanout.in_flight and not self.off:
                yield from self._collect()
            if self.off:
                break  # what was held has been handed to the parser
            cut = _last_record_end(self.held, segment_bytes // 2)
            if cut < 0:
                if len(self.held) > 4 * segment_bytes:
                    yield from self._fall_back()  # no record end in sight: read it all here
                break
            self._submit(bytes(self.held[:cut]))
            del self.held[:cut]
        if final:
            yield from self.drain()

    def drain(self) -> Iterator[bytes | RecordBatch]:
        """Every pending segment's result, then what is held, for the parser."""
        while self.pending:
            yield from self._collect()
        yield from self._release_held()

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.pending.clear()
        self.held.clear()

    def _arm(self, data: bytes) -> Generator[bytes, None, bytes]:
        """Feed ``data`` up to a record end at a time until the parser stands right after
        a top-level record of a report whose head is complete; returns the rest."""
        while (m := _RECORD_END.search(data)) is not None:
            yield data[: m.end()]
            data = data[m.end() :]
            if self.ready and self.at_record_end:
                self.armed = True
                return data
            self.tries += 1
            if self.tries >= 16:
                # Records before the head, or nested ones: leave this document sequential.
                self.off = True
                break
        if data:
            yield data
        return b""

    def _submit(self, segment: bytes) -> None:
        try:
            future = self.fanout.executor.submit(
                parse_segment,
                self.root_start,
                self.root_end,
                segment,
                self.max_depth,
                self.fanout.encode,
            )
        except Exception:  # noqa: BLE001 - a broken or shut-down pool: parse here
            future = Future()
            future.set_result(None)
        self.pending.append((future, segment))

    def _collect(self) -> Iterator[bytes | RecordBatch]:
        future, segment = self.pending.popleft()
        try:
            result = future.result()
        except Exception:  # noqa: BLE001 - a worker died, or the pool broke
            result = None
        if result is None:
            self.pending.appendleft((future, segment))
            yield from self._fall_back()
            return
        batch, newlines = result
        # The parser reads the segment's line breaks, so that the line numbers of any
        # later error are those of the document; the (dropped) comment ends the text
        # node they make, which would otherwise grow past libxml2's 10 MB cap.
        if newlines:
            yield b"\n" * newlines + b"<!---->"
        yield batch

    def _release_held(self) -> Iterator[bytes]:
        if self.held:
            rest = bytes(self.held)
            self.held.clear()
            yield rest

    def _fall_back(self) -> Iterator[bytes]:
        """The parser reads every pending segment and the rest of the document itself."""
        self.off = True
        while self.pending:
            future, segment = self.pending.popleft()
            future.cancel()
            yield segment
        yield from self._release_held()


def _last_record_end(buf: bytearray, start: int) -> int:
    """Offset just past the last record end tag at or after ``start``, or -1."""
    at = len(buf)
    while True:
        at = buf.rfind(b"</", start, at)
        if at < 0:
            return -1
        m = _RECORD_END.match(buf, at)
        if m is not None:
            return m.end()
