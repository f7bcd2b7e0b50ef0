"""The ``source_hosts`` table: who is behind each source address of the aggregate reports.

For each address in ``aggregate_records.source_ip`` a row holds the name its PTR record
gives, whether that name is forward-confirmed, the name's organizational domain and a
service label; what fills them is sender identification (``rua_sink.ingest.identify``).

Replicas share the table. A row is claimed (``claimed_at``) by whoever inserts it
(``INSERT ... ON CONFLICT DO NOTHING RETURNING``) or takes it with ``UPDATE ... FOR UPDATE
SKIP LOCKED``; a claim older than ``retry_after`` is taken over, so that the work of a
replica that died is not lost, and that is also how a temporary DNS error is retried. A
lookup older than ``refresh`` is due again.

The country and network columns (``country``, ``asn``, ``as_org``, ``enriched_at``) are
filled from IP databases, when configured, by the same rounds: for the addresses each
round claims, and again for rows enriched before the databases' current version. Those
writes lock their rows with ``SKIP LOCKED``: a row another replica is writing is left to
it (or to a later sweep), and no two writers wait for each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg

#: What a database that fails a statement raises (connection lost, timeout, server error).
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

#: What the IP databases say of one address: ip, country, AS number, AS organisation.
Enriched: TypeAlias = tuple[str, str | None, int | None, str | None]

#: A complete lookup of one address: ip, PTR name, forward-confirmed, organizational
#: domain, service (all but ip None when the address has no name), forwarder.
Found: TypeAlias = tuple[str, str | None, bool | None, str | None, str | None, bool]

# Rows are inserted in address order, so that two replicas inserting overlapping sets at
# once wait for each other instead of deadlocking.
_CLAIM_NEW_OF_REPORTS = """
INSERT INTO source_hosts (ip, claimed_at)
SELECT DISTINCT source_ip, now() FROM aggregate_records
WHERE report = ANY($1::bigint[]) AND source_ip IS NOT NULL
ORDER BY 1
ON CONFLICT (ip) DO NOTHING
RETURNING host(ip)
"""
_DISCOVER_ALL = """
INSERT INTO source_hosts (ip)
SELECT DISTINCT r.source_ip FROM aggregate_records r
WHERE r.source_ip IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM source_hosts h WHERE h.ip = r.source_ip)
ORDER BY 1
ON CONFLICT (ip) DO NOTHING
"""
_DISCOVER_SINCE = """
INSERT INTO source_hosts (ip)
SELECT DISTINCT r.source_ip
FROM aggregate_reports a
JOIN aggregate_records r ON r.report = a.id AND r.begin_at = a.begin_at
WHERE a.stored_at >= $1 AND r.source_ip IS NOT NULL
ORDER BY 1
ON CONFLICT (ip) DO NOTHING
"""
_CLAIM_DUE = """
UPDATE source_hosts SET claimed_at = now()
WHERE ip IN (
    SELECT ip FROM source_hosts
    WHERE (looked_up_at IS NULL OR looked_up_at < now() - $1::interval)
      AND (claimed_at IS NULL OR claimed_at < now() - $2::interval)
    ORDER BY looked_up_at NULLS FIRST, ip
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING host(ip)
"""
_FOUND = """
UPDATE source_hosts
SET ptr_name = $2, ptr_confirmed = $3, org_domain = $4, service = $5, forwarder = $6,
    looked_up_at = now(), claimed_at = NULL, lookup_error = NULL
WHERE ip = $1::inet
"""
# claimed_at restarts: the address is tried again once the claim is retry_after old.
_FAILED = "UPDATE source_hosts SET lookup_error = $2, claimed_at = now() WHERE ip = $1::inet"
_CONFIRMED_NAMES = "SELECT DISTINCT ptr_name FROM source_hosts WHERE ptr_confirmed"
_RELABEL = """
UPDATE source_hosts h SET service = m.service, forwarder = m.forwarder
FROM unnest($1::text[], $2::text[], $3::boolean[]) AS m (name, service, forwarder)
WHERE h.ptr_confirmed AND h.ptr_name = m.name
  AND (h.service IS DISTINCT FROM m.service OR h.forwarder <> m.forwarder)
"""


# Rows locked in address order and skipped if locked: never a wait, so never a deadlock.
_ENRICH = """
WITH m AS (
    SELECT * FROM unnest($1::inet[], $2::text[], $3::bigint[], $4::text[])
        AS m (ip, country, asn, as_org)
), locked AS (
    SELECT h.ip FROM source_hosts h WHERE h.ip IN (SELECT ip FROM m)
    ORDER BY h.ip FOR UPDATE SKIP LOCKED
)
UPDATE source_hosts h
SET country = m.country, asn = m.asn, as_org = m.as_org, enriched_at = now()
FROM m JOIN locked USING (ip)
WHERE h.ip = m.ip
"""
# In address order from after a cursor: a sweep passes over each row once at most.
_DUE_FOR_ENRICHMENT = """
SELECT host(ip) FROM source_hosts
WHERE (enriched_at IS NULL OR enriched_at < $1) AND ($3::inet IS NULL OR ip > $3::inet)
ORDER BY ip LIMIT $2
FOR UPDATE SKIP LOCKED
"""


class SourceHosts:
    """The statements of sender identification on ``source_hosts``; each runs on its own
    connection of the pool (one statement, one transaction; ``enrich_due``: two)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim_new(self, report_ids: Sequence[int]) -> list[str]:
        """Insert, claimed, the source addresses of these reports that have no row yet;
        returns the addresses inserted."""
        rows = await self.pool.fetch(_CLAIM_NEW_OF_REPORTS, list(report_ids))
        return [r[0] for r in rows]

    async def discover(self, since: datetime | None = None) -> None:
        """Insert, unclaimed, the addresses of records without a row (of reports stored
        since ``since``, or of all)."""
        if since is None:
            await self.pool.execute(_DISCOVER_ALL)
        else:
            await self.pool.execute(_DISCOVER_SINCE, since)

    async def claim_due(
        self, *, refresh: timedelta, retry_after: timedelta, limit: int
    ) -> list[str]:
        """Claim at most ``limit`` addresses never looked up or looked up more than
        ``refresh`` ago, skipping claims younger than ``retry_after``; oldest first."""
        rows = await self.pool.fetch(_CLAIM_DUE, refresh, retry_after, limit)
        return [r[0] for r in rows]

    async def found(self, rows: Sequence[Found]) -> None:
        """Store complete lookups and release their claims."""
        await self.pool.executemany(_FOUND, rows)

    async def failed(self, rows: Sequence[tuple[str, str]]) -> None:
        """Store (address, error) of lookups DNS could not answer; the claim restarts."""
        await self.pool.executemany(_FAILED, rows)

    async def confirmed_names(self) -> list[str]:
        """Every forward-confirmed name stored."""
        return [r[0] for r in await self.pool.fetch(_CONFIRMED_NAMES)]

    async def relabel(
        self,
        names: Sequence[str],
        services: Sequence[str | None],
        forwarders: Sequence[bool],
    ) -> int:
        """Give the forward-confirmed rows of ``names[i]`` the service ``services[i]``
        (a forwarder's if ``forwarders[i]``); returns how many rows changed."""
        status = await self.pool.execute(_RELABEL, list(names), list(services), list(forwarders))
        return int(status.split()[-1])

    async def enrich(self, rows: Sequence[Enriched]) -> int:
        """Store what the IP databases say of these addresses; returns how many rows were
        written (a row another writer holds is skipped)."""
        if not rows:
            return 0
        ips, countries, asns, orgs = (list(column) for column in zip(*rows, strict=True))
        status = await self.pool.execute(_ENRICH, ips, countries, asns, orgs)
        return int(status.split()[-1])

    async def enrich_due(
        self,
        older_than: datetime,
        limit: int,
        look_up: Callable[[str], Enriched],
        after: str | None = None,
    ) -> tuple[int, str | None]:
        """Apply ``look_up`` to at most ``limit`` rows never enriched or enriched before
        ``older_than``, with addresses after ``after`` (all if None), in one transaction
        that holds only those rows (skipping rows others hold). Returns how many were
        written and the last address taken (None when none was due: the pass is over)."""
        async with self.pool.acquire() as conn, conn.transaction():
            due = [r[0] for r in await conn.fetch(_DUE_FOR_ENRICHMENT, older_than, limit, after)]
            if not due:
                return 0, None
            rows = [look_up(ip) for ip in due]
            ips, countries, asns, orgs = (list(column) for column in zip(*rows, strict=True))
            status = await conn.execute(_ENRICH, ips, countries, asns, orgs)
            return int(status.split()[-1]), due[-1]
