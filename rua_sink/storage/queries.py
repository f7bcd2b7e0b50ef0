"""Maintenance queries: the raw messages to read again, listing and reading them, and
pruning what is older than the retention."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from rua_sink.core.arrival import Envelope
from rua_sink.core.version import PARSER_VERSION
from rua_sink.outcomes import RawStatus
from rua_sink.storage.ddl import DEFAULT_WAIT
from rua_sink.storage.partitions import Partitions
from rua_sink.storage.rows import VERSION_OF, mail_auth_of


class Queries(Partitions):
    """Reads and deletes over the pool, outside any message's transaction."""

    async def raw_messages(
        self,
        *,
        every: bool = False,
        any_version: bool = False,
        reasons: Sequence[str] = (),
    ) -> list[int]:
        """Raw messages to read again: those not stored as reports (``not_a_report``,
        ``quarantined``) by an older parser version, and those kept for one of
        ``reasons`` whatever the version; with ``any_version``, all of those not stored
        as reports; with ``every``, all."""
        rows = await self.pool.fetch(
            "SELECT id FROM raw_messages WHERE $1 OR (status <> 'stored' AND "  # noqa: S608
            f"($2 OR {VERSION_OF} < $3 OR reason = ANY($4::text[]))) ORDER BY id",
            every,
            any_version,
            PARSER_VERSION,
            list(reasons),
        )
        return [r["id"] for r in rows]

    async def list_raw(self, statuses: Sequence[RawStatus], limit: int) -> list[asyncpg.Record]:
        """The newest raw messages with these statuses, each with the first 16 KiB of its
        gzip'd copy: enough for its header block."""
        return await self.pool.fetch(
            "SELECT id, received_at, status, reason, detail, size_bytes, source, "
            "host(peer_ip) AS peer_ip, mail_from, rcpt_to, "
            "substring(content_gzip FROM 1 FOR 16384) AS head_gzip FROM raw_messages "
            "WHERE status = ANY($1::text[]) ORDER BY id DESC LIMIT $2",
            list(statuses),
            limit,
        )

    async def raw_content(self, raw_id: int) -> tuple[bytes, Envelope, datetime]:
        row = await self.pool.fetchrow(
            "SELECT content_gzip, source, host(peer_ip) AS peer_ip, helo, mail_from, rcpt_to, "
            "received_at, auth_from_domain, auth_spf, auth_spf_domain, auth_dkim_domains, "
            "auth_dkim_selectors, auth_dkim_results, auth_dkim_aligned, auth_spf_aligned, "
            "auth_dmarc FROM raw_messages WHERE id = $1",
            raw_id,
        )
        if row is None:
            raise KeyError(raw_id)
        envelope = Envelope(
            source=row["source"],
            peer_ip=row["peer_ip"],
            helo=row["helo"],
            mail_from=row["mail_from"],
            rcpt_to=tuple(row["rcpt_to"]),
            auth=mail_auth_of(row),
        )
        return row["content_gzip"], envelope, row["received_at"]

    async def prune(
        self,
        cutoff: datetime,
        failure_cutoff: datetime | None = None,
        *,
        lock_wait: float = DEFAULT_WAIT,
    ) -> dict[str, int]:
        """Drop record partitions that end before ``cutoff`` (waiting for their locks up to
        ``lock_wait`` seconds each, see ``ddl``), and older reports and raw messages;
        failure reports (which carry personal data, RFC 9991 7) and their raw messages go
        at ``failure_cutoff`` when that is sooner."""
        dropped = await self.drop_partitions(cutoff, wait=lock_wait)
        async with self.pool.acquire() as conn, conn.transaction():

            async def delete(table: str, where: str, before: datetime = cutoff) -> int:
                """Rows of ``table`` matching ``where`` (with ``$1`` the time before which
                they go): deleted, counted. The SQL is this module's own, never input."""
                sql = f"WITH d AS (DELETE FROM {table} WHERE {where} RETURNING 1) "  # noqa: S608
                return int(await conn.fetchval(sql + "SELECT count(*) FROM d", before))  # noqa: S608

            # A failure report's raw message takes the report with it (ON DELETE CASCADE).
            failure_before = max(cutoff, failure_cutoff or cutoff)
            failures = await delete(
                "raw_messages",
                "id IN (SELECT raw_message_id FROM failure_reports WHERE stored_at < $1)",
                failure_before,
            )
            # A copy of a failure report stored before has no report row, but its message,
            # redacted, still holds the reported header fields: it goes at the same time.
            copies = await delete("raw_messages", "redacted AND received_at < $1", failure_before)
            reports = await delete("aggregate_reports", "end_at < $1")
            await conn.execute("DELETE FROM aggregate_records WHERE begin_at < $1", cutoff)
            tls = await delete("tls_reports", "end_at < $1")
            raw = await delete("raw_messages", "received_at < $1")
            # Looked-up source addresses that no record names any more.
            hosts = await delete(
                "source_hosts s",
                "s.first_seen < $1 AND NOT EXISTS "
                "(SELECT 1 FROM aggregate_records r WHERE r.source_ip = s.ip)",
            )
        return {
            "partitions_dropped": dropped,
            "aggregate_reports": reports,
            "tls_reports": tls,
            "failure_reports": failures,
            "raw_messages": raw + failures + copies,
            "source_hosts": hosts,
        }

    async def record_prune(
        self, cutoff: datetime, failure_cutoff: datetime, counts: dict[str, int]
    ) -> datetime:
        """A prune that finished, recorded (``prune_runs``) for ``serve``'s gauge of the
        last success; the records older than ``cutoff`` go, as the rest did. Returns the
        time recorded."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM prune_runs WHERE finished_at < $1", cutoff)
            finished: datetime = await conn.fetchval(
                "INSERT INTO prune_runs (cutoff, failure_cutoff, counts) "
                "VALUES ($1, $2, $3::jsonb) RETURNING finished_at",
                cutoff,
                failure_cutoff,
                json.dumps(counts),
            )
        return finished

    async def last_prune(self) -> datetime | None:
        """When the latest recorded prune finished; None if none ever did."""
        async with self.pool.acquire(timeout=2) as conn:
            last: datetime | None = await conn.fetchval("SELECT max(finished_at) FROM prune_runs")
        return last
