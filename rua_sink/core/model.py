"""The typed model: what the core yields, as frozen dataclasses and Enums.

The per-record types (``Record`` and the results inside it) are NamedTuples instead:
just as immutable and typed, and built in less than half the time of a frozen
dataclass, which matters at one of each per record of a 400,000-record report.

Enumerated report values are parsed into the Enums below when they match a known value
case-insensitively (``Pass`` -> ``AuthResult.PASS``); a value the specs do not know is
kept verbatim as a plain ``str`` rather than dropped (SPEC.md I.61), hence the
``Enum | str`` field types. Every Enum here is a ``StrEnum``, so both print the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from rua_sink.errors import MessageError


class ReportType(StrEnum):
    AGGREGATE = "aggregate"
    TLSRPT = "tlsrpt"
    FAILURE = "failure"


class Schema(StrEnum):
    """Which aggregate format a document follows (SPEC.md C.20, E.28)."""

    RFC7489 = "rfc7489"  # no namespace, or http://dmarc.org/dmarc-xml/0.1
    RFC9990 = "rfc9990"  # urn:ietf:params:xml:ns:dmarc-2.0
    DRAFT = "draft"  # pre-RFC drafts: dmarc-xml/0.2, <version>2.0</version>, <identities>


class Disposition(StrEnum):
    NONE = "none"
    PASS = "pass"  # RFC 9990 A; also seen in 1.0-shaped reports
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Verdict(StrEnum):
    """policy_evaluated/dkim and /spf: the DMARC-aligned result."""

    PASS = "pass"
    FAIL = "fail"


class AuthResult(StrEnum):
    """auth_results dkim/spf result (RFC 8601 2.7.1, 2.7.2; RFC 9990 A)."""

    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    POLICY = "policy"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class SpfScope(StrEnum):
    HELO = "helo"
    MFROM = "mfrom"


class OverrideType(StrEnum):
    """policy_evaluated/reason/type, both schemas together."""

    FORWARDED = "forwarded"
    SAMPLED_OUT = "sampled_out"
    TRUSTED_FORWARDER = "trusted_forwarder"
    MAILING_LIST = "mailing_list"
    LOCAL_POLICY = "local_policy"
    OTHER = "other"
    POLICY_TEST_MODE = "policy_test_mode"


class Policy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class AlignmentMode(StrEnum):
    RELAXED = "r"
    STRICT = "s"


class PolicyTesting(StrEnum):
    NO = "n"
    YES = "y"


class DiscoveryMethod(StrEnum):
    PSL = "psl"
    TREEWALK = "treewalk"


class TlsPolicyType(StrEnum):
    TLSA = "tlsa"
    STS = "sts"
    NO_POLICY_FOUND = "no-policy-found"


class TlsResultType(StrEnum):
    """RFC 8460 4.3, plus sts-policy-fetch-error seen in the wild (SPEC.md I.66)."""

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"


E = TypeVar("E", bound=StrEnum)


def enum_or_verbatim(enum: type[E], text: str) -> E | str:
    """The member of ``enum`` whose value equals ``text`` ignoring case, else ``text``."""
    try:
        return enum(text.lower())
    except ValueError:
        return text


# --- where a report came from -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartInfo:
    """The MIME part (or file) a report came from, and the layers it was unpacked from."""

    index: int
    content_type: str | None = None
    filename: str | None = None
    #: Archive layers from outside in, e.g. ("gzip",) or ("zip:report.xml",).
    layers: tuple[str, ...] = ()

    def with_layer(self, layer: str) -> PartInfo:
        return PartInfo(self.index, self.content_type, self.filename, (*self.layers, layer))


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Top-level header fields of a message, decoded (RFC 2047) and unfolded."""

    subject: str | None
    from_addr: str | None
    message_id: str | None
    date: str | None
    tls_report_domain: str | None  # RFC 8460 5.3
    tls_report_submitter: str | None


# --- DMARC aggregate (RFC 7489 App. C, RFC 9990 App. A) ------------------------------


@dataclass(frozen=True, slots=True)
class ReportMetadata:
    org_name: str
    email: str | None
    extra_contact_info: str | None
    report_id: str
    begin: int  # epoch seconds
    end: int
    errors: tuple[str, ...] = ()
    generator: str | None = None  # RFC 9990


@dataclass(frozen=True, slots=True)
class PolicyPublished:
    domain: str  # A-label, lower case
    adkim: AlignmentMode | str | None = None
    aspf: AlignmentMode | str | None = None
    p: Policy | str | None = None
    sp: Policy | str | None = None
    np: Policy | str | None = None  # RFC 9990
    pct: int | None = None  # RFC 7489 only
    fo: str | None = None
    testing: PolicyTesting | str | None = None  # RFC 9990
    discovery_method: DiscoveryMethod | str | None = None  # RFC 9990


class OverrideReason(NamedTuple):
    type: OverrideType | str | None
    comment: str | None = None


class DkimAuth(NamedTuple):
    domain: str | None
    selector: str | None
    result: AuthResult | str | None
    human_result: str | None = None


class SpfAuth(NamedTuple):
    domain: str | None
    scope: SpfScope | str | None
    result: AuthResult | str | None
    human_result: str | None = None  # RFC 9990


class Record(NamedTuple):
    """One <record>: a source IP and the results of the messages it sent."""

    source_ip: str  # normalized (compressed IPv6); verbatim if not an address
    count: int  # type: ignore[assignment]  # the DMARC name; shadows tuple.count
    disposition: Disposition | str | None
    dkim: Verdict | str | None  # policy_evaluated: DMARC-aligned DKIM
    spf: Verdict | str | None  # policy_evaluated: DMARC-aligned SPF
    reasons: tuple[OverrideReason, ...]
    header_from: str | None
    envelope_from: str | None
    envelope_to: str | None
    dkim_results: tuple[DkimAuth, ...]
    spf_results: tuple[SpfAuth, ...]
    #: Namespaced record-level elements (RFC 9990 3.2), serialized verbatim.
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Consecutive records of an aggregate report parsed in a worker process (see
    ``fanout``): only what the consumer's ``encode`` made of them crosses over."""

    payload: Any
    count: int  # records
    messages: int  # the sum of their counts
    cpu_seconds: float  # the worker's parse and encode time


@dataclass(frozen=True, slots=True)
class AggregateReport:
    """The head of an aggregate report: yielded before its records."""

    part: PartInfo
    schema: Schema
    version: str | None
    metadata: ReportMetadata
    policy: PolicyPublished
    #: <extension> children after policy_published (RFC 9990 3.2), serialized verbatim.
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AggregateEnd:
    """Yielded after the last record of ``report``: totals and repairs."""

    report: AggregateReport
    record_count: int
    message_count: int
    #: What was repaired to make the document parse, in order (empty: nothing).
    repairs: tuple[str, ...] = ()
    #: Bytes of the (decompressed) XML document.
    document_bytes: int = 0

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)


# --- SMTP TLS reporting (RFC 8460 4) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFailureDetail:
    result_type: TlsResultType | str
    sending_mta_ip: str | None
    receiving_mx_hostname: str | None
    receiving_mx_helo: str | None
    receiving_ip: str | None
    failed_session_count: int
    additional_information: str | None
    failure_reason_code: str | None


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    policy_type: TlsPolicyType | str
    policy_strings: tuple[str, ...]
    policy_domain: str
    mx_hosts: tuple[str, ...]
    success_count: int
    failure_count: int
    failure_details: tuple[TlsFailureDetail, ...]


@dataclass(frozen=True, slots=True)
class TlsReport:
    part: PartInfo
    org_name: str
    report_id: str
    contact_info: str | None
    begin: int
    end: int
    policies: tuple[TlsPolicy, ...]

    @property
    def success_count(self) -> int:
        return sum(p.success_count for p in self.policies)

    @property
    def failure_count(self) -> int:
        return sum(p.failure_count for p in self.policies)


# --- DMARC failure reports (ARF: RFC 5965, RFC 6591, RFC 9991) --------------------------


@dataclass(frozen=True, slots=True)
class FailureReport:
    part: PartInfo
    feedback_type: str  # lower case: auth-failure, abuse, ...
    version: str | None
    user_agent: str | None
    auth_failure: str | None  # RFC 6591 3.1: dkim, spf, dmarc, ...
    delivery_result: str | None
    identity_alignment: str | None  # raw: its meaning differs in 7489 and 9991 (SPEC.md G.43)
    reported_domains: tuple[str, ...]
    source_ip: str | None
    arrival_date: str | None  # Arrival-Date, or the historic Received-Date
    original_mail_from: str | None
    original_rcpt_to: tuple[str, ...]
    original_envelope_id: str | None
    reporting_mta: str | None
    authentication_results: tuple[str, ...]
    dkim_domain: str | None
    dkim_identity: str | None
    dkim_selector: str | None
    spf_dns: str | None
    incidents: int | None
    #: Every field of the message/feedback-report part, in order, unfolded.
    fields: tuple[tuple[str, str], ...]
    #: Header block of the reported message (text/rfc822-headers or message/rfc822).
    original_headers: str | None
    #: Arrival-Date as epoch seconds, when it parses.
    arrived_at: int | None = None
    #: Which reading of Identity-Alignment the values imply (``rfc7489``: mechanisms that
    #: gave an aligned pass; ``rfc9991``: mechanisms that failed to), None when they do
    #: not tell; and under it, the mechanisms that gave no aligned pass.
    alignment_spec: str | None = None
    alignment_failed: tuple[str, ...] | None = None
    #: ``arf`` (a message/feedback-report part), or ``exim`` (the plain-text report of
    #: Exim's DMARC module, read into the same fields: see ``failure.parse_exim_text``)
    report_format: str = "arf"


# --- failures that are values --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartFailed:
    """A report-like part that could not be turned into a report; the message goes on.

    Records of an aggregate report already yielded before the failure belong to a
    report that is not valid: consumers discard them (SPEC.md C.26).
    """

    part: PartInfo
    error: MessageError


Event = (
    MessageInfo
    | AggregateReport
    | Record
    | RecordBatch
    | AggregateEnd
    | TlsReport
    | FailureReport
    | PartFailed
)
