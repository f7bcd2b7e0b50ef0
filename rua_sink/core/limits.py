"""Every cap the core enforces, in one frozen value (see errors.LimitExceeded)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one message may make the core do.

    The defaults follow SPEC.md H.55: SIZE 64 MiB, decompressed cap 1 GiB. RFC 7489 8
    asks receivers to take at least 10 MB, so no default is below that.
    """

    #: Raw message size, as received (RFC 1870 SIZE).
    max_message_bytes: int = 64 * MiB
    #: One header block (the message's or a part's).
    max_header_bytes: int = 256 * KiB
    #: One line: of the SMTP data (a bare LF ends one too), and of a body. RFC 5322 2.1.1
    #: allows 998; this is generous for exports written on one line.
    max_line_bytes: int = 1 * MiB
    #: Nesting of multiparts and message/rfc822.
    max_mime_depth: int = 20
    #: MIME parts in one message, all levels.
    max_mime_parts: int = 500
    #: Decompressed bytes of one report part, all archive layers and members together.
    max_decompressed_bytes: int = 1 * GiB
    #: Output:input ratio of one compressed layer, checked past ``ratio_floor_bytes``.
    max_compression_ratio: int = 500
    #: Output below which the ratio is not checked (small files compress well).
    ratio_floor_bytes: int = 1 * MiB
    #: Members of one zip archive.
    max_zip_members: int = 100
    #: Archives inside archives (zip in gzip, gzip in gzip).
    max_archive_depth: int = 3
    #: Records of one aggregate report.
    max_records: int = 5_000_000
    #: Element nesting in a report XML document (libxml2 refuses more than 256 itself).
    max_xml_depth: int = 32
    #: Bytes of XML of one top-level element (a record with its results, metadata):
    #: what the parser holds in memory at once.
    max_element_bytes: int = 8 * MiB
    #: One TLS report (JSON is read whole, under this cap).
    max_json_bytes: int = 32 * MiB
    #: Decoded bytes of a part kept in memory before spilling to a temporary file.
    spool_memory_bytes: int = 1 * MiB

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_values(self, values: Mapping[str, str]) -> Limits:
        """A copy with some limits set from text: ``{"max_records": "1000"}``.

        Sizes take a binary suffix (``64MiB``, ``1g``); every value must be positive.
        """
        changes: dict[str, int] = {}
        for name, text in values.items():
            if name not in self.names():
                raise ValueError(f"unknown limit {name!r}; known: {', '.join(self.names())}")
            changes[name] = parse_size(text)
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "RUA_SINK_") -> Limits:
        """Limits from ``RUA_SINK_MAX_MESSAGE_BYTES`` and the like; unset ones keep defaults.
        A bad value is a ValueError that starts with the variable's name."""
        limits = cls()
        for name in cls.names():
            variable = prefix + name.upper()
            if variable in env:
                try:
                    limits = limits.with_values({name: env[variable]})
                except ValueError as exc:
                    raise ValueError(f"{variable}: {exc}") from exc
        return limits


#: What each limit caps, in the words of docs/configuration.md's table (which
#: tests/test_config_command.py holds to it); ``rua-sink serve --help`` and ``config`` show it.
HELP: dict[str, str] = {
    "max_message_bytes": "raw message size (the SMTP SIZE)",
    "max_header_bytes": "one header block",
    "max_line_bytes": "one line of a message: a DATA line over SMTP, a body line when "
    "parsed (RFC 5322 allows 998)",
    "max_mime_depth": "nesting of multiparts and `message/rfc822`",
    "max_mime_parts": "MIME parts in one message",
    "max_decompressed_bytes": "decompressed bytes of one part, all layers and zip members together",
    "max_compression_ratio": "output/input of one layer, past `ratio_floor_bytes`",
    "ratio_floor_bytes": "output below which the ratio is not checked",
    "max_zip_members": "members of one zip archive (read before opening it)",
    "max_archive_depth": "archives inside archives",
    "max_records": "records of one aggregate report",
    "max_xml_depth": "element nesting (libxml2 also stops at 256)",
    "max_element_bytes": "XML of one top-level element, what the parser holds at once",
    "max_json_bytes": "one TLS report (JSON is read whole)",
    "spool_memory_bytes": "decoded part kept in memory before spilling to a temporary file",
}


_SIZE = re.compile(r"^\s*(\d+)\s*(k|m|g|t)?(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """``"1000"`` -> 1000; ``"64MiB"`` or ``"64m"`` -> 64 * 2**20 (binary units, RFC 7489 6.2)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"not a size or count: {text!r}")
    unit = m.group(2).lower() if m.group(2) else None
    value = int(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"must be positive: {text!r}")
    return value
