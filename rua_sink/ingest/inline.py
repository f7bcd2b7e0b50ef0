"""The path of a small message: parsed on the event loop, in slices, with no thread.

A small message parses in a millisecond or so, less than a thread hand-over costs. Its
events can be read ahead of its transaction, to see whether it is one whole aggregate
report and nothing else (``Inline.one_report``), which the ingest then stores in one
statement.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator
from typing import IO

from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateEnd, AggregateReport, Event, MessageInfo, Record
from rua_sink.core.pipeline import parse_stream

#: Messages up to this size are hashed and parsed on the event loop, not in a thread.
INLINE_BYTES = 256 * 1024
INLINE_BATCH = 500


def size_of(file: IO[bytes]) -> int:
    """The file's size in bytes; its position stays where it was."""
    position = file.tell()
    size = file.seek(0, 2)
    file.seek(position)
    return size


#: A message's one aggregate report, whole: its head, its records, its end.
OneReport = tuple[AggregateReport, list[Record], AggregateEnd]


class Inline:
    """A small message's events, parsed on the event loop in slices between which other
    sessions get their turn: a small message parses in a millisecond or so, less than a
    thread hand-over costs. Events can be read ahead (``read``); ``batches`` hands them
    on, then the rest of the stream."""

    def __init__(self, file: IO[bytes], name: str | None, limits: Limits) -> None:
        self._stream = parse_stream(file, name, limits)
        self._ended = False
        #: read ahead and not handed on yet
        self.events: list[Event] = []
        #: what the stream raised while reading ahead; ``batches`` raises it in turn
        self.error: Exception | None = None
        self.parse_seconds = 0.0

    def _slice(self) -> list[Event]:
        started = time.thread_time()
        try:
            events = list(itertools.islice(self._stream, INLINE_BATCH))
        finally:
            self.parse_seconds += time.thread_time() - started
        self._ended = not events
        return events

    async def read(self, limit: int) -> None:
        """Read ahead to the end of the message, or to ``limit`` events or so."""
        try:
            while not self._ended and len(self.events) < limit:
                self.events += self._slice()
                await asyncio.sleep(0)
        except Exception as exc:  # noqa: BLE001 - the stream's own error, raised in turn
            self.error = exc
            self._ended = True

    def one_report(self) -> OneReport | None:
        """The message's one aggregate report, whole, if the message was read to its end
        and holds nothing else to store."""
        if not self._ended or self.error is not None:
            return None
        head: AggregateReport | None = None
        end: AggregateEnd | None = None
        records: list[Record] = []
        for ev in self.events:
            if isinstance(ev, Record) and head is not None and end is None:
                records.append(ev)
            elif isinstance(ev, AggregateReport) and head is None:
                head = ev
            elif isinstance(ev, AggregateEnd) and head is not None and end is None:
                end = ev
            elif not isinstance(ev, MessageInfo):
                return None
        return None if head is None or end is None else (head, records, end)

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        events, self.events = self.events, []
        for i in range(0, len(events), INLINE_BATCH):
            yield events[i : i + INLINE_BATCH]
        if self.error is not None:
            raise self.error
        while not self._ended:
            if events := self._slice():
                yield events
            await asyncio.sleep(0)
