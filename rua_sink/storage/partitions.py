"""The monthly partitions of ``aggregate_records``: their names, creation, and routing.

A record goes to the partition of its report's month. This process remembers the
partitions it knows to exist; a write to a month it does not know raises
``MissingPartition``, and the ingest creates that month (``create_partition``) outside
its transaction before it tries again. A partition dropped by another process
(``rua-sink prune``) is found out when PostgreSQL routes a record nowhere (``_routing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg

from rua_sink.errors import MissingPartition
from rua_sink.storage.rows import next_month


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

    async def create_partition(self, month: datetime) -> None:
        """Create the month's partition on a connection of its own (its own transaction),
        under an advisory lock so that replicas do not race on it."""
        name = partition_name(month)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF aggregate_records "
                f"FOR VALUES FROM ('{month.isoformat()}') TO ('{next_month(month).isoformat()}')"
            )
        self._partitions.add(month)

    async def drop_partitions(self, cutoff: datetime) -> int:
        """Drop the partitions (all of the database's) whose month ends before ``cutoff``;
        returns how many."""
        await self.load_partitions()
        dropped = 0
        for month in sorted(self._partitions):
            if next_month(month) <= cutoff:
                async with self.pool.acquire() as conn:
                    await conn.execute(f"DROP TABLE IF EXISTS {partition_name(month)}")
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
