"""Streaming MIME walk: report-like parts out of a message fed in chunks.

The message is never held whole. Bytes are scanned for delimiter lines (RFC 2046
5.1.1) with ``bytes.find``; body bytes between them are transfer-decoded as they come
(RFC 2045 6) and either discarded or written to a spool file once the first
``SNIFF_BYTES`` show that the part is report-like. Only one header block at a time is
parsed with the standard library, under ``max_header_bytes``.

A message may nest multiparts and ``message/rfc822`` at any depth up to
``max_mime_depth`` (reports forwarded as attachments, SPEC.md I.57); a single-part
message whose whole body is the report is a leaf like any other (Google, Mimecast).
Inside ``multipart/report; report-type=feedback-report`` (ARF, RFC 5965 2) the
``message/feedback-report`` part is captured, and the reported message is not searched
for reports: only its header block is kept.
"""

from __future__ import annotations

import binascii
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from enum import Enum, auto
from typing import IO, Any, Protocol

from rua_sink.core.limits import Limits
from rua_sink.core.model import MessageInfo, PartInfo
from rua_sink.core.sniff import SNIFF_BYTES, is_report_like
from rua_sink.errors import (
    HeaderTooLarge,
    LineTooLong,
    MessageError,
    MessageTooLarge,
    MimeTooDeep,
    TooManyParts,
    TransferEncodingError,
)

SpoolFactory = Callable[[int], IO[bytes]]

_HEADER_PARSER = email.parser.BytesParser(policy=email.policy.compat32)
# RFC 2046 5.1.1: boundaries are 1 to 70 characters; "--" before, "--" and LWSP after.
_MAX_DELIMITER_LINE = 2 + 70 + 2 + 64
# Captured ARF parts are small by nature (RFC 5965 3); anything larger is cut.
_MAX_CAPTURE = 64 * 1024


# --- transfer decoding (RFC 2045 6) ------------------------------------------------


class _Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def decode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


_B64_WS = b" \t\r\n\x0b\x0c"


class _Base64:
    """Strict base64 (RFC 2045 6.8), tolerating only a missing final padding."""

    def __init__(self) -> None:
        self._rest = b""

    def decode(self, data: bytes) -> bytes:
        data = self._rest + data.translate(None, _B64_WS)
        cut = len(data) - len(data) % 4
        self._rest = data[cut:]
        return self._run(data[:cut])

    def flush(self) -> bytes:
        rest, self._rest = self._rest, b""
        if not rest:
            return b""
        if len(rest) == 1:
            raise TransferEncodingError("base64 body ends with a lone character")
        return self._run(rest + b"=" * (-len(rest) % 4))

    @staticmethod
    def _run(data: bytes) -> bytes:
        try:
            return binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error as exc:
            raise TransferEncodingError(f"broken base64: {exc}") from exc


_QP_HOLD = 4096


class _QuotedPrintable:
    """RFC 2045 6.7, decoded a whole line at a time so soft breaks are not split."""

    def __init__(self) -> None:
        self._rest = b""

    def decode(self, data: bytes) -> bytes:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > _QP_HOLD:
            # A long line (RFC 2045 allows 76 characters): decode what cannot be part
            # of an escape, rather than holding the line.
            eq = data.rfind(b"=", len(data) - 3)
            cut = eq if eq >= 0 else len(data)
        self._rest = data[cut:]
        return binascii.a2b_qp(data[:cut]) if cut else b""

    def flush(self) -> bytes:
        rest, self._rest = self._rest, b""
        return binascii.a2b_qp(rest) if rest else b""


def _decoder_for(cte: str) -> _Decoder:
    if cte == "base64":
        return _Base64()
    if cte == "quoted-printable":
        return _QuotedPrintable()
    return _Identity()  # 7bit, 8bit, binary, and unknown tokens (RFC 2045 6.4)


class _ReadOnly:
    """The decoder of a text kept only to be read (``report-text``): it is no report, so a
    transfer-encoding error in it quarantines nothing; the text is dropped instead."""

    def __init__(self, inner: _Decoder, leaf: _Leaf) -> None:
        self._inner = inner
        self._leaf = leaf

    def decode(self, data: bytes) -> bytes:
        try:
            return self._inner.decode(data)
        except TransferEncodingError:
            self._drop()
            return b""

    def flush(self) -> bytes:
        try:
            return self._inner.flush()
        except TransferEncodingError:
            self._drop()
            return b""

    def _drop(self) -> None:
        self._leaf.mode = _Sink.DISCARD
        self._leaf.head = bytearray()


# --- parts ---------------------------------------------------------------------------


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
            filename=_decode_words(filename).strip() if filename else None,
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


def _decode_words(text: str) -> str:
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
    return " ".join(_decode_words(value).split())


def message_info(msg: Message) -> MessageInfo:
    return MessageInfo(
        subject=header_text(msg, "subject"),
        from_addr=header_text(msg, "from"),
        message_id=header_text(msg, "message-id"),
        date=header_text(msg, "date"),
        tls_report_domain=header_text(msg, "tls-report-domain"),
        tls_report_submitter=header_text(msg, "tls-report-submitter"),
    )


@dataclass(slots=True)
class SpooledPart:
    """A report-like part, decoded, in a spool positioned at 0."""

    info: PartInfo
    file: IO[bytes]
    size: int


@dataclass(slots=True)
class CapturedPart:
    """A small part kept whole: ARF feedback fields or a reported message's headers."""

    info: PartInfo
    kind: str  # "feedback-report" | "original-headers" | "report-text"
    data: bytes


@dataclass(slots=True)
class FailedPart:
    info: PartInfo
    error: MessageError


WalkResult = MessageInfo | SpooledPart | CapturedPart | FailedPart


class _Sink(Enum):
    SNIFF = auto()  # undecided: collecting the first bytes
    SPOOL = auto()
    CAPTURE = auto()
    DISCARD = auto()


class _Leaf:
    """The body of the current leaf part, decoded and routed as it arrives."""

    __slots__ = ("capture", "decoder", "error", "file", "head", "info", "mode", "size")

    def __init__(self, info: PartInfo, decoder: _Decoder, mode: _Sink, capture: str) -> None:
        self.info = info
        self.decoder = decoder
        self.mode = mode
        self.capture = capture
        self.head = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.error: MessageError | None = None


@dataclass(slots=True)
class _Frame:
    delimiter: bytes  # b"--" + boundary
    is_arf: bool
    depth: int
    is_report: bool = False  # any multipart/report (RFC 6522)


class _Mode(Enum):
    HEADERS = auto()
    BODY = auto()


class MimeWalker:
    """Push parser: ``feed`` chunks, then ``close``; each returns what completed."""

    def __init__(self, limits: Limits, spool: SpoolFactory) -> None:
        self._limits = limits
        self._spool = spool
        self._buf = bytearray()
        self._mode = _Mode.HEADERS
        self._at_bol = True
        self._stack: list[_Frame] = []
        self._leaf: _Leaf | None = None
        self._out: list[WalkResult] = []
        self._received = 0
        self._parts = 0
        self._line_len = 0
        self._header_scan = 0
        # Context of the next header block: nesting depth and what it belongs to.
        self._next_depth = 0
        self._next_in_arf = False
        self._next_in_report = False
        self._next_is_reported_message = False
        # One text part of a multipart/report is kept, for the report it may be written in
        # (Exim's DMARC failure reports: core.failure.parse_exim_text).
        self._report_text_kept = False
        self.report_like_parts = 0

    # -- public ---------------------------------------------------------------------

    def feed(self, data: bytes) -> list[WalkResult]:
        self._received += len(data)
        if self._received > self._limits.max_message_bytes:
            raise MessageTooLarge(self._received, self._limits.max_message_bytes)
        self._buf += data
        self._run(final=False)
        return self._take()

    def close(self) -> list[WalkResult]:
        self._run(final=True)
        if self._mode is _Mode.HEADERS and self._buf:
            self._on_headers(bytes(self._buf))
            self._buf.clear()
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()
        self._finish_leaf()
        return self._take()

    # -- the state machine ------------------------------------------------------------

    def _take(self) -> list[WalkResult]:
        out, self._out = self._out, []
        return out

    def _run(self, final: bool) -> None:
        while self._buf:
            if self._mode is _Mode.HEADERS:
                if not self._scan_headers(final):
                    return
            elif not self._scan_body(final):
                return

    def _scan_headers(self, final: bool) -> bool:
        """Consume one header block ending in a blank line; False if more is needed."""
        buf = self._buf
        if buf.startswith(b"\r\n"):
            end, consumed = 0, 2  # no header fields at all (RFC 2046 5.1.1)
        elif buf.startswith(b"\n"):
            end, consumed = 0, 1
        else:
            # Resume where the last search stopped: a header block fed a byte at a
            # time must not be rescanned from its start each time.
            start = self._header_scan
            lf, crlf = buf.find(b"\n\n", start), buf.find(b"\n\r\n", start)
            if lf < 0 and crlf < 0:
                if len(buf) > self._limits.max_header_bytes:
                    raise HeaderTooLarge(len(buf), self._limits.max_header_bytes)
                self._header_scan = max(0, len(buf) - 2)
                return False  # close() takes a header block without a blank line
            if crlf < 0 or 0 <= lf < crlf:
                end, consumed = lf + 1, lf + 2
            else:
                end, consumed = crlf + 1, crlf + 3
            if consumed > self._limits.max_header_bytes:
                raise HeaderTooLarge(consumed, self._limits.max_header_bytes)
        block = bytes(buf[:end])
        del buf[:consumed]
        self._header_scan = 0
        self._on_headers(block)
        return True

    def _on_headers(self, block: bytes) -> None:
        depth = self._next_depth
        if depth == 0 and not self._stack and self._parts == 0:
            fields = parse_fields(block)  # the message's own: all of them
            headers = Headers.of(fields)
            self._out.append(message_info(fields))
        else:
            headers = Headers.parse(block)
        self._parts += 1
        if self._parts > self._limits.max_mime_parts:
            raise TooManyParts(self._parts, self._limits.max_mime_parts)
        self._mode = _Mode.BODY
        self._at_bol = True
        self._line_len = 0
        in_arf = self._next_in_arf
        in_report, self._next_in_report = self._next_in_report, False
        if self._next_is_reported_message:
            # RFC 5965 2: the reported message. Keep its header block, skip its body.
            self._next_is_reported_message = False
            info = PartInfo(index=self._parts, content_type="text/rfc822-headers")
            self._out.append(CapturedPart(info, "original-headers", block[:_MAX_CAPTURE]))
            self._leaf = _Leaf(info, _Identity(), _Sink.DISCARD, "")
            return
        ctype = headers.content_type
        if headers.boundary and ctype.startswith("multipart/"):
            if depth + 1 > self._limits.max_mime_depth:
                raise MimeTooDeep(depth + 1, self._limits.max_mime_depth)
            is_arf = ctype == "multipart/report" and headers.report_type == "feedback-report"
            self._stack.append(
                _Frame(b"--" + headers.boundary, is_arf, depth + 1, ctype == "multipart/report")
            )
            self._leaf = None  # preamble: discarded
            return
        if ctype == "message/rfc822" and headers.cte in ("7bit", "8bit", "binary"):
            if depth + 1 > self._limits.max_mime_depth:
                raise MimeTooDeep(depth + 1, self._limits.max_mime_depth)
            self._mode = _Mode.HEADERS
            self._next_depth = depth + 1
            self._next_is_reported_message = in_arf
            self._leaf = None
            return
        info = PartInfo(index=self._parts, content_type=ctype, filename=headers.filename)
        if ctype == "message/feedback-report":
            self._leaf = _Leaf(info, _decoder_for(headers.cte), _Sink.CAPTURE, "feedback-report")
        elif ctype == "text/rfc822-headers" and in_arf:
            self._leaf = _Leaf(info, _decoder_for(headers.cte), _Sink.CAPTURE, "original-headers")
        elif ctype == "text/plain" and in_report and not self._report_text_kept:
            # Sniffed like any part; kept (up to _MAX_CAPTURE) if it is not report-like.
            # Whatever the report-type: the text is read only when no feedback part came.
            self._report_text_kept = True
            self._leaf = _Leaf(info, _decoder_for(headers.cte), _Sink.SNIFF, "report-text")
        else:
            self._leaf = _Leaf(info, _decoder_for(headers.cte), _Sink.SNIFF, "")

    def _scan_body(self, final: bool) -> bool:
        """Emit body bytes up to the next delimiter line; True if one was consumed."""
        buf = self._buf
        n = len(buf)
        search = 0
        first = self._at_bol
        while True:
            if first:
                first = False
                if n < 2 and not final:
                    return False
                if not buf.startswith(b"--"):
                    continue
                line_start, break_start = 0, 0
            else:
                j = buf.find(b"\n--", search)
                if j < 0:
                    break
                line_start = j + 1
                break_start = j - 1 if j > 0 and buf[j - 1] == 0x0D else j
            eol = buf.find(b"\n", line_start)
            if eol < 0:
                if not final and n - line_start <= _MAX_DELIMITER_LINE:
                    # Could still become a delimiter line: hold it with its line break.
                    self._emit_and_keep(break_start)
                    return False
                line_end = n
            else:
                line_end = eol
            hit = self._match_delimiter(bytes(buf[line_start:line_end]))
            if hit is None:
                search = line_start
                continue
            self._emit(bytes(buf[:break_start]))
            del buf[: line_end + 1]
            self._on_delimiter(*hit)
            return True
        # No delimiter in the buffer. Keep back whatever could start one.
        last_nl = buf.rfind(b"\n")
        if final:
            keep = n
        elif (
            last_nl >= 0
            and n - last_nl - 1 <= _MAX_DELIMITER_LINE
            and (bytes(buf[last_nl + 1 : last_nl + 3]) in (b"", b"-", b"--"))
        ):
            keep = last_nl - 1 if last_nl > 0 and buf[last_nl - 1] == 0x0D else last_nl
        elif (
            self._at_bol
            and last_nl < 0
            and n <= _MAX_DELIMITER_LINE
            and bytes(buf[:2]) in (b"-", b"--")
        ):
            return False
        else:
            keep = n - 1 if buf[-1] == 0x0D else n
        self._emit_and_keep(keep)
        return False

    def _emit_and_keep(self, upto: int) -> None:
        if upto <= 0:
            return
        chunk = bytes(self._buf[:upto])
        del self._buf[:upto]
        self._at_bol = False
        self._emit(chunk)

    def _match_delimiter(self, line: bytes) -> tuple[int, bool] | None:
        if not line.startswith(b"--"):
            return None
        line = line.rstrip(b" \t\r")
        for i in range(len(self._stack) - 1, -1, -1):
            delim = self._stack[i].delimiter
            if line == delim:
                return i, False
            if line == delim + b"--":
                return i, True
        return None

    def _on_delimiter(self, index: int, closing: bool) -> None:
        self._finish_leaf()
        # A delimiter of an outer multipart also ends every inner one (RFC 2046 5.1.2).
        del self._stack[index + 1 :]
        frame = self._stack[index]
        self._at_bol = True
        self._line_len = 0
        if closing:
            self._stack.pop()
            self._mode = _Mode.BODY  # epilogue of this multipart: discarded
            self._leaf = None
        else:
            self._mode = _Mode.HEADERS
            self._next_depth = frame.depth
            self._next_in_arf = frame.is_arf
            self._next_in_report = frame.is_report

    # -- body bytes -------------------------------------------------------------------

    def _emit(self, chunk: bytes) -> None:
        if not chunk:
            return
        nl = chunk.rfind(b"\n")
        self._line_len = len(chunk) - nl - 1 if nl >= 0 else self._line_len + len(chunk)
        if self._line_len > self._limits.max_line_bytes:
            raise LineTooLong(self._line_len, self._limits.max_line_bytes)
        leaf = self._leaf
        if leaf is None or leaf.mode is _Sink.DISCARD or leaf.error is not None:
            return
        try:
            self._route(leaf, leaf.decoder.decode(chunk))
        except TransferEncodingError as exc:
            leaf.error = exc
            self._abandon(leaf)

    def _route(self, leaf: _Leaf, data: bytes) -> None:
        if not data:
            return
        leaf.size += len(data)
        if leaf.mode is _Sink.SPOOL:
            assert leaf.file is not None
            leaf.file.write(data)
        elif leaf.mode is _Sink.CAPTURE:
            room = _MAX_CAPTURE - len(leaf.head)
            if room > 0:
                leaf.head += data[:room]
        elif leaf.mode is _Sink.SNIFF:
            leaf.head += data
            if len(leaf.head) >= SNIFF_BYTES:
                self._decide(leaf)

    def _decide(self, leaf: _Leaf) -> None:
        head = bytes(leaf.head)
        if is_report_like(head, leaf.info.content_type or "", leaf.info.filename):
            leaf.mode = _Sink.SPOOL
            leaf.file = self._spool(self._limits.spool_memory_bytes)
            leaf.file.write(head)
            self.report_like_parts += 1
        elif leaf.capture:
            leaf.mode = _Sink.CAPTURE
            leaf.head = leaf.head[:_MAX_CAPTURE]
            leaf.decoder = _ReadOnly(leaf.decoder, leaf)
            return
        else:
            leaf.mode = _Sink.DISCARD
        leaf.head = bytearray()

    def _abandon(self, leaf: _Leaf) -> None:
        if leaf.file is not None:
            leaf.file.close()
            leaf.file = None

    def _finish_leaf(self) -> None:
        leaf, self._leaf = self._leaf, None
        if leaf is None:
            return
        # A discarded leaf's decoder stopped at the chunk where the part was judged not
        # report-like: what it still holds is an arbitrary cut of the body, not its end.
        if leaf.error is None and leaf.mode is not _Sink.DISCARD:
            try:
                self._route(leaf, leaf.decoder.flush())
            except TransferEncodingError as exc:
                leaf.error = exc
                self._abandon(leaf)
        if leaf.error is not None:
            self.report_like_parts += 1
            self._out.append(FailedPart(leaf.info, leaf.error))
            return
        if leaf.mode is _Sink.SNIFF:
            self._decide(leaf)
        if leaf.mode is _Sink.CAPTURE:
            self._out.append(CapturedPart(leaf.info, leaf.capture, bytes(leaf.head)))
        elif leaf.mode is _Sink.SPOOL:
            assert leaf.file is not None
            leaf.file.seek(0)
            self._out.append(SpooledPart(leaf.info, leaf.file, leaf.size))
