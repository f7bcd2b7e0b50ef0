"""The one exception tree of rua-sink.

Every error rua-sink raises on purpose is a ``RuaSinkError``. Those of the core (a message
or a part that yields no report) are ``MessageError``s and carry a ``reason``, a member of
:class:`Reason`. The same enum names the reason in the CLI's JSON output, in quarantine
rows and in metric labels, so it is closed: new failure modes get a new member, never a
free-form string. The adapters' errors are the other branches: each says what the caller
does next (a ``Unavailable`` becomes a 4xx so that the sender retries, a ``ConfigError``
stops the program with a line naming the setting).

::

    RuaSinkError
    ├── MessageError                       the core: no report from a message or a part
    │   ├── LimitExceeded                  a configured cap was hit (.limit, .value)
    │   │   ├── MessageTooLarge            max_message_bytes
    │   │   ├── HeaderTooLarge             max_header_bytes
    │   │   ├── LineTooLong                max_line_bytes
    │   │   ├── MimeTooDeep                max_mime_depth
    │   │   ├── TooManyParts               max_mime_parts
    │   │   ├── DecompressedTooLarge       max_decompressed_bytes
    │   │   ├── CompressionRatioExceeded   max_compression_ratio
    │   │   ├── TooManyArchiveMembers      max_zip_members
    │   │   ├── ArchiveTooDeep             max_archive_depth
    │   │   ├── TooManyRecords             max_records
    │   │   ├── XmlTooDeep                 max_xml_depth
    │   │   ├── ElementTooLarge            max_element_bytes
    │   │   └── JsonTooLarge               max_json_bytes
    │   ├── NotAReport                     no report-like part in a message
    │   ├── TransferEncodingError          broken base64 / quoted-printable
    │   ├── DecompressionError             corrupt gzip / zlib / zip
    │   │   └── TruncatedArchive           compressed stream ends early
    │   ├── UnknownFormat                  payload is not XML, JSON or an archive
    │   ├── UnsignedReport                 TLS report mail with no valid DKIM signature of
    │   │                                  its reporter (RFC 8460 3; raised by ingest)
    │   └── ReportError                    the payload is not a valid report
    │       ├── XmlSyntaxError             not well-formed, beyond repair
    │       │   └── TruncatedXml           document ends early
    │       ├── ForbiddenXml               DTD, entity declaration (XXE, billion laughs)
    │       ├── InvalidReport              well-formed but missing or bad required data
    │       └── InvalidJson                TLS report that is not valid JSON
    ├── ConfigError (also a ValueError)    a setting or file rua-sink cannot use
    │   ├── ServicesFileError              RUA_SINK_SERVICES_FILE
    │   └── IpDatabaseError                RUA_SINK_IP_DATABASES: a file that does not
    │                                      open, or of an unknown type
    ├── Unavailable                        a service failed for now: 4xx, the sender retries
    │   ├── DnsUnavailable                 SERVFAIL or timeout on an answer that decides
    │   │   ├── AuthorizationUnavailable   the _report._dmarc / _smtp._tls check (451 4.4.3)
    │   │   └── AuthenticationUnavailable  SPF, DKIM or DMARC of the report mail (451 4.4.3)
    │   └── DatabaseError                  PostgreSQL not found, started or reached
    │       └── LockTimeout                DDL (migrate, prune, a partition) found its
    │                                      table busy for longer than it may wait
    ├── NotAuthorized                      a policy domain has not authorized this
    │                                      destination (550 5.7.1)
    ├── MissingPartition                   a record partition must be created first; the
    │                                      ingest creates it and runs the attempt again
    └── SendError                          rua-sink send: the file cannot be sent as a report

Third-party exceptions (zlib, zipfile, lxml, json, binascii) are wrapped with
``raise ... from exc`` at the place they occur; anything else that escapes the
core is a bug and must not be reported as a parse error.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rua_sink.core.model import ReportType


class Reason(StrEnum):
    """Why a message or a part yielded no report; stable identifiers."""

    MESSAGE_TOO_LARGE = "message_too_large"
    HEADER_TOO_LARGE = "header_too_large"
    LINE_TOO_LONG = "line_too_long"
    MIME_TOO_DEEP = "mime_too_deep"
    TOO_MANY_PARTS = "too_many_parts"
    DECOMPRESSED_TOO_LARGE = "decompressed_too_large"
    COMPRESSION_RATIO = "compression_ratio"
    TOO_MANY_MEMBERS = "too_many_members"
    ARCHIVE_TOO_DEEP = "archive_too_deep"
    TOO_MANY_RECORDS = "too_many_records"
    XML_TOO_DEEP = "xml_too_deep"
    ELEMENT_TOO_LARGE = "element_too_large"
    JSON_TOO_LARGE = "json_too_large"
    NOT_A_REPORT = "not_a_report"
    TRANSFER_ENCODING = "transfer_encoding"
    DECOMPRESSION = "decompression"
    TRUNCATED_ARCHIVE = "truncated_archive"
    UNKNOWN_FORMAT = "unknown_format"
    XML_SYNTAX = "xml_syntax"
    TRUNCATED_XML = "truncated_xml"
    FORBIDDEN_XML = "forbidden_xml"
    INVALID_REPORT = "invalid_report"
    INVALID_JSON = "invalid_json"
    UNSIGNED_REPORT = "unsigned_report"


class RuaSinkError(Exception):
    """Base of every error rua-sink raises on purpose."""


class MessageError(RuaSinkError):
    """The core found no report in a message or a part; ``reason`` says why."""

    reason: Reason = Reason.INVALID_REPORT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LimitExceeded(MessageError):
    """A configured limit was exceeded; ``limit`` names the setting."""

    limit: str = ""

    def __init__(self, value: int, maximum: int, detail: str = "") -> None:
        text = detail or f"{self.limit} exceeded: {value} > {maximum}"
        super().__init__(text)
        self.value = value
        self.maximum = maximum


class MessageTooLarge(LimitExceeded):
    reason = Reason.MESSAGE_TOO_LARGE
    limit = "max_message_bytes"


class HeaderTooLarge(LimitExceeded):
    reason = Reason.HEADER_TOO_LARGE
    limit = "max_header_bytes"


class LineTooLong(LimitExceeded):
    reason = Reason.LINE_TOO_LONG
    limit = "max_line_bytes"


class MimeTooDeep(LimitExceeded):
    reason = Reason.MIME_TOO_DEEP
    limit = "max_mime_depth"


class TooManyParts(LimitExceeded):
    reason = Reason.TOO_MANY_PARTS
    limit = "max_mime_parts"


class DecompressedTooLarge(LimitExceeded):
    reason = Reason.DECOMPRESSED_TOO_LARGE
    limit = "max_decompressed_bytes"


class CompressionRatioExceeded(LimitExceeded):
    reason = Reason.COMPRESSION_RATIO
    limit = "max_compression_ratio"


class TooManyArchiveMembers(LimitExceeded):
    reason = Reason.TOO_MANY_MEMBERS
    limit = "max_zip_members"


class ArchiveTooDeep(LimitExceeded):
    reason = Reason.ARCHIVE_TOO_DEEP
    limit = "max_archive_depth"


class TooManyRecords(LimitExceeded):
    reason = Reason.TOO_MANY_RECORDS
    limit = "max_records"


class XmlTooDeep(LimitExceeded):
    reason = Reason.XML_TOO_DEEP
    limit = "max_xml_depth"


class ElementTooLarge(LimitExceeded):
    reason = Reason.ELEMENT_TOO_LARGE
    limit = "max_element_bytes"


class JsonTooLarge(LimitExceeded):
    reason = Reason.JSON_TOO_LARGE
    limit = "max_json_bytes"


class NotAReport(MessageError):
    reason = Reason.NOT_A_REPORT


class TransferEncodingError(MessageError):
    reason = Reason.TRANSFER_ENCODING


class DecompressionError(MessageError):
    reason = Reason.DECOMPRESSION


class TruncatedArchive(DecompressionError):
    reason = Reason.TRUNCATED_ARCHIVE


class UnknownFormat(MessageError):
    reason = Reason.UNKNOWN_FORMAT


class ReportError(MessageError):
    reason = Reason.INVALID_REPORT


class XmlSyntaxError(ReportError):
    reason = Reason.XML_SYNTAX


class TruncatedXml(XmlSyntaxError):
    reason = Reason.TRUNCATED_XML


class ForbiddenXml(ReportError):
    reason = Reason.FORBIDDEN_XML


class InvalidReport(ReportError):
    reason = Reason.INVALID_REPORT


class InvalidJson(ReportError):
    reason = Reason.INVALID_JSON


class UnsignedReport(MessageError):
    reason = Reason.UNSIGNED_REPORT


class ConfigError(RuaSinkError, ValueError):
    """A setting has a value rua-sink cannot use."""


class ServicesFileError(ConfigError):
    """A services mapping file that cannot be read or holds what rua-sink cannot use."""


class IpDatabaseError(ConfigError):
    """An IP database file that does not open, or whose type rua-sink does not know."""


class Unavailable(RuaSinkError):
    """Something rua-sink depends on failed for now: the message gets a 4xx and its sender
    tries again later (RFC 5321 4.2.5)."""


class DnsUnavailable(Unavailable):
    """DNS could not answer now (SERVFAIL, timeout) a question that decides the message's
    fate."""


class AuthorizationUnavailable(DnsUnavailable):
    """The external-destination check (RFC 9990 4) could not be made now."""


class AuthenticationUnavailable(DnsUnavailable):
    """SPF, DKIM or DMARC of the report mail could not be checked now."""


class DatabaseError(Unavailable):
    """The database could not be found, started or reached."""


class LockTimeout(DatabaseError):
    """A schema change did not get its table lock within the time it may wait: other
    transactions (a long ingest) hold the table. Nothing was changed; run it again later."""


class NotAuthorized(RuaSinkError):
    """A report's policy domain has not authorized this destination (RFC 9990 4)."""

    def __init__(self, kind: ReportType, domains: str) -> None:
        super().__init__(domains)
        self.kind = kind


class MissingPartition(RuaSinkError):
    """A record batch needs a monthly partition that does not exist yet."""

    def __init__(self, month: datetime) -> None:
        super().__init__(f"no record partition for {month.year:04d}-{month.month:02d}")
        self.month = month


class SendError(RuaSinkError):
    """The file cannot be sent as a report."""
