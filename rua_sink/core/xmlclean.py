"""A byte filter in front of the XML parser: refuse DTDs, repair what reporters break.

Repairs are deterministic and local, and each one is named so that the report can be
marked ``repaired`` with the list (SPEC.md I.64):

- ``unescaped_ampersand``: ``&`` that does not start one of the five predefined
  entities or a character reference becomes ``&amp;`` (``AT&T``). Named entities other
  than the predefined five would need a DTD, which is refused, so they are text too.
- ``unescaped_lt``: ``<`` becomes ``&lt;`` where it cannot start markup: not followed by a
  name, ``/``, ``?`` or ``!`` (``a < b``), or followed by a name that is followed by
  anything but white space, ``>`` or ``/>`` (``<noreply@example.net>``,
  ``bad<example.net</header_from>``), which XML 1.0 3.1 never allows in a tag. The second
  test costs about three times the first, so it runs on a document's first MiB only
  (``NAME_CHECK_BYTES``: the metadata, with its contact fields, and the records of any
  small report); a name of more than 256 characters is left to the parser.
- ``invalid_utf8``: bytes that are not UTF-8 in a document that is (declared, or by
  default) are replaced with U+FFFD.
- ``control_characters``: characters XML 1.0 2.2 forbids are removed.

Any markup declaration (``<!DOCTYPE``, ``<!ENTITY`` ...) anywhere is refused
(ForbiddenXml): RFC 9990 8.1, no DTD means no external entities (XXE) and no entity
expansion (billion laughs). The parser is also configured to load and resolve nothing;
this is the first of two locks.
"""

from __future__ import annotations

import itertools
import re

from rua_sink.errors import ForbiddenXml

_AMP = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});)")
# XML 1.0 2.3 names, in bytes; any non-ASCII byte counts as a name character, so that a
# name in another script is never taken for text.
_NAME_START = rb"A-Za-z_:\x80-\xff"
_NAME_CHAR = rb"\w.\-:\x80-\xff"
_MAX_NAME = 256
# A "<" and a name followed by a character that XML 1.0 3.1 never allows after a tag's
# name (only white space, ">" and "/>" may follow it): text, not a tag.
_NOT_A_TAG = (
    rb"["
    + _NAME_START
    + rb"]["
    + _NAME_CHAR
    + rb"]{0,%d}+(?:[^" % (_MAX_NAME - 1)
    + _NAME_CHAR
    + rb"\s/>]|/[^>])"
)
_LT = re.compile(rb"<(?![" + _NAME_START + rb"/?!])")
_LT_OR_NAME = re.compile(rb"<(?:(?![" + _NAME_START + rb"/?!])|(?=" + _NOT_A_TAG + rb"))")
_CTRL_BYTES = bytes((*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)))
# Cheap tests first: the lookahead patterns above cost ~15 ns a byte, these ~1 and ~4.
_LT_SUSPECT = re.compile(rb"<[^" + _NAME_START + rb"/?!]")
_LT_OR_NAME_SUSPECT = re.compile(rb"<(?:[^" + _NAME_START + rb"/?!]|" + _NOT_A_TAG + rb")")
#: Bytes at the start of a document in which a "<" is also checked for the name after it.
NAME_CHECK_BYTES = 1024 * 1024
# The end of a chunk that may still become a tag, or text by the rule above, once the
# next chunk is read: "<", "</", a name of at most _MAX_NAME characters, a "/".
_OPEN_AT_END = re.compile(rb"</?[" + _NAME_CHAR + rb"]{0,%d}/?" % _MAX_NAME)
_DECL = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._\-]+)[\"']")
_BOM = b"\xef\xbb\xbf"
# "<!" starts a comment, a CDATA section, or a markup declaration (DOCTYPE, ENTITY,
# ELEMENT, ATTLIST, NOTATION: XML 1.0 2.8); only the first two are allowed here.
_DECLARATION = re.compile(rb"<!(?!--|\[CDATA\[)")
# Longest construct that must not be split between chunks: "&#x10FFFF;".
_CARRY = 12


class XmlCleaner:
    """Feed chunks in order; ``repairs`` lists what was changed, first occurrence each."""

    def __init__(self, name_check_bytes: int = NAME_CHECK_BYTES) -> None:
        self.repairs: list[str] = []
        self._name_check_bytes = name_check_bytes
        self._started = False
        self._check_utf8 = True
        self._carry = b""
        self._offset = 0  # bytes passed to _clean so far

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
        return self._clean(data, cut)

    def _drop_controls(self, chunk: bytes) -> bytes:
        kept = chunk.translate(None, _CTRL_BYTES)  # 4x faster than a regex search
        if len(kept) != len(chunk):
            self.note("control_characters")
        return kept

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        if not self._started:
            data = self._start(data)
        return self._clean(data, len(data))

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
        at = data.rfind(b"<", max(0, n - _MAX_NAME - 3))
        if 0 <= at < cut and _OPEN_AT_END.fullmatch(data, at):
            cut = at
        # Back up over an incomplete UTF-8 sequence (at most 3 continuation bytes).
        i = n - 1
        while i >= 0 and i >= n - 4 and data[i] & 0xC0 == 0x80:
            i -= 1
        if i >= 0 and data[i] >= 0xC0:
            cut = min(cut, i)
        return cut  # "<!DOCTYPE" is shorter than _CARRY, so it is never split either

    def _clean(self, ahead: bytes, end: int) -> bytes:
        """``ahead[:end]`` cleaned; the bytes after it (the start of the carry) are only
        looked at: the name test may need the character after a name."""
        data = ahead[:end] if end < len(ahead) else ahead
        if b"<!" in data and _DECLARATION.search(data):
            raise ForbiddenXml("DTDs and markup declarations are not accepted")
        # "<" first: the "&lt;" it writes is an entity the ampersand repair leaves alone.
        start, self._offset = self._offset, self._offset + len(data)
        data = self._fix_lt(data, self._name_check_bytes - start, ahead)
        if b"&" in data:
            data = self._fix(_AMP, b"&amp;", data, "unescaped_ampersand")
        if self._check_utf8 and not data.isascii():  # ASCII is UTF-8: the common case
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.note("invalid_utf8")
                data = data.decode("utf-8", "replace").encode("utf-8")
        return data

    def _fix_lt(self, data: bytes, checked: int, ahead: bytes) -> bytes:
        """The ``unescaped_lt`` repair of ``data``, with the name test for each "<" in its
        first ``checked`` bytes; ``ahead`` is ``data`` and the bytes that follow it.

        What follows each "<" is read whole (``_safe_cut`` keeps a name that a chunk ends
        in for the next one, and ``ahead`` has the rest), so the result does not depend
        on where the chunks end."""
        n = len(data)
        limit = max(0, min(checked, n))
        named = limit > 0 and _LT_OR_NAME_SUSPECT.search(ahead) is not None
        if not named and (limit == n or _LT_SUSPECT.search(ahead, limit) is None):
            return data  # the common case
        out: list[bytes] = []
        last = 0
        # Before the limit, the "<" each pattern finds; past it, the first pattern's.
        found = (
            itertools.takewhile(lambda m: m.start() < limit, _LT_OR_NAME.finditer(ahead))
            if named
            else iter(())
        )
        for m in itertools.chain(found, _LT.finditer(ahead, limit)):
            if m.start() >= n:
                break
            out += (data[last : m.start()], b"&lt;")
            last = m.end()
        if not out:
            return data
        self.note("unescaped_lt")
        out.append(data[last:])
        return b"".join(out)

    def _fix(self, pattern: re.Pattern[bytes], repl: bytes, data: bytes, repair: str) -> bytes:
        fixed, n = pattern.subn(repl, data)
        if n:
            self.note(repair)
        return fixed
