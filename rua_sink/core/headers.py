"""Header blocks: the MIME fields the walk needs, and a message's own fields.

One header block at a time, at most ``max_header_bytes`` (the walker's limit), is parsed
with the standard library's compat32 policy, which keeps values as text where the newer
policies raise on malformed addresses. A part's block is read faster than the email
package reads it, for the three MIME fields only, with the same results
(``Headers.parse``); values are decoded as RFC 2047 and RFC 2231 say, and what does not
decode is kept as it is.
"""

from __future__ import annotations

import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from rua_sink.core.model import MessageInfo

_HEADER_PARSER = email.parser.BytesParser(policy=email.policy.compat32)


@dataclass(frozen=True, slots=True)
class Headers:
    """The fields of one header block that the walk needs."""

    content_type: str
    boundary: bytes | None
    report_type: str | None
    cte: str
    filename: str | None

    @classmethod
    def parse(cls, block: bytes) -> Headers:
        """A part's: the values ``of(parse_fields(block))`` gives, in about two thirds of
        the time. It reads just the three MIME fields the walk needs, as the email
        package's parser finds them, and leaves their values to the email package."""
        msg = Message(policy=email.policy.compat32)
        for name, value in _mime_fields(block):
            msg[name] = value
        return cls.of(msg)

    @classmethod
    def of(cls, msg: Message) -> Headers:
        ctype = msg.get_content_type()
        params = _params(msg, "content-type")
        boundary = params.get("boundary")
        report_type = params.get("report-type")
        cte = header_text(msg, "content-transfer-encoding") or "7bit"
        filename = _params(msg, "content-disposition").get("filename") or params.get("name")
        return cls(
            content_type=ctype,
            boundary=boundary.encode("utf-8", "replace") if boundary else None,
            report_type=report_type.lower() if report_type else None,
            cte=cte.strip().lower(),
            filename=decode_words(filename).strip() if filename else None,
        )


def parse_fields(block: bytes) -> Message:
    """Every field of a header block (a message's own: its subject, its signatures...)."""
    # compat32 keeps header values as text: the structured parsers of the newer policies
    # raise on malformed addresses, which reporters' mail may carry.
    return _HEADER_PARSER.parsebytes(block, headersonly=True)


# What the email package's FeedParser takes for a header line (feedparser.headerRE).
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_MIME_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")


def _mime_fields(block: bytes) -> list[tuple[str, str]]:
    """The first Content-Type, Content-Transfer-Encoding and Content-Disposition fields of
    a header block, as (name, value) the way ``BytesParser(policy=compat32)`` stores them
    (feedparser's ``_parsegen`` and ``_parse_headers``, compat32's header_source_parse):
    the same line splitting, the same end of the header lines, the same unfolding."""
    # Lines end at CR, LF or CRLF, as in feedparser's StringIO(newline="").
    lines = io.StringIO(block.decode("ascii", "surrogateescape"), newline="").readlines()
    fields: dict[str, tuple[str, str]] = {}
    field: list[str] = []

    def close() -> None:
        name, _, value = field[0].partition(":")
        if name.lower() in _MIME_FIELDS and name.lower() not in fields:
            value = value.lstrip(" \t") + "".join(field[1:])
            fields[name.lower()] = (name, value.rstrip("\r\n"))

    end = len(lines)
    for i, line in enumerate(lines):
        if not _HEADER_LINE.match(line):
            end = i
            break
    for i, line in enumerate(lines[:end]):
        if line[0] in " \t":
            if field:
                field.append(line)
            continue
        if field:
            close()
            field = []
        if line.startswith("From "):
            if i == end - 1 and i > 0:
                break  # feedparser takes it for the body's first line
            continue  # an envelope line (first), or a misplaced one
        if line.find(":") > 0:
            field = [line]
    if field:
        close()
    return [fields[name] for name in _MIME_FIELDS if name in fields]


def _params(msg: Message, header: str) -> dict[str, str]:
    """A field's parameters by lower-case name, each the value ``Message.get_param``
    gives (the first of that name, decoded), where it is not empty; {} where the field
    is missing or beyond repair."""
    try:
        params = msg.get_params(header=header)
    except (ValueError, LookupError, TypeError):  # defects beyond repair
        return {}
    first: dict[str, Any] = {}
    for name, value in params or ():
        first.setdefault(name.lower(), value)
    out: dict[str, str] = {}
    for name, raw in first.items():
        try:
            # an RFC 2231 (charset, language, text) triple, or text
            value = email.utils.collapse_rfc2231_value(raw) if isinstance(raw, tuple) else raw
        except (ValueError, LookupError, TypeError):
            continue
        if value:
            out[name] = str(value)
    return out


def decode_words(text: str) -> str:
    """RFC 2047 encoded-words (subjects, and filenames that use them although RFC 2047
    5 forbids it in parameters); text that does not decode is kept as it is."""
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def leading_header_block(lines: Iterable[bytes], cap: int) -> bytes:
    """A message's own header block, from its lines (a binary file yields them), up to
    the blank line that ends it and at most ``cap`` bytes; for ``parse_fields``."""
    block = bytearray()
    for line in lines:
        if line in (b"\r\n", b"\n") or len(block) + len(line) > cap:
            break
        block += line
    return bytes(block)


def header_text(msg: Message, name: str) -> str | None:
    """A header field's value: RFC 2047 decoded, unfolded; None if absent."""
    value = msg.get(name)
    if value is None:
        return None
    if not isinstance(value, str):  # an undecodable header object
        value = str(value)
    return " ".join(decode_words(value).split())


def message_info(msg: Message) -> MessageInfo:
    return MessageInfo(
        subject=header_text(msg, "subject"),
        from_addr=header_text(msg, "from"),
        message_id=header_text(msg, "message-id"),
        date=header_text(msg, "date"),
        tls_report_domain=header_text(msg, "tls-report-domain"),
        tls_report_submitter=header_text(msg, "tls-report-submitter"),
    )
