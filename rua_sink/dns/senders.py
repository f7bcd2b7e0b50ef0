"""Sender identification: who is behind each source address of the aggregate reports.

For each address in ``aggregate_records.source_ip`` the table ``source_hosts`` holds the
name its PTR record gives, whether that name is forward-confirmed (its A or AAAA records
include the address: FCrDNS, RFC 8601 2.7.3's ``iprev``), the name's organizational domain
(RFC 7489 3.2), and a service label from ``ServiceMap``. Only a forward-confirmed name gets
a label: anyone can publish ``mail.google.com`` as the PTR of their own address, but only
Google can make ``mail.google.com`` resolve to it.

Lookups never run on the path that answers an SMTP client: ``notify`` only queues report
ids (and drops them when the queue is full), and ``run``, a background task, does the DNS
and database work with bounded concurrency. A periodic ``sweep`` catches up with whatever
was dropped, backfilled or is due again.

Replicas share the table. A row is claimed (``claimed_at``) by whoever inserts it
(``INSERT ... ON CONFLICT DO NOTHING RETURNING``) or takes it with ``UPDATE ... FOR UPDATE
SKIP LOCKED``; a claim older than ``retry_after`` is taken over, so that the work of a
replica that died is not lost, and that is also how a temporary DNS error is retried. A
lookup older than ``refresh`` is done again.

Outcomes: NXDOMAIN or an empty answer for the PTR is "no name" (a complete lookup);
SERVFAIL, a timeout or another DNS error is ``Unanswered``, stored in ``lookup_error`` and
tried again later.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar

import asyncpg
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.reversename

from rua_sink import logs
from rua_sink.core.names import domain as a_label
from rua_sink.core.names import organizational_domain
from rua_sink.dns.ttlcache import TtlCache
from rua_sink.errors import ServicesFileError

log = logs.get("rua_sink.senders")

T = TypeVar("T")

#: PTR names of one address checked for forward confirmation; more are ignored (a
#: hostile reverse zone could list hundreds).
MAX_NAMES = 5


class ServiceMap:
    """Domain name suffix -> service; the longest suffix matching on label boundaries wins.

    The mapping shipped in ``rua_sink/dns/services.toml``, with a user's file (same format)
    laid over it: its entries add to and replace the shipped ones, and an empty service
    removes a suffix's label.
    """

    def __init__(self, suffixes: Mapping[str, str]) -> None:
        self._suffixes = dict(suffixes)

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> ServiceMap:
        shipped = resources.files("rua_sink.dns").joinpath("services.toml").read_text("utf-8")
        entries = _entries(shipped, "rua_sink/dns/services.toml")
        if user_file:
            try:
                text = Path(user_file).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ServicesFileError(f"{user_file}: {exc}") from exc
            entries.update(_entries(text, str(user_file)))
        return cls(entries)

    def __len__(self) -> int:
        return sum(1 for service in self._suffixes.values() if service)

    def lookup(self, name: str) -> str | None:
        """The service of ``name``: of its longest suffix in the mapping, if any."""
        labels = name.rstrip(".").lower().split(".")
        for i in range(len(labels)):
            service = self._suffixes.get(".".join(labels[i:]))
            if service is not None:
                return service or None  # "": a user removed the label
        return None


def _entries(text: str, where: str) -> dict[str, str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServicesFileError(f"{where}: {exc}") from exc
    unknown = set(data) - {"suffixes"}
    if unknown:
        raise ServicesFileError(f"{where}: unknown tables or keys: {sorted(unknown)}")
    table = data.get("suffixes", {})
    if not isinstance(table, dict):
        raise ServicesFileError(f"{where}: suffixes must be a table")
    entries = {}
    for raw, service in table.items():
        suffix = a_label(raw.strip().removeprefix("*.").lstrip(".")) or ""
        if not suffix or "" in suffix.split(".") or not isinstance(service, str):
            raise ServicesFileError(f"{where}: not a domain suffix and a service: {raw!r}")
        entries[suffix] = service.strip()
    return entries


@dataclass(frozen=True, slots=True)
class Identity:
    """A complete lookup of one address; all None when it has no PTR name."""

    ptr_name: str | None = None
    confirmed: bool | None = None
    org_domain: str | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Unanswered:
    """DNS could not answer now (SERVFAIL, timeout): look the address up again later."""

    detail: str


@dataclass(slots=True)
class Tally:
    """What a round of lookups found."""

    looked_up: int = 0  # addresses claimed and looked up
    named: int = 0  # with a PTR name
    confirmed: int = 0  # ... forward-confirmed
    labelled: int = 0  # ... with a service label
    unnamed: int = 0  # no PTR record
    failed: int = 0  # temporary DNS errors, left for a later retry

    def add(self, other: Tally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_json(self) -> dict[str, int]:
        return asdict(self)


# -- SQL ---------------------------------------------------------------------------------

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
SET ptr_name = $2, ptr_confirmed = $3, org_domain = $4, service = $5,
    looked_up_at = now(), claimed_at = NULL, lookup_error = NULL
WHERE ip = $1::inet
"""
# claimed_at restarts: the address is tried again once the claim is retry_after old.
_FAILED = "UPDATE source_hosts SET lookup_error = $2, claimed_at = now() WHERE ip = $1::inet"
_CONFIRMED_NAMES = "SELECT DISTINCT ptr_name FROM source_hosts WHERE ptr_confirmed"
_RELABEL = """
UPDATE source_hosts h SET service = m.service
FROM unnest($1::text[], $2::text[]) AS m (name, service)
WHERE h.ptr_confirmed AND h.ptr_name = m.name AND h.service IS DISTINCT FROM m.service
"""


class SenderIdentifier:
    """Looks up the source addresses of stored aggregate reports; see the module's text."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        resolver: dns.asyncresolver.Resolver,
        services: ServiceMap,
        concurrency: int = 8,
        batch_size: int = 200,
        queue_size: int = 1000,
        refresh: timedelta = timedelta(days=7),
        retry_after: timedelta = timedelta(minutes=10),
        sweep_interval: float = 300.0,
        cache_ttl: float = 3600.0,
        cache_size: int = 10_000,
    ) -> None:
        self.pool = pool
        self.resolver = resolver
        self.services = services
        self._lookups = asyncio.Semaphore(concurrency)
        self.batch_size = batch_size
        self._queue: asyncio.Queue[tuple[int, ...]] = asyncio.Queue(maxsize=queue_size)
        self.refresh = refresh
        self.retry_after = retry_after
        self.sweep_interval = sweep_interval
        self._cache: TtlCache[str, Identity] = TtlCache(cache_size)
        self._cache_ttl = cache_ttl
        #: notify() calls dropped because the queue was full (the sweep catches up).
        self.dropped = 0

    # -- the hook for the SMTP path ------------------------------------------------------

    def notify(self, report_ids: Iterable[int]) -> bool:
        """Queue new aggregate reports for ``run``; never waits. False if dropped."""
        ids = tuple(report_ids)
        if not ids:
            return True
        try:
            self._queue.put_nowait(ids)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    # -- the background task -------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: apply the mapping to names already stored, sweep at once and
        every ``sweep_interval`` seconds (again at once while a sweep finds a full batch
        due), and between sweeps look up the sources of the reports ``notify`` was given."""
        await self._guarded("relabel", self.relabel())
        since: datetime | None = None  # the first sweep looks at every record
        next_sweep = 0.0
        while True:
            if time.monotonic() >= next_sweep:
                started = datetime.now(UTC)
                tally = await self._guarded("sweep", self.sweep(self.batch_size, since=since))
                backlog = False
                if tally is not None:
                    # stored_at is when a report's transaction began: an hour of overlap
                    # covers transactions that committed long after they began.
                    since = started - timedelta(hours=1)
                    backlog = tally.looked_up >= self.batch_size
                next_sweep = time.monotonic() + (0.0 if backlog else self.sweep_interval)
            ids = self._queued()
            if not ids:
                try:
                    first = await asyncio.wait_for(
                        self._queue.get(), max(0.001, next_sweep - time.monotonic())
                    )
                except TimeoutError:
                    continue
                ids = [*first, *self._queued()]
            await self._guarded("reports", self.identify_reports(ids))

    def _queued(self) -> list[int]:
        ids: list[int] = []
        while not self._queue.empty() and len(ids) < 10 * self.batch_size:
            ids.extend(self._queue.get_nowait())
        return ids

    async def _guarded(self, stage: str, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None when the database failed it (logged; the rows it
        claimed are taken over once their claim is ``retry_after`` old)."""
        try:
            return await work
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sender_identification_failed", stage=stage, error=str(exc))
            return None

    # -- rounds of lookups ---------------------------------------------------------------

    async def identify_reports(self, report_ids: Sequence[int]) -> Tally:
        """Look up the source addresses of these reports that ``source_hosts`` lacks."""
        rows = await self.pool.fetch(_CLAIM_NEW_OF_REPORTS, list(report_ids))
        return await self._identify([r[0] for r in rows])

    async def sweep(self, limit: int, *, since: datetime | None = None) -> Tally:
        """Add the addresses of records without a ``source_hosts`` row (of reports stored
        since ``since``, or of all), then claim and look up at most ``limit`` addresses that
        are new, due for a refresh, or whose earlier claim has run out."""
        if since is None:
            await self.pool.execute(_DISCOVER_ALL)
        else:
            await self.pool.execute(_DISCOVER_SINCE, since)
        tally = Tally()
        while tally.looked_up < limit:
            want = min(self.batch_size, limit - tally.looked_up)
            rows = await self.pool.fetch(_CLAIM_DUE, self.refresh, self.retry_after, want)
            if not rows:
                break
            tally.add(await self._identify([r[0] for r in rows]))
        return tally

    async def relabel(self) -> int:
        """Apply the current mapping to the forward-confirmed names already stored (the
        mapping file may have changed); returns how many rows changed."""
        names = [r[0] for r in await self.pool.fetch(_CONFIRMED_NAMES)]
        services = [self.label(name) for name in names]
        status = await self.pool.execute(_RELABEL, names, services)
        return int(status.split()[-1])

    async def _identify(self, ips: Sequence[str]) -> Tally:
        """Look up claimed addresses and store what was found, ``batch_size`` at a time
        (a report may name thousands)."""
        tally = Tally()
        for at in range(0, len(ips), self.batch_size):
            tally.add(await self._identify_batch(ips[at : at + self.batch_size]))
        return tally

    async def _identify_batch(self, ips: Sequence[str]) -> Tally:
        tally = Tally(looked_up=len(ips))
        found: list[tuple[str, str | None, bool | None, str | None, str | None]] = []
        failed: list[tuple[str, str]] = []
        for ip, result in zip(ips, await asyncio.gather(*map(self.resolve, ips)), strict=True):
            if isinstance(result, Unanswered):
                tally.failed += 1
                failed.append((ip, result.detail[:500]))
                continue
            if result.ptr_name is None:
                tally.unnamed += 1
            else:
                tally.named += 1
                tally.confirmed += bool(result.confirmed)
                tally.labelled += result.service is not None
            found.append((ip, result.ptr_name, result.confirmed, result.org_domain, result.service))
        if found:
            await self.pool.executemany(_FOUND, found)
        if failed:
            await self.pool.executemany(_FAILED, failed)
            log.info("sender_lookups_failed", count=len(failed), first=failed[0][1])
        return tally

    # -- DNS -----------------------------------------------------------------------------

    def label(self, name: str) -> str | None:
        """The service of a forward-confirmed name. The suffixes tried run from the name
        itself down to its organizational domain and beyond, so an entry for an
        organizational domain labels every name under it."""
        return self.services.lookup(name)

    async def resolve(self, ip: str) -> Identity | Unanswered:
        """The PTR name of ``ip`` and whether it is forward-confirmed (cached in-process
        for ``cache_ttl`` seconds; temporary errors are not cached)."""
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        async with self._lookups:
            result = await self._resolve(ip)
        if isinstance(result, Identity):
            self._cache.put(ip, result, self._cache_ttl)
        return result

    async def _resolve(self, ip: str) -> Identity | Unanswered:
        address = ip_address(ip)
        try:
            answer = await self.resolver.resolve(
                dns.reversename.from_address(ip), "PTR", search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Identity()
        except dns.exception.DNSException as exc:
            return Unanswered(f"PTR {ip}: {_describe(exc)}")
        names = sorted(
            {
                name
                for rdata in answer
                if rdata.rdtype == dns.rdatatype.PTR
                and (name := rdata.target.to_text(omit_final_dot=True).lower()) not in ("", ".")
            }
        )[:MAX_NAMES]
        if not names:
            return Identity()
        # FCrDNS: a name of the address whose own addresses include it (RFC 8601 2.7.3).
        rtype = "A" if address.version == 4 else "AAAA"
        trouble = None
        for name in names:
            try:
                forward = await self.resolver.resolve(name + ".", rtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                trouble = f"{rtype} {name}: {_describe(exc)}"
                continue
            if any(ip_address(r.address) == address for r in forward if r.rdtype == forward.rdtype):
                return self._named(name, confirmed=True)
        if trouble is not None:  # a name not checked might have confirmed: decide later
            return Unanswered(trouble)
        return self._named(names[0], confirmed=False)

    def _named(self, name: str, *, confirmed: bool) -> Identity:
        return Identity(
            ptr_name=name,
            confirmed=confirmed,
            org_domain=organizational_domain(name),
            service=self.label(name) if confirmed else None,
        )


def _describe(exc: dns.exception.DNSException) -> str:
    return f"{type(exc).__name__}: {exc}"
