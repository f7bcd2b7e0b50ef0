"""Names as rua-sink compares them: domains as A-labels, IP addresses in canonical text,
and the Organizational Domain of a name. Pure functions, shared by the parsers and by the
DNS checks, so that a name means the same in a report and in a lookup."""

from __future__ import annotations

import socket

import idna
from publicsuffixlist import PublicSuffixList

_domain_cache: dict[str, str | None] = {}


def domain(text: str | None) -> str | None:
    """A domain as an A-label, lower case, without the root dot (SPEC.md H.52)."""
    if text is None:
        return None
    cached = _domain_cache.get(text, "")
    if cached != "":
        return cached
    name = _a_label(text)
    if len(_domain_cache) < 65536:
        _domain_cache[text] = name
    return name


def _a_label(text: str) -> str | None:
    name = text.rstrip(".").lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            return name  # not a valid IDN: kept as sent
    return name or None


_ip_cache: dict[str, str] = {}


def ip_address(text: str) -> str:
    """Canonical text of an IP address (compressed IPv6, SPEC.md I.65), else verbatim."""
    cached = _ip_cache.get(text)
    if cached is not None:
        return cached
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        # inet_ntop writes RFC 5952 text for IPv6, dotted quads for IPv4.
        canonical = socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        canonical = text
    if len(_ip_cache) < 65536:
        _ip_cache[text] = canonical
    return canonical


_psl: PublicSuffixList | None = None


def organizational_domain(name: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label (the name itself if it is one)."""
    global _psl  # noqa: PLW0603 - the list is loaded once, on first use, and never changes
    if _psl is None:
        _psl = PublicSuffixList()
    return _psl.privatesuffix(name) or name
