"""A byte filter in front of the XML parser: refuse DTDs, repair what reporters break.

Repairs are deterministic and local, and each one is named so that the report can be
marked ``repaired`` with the list (SPEC.md I.64):

- ``unescaped_ampersand``: ``&`` that does not start one of the five predefined
  entities or a character reference becomes ``&amp;`` (``AT&T``). Named entities other
  than the predefined five would need a DTD, which is refused, so they are text too.
- ``unescaped_lt``: ``<`` not followed by a name, ``/``, ``?`` or ``!`` becomes ``&lt;``.
- ``invalid_utf8``: bytes that are not UTF-8 in a document that is (declared, or by
  default) are replaced with U+FFFD.
- ``control_characters``: characters XML 1.0 2.2 forbids are removed.

Any markup declaration (``<!DOCTYPE``, ``<!ENTITY`` ...) anywhere is refused
(ForbiddenXml): RFC 9990 8.1, no DTD means no external entities (XXE) and no entity
expansion (billion laughs). The parser is also configured to load and resolve nothing;
this is the first of two locks.
"""

from __future__ import annotations

import re

from .errors import ForbiddenXml

_AMP = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});)")
_LT = re.compile(rb"<(?![A-Za-z_:/?!\x80-\xff])")
_CTRL_BYTES = bytes((*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)))
# Cheap tests first: the lookahead patterns above cost ~15 ns a byte, these ~1.
_LT_SUSPECT = re.compile(rb"<[^A-Za-z_:/?!\x80-\xff]")
_DECL = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._\-]+)[\"']")
_BOM = b"\xef\xbb\xbf"
# "<!" starts a comment, a CDATA section, or a markup declaration (DOCTYPE, ENTITY,
# ELEMENT, ATTLIST, NOTATION: XML 1.0 2.8); only the first two are allowed here.
_DECLARATION = re.compile(rb"<!(?!--|\[CDATA\[)")
# Longest construct that must not be split between chunks: "&#x10FFFF;".
_CARRY = 12


class XmlCleaner:
    """Feed chunks in order; ``repairs`` lists what was changed, first occurrence each."""

    def __init__(self) -> None:
        self.repairs: list[str] = []
        self._started = False
        self._check_utf8 = True
        self._carry = b""

    @property
    def utf8(self) -> bool:
        """Whether the document is UTF-8 (declared so, or by default), as far as known."""
        return self._check_utf8

    def note(self, repair: str) -> None:
        """Record a repair once, in the order repairs were first made."""
        if repair not in self.repairs:
            self.repairs.append(repair)

    def feed(self, chunk: bytes) -> bytes:
        # Control characters go first, so that none can hide markup from the checks
        # below ("<!DOC\x01TYPE" would become a DOCTYPE once it is removed).
        chunk = self._drop_controls(chunk)
        data = self._carry + chunk
        if not self._started:
            if len(data) < 256 and chunk:
                self._carry = data
                return b""
            data = self._start(data)
        cut = self._safe_cut(data)
        self._carry = data[cut:]
        return self._clean(data[:cut])

    def _drop_controls(self, chunk: bytes) -> bytes:
        kept = chunk.translate(None, _CTRL_BYTES)  # 4x faster than a regex search
        if len(kept) != len(chunk):
            self.note("control_characters")
        return kept

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        if not self._started:
            data = self._start(data)
        return self._clean(data)

    def _start(self, data: bytes) -> bytes:
        self._started = True
        if data.startswith(_BOM):
            data = data[3:]
        # Whitespace before the declaration is a fatal error in XML 2.8; drop it.
        data = data.lstrip(b" \t\r\n")
        m = _DECL.match(data)
        if m and m.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8", b"us-ascii"):
            self._check_utf8 = False  # lxml decodes the declared encoding itself
        return data

    def _safe_cut(self, data: bytes) -> int:
        """Where to split so no reference, tag opening or UTF-8 sequence is cut."""
        n = len(data)
        cut = n
        tail_start = max(0, n - _CARRY)
        for mark in (b"&", b"<"):
            at = data.rfind(mark, tail_start)
            if at >= 0:
                cut = min(cut, at)
        # Back up over an incomplete UTF-8 sequence (at most 3 continuation bytes).
        i = n - 1
        while i >= 0 and i >= n - 4 and data[i] & 0xC0 == 0x80:
            i -= 1
        if i >= 0 and data[i] >= 0xC0:
            cut = min(cut, i)
        return cut  # "<!DOCTYPE" is shorter than _CARRY, so it is never split either

    def _clean(self, data: bytes) -> bytes:
        if b"<!" in data and _DECLARATION.search(data):
            raise ForbiddenXml("DTDs and markup declarations are not accepted")
        if b"&" in data:
            data = self._fix(_AMP, b"&amp;", data, "unescaped_ampersand")
        if _LT_SUSPECT.search(data):
            data = self._fix(_LT, b"&lt;", data, "unescaped_lt")
        if self._check_utf8 and not data.isascii():  # ASCII is UTF-8: the common case
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.note("invalid_utf8")
                data = data.decode("utf-8", "replace").encode("utf-8")
        return data

    def _fix(self, pattern: re.Pattern[bytes], repl: bytes, data: bytes, repair: str) -> bytes:
        fixed, n = pattern.subn(repl, data)
        if n:
            self.note(repair)
        return fixed
