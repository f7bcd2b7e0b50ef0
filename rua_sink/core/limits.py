"""Every cap the core enforces, in one frozen value (see errors.LimitExceeded)."""

from __future__ import annotations

from dataclasses import dataclass, fields

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
    #: One line of a body. RFC 5322 2.1.1 allows 998; this is generous for exports.
    max_line_bytes: int = 1 * MiB
    #: Nesting of multiparts and message/rfc822.
    max_mime_depth: int = 20
    #: MIME parts in one message, all levels.
    max_mime_parts: int = 500
    #: Decompressed bytes of one report part, all archive layers together.
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
