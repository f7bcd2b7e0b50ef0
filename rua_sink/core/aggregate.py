"""DMARC aggregate reports (RFC 7489 App. C, RFC 9990 App. A, old drafts), incrementally.

One pass over the document with lxml's pull parser: each top-level element is turned
into model values when it ends and is then dropped, so memory holds one record at a
time whatever the report's size. Elements are matched by local name (SPEC.md C.20),
unknown elements are ignored or kept raw as extensions (RFC 9990 3.2), enumerated
values are case-normalized and unknown ones kept verbatim (SPEC.md I.61).

The parser never runs in recover mode: a document that is not well-formed after the
deterministic repairs of ``xmlclean`` is an error, never a source of partial records.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from lxml import etree

from rua_sink.core.limits import Limits
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    AlignmentMode,
    AuthResult,
    DiscoveryMethod,
    Disposition,
    DkimAuth,
    OverrideReason,
    OverrideType,
    PartInfo,
    Policy,
    PolicyPublished,
    PolicyTesting,
    Record,
    RecordBatch,
    ReportMetadata,
    Schema,
    SpfAuth,
    SpfScope,
    Verdict,
    enum_or_verbatim,
)
from rua_sink.core.names import domain, ip_address
from rua_sink.core.xmlclean import XmlCleaner
from rua_sink.errors import (
    ElementTooLarge,
    InvalidReport,
    MessageError,
    TooManyRecords,
    TruncatedXml,
    XmlSyntaxError,
    XmlTooDeep,
)

if TYPE_CHECKING:
    from rua_sink.core.fanout import Fanout

NS_RFC9990 = "urn:ietf:params:xml:ns:dmarc-2.0"
NS_DRAFT = "http://dmarc.org/dmarc-xml/0.2"

AggregateEvent = AggregateReport | Record | RecordBatch | AggregateEnd

# Records that may arrive before report_metadata/policy_published in a document that
# ignores the required order (RFC 9990 3.1.1); held until the head is complete.
_MAX_EARLY_RECORDS = 1000
_RECORD_AT = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?record[\s>/]")

_QUOTES = "\"' \t\r\n"


_LOCAL: dict[str, str] = {}


def local_name(tag: Any) -> str:
    """Local name of a tag, ``{ns}name`` or ``name`` (SPEC.md C.20: match by local name)."""
    name = _LOCAL.get(tag)
    if name is not None:
        return name
    if not isinstance(tag, str):
        return ""  # entity or comment node
    name = tag.rpartition("}")[2]
    if len(_LOCAL) < 4096:
        _LOCAL[tag] = name
    return name


def _text(el: Any) -> str | None:
    """Element text without stray whitespace and quotes (SPEC.md I.65); None if empty."""
    text = el.text
    if text is None:
        return None
    text = text.strip(_QUOTES)
    return text or None


# Integers as reports write them: ASCII digits, a sign, and a fractional part that
# some reporters add to timestamps (SPEC.md I.63). 18 digits keep values in int64.
_INTEGER = re.compile(r"^[+-]?([0-9]{1,18})(?:\.[0-9]*)?$")


def _int(text: str | None, what: str) -> int:
    if text is None:
        raise InvalidReport(f"{what} is missing")
    if text.isdigit() and len(text) <= 18 and text.isascii():  # the common case
        return int(text)
    m = _INTEGER.match(text)
    if m is None:
        raise InvalidReport(f"{what} is not an integer: {text[:40]!r}")
    value = int(m.group(1))
    return -value if text.startswith("-") else value


def _serialize(el: Any) -> str:
    return str(etree.tostring(el, encoding="unicode", with_tail=False))


# --- the parts of a document --------------------------------------------------------


def _metadata(el: Any) -> ReportMetadata:
    fields: dict[str, str | None] = {}
    errors: list[str] = []
    begin = end = None
    for child in el:
        name = local_name(child.tag)
        if name == "date_range":
            for d in child:
                n = local_name(d.tag)
                if n == "begin":
                    begin = _text(d)
                elif n == "end":
                    end = _text(d)
        elif name == "error":
            if (t := _text(child)) is not None:
                errors.append(t)
        else:
            fields.setdefault(name, _text(child))
    report_id = fields.get("report_id")
    if report_id is None:
        raise InvalidReport("report_metadata/report_id is missing")
    return ReportMetadata(
        org_name=fields.get("org_name") or "",
        email=fields.get("email"),
        extra_contact_info=fields.get("extra_contact_info"),
        report_id=report_id,
        begin=_int(begin, "date_range/begin"),
        end=_int(end, "date_range/end"),
        errors=tuple(errors),
        generator=fields.get("generator"),
    )


def _optional_enum(enum: Any, text: str | None) -> Any:
    return None if text is None else enum_or_verbatim(enum, text)


def _policy(el: Any) -> PolicyPublished:
    f: dict[str, str | None] = {}
    for child in el:
        f.setdefault(local_name(child.tag), _text(child))
    name = domain(f.get("domain"))
    if name is None:
        raise InvalidReport("policy_published/domain is missing")
    pct = f.get("pct")
    return PolicyPublished(
        domain=name,
        adkim=_optional_enum(AlignmentMode, f.get("adkim")),
        aspf=_optional_enum(AlignmentMode, f.get("aspf")),
        p=_optional_enum(Policy, f.get("p")),
        sp=_optional_enum(Policy, f.get("sp")),
        np=_optional_enum(Policy, f.get("np")),
        pct=int(pct)
        if pct is not None and pct.isascii() and pct.isdigit() and len(pct) < 4
        else None,
        fo=f.get("fo"),
        testing=_optional_enum(PolicyTesting, f.get("testing")),
        discovery_method=_optional_enum(DiscoveryMethod, f.get("discovery_method")),
    )


# Hot path: plain dict lookups instead of Enum constructor calls.
_DISPOSITION = {m.value: m for m in Disposition}
_VERDICT = {m.value: m for m in Verdict}
_AUTH = {m.value: m for m in AuthResult}
_SCOPE = {m.value: m for m in SpfScope}
_OVERRIDE = {m.value: m for m in OverrideType}


def _enum(table: dict[str, Any], text: str | None) -> Any:
    if text is None:
        return None
    return table.get(text) or table.get(text.lower()) or text


# Codes of the names inside a <record>, so the walk below does one dict lookup per
# element (keyed by the full tag, namespace included) instead of name comparisons.
_SECTION = 0
(
    _SOURCE_IP,
    _COUNT,
    _DISPOSITION_,
    _DKIM,
    _SPF,
    _REASON,
    _TYPE,
    _COMMENT,
    _HEADER_FROM,
    _ENVELOPE_FROM,
    _ENVELOPE_TO,
    _DOMAIN,
    _SELECTOR,
    _RESULT,
    _HUMAN_RESULT,
) = range(1, 16)
_AUTH_SECTION = -1
_RECORD_CODES = {
    "row": _SECTION,
    "policy_evaluated": _SECTION,
    "identifiers": _SECTION,
    "identities": _SECTION,
    "auth_results": _AUTH_SECTION,
    "source_ip": _SOURCE_IP,
    "count": _COUNT,
    "disposition": _DISPOSITION_,
    "dkim": _DKIM,
    "spf": _SPF,
    "reason": _REASON,
    "type": _TYPE,
    "comment": _COMMENT,
    "header_from": _HEADER_FROM,
    "envelope_from": _ENVELOPE_FROM,
    "envelope_to": _ENVELOPE_TO,
    "domain": _DOMAIN,
    "selector": _SELECTOR,
    "scope": _SELECTOR,
    "result": _RESULT,
    "human_result": _HUMAN_RESULT,
}
_TAG_CODES: dict[str, int | None] = {}


def _code(tag: Any) -> int | None:
    code = _RECORD_CODES.get(local_name(tag))
    if isinstance(tag, str) and len(_TAG_CODES) < 4096:
        _TAG_CODES[tag] = code
    return code


def record_of(el: Any, max_depth: int) -> Record:
    """One <record>, read in a single pre-order walk of its subtree.

    This is the hot path (one call per record), so instead of a nested loop per level
    it walks ``el.iter()`` once and tracks which container it is in: containers come
    before their children in document order. Each ``dkim``/``spf`` under
    ``auth_results`` opens a result whose fields follow it.
    """
    codes = _TAG_CODES
    auth = _AUTH
    # The last text of each field outside auth_results, by code; read after the walk.
    fields: list[Any] = [None] * 16
    reasons: list[list[Any]] = []  # [type, comment]
    results: list[list[Any]] = []  # [code, domain, selector or scope, result, human_result]
    extensions: list[str] = []
    current: list[Any] | None = None
    reason: list[Any] | None = None
    in_auth = False
    walk = el.iter()
    next(walk)  # the record itself
    seen = 0
    for seen, c in enumerate(walk, 1):  # noqa: B007 - seen is read after the loop
        tag = c.tag
        code = codes.get(tag, -2)
        if code == -2:
            code = _code(tag)
        if code is None:
            if c.getparent() is el and isinstance(tag, str):  # RFC 9990 3.2: <any>
                _check_depth(c, 3, max_depth)
                extensions.append(_serialize(c))
                for _ in c.iterdescendants():
                    next(walk)
            continue
        if code <= 0:
            in_auth = code == _AUTH_SECTION
            current = reason = None
            continue
        t = c.text
        if t is not None:
            t = t.strip(_QUOTES) or None
        if in_auth:
            if code == _DKIM or code == _SPF:
                current = [code, None, None, None, None]
                results.append(current)
            elif current is not None:
                if code == _DOMAIN:
                    current[1] = domain(t)
                elif code == _RESULT:
                    current[3] = auth.get(t) or _enum(_AUTH, t)
                elif code == _SELECTOR:
                    current[2] = t
                elif code == _HUMAN_RESULT:
                    current[4] = t
        elif code == _REASON:
            reason = [None, None]
            reasons.append(reason)
        elif code == _TYPE or code == _COMMENT:
            if reason is not None:
                reason[code - _TYPE] = t
        else:
            fields[code] = t
    if seen + 2 > max_depth:
        # Only a record with at least as many elements as the depth cap can be too deep.
        _check_depth(el, 2, max_depth)
    source_ip = fields[_SOURCE_IP]
    if source_ip is None:
        raise InvalidReport("record/row/source_ip is missing")
    disposition = fields[_DISPOSITION_]
    dkim = fields[_DKIM]
    spf = fields[_SPF]
    return Record(
        source_ip=ip_address(source_ip),
        count=_int(fields[_COUNT], "record/row/count"),
        disposition=None
        if disposition is None
        else _DISPOSITION.get(disposition) or _enum(_DISPOSITION, disposition),
        dkim=None if dkim is None else _VERDICT.get(dkim) or _enum(_VERDICT, dkim),
        spf=None if spf is None else _VERDICT.get(spf) or _enum(_VERDICT, spf),
        reasons=tuple([OverrideReason(_enum(_OVERRIDE, r[0]), r[1]) for r in reasons])
        if reasons
        else (),
        header_from=domain(fields[_HEADER_FROM]),
        envelope_from=domain(fields[_ENVELOPE_FROM]),
        envelope_to=domain(fields[_ENVELOPE_TO]),
        # list comprehensions: cheaper than generators for the one or two items of each
        dkim_results=tuple([DkimAuth(r[1], r[2], r[3], r[4]) for r in results if r[0] == _DKIM]),
        spf_results=tuple(
            [SpfAuth(r[1], _enum(_SCOPE, r[2]), r[3], r[4]) for r in results if r[0] == _SPF]
        ),
        extensions=tuple(extensions),
    )


# --- the document ----------------------------------------------------------------------


class _Document:
    """State of one document while its events are read."""

    def __init__(self, info: PartInfo, limits: Limits) -> None:
        self.info = info
        self.limits = limits
        self.root_ns: str | None = None
        self.version: str | None = None
        self.metadata: ReportMetadata | None = None
        self.policy: PolicyPublished | None = None
        self.extensions: list[str] = []
        self.head: AggregateReport | None = None
        self.early: list[Record] = []
        self.records = 0
        self.messages = 0
        self.draft = False

    def make_head(self) -> AggregateReport:
        if self.metadata is None:
            raise InvalidReport("report_metadata is missing")
        if self.policy is None:
            raise InvalidReport("policy_published is missing")
        if self.root_ns == NS_RFC9990:
            schema = Schema.RFC9990
        elif self.root_ns == NS_DRAFT or self.version == "2.0" or self.draft:
            schema = Schema.DRAFT
        else:
            schema = Schema.RFC7489
        self.head = AggregateReport(
            part=self.info,
            schema=schema,
            version=self.version,
            metadata=self.metadata,
            policy=self.policy,
            extensions=tuple(self.extensions),
        )
        return self.head

    def read_record(self, el: Any) -> Record:
        """A finished <record>, counted against max_records and into the totals."""
        record = record_of(el, self.limits.max_xml_depth)
        self.records += 1
        if self.records > self.limits.max_records:
            raise TooManyRecords(self.records, self.limits.max_records)
        self.messages += record.count
        return record

    def add_batch(self, batch: RecordBatch) -> None:
        """Records parsed elsewhere (``fanout``), counted as ``read_record`` counts."""
        self.records += batch.count
        if self.records > self.limits.max_records:
            raise TooManyRecords(self.limits.max_records + 1, self.limits.max_records)
        self.messages += batch.messages

    def top_level(self, name: str, el: Any) -> Iterator[AggregateEvent]:
        """Handle a finished child of <feedback> (or of a stray wrapper element)."""
        if name == "record":
            record = self.read_record(el)
            if self.head is None:
                if self.metadata is None or self.policy is None:
                    if len(self.early) >= _MAX_EARLY_RECORDS:
                        raise InvalidReport("records before report_metadata/policy_published")
                    self.early.append(record)
                    return
                yield self.make_head()
                yield from self.early
                self.early.clear()
            yield record
        elif name == "report_metadata":
            if self.metadata is None:
                self.metadata = _metadata(el)
        elif name == "policy_published":
            if self.policy is None:  # a repeated policy_published: the first wins
                self.policy = _policy(el)
        elif name == "version":
            self.version = _text(el)
        elif name == "extension":
            self.extensions.extend(_serialize(c) for c in el if local_name(c.tag))


_TOP = frozenset(("record", "report_metadata", "policy_published", "version", "extension"))
# Names inside the elements above: an element left open with one of these names means
# the document is broken inside a record or its metadata, not around it.
_METADATA = frozenset(
    (
        "org_name",
        "email",
        "extra_contact_info",
        "report_id",
        "date_range",
        "begin",
        "end",
        "error",
        "generator",
    )
)
KNOWN = _TOP | _METADATA | frozenset(_RECORD_CODES) | {"feedback"}
# lxml reports "end" events only for these (any namespace, or none): the parser's C
# code skips the ~25 other elements of a record, which the record's handler then reads
# from the finished subtree.
_EVENT_TAGS = ["{*}feedback", *(f"{{*}}{name}" for name in sorted(_TOP))]
FEED_BYTES = 64 * 1024
_NS_DOMAIN = etree.ErrorDomains.NAMESPACE
_MISMATCH = re.compile(r"mismatch: ([^\s,]+) line \d+ and ([^\s,]+)")


class _NothingResolver(etree.Resolver):
    """Second lock behind xmlclean's refusal of DTDs: any external resource the parser
    might still ask for (a DTD, an entity) resolves to nothing, without touching a file
    or the network."""

    # lxml calls resolve(system_url, public_id, context); lxml-stubs leave out context.
    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:  # type: ignore[override]
        return self.resolve_string("", context)  # type: ignore[call-arg]


_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "remove_blank_text": True,  # indentation: about a third of a record's nodes
    "collect_ids": False,
}


def new_parser() -> Any:
    """The pull parser of a document: "end" events of the top-level elements only."""
    # lxml keeps the errors of a thread's parsers in one log, which an exception's
    # error_log copies: without this, the errors of a broken document read earlier in
    # this thread would be taken for this one's (see _undeclared_prefix_only).
    etree.clear_error_log()
    parser = etree.XMLPullParser(events=("end",), tag=_EVENT_TAGS, **_PARSER_OPTIONS)
    parser.resolvers.add(_NothingResolver())
    return parser


def new_tree_parser() -> Any:
    """The same parser for a whole (small) document at once, without events."""
    etree.clear_error_log()
    parser = etree.XMLParser(**_PARSER_OPTIONS)
    parser.resolvers.add(_NothingResolver())
    return parser


def parse_aggregate(
    chunks: Iterator[bytes], info: PartInfo, limits: Limits, fanout: Fanout | None = None
) -> Iterator[AggregateEvent]:
    """Events of one aggregate report: its head, each record, then its end.

    With ``fanout``, the records of a large document may come as ``RecordBatch`` values,
    parsed in worker processes (see ``fanout``); everything else is the same."""
    cleaner = XmlCleaner()
    parser = new_parser()
    doc = _Document(info, limits)
    root: Any = None
    root_closed = False
    since_top = 0  # bytes fed since a top-level element last ended
    lines_before = 0
    max_depth = limits.max_xml_depth
    document_bytes = 0
    stream = iter(chunks)
    final = False
    last_piece, last_lines = b"", 0  # the bytes fed last, and the lines before them
    ended = False
    tail = _WrapperTail()
    splitter = None
    if fanout is not None:
        from rua_sink.core.fanout import Splitter  # noqa: PLC0415 - it imports this module

        splitter = Splitter(fanout, max_depth)
    try:
        while not final:
            chunk = next(stream, None)
            if chunk is None:
                final = True
                data = cleaner.flush()
            else:
                document_bytes += len(chunk)
                data = cleaner.feed(chunk)
            if root_closed:
                if root.getparent() is not None:
                    tail.add(data, cleaner)
                elif data.strip():
                    cleaner.note("trailing_content")
                if final:
                    _close_after_root(parser, cleaner, root)
                    tail.close(cleaner)
                continue
            pieces: Iterator[bytes | RecordBatch]
            if splitter is None:
                pieces = iter((data,))
            else:
                if not cleaner.utf8:
                    splitter.stop()  # segments are cut as bytes: UTF-8 documents only
                pieces = splitter.pieces(data, final)
            for piece in pieces:
                if root_closed:  # inside a wrapper: the parser is fed nothing more
                    tail.add(piece if isinstance(piece, bytes) else b"", cleaner)
                    continue
                if type(piece) is RecordBatch:
                    doc.add_batch(piece)
                    yield piece
                    since_top = 0
                    continue
                assert isinstance(piece, bytes)
                handled = at_record_end = False
                error: etree.XMLSyntaxError | None = None
                for at in range(0, len(piece), FEED_BYTES):
                    try:
                        # Small feeds keep the unread part of the tree in the CPU cache.
                        parser.feed(piece[at : at + FEED_BYTES])
                    except etree.XMLSyntaxError as exc:
                        error = exc  # what was parsed before it is still read below
                    for _event, el in parser.read_events():
                        at_record_end = False
                        if root is None:
                            root = _find_root(el, doc, cleaner)
                            if splitter is not None:
                                splitter.start(root)
                        elif root_closed:  # inside a wrapper, after </feedback>
                            cleaner.note("trailing_content")
                            continue
                        if el is root:
                            root_closed = True
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
                            _check_depth(el, 2, max_depth)  # small: metadata, policy
                            yield from doc.top_level(name, el)
                        # Drop what has been read, and any stray siblings before it.
                        el.clear()
                        while (prev := el.getprevious()) is not None:
                            parent.remove(prev)
                        parent.remove(el)
                        handled = True
                    if error is not None or root_closed:
                        break
                if root_closed and root.getparent() is not None:
                    # The report ended inside a wrapper: what follows its end tag is
                    # judged as text, whatever the parser made of it.
                    tail.add(_after_root_end(piece, at + FEED_BYTES), cleaner)
                    error = None
                if error is not None:
                    rest = itertools.chain((p for p in pieces if isinstance(p, bytes)), stream)
                    if _ends_document(error, doc, cleaner, piece, rest, lines_before, root_closed):
                        root_closed = ended = True
                        break
                    raise _syntax_error(error, limits, closing=False) from error
                if splitter is not None:
                    splitter.at_record_end = at_record_end
                    splitter.ready = doc.head is not None
                since_top = 0 if handled else since_top + len(piece)
                if since_top > limits.max_element_bytes:
                    raise ElementTooLarge(since_top, limits.max_element_bytes)
                last_piece, last_lines = piece, lines_before
                lines_before += piece.count(b"\n")
            if ended:
                break  # the error ended the document: nothing more is read
            if root_closed:
                if final:
                    _close_after_root(parser, cleaner, root)
                    tail.close(cleaner)
                continue
            if final:
                try:
                    closed = parser.close()
                except etree.XMLSyntaxError as exc:
                    if _ends_document(exc, doc, cleaner, last_piece, stream, last_lines, False):
                        root_closed = True
                        break
                    raise _syntax_error(exc, limits, closing=True) from exc
                if closed is not None:
                    root = root if root is not None else _check_root(closed, doc)
                    root_closed = True
    finally:
        if splitter is not None:
            splitter.close()

    if not root_closed:
        raise TruncatedXml("XML document ends before </feedback>")
    if doc.head is None:
        yield doc.make_head()
        yield from doc.early
    yield AggregateEnd(
        doc.head or doc.make_head(),
        doc.records,
        doc.messages,
        tuple(cleaner.repairs),
        document_bytes,
    )


def _syntax_error(exc: etree.XMLSyntaxError, limits: Limits, *, closing: bool) -> MessageError:
    text = str(exc)
    if "Excessive depth" in text:
        return XmlTooDeep(257, limits.max_xml_depth, f"XML nesting too deep: {exc}")
    if closing:
        # Everything was fed without complaint: the input stopped inside markup.
        return TruncatedXml(f"XML document ends early: {exc}")
    return XmlSyntaxError(f"XML is not well-formed: {exc}")


def _check_root(root: Any, doc: _Document) -> Any:
    tag = root.tag if isinstance(root.tag, str) else ""
    if local_name(tag) != "feedback":
        raise InvalidReport(f"root element is <{local_name(tag)[:40]}>, not <feedback>")
    doc.root_ns = tag[1:].partition("}")[0] if tag[:1] == "{" else None
    return root


def _find_root(el: Any, doc: _Document, cleaner: XmlCleaner) -> Any:
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


def _check_depth(el: Any, depth: int, maximum: int) -> None:
    """Nesting of a subtree kept raw (extensions, unknown elements)."""
    if depth + sum(1 for _ in el.iter()) <= maximum:
        return  # fewer elements than levels left: not too deep, however they nest
    stack = [(el, depth)]
    while stack:
        node, d = stack.pop()
        if d > maximum:
            raise XmlTooDeep(d, maximum)
        stack.extend((child, d + 1) for child in node)


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
    doc: _Document,
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
    m = _MISMATCH.search(str(exc))
    if m is None or doc.metadata is None:
        return False
    if local_name(m.group(2)) != "feedback" or local_name(m.group(1).rpartition(":")[2]) in KNOWN:
        return False
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
    if _RECORD_AT.search(data, offset):
        return False
    tail = b""
    for chunk in rest:  # drain: a record after the error means the document is broken
        if _RECORD_AT.search(tail + chunk):
            return False
        tail = chunk[-16:]
    cleaner.note("unclosed_element")
    return True
