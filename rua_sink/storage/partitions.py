"""The monthly partitions of ``aggregate_records``: their names, creation, and routing.

A record goes to the partition of its report's month. ``serve`` creates the partitions of
the current and the next month ahead (``prepare_months``, at start and every hour), so
that a current report never waits for DDL. This process remembers the partitions it
knows to exist; a write to a month it does not know (a backfill of an old month) raises
``MissingPartition``, and the ingest creates that month (``create_partition``) outside
its transaction before it tries again. A partition dropped by another process
(``rua-sink prune``) is found out when PostgreSQL routes a record nowhere (``_routing``).

Creating or dropping a partition locks ``aggregate_records`` (ACCESS EXCLUSIVE): each one
runs through ``ddl``, under a short lock_timeout, so that it never queues deliveries
behind it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg

from rua_sink.errors import MissingPartition
from rua_sink.storage.ddl import DEFAULT_WAIT, ddl
from rua_sink.storage.rows import Conn, month_start, next_month

#: pg_try_advisory_lock key of ``prepare_months`` ("rua-part"): one replica at a time.
AHEAD_LOCK = 0x7275612D70617274
#: How long a delivery's own partition creation tries before the sender is told to retry.
DELIVERY_WAIT = 20.0


def partition_name(month: datetime) -> str:
    return f"aggregate_records_{month.year:04d}_{month.month:02d}"


class Partitions:
    """A pool, and the record partitions known to exist in its database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._partitions: set[datetime] = set()

    async def load_partitions(self) -> None:
        rows = await self.pool.fetch(
            """
            SELECT c.relname FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname = 'aggregate_records'
            """
        )
        for row in rows:
            name: str = row["relname"]
            year, month = name.rsplit("_", 2)[-2:]
            if year.isdigit() and month.isdigit():
                self._partitions.add(datetime(int(year), int(month), 1, tzinfo=UTC))

    def has_partition(self, month: datetime) -> bool:
        return month in self._partitions

    async def create_partition(self, month: datetime, *, wait: float = DELIVERY_WAIT) -> None:
        """Create the month's partition (unless it exists) on a connection of its own."""
        async with self.pool.acquire() as conn:
            await self._create(conn, month, wait)

    async def _create(self, conn: Conn, month: datetime, wait: float) -> bool:
        """The month's partition, created if missing, in a transaction of its own; under an
        advisory lock so that processes do not race on it. True if it was missing."""
        name = partition_name(month)
        # Mostly it exists (another replica, the timer): no DDL, no table lock then.
        if await conn.fetchval("SELECT to_regclass($1) IS NULL", name):

            async def create(conn: Conn) -> None:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
                # IF NOT EXISTS: another process may have created it meanwhile (this
                # session's catalog cache may not know it yet; CREATE looks again).
                start, end = month.isoformat(), next_month(month).isoformat()
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF aggregate_records "
                    f"FOR VALUES FROM ('{start}') TO ('{end}')"
                )

            await ddl(conn, create, what=f"creating partition {name}", wait=wait)
            created = True
        else:
            created = False
        self._partitions.add(month)
        return created

    async def prepare_months(self, now: datetime, *, wait: float = DEFAULT_WAIT) -> int | None:
        """The partitions of ``now``'s month and the next, created if missing; then the
        partitions known again. One process at a time does it: None if another one holds
        the lock (it is doing the same), else how many this call created."""
        created = None
        async with self.pool.acquire() as conn:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", AHEAD_LOCK):
                try:
                    created = 0
                    for month in (month_start(now), next_month(now)):
                        created += await self._create(conn, month, wait)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", AHEAD_LOCK)
        await self.load_partitions()
        return created

    async def drop_partitions(self, cutoff: datetime, *, wait: float = DEFAULT_WAIT) -> int:
        """Drop the partitions (all of the database's) whose month ends before ``cutoff``,
        each under a short lock_timeout, tried again for up to ``wait`` seconds; returns
        how many."""
        await self.load_partitions()
        dropped = 0
        for month in sorted(self._partitions):
            if next_month(month) <= cutoff:
                name = partition_name(month)

                async def drop(conn: Conn, name: str = name) -> None:
                    await conn.execute(f"DROP TABLE IF EXISTS {name}")

                async with self.pool.acquire() as conn:
                    await ddl(conn, drop, what=f"dropping partition {name}", wait=wait)
                self._partitions.discard(month)
                dropped += 1
        return dropped

    @contextlib.contextmanager
    def _routing(self, month: datetime) -> Iterator[None]:
        """Records of ``month`` written inside: its partition, believed to exist, was
        dropped (``rua-sink prune``) if PostgreSQL finds none for them."""
        try:
            yield
        except asyncpg.CheckViolationError as exc:  # "no partition of relation ... found"
            if exc.table_name != "aggregate_records":
                raise
            self._partitions.discard(month)
            raise MissingPartition(month) from exc
