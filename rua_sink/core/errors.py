"""The exception tree of rua-sink's core.

Every error the core raises on purpose is a ``RuaSinkError`` and carries a
``reason``, a member of :class:`Reason`. The same enum names the reason in the
CLI's JSON output, in quarantine rows and in metric labels, so it is closed:
new failure modes get a new member, never a free-form string.

::

    RuaSinkError
    ├── LimitExceeded                  a configured cap was hit (.limit, .value)
    │   ├── MessageTooLarge            max_message_bytes
    │   ├── HeaderTooLarge             max_header_bytes
    │   ├── LineTooLong                max_line_bytes
    │   ├── MimeTooDeep                max_mime_depth
    │   ├── TooManyParts               max_mime_parts
    │   ├── DecompressedTooLarge       max_decompressed_bytes
    │   ├── CompressionRatioExceeded   max_compression_ratio
    │   ├── TooManyArchiveMembers      max_zip_members
    │   ├── ArchiveTooDeep             max_archive_depth
    │   ├── TooManyRecords             max_records
    │   ├── XmlTooDeep                 max_xml_depth
    │   ├── ElementTooLarge            max_element_bytes
    │   └── JsonTooLarge               max_json_bytes
    ├── NotAReport                     no report-like part in a message
    ├── TransferEncodingError          broken base64 / quoted-printable
    ├── DecompressionError             corrupt gzip / zlib / zip
    │   └── TruncatedArchive           compressed stream ends early
    ├── UnknownFormat                  payload is not XML, JSON or an archive
    ├── UnsignedReport                 TLS report mail with no valid DKIM signature of
    │                                  its reporter (RFC 8460 3; raised by ingest)
    └── ReportError                    the payload is not a valid report
        ├── XmlSyntaxError             not well-formed, beyond repair
        │   └── TruncatedXml           document ends early
        ├── ForbiddenXml               DTD, entity declaration (XXE, billion laughs)
        ├── InvalidReport              well-formed but missing or bad required data
        └── InvalidJson                TLS report that is not valid JSON

Third-party exceptions (zlib, zipfile, lxml, json, binascii) are wrapped with
``raise ... from exc`` at the place they occur; anything else that escapes the
core is a bug and must not be reported as a parse error.
"""

from __future__ import annotations

from enum import StrEnum


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

    reason: Reason = Reason.INVALID_REPORT

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class LimitExceeded(RuaSinkError):
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


class NotAReport(RuaSinkError):
    reason = Reason.NOT_A_REPORT


class TransferEncodingError(RuaSinkError):
    reason = Reason.TRANSFER_ENCODING


class DecompressionError(RuaSinkError):
    reason = Reason.DECOMPRESSION


class TruncatedArchive(DecompressionError):
    reason = Reason.TRUNCATED_ARCHIVE


class UnknownFormat(RuaSinkError):
    reason = Reason.UNKNOWN_FORMAT


class ReportError(RuaSinkError):
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


class UnsignedReport(RuaSinkError):
    reason = Reason.UNSIGNED_REPORT
