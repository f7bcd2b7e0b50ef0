"""DMARC aggregate reports (RFC 7489 App. C, RFC 9990 App. A, old drafts), incrementally.

One pass over the document with lxml's pull parser: each top-level element is turned
into model values when it ends (a record by ``records``, the rest by ``reporthead``) and
is then dropped, so memory holds one record at a time whatever the report's size.
Elements are matched by local name (SPEC.md C.20), unknown elements are ignored or kept
raw as extensions (RFC 9990 3.2), enumerated values are case-normalized and unknown ones
kept verbatim (SPEC.md I.61). With a ``Fanout``, the records of a large document may be
parsed in worker processes (see ``fanout``).

The parser never runs in recover mode: a document that is not well-formed after the
deterministic repairs of ``xmlclean`` is an error, never a source of partial records;
the few errors that only end a document, losing nothing, are told apart here
(``_ends_document``) and noted as repairs.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Generator, Iterable, Iterator
from typing import Any, cast

from lxml import etree

from rua_sink.core.fanout import Fanout, Splitter
from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateEnd, PartInfo, RecordBatch
from rua_sink.core.reporthead import KNOWN, TOP_LEVEL, AggregateEvent, Document
from rua_sink.core.xmlclean import XmlCleaner
from rua_sink.core.xmltree import check_depth, local_name, new_pull_parser
from rua_sink.errors import (
    ElementTooLarge,
    InvalidReport,
    MessageError,
    TruncatedXml,
    XmlSyntaxError,
    XmlTooDeep,
)

__all__ = ["AggregateEvent", "new_parser", "parse_aggregate"]

_RECORD_AT = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?record[\s>/]")
# lxml reports "end" events only for these (any namespace, or none): the parser's C
# code skips the ~25 other elements of a record, which the record's handler then reads
# from the finished subtree.
_EVENT_TAGS = ["{*}feedback", *(f"{{*}}{name}" for name in sorted(TOP_LEVEL))]
FEED_BYTES = 64 * 1024
_NS_DOMAIN = etree.ErrorDomains.NAMESPACE
_MISMATCH = re.compile(r"mismatch: ([^\s,]+) line \d+ and ([^\s,]+)")


def new_parser() -> Any:
    """The pull parser of a document: "end" events of the top-level elements only."""
    return new_pull_parser(_EVENT_TAGS)


def parse_aggregate(
    chunks: Iterator[bytes], info: PartInfo, limits: Limits, fanout: Fanout | None = None
) -> Iterator[AggregateEvent]:
    """Events of one aggregate report: its head, each record, then its end.

    With ``fanout``, the records of a large document may come as ``RecordBatch`` values,
    parsed in worker processes (see ``fanout``); everything else is the same."""
    # A generator: nothing (the parser, lxml's error log) is touched before the first event
    # is asked for.
    yield from _Reader(chunks, info, limits, fanout).events()


class _Reader:
    """The reading of one document: chunks are cleaned (``xmlclean``), cut by the
    splitter (with a fan-out), fed to the parser, and its finished elements read.

    After ``</feedback>`` (``root_closed``) the parser is fed nothing more: what follows
    is judged as text, inside a wrapper (``_WrapperTail``) or not."""

    def __init__(
        self, chunks: Iterator[bytes], info: PartInfo, limits: Limits, fanout: Fanout | None
    ) -> None:
        self.limits = limits
        self.max_depth = limits.max_xml_depth
        self.stream = iter(chunks)
        self.cleaner = XmlCleaner()
        self.parser = new_parser()
        self.doc = Document(info, limits)
        self.splitter = None if fanout is None else Splitter(fanout, self.max_depth)
        self.tail = _WrapperTail()
        self.root: Any = None
        self.root_closed = False
        self.final = False  # the stream has ended: the cleaner was flushed
        self.ended = False  # a syntax error ended the document, losing nothing
        self.document_bytes = 0
        self.since_top = 0  # bytes fed since a top-level element last ended
        self.lines_before = 0  # line breaks fed
        self.last_piece, self.last_lines = b"", 0  # the bytes fed last, and lines before
        # Of the last piece fed: whether a top-level element ended in it, whether the
        # parser stands right after a top-level record, and the bytes fed of it.
        self.handled = self.at_record_end = False
        self.fed = 0

    def events(self) -> Iterator[AggregateEvent]:
        try:
            while not self.final:
                data = self._next_data()
                if self.root_closed:
                    self._after_root(data)
                    continue
                yield from self._read(data)
                if self.ended:
                    break  # the error ended the document: nothing more is read
                if self.root_closed:
                    if self.final:
                        self._close_after_root()
                elif self.final:
                    self._close()
        finally:
            if self.splitter is not None:
                self.splitter.close()
        yield from self._end()

    def _next_data(self) -> bytes:
        """The next cleaned bytes; at the end of the stream, what the cleaner held."""
        chunk = next(self.stream, None)
        if chunk is None:
            self.final = True
            return self.cleaner.flush()
        self.document_bytes += len(chunk)
        return self.cleaner.feed(chunk)

    def _after_root(self, data: bytes) -> None:
        if self.root.getparent() is not None:
            self.tail.add(data, self.cleaner)
        elif data.strip():
            self.cleaner.note("trailing_content")
        if self.final:
            self._close_after_root()

    def _close_after_root(self) -> None:
        _close_after_root(self.parser, self.cleaner, self.root)
        self.tail.close(self.cleaner)

    def _pieces(self, data: bytes) -> Iterator[bytes | RecordBatch]:
        """What the parser reads of ``data``, and the batches workers parsed of it."""
        if self.splitter is None:
            return iter((data,))
        if not self.cleaner.utf8:
            self.splitter.stop()  # segments are cut as bytes: UTF-8 documents only
        return self.splitter.pieces(data, self.final)

    def _read(self, data: bytes) -> Iterator[AggregateEvent]:
        pieces = self._pieces(data)
        for piece in pieces:
            if self.root_closed:  # inside a wrapper: the parser is fed nothing more
                self.tail.add(piece if isinstance(piece, bytes) else b"", self.cleaner)
            elif isinstance(piece, RecordBatch):
                self.doc.add_batch(piece)
                yield piece
                self.since_top = 0
            else:
                yield from self._feed(piece, pieces)
                if self.ended:
                    break

    def _feed(
        self, piece: bytes, pieces: Iterator[bytes | RecordBatch]
    ) -> Iterator[AggregateEvent]:
        """Parse ``piece`` (``pieces`` follow it) and give the events of what ended in it."""
        error = yield from self._parse(piece)
        if self.root_closed and self.root.getparent() is not None:
            # The report ended inside a wrapper: what follows its end tag is judged as
            # text, whatever the parser made of it.
            self.tail.add(_after_root_end(piece, self.fed), self.cleaner)
            error = None
        if error is not None:
            rest = itertools.chain((p for p in pieces if isinstance(p, bytes)), self.stream)
            if _ends_document(
                error, self.doc, self.cleaner, piece, rest, self.lines_before, self.root_closed
            ):
                self.root_closed = self.ended = True
                return
            raise _syntax_error(error, self.limits, closing=False) from error
        if self.splitter is not None:
            self.splitter.at_record_end = self.at_record_end
            self.splitter.ready = self.doc.head is not None
        self.since_top = 0 if self.handled else self.since_top + len(piece)
        if self.since_top > self.limits.max_element_bytes:
            raise ElementTooLarge(self.since_top, self.limits.max_element_bytes)
        self.last_piece, self.last_lines = piece, self.lines_before
        self.lines_before += piece.count(b"\n")

    def _parse(self, piece: bytes) -> Generator[AggregateEvent, None, etree.XMLSyntaxError | None]:
        """Feed ``piece`` a slice at a time, giving the events of what ends; returns the
        syntax error that stopped it, if any (what was parsed before it is read)."""
        self.handled = self.at_record_end = False
        error: etree.XMLSyntaxError | None = None
        for at in range(0, len(piece), FEED_BYTES):
            self.fed = at + FEED_BYTES
            try:
                # Small feeds keep the unread part of the tree in the CPU cache.
                self.parser.feed(piece[at : at + FEED_BYTES])
            except etree.XMLSyntaxError as exc:
                error = exc
            yield from self._elements()
            if error is not None or self.root_closed:
                break
        return error

    def _elements(self) -> Iterator[AggregateEvent]:
        """Read the top-level elements the parser has finished, and drop them: the hot
        loop, one turn per record."""
        doc = self.doc
        root = self.root
        handled, at_record_end = self.handled, self.at_record_end
        for _event, el in self.parser.read_events():
            at_record_end = False
            if root is None:
                root = self._start(el)
            elif self.root_closed:  # inside a wrapper, after </feedback>
                self.cleaner.note("trailing_content")
                continue
            if el is root:
                self.root_closed = True
                continue
            parent = el.getparent()
            if parent is not root and (
                parent.getparent() is not root or local_name(parent.tag) in KNOWN
            ):
                continue  # nested inside a record or metadata: read with it
            name = local_name(el.tag)
            if name == "record" and doc.head is not None:
                yield doc.read_record(el)  # the common case
                at_record_end = parent is root
            else:
                check_depth(el, 2, self.max_depth)  # small: metadata, policy
                yield from doc.top_level(name, el)
            # Drop what has been read, and any stray siblings before it.
            el.clear()
            while (prev := el.getprevious()) is not None:
                parent.remove(prev)
            parent.remove(el)
            handled = True
        self.handled, self.at_record_end = handled, at_record_end

    def _start(self, el: Any) -> Any:
        """The first element the parser reports: find the root (see ``_find_root``)."""
        self.root = _find_root(el, self.doc, self.cleaner)
        if self.splitter is not None:
            self.splitter.start(self.root)
        return self.root

    def _close(self) -> None:
        """The end of the stream, before ``</feedback>``: the parser's last word."""
        try:
            closed = self.parser.close()
        except etree.XMLSyntaxError as exc:
            if _ends_document(
                exc, self.doc, self.cleaner, self.last_piece, self.stream, self.last_lines, False
            ):
                self.root_closed = True
                return
            raise _syntax_error(exc, self.limits, closing=True) from exc
        if closed is not None:
            if self.root is None:
                self.root = _check_root(closed, self.doc)
            self.root_closed = True

    def _end(self) -> Iterator[AggregateEvent]:
        doc = self.doc
        if not self.root_closed:
            raise TruncatedXml("XML document ends before </feedback>")
        if doc.head is None:
            yield doc.make_head()
            yield from doc.early
        yield AggregateEnd(
            doc.head or doc.make_head(),
            doc.records,
            doc.messages,
            tuple(self.cleaner.repairs),
            self.document_bytes,
        )


def _syntax_error(exc: etree.XMLSyntaxError, limits: Limits, *, closing: bool) -> MessageError:
    text = str(exc)
    if "Excessive depth" in text:
        return XmlTooDeep(257, limits.max_xml_depth, f"XML nesting too deep: {exc}")
    if closing:
        # Everything was fed without complaint: the input stopped inside markup.
        return TruncatedXml(f"XML document ends early: {exc}")
    return XmlSyntaxError(f"XML is not well-formed: {exc}")


def _check_root(root: Any, doc: Document) -> Any:
    tag = root.tag if isinstance(root.tag, str) else ""
    if local_name(tag) != "feedback":
        raise InvalidReport(f"root element is <{local_name(tag)[:40]}>, not <feedback>")
    doc.root_ns = tag[1:].partition("}")[0] if tag[:1] == "{" else None
    return root


def _find_root(el: Any, doc: Document, cleaner: XmlCleaner) -> Any:
    """The <feedback> element, from the first element the parser reports.

    It is the document's root, or (``wrapper_element``) the outermost <feedback> among
    the ancestors of that first element, inside elements of other names that a reporter
    put around the report (an ``<xs:schema>`` opened before <feedback> and never
    closed): nothing of the report comes before it, so nothing is lost. Without a
    <feedback> around the first report element, the document is not a report."""
    top = el.getroottree().getroot()
    if local_name(top.tag) == "feedback":
        return _check_root(top, doc)
    feedback = None
    node = el
    while node is not None:
        if local_name(node.tag) == "feedback":
            feedback = node
        node = node.getparent()
    if feedback is None:
        return _check_root(top, doc)  # raises: not a report
    cleaner.note("wrapper_element")
    tag = feedback.tag
    doc.root_ns = tag[1:].partition("}")[0] if tag[:1] == "{" else None
    return feedback


class _WrapperTail:
    """What follows </feedback> inside a wrapper: nothing is lost when it is only
    white space and end tags (the wrappers', closed or not), else ``trailing_content``.
    Kept whole up to a small size, so that where the chunks end does not matter."""

    _MAX = 1024
    _END_TAGS = re.compile(rb"(?:\s*</[^<>]*>)*\s*")

    def __init__(self) -> None:
        self.text = b""
        self.over = False

    def add(self, data: bytes, cleaner: XmlCleaner) -> None:
        if self.over or not data:
            return
        self.text += data
        if len(self.text) > self._MAX:
            self.over = True
            self.text = b""
            cleaner.note("trailing_content")

    def close(self, cleaner: XmlCleaner) -> None:
        if self.text and not self._END_TAGS.fullmatch(self.text):
            cleaner.note("trailing_content")
        self.text = b""


_ROOT_END = re.compile(rb"</(?:[A-Za-z_][\w.\-]*:)?feedback\s*>")


def _after_root_end(piece: bytes, fed: int) -> bytes:
    """The bytes of ``piece`` after the end tag of <feedback>, which ends in its first
    ``fed`` bytes (the ones the parser was given)."""
    m = _ROOT_END.search(piece, 0, fed)
    return piece[m.end() :] if m else piece[fed:]


def _close_after_root(parser: Any, cleaner: XmlCleaner, root: Any) -> None:
    try:
        parser.close()
    except etree.XMLSyntaxError as exc:
        if root.getparent() is not None:
            # Wrapped: the parser was fed nothing after </feedback>, so the wrappers are
            # open (and what followed is judged by _WrapperTail); prefixes still count.
            errors = cast("Iterable[Any]", exc.error_log)
            if any(e.domain == _NS_DOMAIN for e in errors):
                cleaner.note("undeclared_namespace_prefix")
        elif not _undeclared_prefix_only(exc, cleaner):
            cleaner.note("trailing_content")


def _undeclared_prefix_only(exc: etree.XMLSyntaxError, cleaner: XmlCleaner) -> bool:
    """Whether every error is an undeclared namespace prefix (a stray <xs:schema>), which
    libxml2 reports when the document ends, after every event was read: nothing was
    lost, and the repair is noted."""
    # lxml's error log is iterable; its stubs do not say so.
    errors = [e.domain for e in cast("Iterable[Any]", exc.error_log)]
    if errors and all(d == _NS_DOMAIN for d in errors):
        cleaner.note("undeclared_namespace_prefix")
        return True
    return False


def _ends_document(
    exc: etree.XMLSyntaxError,
    doc: Document,
    cleaner: XmlCleaner,
    data: bytes,
    rest: Iterator[bytes],
    lines_before: int,
    root_closed: bool,
) -> bool:
    """Whether a syntax error only ends the document, losing nothing; the repair is
    noted. That is: an undeclared prefix (see ``_undeclared_prefix_only``); content
    after the root element, read in the same feed as its end; or stray markup (SPEC.md
    I.60), an element of no DMARC name left open before ``</feedback>``, when no record
    follows the point of the error (``data``, the bytes fed with ``lines_before`` lines
    before them, then ``rest``)."""
    if _undeclared_prefix_only(exc, cleaner):
        return True
    if root_closed:
        cleaner.note("trailing_content")
        return True
    if not _stray_markup(exc, doc) or _record_follows(exc, data, rest, lines_before):
        return False
    cleaner.note("unclosed_element")
    return True


def _stray_markup(exc: etree.XMLSyntaxError, doc: Document) -> bool:
    """Whether the error is </feedback> closing an element of no DMARC name, after the
    report's metadata (SPEC.md I.60)."""
    m = _MISMATCH.search(str(exc))
    if m is None or doc.metadata is None:
        return False
    return local_name(m.group(2)) == "feedback" and (
        local_name(m.group(1).rpartition(":")[2]) not in KNOWN
    )


def _record_follows(
    exc: etree.XMLSyntaxError, data: bytes, rest: Iterator[bytes], lines_before: int
) -> bool:
    """Whether a record starts after the point of the error, in ``data`` or in ``rest``
    (which is drained)."""
    if _RECORD_AT.search(data, _error_offset(exc, data, lines_before)):
        return True
    tail = b""
    for chunk in rest:  # drain: a record after the error means the document is broken
        if _RECORD_AT.search(tail + chunk):
            return True
        tail = chunk[-16:]
    return False


def _error_offset(exc: etree.XMLSyntaxError, data: bytes, lines_before: int) -> int:
    """Where in ``data`` (fed after ``lines_before`` line breaks) the error is, or an
    offset before it."""
    offset = 0
    line_start = lines_before == 0  # data's first line starts in data only at the top
    for _ in range(max((exc.lineno or 1) - lines_before - 1, 0)):
        nxt = data.find(b"\n", offset)
        if nxt < 0:
            line_start = False
            break
        offset = nxt + 1
        line_start = True
    if line_start:
        # The error's line starts in ``data``: add its column. libxml2 counts characters,
        # at most the bytes, so the search starts at the error or before it, never after.
        offset = min(offset + max(exc.position[1] - 1, 0), len(data))
    return offset
