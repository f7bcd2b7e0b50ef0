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

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import idna
from lxml import etree

from .errors import (
    InvalidReport,
    RecordTooLarge,
    TooManyRecords,
    TruncatedXml,
    XmlSyntaxError,
    XmlTooDeep,
)
from .limits import Limits
from .model import (
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
    Record,
    ReportMetadata,
    Schema,
    SpfAuth,
    SpfScope,
    Testing,
    Verdict,
    enum_or_verbatim,
)
from .xmlclean import XmlCleaner

NS_RFC9990 = "urn:ietf:params:xml:ns:dmarc-2.0"
NS_DRAFT = "http://dmarc.org/dmarc-xml/0.2"

AggregateEvent = AggregateReport | Record | AggregateEnd

# Records that may arrive before report_metadata/policy_published in a document that
# ignores the required order (RFC 9990 3.1.1); held until the head is complete.
_MAX_EARLY_RECORDS = 1000
_RECORD_AT = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?record[\s>/]")

_QUOTES = "\"' \t\r\n"


def _local(tag: Any) -> str:
    if not isinstance(tag, str):
        return ""  # entity or comment node
    return tag.rpartition("}")[2] if tag[:1] == "{" else tag


def _text(el: Any) -> str | None:
    """Element text without stray whitespace and quotes (SPEC.md I.65); None if empty."""
    text = el.text
    if text is None:
        return None
    text = text.strip(_QUOTES)
    return text or None


def domain(text: str | None) -> str | None:
    """A domain as an A-label, lower case, without the root dot (SPEC.md H.52)."""
    if text is None:
        return None
    name = text.rstrip(".").lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            return name  # not a valid IDN: kept as sent
    return name or None


_ip_cache: dict[str, str] = {}


def ip_address(text: str) -> str:
    """Canonical text of an IP address (compressed IPv6, SPEC.md I.65), else verbatim."""
    cached = _ip_cache.get(text)
    if cached is not None:
        return cached
    try:
        canonical = str(ipaddress.ip_address(text))
    except ValueError:
        canonical = text
    if len(_ip_cache) < 65536:
        _ip_cache[text] = canonical
    return canonical


def _int(text: str | None, what: str) -> int:
    if text is None:
        raise InvalidReport(f"{what} is missing")
    try:
        return int(text)
    except ValueError:
        try:
            # Fractional timestamps are seen in the wild (SPEC.md I.63).
            return int(float(text))
        except ValueError as exc:
            raise InvalidReport(f"{what} is not a number: {text[:40]!r}") from exc


def _serialize(el: Any) -> str:
    return str(etree.tostring(el, encoding="unicode", with_tail=False))


# --- the parts of a document --------------------------------------------------------


def _metadata(el: Any) -> ReportMetadata:
    fields: dict[str, str | None] = {}
    errors: list[str] = []
    begin = end = None
    for child in el:
        name = _local(child.tag)
        if name == "date_range":
            for d in child:
                n = _local(d.tag)
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
        f.setdefault(_local(child.tag), _text(child))
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
        pct=int(pct) if pct is not None and pct.isdigit() else None,
        fo=f.get("fo"),
        testing=_optional_enum(Testing, f.get("testing")),
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


def _record(el: Any) -> Record:
    source_ip = count = disposition = dkim = spf = None
    header_from = envelope_from = envelope_to = None
    reasons: list[OverrideReason] = []
    dkims: list[DkimAuth] = []
    spfs: list[SpfAuth] = []
    extensions: list[str] = []
    for part in el:
        name = _local(part.tag)
        if name == "row":
            for c in part:
                n = _local(c.tag)
                if n == "source_ip":
                    source_ip = _text(c)
                elif n == "count":
                    count = _text(c)
                elif n == "policy_evaluated":
                    for p in c:
                        pn = _local(p.tag)
                        if pn == "disposition":
                            disposition = _enum(_DISPOSITION, _text(p))
                        elif pn == "dkim":
                            dkim = _enum(_VERDICT, _text(p))
                        elif pn == "spf":
                            spf = _enum(_VERDICT, _text(p))
                        elif pn == "reason":
                            rtype = comment = None
                            for r in p:
                                rn = _local(r.tag)
                                if rn == "type":
                                    rtype = _enum(_OVERRIDE, _text(r))
                                elif rn == "comment":
                                    comment = _text(r)
                            reasons.append(OverrideReason(rtype, comment))
        elif name == "identifiers" or name == "identities":  # identities: old drafts
            for c in part:
                n = _local(c.tag)
                if n == "header_from":
                    header_from = domain(_text(c))
                elif n == "envelope_from":
                    envelope_from = domain(_text(c))
                elif n == "envelope_to":
                    envelope_to = domain(_text(c))
        elif name == "auth_results":
            for a in part:
                an = _local(a.tag)
                if an == "dkim":
                    dkims.append(_dkim(a))
                elif an == "spf":
                    spfs.append(_spf(a))
        elif name:
            extensions.append(_serialize(part))  # RFC 9990 3.2: record-level <any>
    if source_ip is None:
        raise InvalidReport("record/row/source_ip is missing")
    return Record(
        source_ip=ip_address(source_ip),
        count=_int(count, "record/row/count"),
        disposition=disposition,
        dkim=dkim,
        spf=spf,
        reasons=tuple(reasons),
        header_from=header_from,
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        dkim_results=tuple(dkims),
        spf_results=tuple(spfs),
        extensions=tuple(extensions),
    )


def _dkim(el: Any) -> DkimAuth:
    d = sel = res = human = None
    for c in el:
        n = _local(c.tag)
        if n == "domain":
            d = domain(_text(c))
        elif n == "selector":
            sel = _text(c)
        elif n == "result":
            res = _enum(_AUTH, _text(c))
        elif n == "human_result":
            human = _text(c)
    return DkimAuth(d, sel, res, human)


def _spf(el: Any) -> SpfAuth:
    d = scope = res = human = None
    for c in el:
        n = _local(c.tag)
        if n == "domain":
            d = domain(_text(c))
        elif n == "scope":
            scope = _enum(_SCOPE, _text(c))
        elif n == "result":
            res = _enum(_AUTH, _text(c))
        elif n == "human_result":
            human = _text(c)
    return SpfAuth(d, scope, res, human)


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

    def top_level(self, name: str, el: Any) -> Iterator[AggregateEvent]:
        """Handle a finished child of <feedback> (or of a stray wrapper element)."""
        if name == "record":
            record = _record(el)
            self.records += 1
            if self.records > self.limits.max_records:
                raise TooManyRecords(self.records, self.limits.max_records)
            self.messages += record.count
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
            self.extensions.extend(_serialize(c) for c in el if _local(c.tag))


_TOP = frozenset(("record", "report_metadata", "policy_published", "version", "extension"))


def parse_aggregate(
    chunks: Iterator[bytes], info: PartInfo, limits: Limits
) -> Iterator[AggregateEvent]:
    """Events of one aggregate report: its head, each record, then its end."""
    cleaner = XmlCleaner()
    parser = etree.XMLPullParser(
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    doc = _Document(info, limits)
    depth = 0
    in_record = 0  # depth of the open <record>, 0 if none
    elements = 0  # elements in the current top-level element
    root_closed = False
    max_depth = limits.max_xml_depth
    max_elements = limits.max_record_elements
    lines_before = 0

    def events(data: bytes) -> Iterator[tuple[str, Any]]:
        parser.feed(data)
        return parser.read_events()  # type: ignore[no-any-return]

    stream = iter(chunks)
    pending: bytes = b""
    final = False
    while not final:
        chunk = next(stream, None)
        if chunk is None:
            final = True
            data = cleaner.flush()
        else:
            data = cleaner.feed(chunk)
        if root_closed:
            if data.strip():
                _note_trailing(cleaner)
            continue
        pending = data
        try:
            for event, el in events(data) if data else ():
                if event == "start":
                    depth += 1
                    elements += 1
                    if depth > max_depth:
                        raise XmlTooDeep(depth, max_depth)
                    if elements > max_elements:
                        raise RecordTooLarge(elements, max_elements)
                    if depth == 1:
                        tag = el.tag
                        if _local(tag) != "feedback":
                            raise InvalidReport(f"root element is <{_local(tag)[:40]}>, not <feedback>")
                        doc.root_ns = tag[1:].partition("}")[0] if tag[:1] == "{" else None
                    elif not in_record and _local(el.tag) == "record":
                        in_record = depth
                    continue
                depth -= 1
                if depth == 0:
                    root_closed = True
                    continue
                name = _local(el.tag)
                if in_record and depth + 1 > in_record:
                    continue  # inside a record: handled when the record ends
                if name == "identities":
                    doc.draft = True
                if in_record or name in _TOP:
                    in_record = 0
                    yield from doc.top_level(name, el)
                    el.clear()
                    parent = el.getparent()
                    if parent is not None:
                        parent.remove(el)
                    elements = 0
                elif depth == 1:
                    el.clear()
                    el.getparent().remove(el)
                    elements = 0
            if final:
                parser.close()
        except etree.XMLSyntaxError as exc:
            if root_closed or _recoverable(exc, parser, doc, in_record, cleaner, pending, stream,
                                           lines_before):
                root_closed = True
                break
            if final or "Premature end" in str(exc) or exc.code in (5, 73, 77):
                raise TruncatedXml(f"XML document ends early: {exc}") from exc
            raise XmlSyntaxError(f"XML is not well-formed: {exc}") from exc
        lines_before += data.count(b"\n")

    if not root_closed:
        raise TruncatedXml("XML document ends before </feedback>")
    head = doc.head or doc.make_head()
    if doc.head is not None and doc.early:
        yield from doc.early
    elif doc.early:
        yield head
        yield from doc.early
    elif doc.records == 0:
        yield head
    yield AggregateEnd(head, doc.records, doc.messages, tuple(cleaner.repairs))


def _note_trailing(cleaner: XmlCleaner) -> None:
    if "trailing_content" not in cleaner.repairs:
        cleaner.repairs.append("trailing_content")


def _recoverable(
    exc: etree.XMLSyntaxError,
    parser: Any,
    doc: _Document,
    in_record: int,
    cleaner: XmlCleaner,
    data: bytes,
    rest: Iterator[bytes],
    lines_before: int,
) -> bool:
    """Two kinds of stray markup that lose nothing, and are repaired (SPEC.md I.60):

    - an element whose namespace prefix is never declared (a stray ``<xs:schema>``):
      libxml2 reports it only when the document ends, after every event was read;
    - an element left open before ``</feedback>``: the document is complete if no
      record is open and no record follows the point of the error.
    """
    errors = list(parser.error_log) if parser is not None else []
    domains = {e.domain for e in errors}
    if errors and domains == {etree.ErrorDomains.NAMESPACE}:
        cleaner.repairs.append("undeclared_namespace_prefix")
        return True
    if in_record or doc.metadata is None or "tag mismatch" not in str(exc):
        return False
    if not str(exc).rstrip().split(",")[0].endswith("feedback"):
        return False
    line = exc.lineno - lines_before if exc.lineno else 1
    offset = 0
    for _ in range(max(line - 1, 0)):
        nxt = data.find(b"\n", offset)
        if nxt < 0:
            break
        offset = nxt + 1
    if _RECORD_AT.search(data, offset):
        return False
    tail = b""
    for chunk in rest:  # drain: any record after the error means the document is broken
        if _RECORD_AT.search(tail + chunk):
            return False
        tail = chunk[-16:]
    cleaner.repairs.append("unclosed_element")
    return True
