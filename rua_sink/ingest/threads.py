"""The path of a large message: the pure core runs in a worker thread and hands its
events over in batches through a bounded queue, so the event loop keeps serving while a
large report is parsed, and memory holds a few batches at most."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rua_sink.core.model import Event, RecordBatch

_END = object()


@dataclass(slots=True)
class _Raised:
    exc: BaseException


class _Producer:
    """The thread's side: runs the core's generator, puts its events on the queue in
    batches, and stops when told to (``stop``); ``ended`` is set once it has finished,
    its generator closed."""

    def __init__(
        self,
        produce: Callable[[], Iterator[Event]],
        queue: asyncio.Queue[Any],
        batch: int,
        cpu: list[float] | None,
    ) -> None:
        self.produce = produce
        self.queue = queue
        self.batch = batch
        self.cpu = cpu
        self.loop = asyncio.get_running_loop()
        self.stop = threading.Event()
        self.ended = asyncio.Event()

    def put(self, item: object) -> bool:
        """Put ``item`` on the queue, waiting for room; False once told to stop."""
        if self.stop.is_set():
            return False
        fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                fut.result(timeout=0.2)
                return not self.stop.is_set()
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    return False

    def run(self) -> None:
        events = self.produce()
        put, batch = self.put, self.batch
        try:
            pending: list[Event] = []
            for ev in events:
                pending.append(ev)
                # A batch of records parsed by a worker is worth a list of its own.
                if len(pending) >= batch or type(ev) is RecordBatch:
                    if not put(pending):
                        return
                    pending = []
            if pending and not put(pending):
                return
            if self.cpu is not None:
                self.cpu.append(time.thread_time())  # this thread's CPU time: the parse
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Raised(exc))
        finally:
            # Here, in this thread: the generator's own clean-up (spooled parts, segments
            # handed to parse workers) is done before the thread ends.
            close = getattr(events, "close", None)
            if close is not None:
                close()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                self.loop.call_soon_threadsafe(self.ended.set)

    async def halt(self) -> None:
        """Tell the thread to stop, and wait until it has ended."""
        self.stop.set()
        # Emptying the queue lets a put the thread waits on complete; the thread then
        # sees ``stop`` and ends, within one batch of events.
        while not self.ended.is_set():
            _drain(self.queue)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), 0.05)
        _drain(self.queue)


async def events_in_thread(
    produce: Callable[[], Iterator[Event]],
    batch: int = 2000,
    depth: int = 6,
    cpu: list[float] | None = None,
) -> AsyncGenerator[list[Event], None]:
    """Run a core generator in a thread; yield its events in lists of up to ``batch``.

    At most ``depth`` batches wait in the queue: the thread blocks when the consumer
    (the database) is slower, so memory stays bounded. An exception in the thread is
    raised here, in the consumer.

    However the consumer leaves (the end, an exception, ``aclose``), the thread is
    stopped and joined before this generator returns: the generator reads the message's
    file, and whoever reads that file next (the next attempt of the same message) must
    find it to itself, at the position it seeks to.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    producer = _Producer(produce, queue, batch, cpu)
    thread = threading.Thread(target=producer.run, name="rua-sink-parse", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        await producer.halt()
        thread.join()  # it has left ``run``: at once


def _drain(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()
