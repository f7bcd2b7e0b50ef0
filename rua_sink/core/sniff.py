"""What a payload is, from its first bytes; headers are hints only (SPEC.md I.56)."""

from __future__ import annotations

import re
from enum import StrEnum

#: Bytes of a decoded part looked at before deciding whether it is a report.
SNIFF_BYTES = 4096


class Kind(StrEnum):
    GZIP = "gzip"
    ZIP = "zip"
    ZLIB = "zlib"
    XML = "xml"
    JSON = "json"
    UNKNOWN = "unknown"


_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n"
# First element name after the prolog (declaration, comments, PIs, doctype).
_ROOT = re.compile(rb"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")
_PROLOG_ITEM = re.compile(rb"\s*(<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(\[.*?\])?\s*>)", re.S | re.I)


def strip_bom(head: bytes) -> bytes:
    return head[3:] if head.startswith(_BOM) else head


def sniff(head: bytes) -> Kind:
    """Classify a payload by its magic bytes (gzip 1F 8B, zip PK 03 04, zlib, '<', '{')."""
    if head.startswith(b"\x1f\x8b"):
        return Kind.GZIP
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return Kind.ZIP
    # RFC 1950 2.2: CM=8 (deflate), CINFO<=7, FCHECK makes CMF*256+FLG a multiple of 31.
    if (
        len(head) >= 2
        and head[0] & 0x0F == 8
        and head[0] >> 4 <= 7
        and ((head[0] << 8) | head[1]) % 31 == 0
    ):
        return Kind.ZLIB
    text = strip_bom(head).lstrip(_WS)
    if text.startswith(b"<"):
        return Kind.XML
    if text.startswith((b"{", b"[")):
        return Kind.JSON
    return Kind.UNKNOWN


def xml_root_name(head: bytes) -> str | None:
    """Local name of the root element if it starts within ``head``."""
    text = strip_bom(head).lstrip(_WS)
    pos = 0
    while True:
        m = _PROLOG_ITEM.match(text, pos)
        if not m:
            break
        pos = m.end()
    m = _ROOT.match(text.lstrip(_WS) if pos == 0 else text[pos:].lstrip(_WS))
    return m.group(2).decode("ascii") if m else None


_XML_TYPES = ("text/xml", "application/xml")
_JSON_HINTS = (b'"policies"', b'"organization-name"', b'"report-id"', b'"date-range"')


def is_report_like(head: bytes, content_type: str, filename: str | None) -> bool:
    """Whether a decoded MIME part should be unpacked and parsed as a report.

    Compressed payloads are always taken: an archive sent to a report address is a
    report or a broken one, and either way it must be kept (SPEC.md H decisions).
    """
    kind = sniff(head)
    name = (filename or "").lower()
    if kind in (Kind.GZIP, Kind.ZIP, Kind.ZLIB):
        return True
    if kind is Kind.XML:
        root = xml_root_name(head)
        if root is not None:
            return root == "feedback"
        return content_type in _XML_TYPES or name.endswith(".xml")
    if kind is Kind.JSON:
        return (
            "tlsrpt" in content_type
            or content_type == "application/json"
            or name.endswith((".json", ".json.gz"))
            or any(h in head for h in _JSON_HINTS)
        )
    return False
