"""Streaming MIME walk: report-like parts out of a message fed in chunks.

The message is never held whole. Bytes are scanned for delimiter lines (RFC 2046
5.1.1) with ``bytes.find``; body bytes between them are transfer-decoded as they come
(RFC 2045 6, ``transfer``) and either discarded or written to a spool file once the first
``SNIFF_BYTES`` show that the part is report-like. Only one header block at a time is
held, under ``max_header_bytes``, and read by ``headers``.

A message may nest multiparts and ``message/rfc822`` at any depth up to
``max_mime_depth`` (reports forwarded as attachments, SPEC.md I.57); a single-part
message whose whole body is the report is a leaf like any other (Google, Mimecast).
Inside ``multipart/report; report-type=feedback-report`` (ARF, RFC 5965 2) the
``message/feedback-report`` part is captured, and the reported message is not searched
for reports: only its header block is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import IO

from rua_sink.core.headers import Headers, message_info, parse_fields
from rua_sink.core.limits import Limits
from rua_sink.core.model import MessageInfo, PartInfo
from rua_sink.core.sniff import SNIFF_BYTES, is_report_like
from rua_sink.core.transfer import Decoder, Identity, decoder_for
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

# RFC 2046 5.1.1: boundaries are 1 to 70 characters; "--" before, "--" and LWSP after.
_MAX_DELIMITER_LINE = 2 + 70 + 2 + 64
# Captured ARF parts are small by nature (RFC 5965 3); anything larger is cut.
_MAX_CAPTURE = 64 * 1024


# --- parts ---------------------------------------------------------------------------


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

    def __init__(self, info: PartInfo, decoder: Decoder, mode: _Sink, capture: str) -> None:
        self.info = info
        self.decoder = decoder
        self.mode = mode
        self.capture = capture
        self.head = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.error: MessageError | None = None


class _ReadOnly:
    """The decoder of a text kept only to be read (``report-text``): it is no report, so a
    transfer-encoding error in it quarantines nothing; the text is dropped instead."""

    def __init__(self, inner: Decoder, leaf: _Leaf) -> None:
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
            self._leaf = _Leaf(info, Identity(), _Sink.DISCARD, "")
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
            self._leaf = _Leaf(info, decoder_for(headers.cte), _Sink.CAPTURE, "feedback-report")
        elif ctype == "text/rfc822-headers" and in_arf:
            self._leaf = _Leaf(info, decoder_for(headers.cte), _Sink.CAPTURE, "original-headers")
        elif ctype == "text/plain" and in_report and not self._report_text_kept:
            # Sniffed like any part; kept (up to _MAX_CAPTURE) if it is not report-like.
            # Whatever the report-type: the text is read only when no feedback part came.
            self._report_text_kept = True
            self._leaf = _Leaf(info, decoder_for(headers.cte), _Sink.SNIFF, "report-text")
        else:
            self._leaf = _Leaf(info, decoder_for(headers.cte), _Sink.SNIFF, "")

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
        self._emit_undelimited(final)
        return False

    def _emit_undelimited(self, final: bool) -> None:
        """No delimiter in the buffer: emit it, but keep back whatever could start one."""
        buf = self._buf
        n = len(buf)
        last_nl = buf.rfind(b"\n")
        if final:
            upto = n
        elif (
            last_nl >= 0
            and n - last_nl - 1 <= _MAX_DELIMITER_LINE
            and (bytes(buf[last_nl + 1 : last_nl + 3]) in (b"", b"-", b"--"))
        ):
            upto = last_nl - 1 if last_nl > 0 and buf[last_nl - 1] == 0x0D else last_nl
        elif (
            self._at_bol
            and last_nl < 0
            and n <= _MAX_DELIMITER_LINE
            and bytes(buf[:2]) in (b"-", b"--")
        ):
            return
        else:
            upto = n - 1 if buf[-1] == 0x0D else n
        self._emit_and_keep(upto)

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
