"""The worker processes that parse the records of large aggregate reports.

``core.fanout`` cuts a large document into segments; this module owns the processes
that parse them: started on first use (or by ``warm``), from a fork server so that each
starts small, replaced when one dies (a pool whose worker was killed is broken for
good in ``concurrent.futures``), and stopped with the program. Their results are COPY
text (``copytext.encode_records``), so what crosses back is about the size of the XML
it came from, a fraction of the records as Python objects.

The workers end with the receiving process, however it ends (``kill -9`` included): each
watches it through a pidfd (Linux 5.3), in a thread that waits for the pidfd to become
readable and then exits the worker. PR_SET_PDEATHSIG would not do: a worker's parent is
the fork server, not the receiving process. Once the workers are gone, the fork server
follows by itself: it exits when the last holder of its "alive" pipe (the receiving
process and the workers) has closed it.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from rua_sink.core.fanout import Fanout
from rua_sink.storage.copytext import encode_records

P = ParamSpec("P")
T = TypeVar("T")

# Imported by the fork server once, so that each worker starts with them loaded.
_PRELOAD = ["rua_sink.core.fanout", "rua_sink.storage.copytext"]


def _ready() -> bool:
    return True


def _end_with(parent: int) -> None:
    """Worker initializer: the worker exits as soon as ``parent`` has ended."""
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(1)  # gone before we started
    except OSError:  # no pidfd (an old kernel): look every second
        threading.Thread(target=_poll, args=(parent,), name="lifeline", daemon=True).start()
        return
    threading.Thread(target=_wait, args=(pidfd,), name="lifeline", daemon=True).start()


def _wait(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has ended (pidfd_open(2))
    os._exit(1)


def _poll(parent: int) -> None:
    while True:
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, or its pid taken by another user's process
            pass


class _Respawning(Executor):
    """A process pool that replaces itself when it breaks."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(_PRELOAD)
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=context,
                    initializer=_end_with,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        pool = self._current()
        try:
            return pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return self._current().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def pids(self) -> list[int]:
        """The worker processes' ids (for memory readings)."""
        pool = self._pool
        processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.pid is not None]


class ParsePool:
    """``workers`` processes for the records of large reports; 0 keeps parsing in the
    receiving process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = _Respawning(workers) if workers > 0 else None
        self.fanout: Fanout | None = (
            Fanout(self._executor, encode_records) if self._executor is not None else None
        )

    def warm(self) -> None:
        """Start the workers now, so the first large report does not wait for them."""
        if self._executor is not None:
            for future in [self._executor.submit(_ready) for _ in range(self.workers)]:
                future.result()

    def pids(self) -> list[int]:
        return self._executor.pids() if self._executor is not None else []

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
