"""The core's entry points: a message (or a bare report file) in, events out.

``parse_message`` consumes a message as an iterable of byte chunks, exactly as SMTP
delivers it, and yields :data:`~rua_sink.core.model.Event` values as it goes:

- one ``MessageInfo`` when the top-level header block has been read;
- per aggregate report: ``AggregateReport``, then each ``Record``, then ``AggregateEnd``;
- per TLS report: one ``TlsReport``; per ARF report: one ``FailureReport``;
- ``PartFailed`` for a report-like part that could not be unpacked or parsed.

Errors about a part are values (``PartFailed``), so the other parts of the message
still count. Errors about the message as a whole (size, structure) are raised, and a
message with nothing report-like in it raises ``NotAReport`` at its end.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from rua_sink.core.aggregate import parse_aggregate
from rua_sink.core.failure import parse_exim_text, parse_feedback
from rua_sink.core.fanout import Fanout
from rua_sink.core.limits import Limits
from rua_sink.core.mime import (
    CapturedPart,
    FailedPart,
    MimeWalker,
    SpooledPart,
    SpoolFactory,
    WalkResult,
)
from rua_sink.core.model import Event, MessageInfo, PartFailed, PartInfo
from rua_sink.core.sniff import Kind, sniff
from rua_sink.core.tlsrpt import parse_tlsrpt
from rua_sink.core.unpack import CHUNK, Payload, file_chunks, payloads
from rua_sink.errors import MessageError, MessageTooLarge, NotAReport, UnknownFormat

DEFAULT_LIMITS = Limits()


def default_spool(memory_bytes: int) -> IO[bytes]:
    """A temporary file that stays in memory up to ``memory_bytes``."""
    return tempfile.SpooledTemporaryFile(max_size=memory_bytes)


def parse_message(
    chunks: Iterable[bytes],
    limits: Limits = DEFAULT_LIMITS,
    spool: SpoolFactory = default_spool,
    fanout: Fanout | None = None,
) -> Iterator[Event]:
    walker = MimeWalker(limits, spool)
    feedback: list[CapturedPart] = []
    original: list[CapturedPart] = []
    texts: list[CapturedPart] = []

    def handle(items: list[WalkResult]) -> Iterator[Event]:
        for item in items:
            if isinstance(item, MessageInfo):
                yield item
            elif isinstance(item, SpooledPart):
                try:
                    yield from parse_part(item.file, item.info, limits, spool, fanout)
                finally:
                    item.file.close()
            elif isinstance(item, FailedPart):
                yield PartFailed(item.info, item.error)
            elif item.kind == "feedback-report":
                feedback.append(item)
            elif item.kind == "report-text":
                texts.append(item)
            else:
                original.append(item)

    for chunk in chunks:
        yield from handle(walker.feed(chunk))
    yield from handle(walker.close())
    # RFC 5965 2: one feedback report per ARF message; its reported message follows it.
    headers = original[0].data if original else None
    for part in feedback:
        yield parse_feedback(part.data, part.info, headers)
    # Exim's DMARC failure report: a multipart/report with no feedback part, whose text
    # says it all. Only the exact shape is taken (parse_exim_text), not any text.
    exim = parse_exim_text(texts[0].data, texts[0].info) if texts and not feedback else None
    if exim is not None:
        yield exim
    if walker.report_like_parts == 0 and not feedback and exim is None:
        raise NotAReport("the message has no report-like part")


def parse_part(
    file: IO[bytes],
    info: PartInfo,
    limits: Limits,
    spool: SpoolFactory,
    fanout: Fanout | None = None,
) -> Iterator[Event]:
    """Every report in one decoded part; failures become ``PartFailed`` values."""
    layers = payloads(file, info, limits, spool)
    while True:
        try:
            payload = next(layers)
        except StopIteration:
            break
        except MessageError as exc:
            yield PartFailed(info, exc)
            break
        try:
            yield from _documents(payload, limits, fanout)
        except MessageError as exc:
            yield PartFailed(payload.info, exc)


def _documents(payload: Payload, limits: Limits, fanout: Fanout | None) -> Iterator[Event]:
    if payload.kind is Kind.XML:
        yield from parse_aggregate(payload.chunks, payload.info, limits, fanout)
    elif payload.kind is Kind.JSON:
        yield parse_tlsrpt(payload.chunks, payload.info, limits)
    else:
        raise UnknownFormat("payload is neither XML, JSON, gzip, zlib nor zip")


def is_bare_report(head: bytes) -> bool:
    """Whether a file holds a report itself (XML, JSON, an archive) rather than a message."""
    return sniff(head) is not Kind.UNKNOWN


def parse_file(
    path: Path, limits: Limits = DEFAULT_LIMITS, spool: SpoolFactory = default_spool
) -> Iterator[Event]:
    """A message (.eml) or a bare report file (.xml, .xml.gz, .zip, .zlib, .json)."""
    with path.open("rb") as file:
        size = path.stat().st_size
        if size > limits.max_message_bytes:
            raise MessageTooLarge(size, limits.max_message_bytes)
        yield from parse_stream(file, path.name, limits, spool)


def parse_stream(
    file: IO[bytes],
    name: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    spool: SpoolFactory = default_spool,
    fanout: Fanout | None = None,
) -> Iterator[Event]:
    """Like ``parse_file`` for an open, seekable file positioned at its start. With
    ``fanout``, large aggregate reports are parsed on several cores."""
    head = file.read(64)
    file.seek(0)
    if is_bare_report(head):
        yield from parse_part(file, PartInfo(index=1, filename=name), limits, spool, fanout)
    else:
        yield from parse_message(file_chunks(file, CHUNK), limits, spool, fanout)
