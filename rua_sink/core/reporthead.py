"""The head of an aggregate report, and what one document has given so far.

The head is everything of <feedback> but its records: <version>, <report_metadata>,
<policy_published> and <extension> (RFC 7489 App. C, RFC 9990 3.1). ``Document`` reads
each finished top-level element the streaming parser (``aggregate``) hands it, holds
records that come before the head is complete (RFC 9990 3.1.1 requires the head first;
not every reporter complies), and counts records and messages against the limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rua_sink.core.limits import Limits
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    AlignmentMode,
    DiscoveryMethod,
    PartInfo,
    Policy,
    PolicyPublished,
    PolicyTesting,
    Record,
    RecordBatch,
    ReportMetadata,
    Schema,
    enum_or_verbatim,
)
from rua_sink.core.names import domain
from rua_sink.core.records import RECORD_NAMES, record_of
from rua_sink.core.xmltree import integer, local_name, serialize, text
from rua_sink.errors import InvalidReport, TooManyRecords

NS_RFC9990 = "urn:ietf:params:xml:ns:dmarc-2.0"
NS_DRAFT = "http://dmarc.org/dmarc-xml/0.2"

AggregateEvent = AggregateReport | Record | RecordBatch | AggregateEnd

# Records that may arrive before report_metadata/policy_published in a document that
# ignores the required order (RFC 9990 3.1.1); held until the head is complete.
_MAX_EARLY_RECORDS = 1000

#: The children of <feedback> that are read; the parser reports the end of these only.
TOP_LEVEL = frozenset(("record", "report_metadata", "policy_published", "version", "extension"))
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
#: Every local name of a DMARC aggregate report that the readers know.
KNOWN = TOP_LEVEL | _METADATA | RECORD_NAMES | {"feedback"}


# --- the parts of the head -------------------------------------------------------------


def read_metadata(el: Any) -> ReportMetadata:
    """<report_metadata>: who reports, which report, which period."""
    fields: dict[str, str | None] = {}
    errors: list[str] = []
    begin = end = None
    for child in el:
        name = local_name(child.tag)
        if name == "date_range":
            for d in child:
                n = local_name(d.tag)
                if n == "begin":
                    begin = text(d)
                elif n == "end":
                    end = text(d)
        elif name == "error":
            if (t := text(child)) is not None:
                errors.append(t)
        else:
            fields.setdefault(name, text(child))
    report_id = fields.get("report_id")
    if report_id is None:
        raise InvalidReport("report_metadata/report_id is missing")
    return ReportMetadata(
        org_name=fields.get("org_name") or "",
        email=fields.get("email"),
        extra_contact_info=fields.get("extra_contact_info"),
        report_id=report_id,
        begin=integer(begin, "date_range/begin"),
        end=integer(end, "date_range/end"),
        errors=tuple(errors),
        generator=fields.get("generator"),
    )


def _optional_enum(enum: Any, value: str | None) -> Any:
    return None if value is None else enum_or_verbatim(enum, value)


def read_policy(el: Any) -> PolicyPublished:
    """<policy_published>: the DMARC record the reporter found."""
    f: dict[str, str | None] = {}
    for child in el:
        f.setdefault(local_name(child.tag), text(child))
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


# --- one document ----------------------------------------------------------------------


class Document:
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

    def make_head(self) -> AggregateReport:
        if self.metadata is None:
            raise InvalidReport("report_metadata is missing")
        if self.policy is None:
            raise InvalidReport("policy_published is missing")
        if self.root_ns == NS_RFC9990:
            schema = Schema.RFC9990
        elif self.root_ns == NS_DRAFT or self.version == "2.0":
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
            yield from self._record(self.read_record(el))
        elif name == "report_metadata":
            if self.metadata is None:
                self.metadata = read_metadata(el)
        elif name == "policy_published":
            if self.policy is None:  # a repeated policy_published: the first wins
                self.policy = read_policy(el)
        elif name == "version":
            self.version = text(el)
        elif name == "extension":
            self.extensions.extend(serialize(c) for c in el if local_name(c.tag))

    def _record(self, record: Record) -> Iterator[AggregateEvent]:
        """A record read before the head was given: held until the head is complete, then
        given after it with the records held."""
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
