"""Schema changes that never wait long in a lock queue.

``ALTER TABLE``, ``DROP TABLE`` and ``CREATE TABLE ... PARTITION OF`` need an ACCESS
EXCLUSIVE lock. In PostgreSQL a statement waiting for one queues every later statement on
that table behind it, even those whose own lock would be granted at once: one long ingest
plus one waiting ``ALTER`` would hold every delivery until the SMTP timeout. So each change
runs in a transaction with a short ``lock_timeout``: if the lock is not granted within it,
the transaction gives up (leaving the queue, so deliveries go on), pauses, and tries again,
with growing pauses, until the time it may wait is over; then ``LockTimeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from rua_sink import logs
from rua_sink.errors import LockTimeout
from rua_sink.storage.rows import Conn

log = logs.get("rua_sink.storage")

T = TypeVar("T")

#: How long one attempt waits for its locks: the most that a delivery arriving meanwhile
#: waits behind it.
LOCK_TIMEOUT = "2s"
#: The pauses between attempts: from the first, doubled each time, up to the last.
FIRST_PAUSE = 0.5
LONGEST_PAUSE = 15.0
#: How long ``migrate`` and ``prune`` try by default, in seconds.
DEFAULT_WAIT = 300.0


async def ddl(conn: Conn, change: Callable[[Conn], Awaitable[T]], *, what: str, wait: float) -> T:
    """``change(conn)`` in a transaction of its own under a short ``lock_timeout``, tried
    again while its locks are busy, for up to ``wait`` seconds; ``LockTimeout`` then."""
    deadline = time.monotonic() + wait
    pause = FIRST_PAUSE
    attempts = 0
    while True:
        attempts += 1
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                return await change(conn)
        except asyncpg.LockNotAvailableError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(
                    f"{what}: its tables stayed locked by other transactions for "
                    f"{wait:g} s (tried {LOCK_TIMEOUT} at a time); nothing was changed, "
                    "run it again later"
                ) from exc
            log.info("ddl_lock_busy", what=what, attempt=attempts, retry_in=round(pause, 1))
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)
