"""Archive layers, streamed, under byte, ratio, member and depth caps.

A decoded report part is gzip (RFC 7489 7.2.1.1, RFC 9990 3.5.2), zip (Google, not in
any RFC), bare zlib (seen from AOL), plain XML or JSON, or any of these inside another
(gzip in gzip, zip in gzip). Each layer is sniffed from its first bytes, never from the
media type, and unpacked as a stream of chunks: memory does not grow with the report.

RFC 9990 8.1 asks receivers to guard against zip bombs; every layer here counts what
it produces and stops at ``max_decompressed_bytes`` or at ``max_compression_ratio``.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from rua_sink.core.limits import Limits
from rua_sink.core.model import PartInfo
from rua_sink.core.sniff import Kind, sniff
from rua_sink.errors import (
    ArchiveTooDeep,
    CompressionRatioExceeded,
    DecompressedTooLarge,
    DecompressionError,
    TooManyArchiveMembers,
    TruncatedArchive,
)

# Below glibc's mmap threshold, which ``serve`` pins (see heap): buffers of this size are
# reused from the heap, where larger ones would each be mapped, zeroed and unmapped.
CHUNK = 64 * 1024
_HEAD = 16

Chunks = Iterator[bytes]
SpoolFactory = Callable[[int], IO[bytes]]


@dataclass(slots=True)
class Payload:
    """One innermost document: XML, JSON, or something unknown, as a chunk stream."""

    info: PartInfo
    kind: Kind
    chunks: Chunks


def file_chunks(file: IO[bytes], size: int = CHUNK) -> Chunks:
    while chunk := file.read(size):
        yield chunk


def peek(chunks: Chunks, n: int) -> tuple[bytes, Chunks]:
    """The first ``n`` bytes (fewer at the end) and a stream that still starts with them."""
    head = bytearray()
    pending: list[bytes] = []
    for chunk in chunks:
        pending.append(chunk)
        head += chunk
        if len(head) >= n:
            break

    def replay() -> Chunks:
        yield from pending
        yield from chunks

    return bytes(head[:n]), replay()


def payloads(
    file: IO[bytes], info: PartInfo, limits: Limits, spool: SpoolFactory
) -> Iterator[Payload]:
    """Every innermost document of a decoded part held in ``file`` (positioned at 0)."""
    budget = _Budget(limits.max_decompressed_bytes)
    yield from _layer(file_chunks(file), info, limits, spool, 0, file, budget)


def _layer(
    chunks: Chunks,
    info: PartInfo,
    limits: Limits,
    spool: SpoolFactory,
    depth: int,
    seekable: IO[bytes] | None,
    budget: _Budget,
) -> Iterator[Payload]:
    head, chunks = peek(chunks, _HEAD)
    kind = sniff(head)
    if kind in (Kind.GZIP, Kind.ZLIB, Kind.ZIP) and depth + 1 > limits.max_archive_depth:
        raise ArchiveTooDeep(depth + 1, limits.max_archive_depth)
    if kind is Kind.GZIP or kind is Kind.ZLIB:
        inner = _inflate(chunks, limits, budget, multi_member=kind is Kind.GZIP)
        yield from _layer(inner, info.with_layer(str(kind)), limits, spool, depth + 1, None, budget)
    elif kind is Kind.ZIP:
        file = seekable if seekable is not None else _spool_all(chunks, limits, spool)
        try:
            for name, member in _zip_members(file, limits, budget):
                layer = info.with_layer(f"zip:{name}")
                yield from _layer(member, layer, limits, spool, depth + 1, None, budget)
        finally:
            if file is not seekable:
                file.close()
    else:
        yield Payload(info, kind, chunks)


def _spool_all(chunks: Chunks, limits: Limits, spool: SpoolFactory) -> IO[bytes]:
    """A zip inside another layer: zipfile needs to seek, so write it out first."""
    file = spool(limits.spool_memory_bytes)
    for chunk in chunks:
        file.write(chunk)
    file.seek(0)
    return file


class _Budget:
    """Decompressed bytes of one part, every layer and member together."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise DecompressedTooLarge(self.used, self.limit)


class _Meter:
    """Counts one layer's output: the part's byte budget, and this layer's ratio."""

    __slots__ = ("_budget", "_limits", "produced")

    def __init__(self, limits: Limits, budget: _Budget) -> None:
        self._limits = limits
        self._budget = budget
        self.produced = 0

    def add(self, out: int, consumed: int) -> None:
        self.produced += out
        self._budget.spend(out)
        lim = self._limits
        if (
            self.produced > lim.ratio_floor_bytes
            and self.produced > consumed * lim.max_compression_ratio
        ):
            ratio = self.produced // max(consumed, 1)
            raise CompressionRatioExceeded(ratio, lim.max_compression_ratio)


def _inflate(chunks: Chunks, limits: Limits, budget: _Budget, *, multi_member: bool) -> Chunks:
    """gzip or zlib, streamed. Trailing garbage after the last member is ignored
    (a stray CRLF after Mimecast's gzip, SPEC.md I.58); further gzip members are read
    (RFC 1952 2.2)."""
    meter = _Meter(limits, budget)
    # wbits 47 = 32 + 15: detect a gzip or zlib header, 32 KiB window.
    d = zlib.decompressobj(wbits=47)
    consumed = 0
    started = False
    done = False
    pending = b""
    for chunk in chunks:
        if done:
            continue  # drain the source; what follows the last member is ignored
        data = pending + chunk
        pending = b""
        while data:
            if d.eof:
                # Between members: another gzip member, or trailing garbage.
                if len(data) < 2:
                    pending = data
                    break
                if not (multi_member and data.startswith(b"\x1f\x8b")):
                    done = True
                    break
                d = zlib.decompressobj(wbits=47)
                started = False
            try:
                out = d.decompress(data, CHUNK)
            except zlib.error as exc:
                raise DecompressionError(f"corrupt compressed data: {exc}") from exc
            started = True
            if d.eof:
                used = len(data) - len(d.unused_data)
                data = d.unused_data
            else:
                used = len(data) - len(d.unconsumed_tail)
                data = d.unconsumed_tail
            consumed += used
            if out:
                meter.add(len(out), consumed)
                yield out
    if started and not d.eof:
        raise TruncatedArchive("compressed stream ends before its end marker")
    if not started:
        raise TruncatedArchive("empty compressed stream")


def _zip_entry_count(file: IO[bytes]) -> int | None:
    """Entries declared by the end-of-central-directory record (APPNOTE 4.3.16, 4.3.14),
    read before zipfile builds one object per entry."""
    file.seek(0, 2)
    size = file.tell()
    tail_len = min(size, 22 + 65535 + 20 + 56)
    file.seek(size - tail_len)
    tail = file.read(tail_len)
    file.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (count,) = struct.unpack_from("<H", tail, at + 10)
    if count == 0xFFFF:
        at64 = tail.rfind(b"PK\x06\x06", 0, at)
        if at64 >= 0 and at64 + 40 <= len(tail):
            (count,) = struct.unpack_from("<Q", tail, at64 + 32)
    return int(count)


def _zip_members(file: IO[bytes], limits: Limits, budget: _Budget) -> Iterator[tuple[str, Chunks]]:
    declared = _zip_entry_count(file)
    if declared is not None and declared > limits.max_zip_members:
        raise TooManyArchiveMembers(declared, limits.max_zip_members)
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DecompressionError(f"not a readable zip archive: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > limits.max_zip_members:
            raise TooManyArchiveMembers(len(members), limits.max_zip_members)
        if not members:
            raise DecompressionError("zip archive has no members")
        for member in members:
            if member.flag_bits & 0x1:
                raise DecompressionError(f"zip member {member.filename!r} is encrypted")
            yield member.filename, _zip_read(archive, member, limits, budget)


def _zip_read(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: Limits, budget: _Budget
) -> Chunks:
    meter = _Meter(limits, budget)
    try:
        with archive.open(member) as stream:
            while chunk := stream.read(CHUNK):
                meter.add(len(chunk), member.compress_size)
                yield chunk
    except EOFError as exc:
        raise TruncatedArchive(f"zip member {member.filename!r} is truncated") from exc
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError) as exc:
        raise DecompressionError(f"zip member {member.filename!r}: {exc}") from exc
