"""Transfer decoding of a body fed in chunks (RFC 2045 6).

Each decoder holds back only what cannot be decoded yet (a base64 quantum, a
quoted-printable line), so a body is never held whole.
"""

from __future__ import annotations

import binascii
from typing import Protocol

from rua_sink.errors import TransferEncodingError


class Decoder(Protocol):
    """Transfer decoding of one body, fed in chunks: ``decode`` each, then ``flush``."""

    def decode(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Identity:
    """7bit, 8bit, binary: the bytes as they are."""

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


def decoder_for(cte: str) -> Decoder:
    """The decoder of a Content-Transfer-Encoding token (lower case)."""
    if cte == "base64":
        return _Base64()
    if cte == "quoted-printable":
        return _QuotedPrintable()
    return Identity()  # 7bit, 8bit, binary, and unknown tokens (RFC 2045 6.4)
