"""Sender identification: look up the source addresses of the stored aggregate reports.

What a lookup finds (``rua_sink.dns.senders``: the PTR name, whether it is
forward-confirmed, its organizational domain and service) is stored in ``source_hosts``
(``rua_sink.storage.sources``), which replicas share by claiming rows.

Lookups never run on the path that answers an SMTP client: ``notify`` only queues report
ids (and drops them when the queue is full), and ``run``, a background task, does the DNS
and database work with bounded concurrency. A periodic ``sweep`` catches up with whatever
was dropped, backfilled or is due again: new addresses, lookups older than ``refresh``,
and claims older than ``retry_after`` (a replica that died, or a temporary DNS error,
which is stored in ``lookup_error``).

With IP databases (``rua_sink.dns.ipdata``, RUA_SINK_IP_DATABASES), each round also gives
the addresses it claimed their country, AS number and AS organisation, and each sweep
first reloads the files that changed, then passes once over the rows enriched before the
databases' version (the latest build or mtime of their files), ``batch_size`` at a time.
Those look-ups are memory-mapped reads in this same background task: like the DNS work,
they never run on the path that answers an SMTP client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from rua_sink import logs
from rua_sink.dns.ipdata import IpDatabases
from rua_sink.dns.senders import Identity, SenderLookup, ServiceMap, Unanswered
from rua_sink.storage.sources import DATABASE_ERRORS, Enriched, Found, SourceHosts

if TYPE_CHECKING:
    import asyncpg
    import dns.asyncresolver

# The name sender identification has always logged under.
log = logs.get("rua_sink.senders")

T = TypeVar("T")


@dataclass(slots=True)
class Tally:
    """What a round of lookups found."""

    looked_up: int = 0  # addresses claimed and looked up
    named: int = 0  # with a PTR name
    confirmed: int = 0  # ... forward-confirmed
    labelled: int = 0  # ... with a service label
    unnamed: int = 0  # no PTR record
    failed: int = 0  # temporary DNS errors, left for a later retry
    enriched: int = 0  # addresses given what the IP databases say of them

    def add(self, other: Tally) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_json(self) -> dict[str, int]:
        return asdict(self)


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
        networks: IpDatabases | None = None,
    ) -> None:
        self.pool = pool
        #: The IP databases, if configured: country and network of each address.
        self.networks = networks
        #: The version of the IP databases being applied, and the last address done (None:
        #: the next pass starts from the lowest).
        self._enriching: tuple[datetime | None, str | None] = (None, None)
        self.hosts = SourceHosts(pool)
        self.lookup = SenderLookup(
            resolver=resolver,
            services=services,
            concurrency=concurrency,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
        )
        self.batch_size = batch_size
        self._queue: asyncio.Queue[tuple[int, ...]] = asyncio.Queue(maxsize=queue_size)
        self.refresh = refresh
        self.retry_after = retry_after
        self.sweep_interval = sweep_interval
        #: notify() calls dropped because the queue was full (the sweep catches up).
        self.dropped = 0

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        return self.lookup.resolver

    @property
    def services(self) -> ServiceMap:
        return self.lookup.services

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
                    backlog = max(tally.looked_up, tally.enriched) >= self.batch_size
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
        except DATABASE_ERRORS as exc:
            log.warning("sender_identification_failed", stage=stage, error=str(exc))
            return None

    # -- rounds of lookups ---------------------------------------------------------------

    async def identify_reports(self, report_ids: Sequence[int]) -> Tally:
        """Look up the source addresses of these reports that ``source_hosts`` lacks."""
        return await self._identify(await self.hosts.claim_new(report_ids))

    async def sweep(self, limit: int, *, since: datetime | None = None) -> Tally:
        """Add the addresses of records without a ``source_hosts`` row (of reports stored
        since ``since``, or of all), then claim and look up at most ``limit`` addresses that
        are new, due for a refresh, or whose earlier claim has run out. With IP databases:
        reload the files that changed first, and enrich at most ``limit`` rows due after."""
        if self.networks is not None:
            self.networks.refresh()
        await self.hosts.discover(since)
        tally = Tally()
        while tally.looked_up < limit:
            want = min(self.batch_size, limit - tally.looked_up)
            ips = await self.hosts.claim_due(
                refresh=self.refresh, retry_after=self.retry_after, limit=want
            )
            if not ips:
                break
            tally.add(await self._identify(ips))
        tally.enriched += await self.enrich_due(limit)
        return tally

    async def enrich_due(self, limit: int) -> int:
        """Go on with the pass, in address order, over rows never enriched or enriched
        before the IP databases' version; at most ``limit`` rows written. A pass left
        unfinished by the limit resumes at the next call where it stopped (unless the
        version changed meanwhile: then a new pass starts), so that applying a new file to
        many rows, a sweep at a time, reads each row once; a finished pass starts again
        from the lowest address at the next call."""
        if self.networks is None:
            return 0
        version = self.networks.version
        after = self._enriching[1] if self._enriching[0] == version else None
        done = 0
        while done < limit:
            want = min(self.batch_size, limit - done)
            written, after = await self.hosts.enrich_due(version, want, self.network, after)
            done += written
            if after is None:
                break
        self._enriching = (version, after)
        if done:
            log.info("ip_databases_applied", count=done, version=version.isoformat())
        return done

    async def relabel(self) -> int:
        """Apply the current mapping to the forward-confirmed names already stored (the
        mapping file may have changed); returns how many rows changed."""
        names = await self.hosts.confirmed_names()
        forwarders = [self.services.forwarder(name) for name in names]
        return await self.hosts.relabel(names, [self.label(name) for name in names], forwarders)

    async def _identify(self, ips: Sequence[str]) -> Tally:
        """Look up claimed addresses and store what was found, ``batch_size`` at a time
        (a report may name thousands)."""
        tally = Tally()
        for at in range(0, len(ips), self.batch_size):
            tally.add(await self._identify_batch(ips[at : at + self.batch_size]))
        return tally

    async def _identify_batch(self, ips: Sequence[str]) -> Tally:
        tally = Tally(looked_up=len(ips))
        found: list[Found] = []
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
            found.append(
                (
                    ip,
                    result.ptr_name,
                    result.confirmed,
                    result.org_domain,
                    result.service,
                    result.forwarder,
                )
            )
        if found:
            await self.hosts.found(found)
        if failed:
            await self.hosts.failed(failed)
            log.info("sender_lookups_failed", count=len(failed), first=failed[0][1])
        if self.networks is not None:
            tally.enriched += await self.hosts.enrich([self.network(ip) for ip in ips])
        return tally

    def network(self, ip: str) -> Enriched:
        """What the IP databases say of ``ip`` (memory-mapped reads, microseconds)."""
        assert self.networks is not None
        found = self.networks.lookup(ip)
        return (ip, found.country, found.asn, found.as_org)

    # -- DNS -----------------------------------------------------------------------------

    def label(self, name: str) -> str | None:
        """The service of a forward-confirmed name (see ``SenderLookup.label``)."""
        return self.lookup.label(name)

    async def resolve(self, ip: str) -> Identity | Unanswered:
        """The PTR name of ``ip`` and whether it is forward-confirmed (cached in-process
        for ``cache_ttl`` seconds; temporary errors are not cached)."""
        return await self.lookup.resolve(ip)
