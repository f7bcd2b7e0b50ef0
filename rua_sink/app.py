"""The composition root: settings -> pool, store, resolver, SMTP server, HTTP endpoint; signals.

The one place that turns a :class:`~rua_sink.config.Settings` into parts. ``serve`` builds
its ``App`` here, and every other command builds what it uses with the keyword-only
builders below (``open_store``, ``open_parse_pool``, ``open_ingester``,
``open_identifier``, ``new_authorizer``...): no command makes a pool, a resolver or a
parse pool of its own.

In ``serve``, one asyncio loop holds everything: the SMTP server (aiosmtpd's protocol through
``loop.create_server``, not its threaded Controller) and a small HTTP listener for
``/healthz`` (the process is alive) and ``/readyz`` (the database answers and the schema
is current; 503 otherwise, so that Kubernetes stops sending mail to a pod that cannot
commit).

Sender identification (``ingest.identify``; with RUA_SINK_IP_DATABASES, also the country
and network of each source address, ``dns.ipdata``) runs beside them as a background task,
which shutdown cancels first; so does the hourly task that keeps the record partitions of this
month and the next ready (``storage.partitions``: before listening, then every hour), and
change detection (``storage.changes``: a sweep of the reports received since the previous
turn, and the gauges of new sources and pass ratios, every RUA_SINK_CHANGES_INTERVAL).

SIGTERM or SIGINT: stop accepting, let sessions in flight finish within the grace period,
then close. A message is either committed and answered 250, or not acknowledged at all.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import dns.asyncresolver

from rua_sink import __version__, logs
from rua_sink.config import Settings
from rua_sink.core.limits import Limits
from rua_sink.dns.authz import Authorizer, make_resolver
from rua_sink.dns.ipdata import IpDatabases
from rua_sink.dns.mailauth import MailAuthenticator
from rua_sink.dns.senders import ServiceMap
from rua_sink.errors import ConfigError, DatabaseError
from rua_sink.heap import fix_mmap_threshold
from rua_sink.ingest.delivery import Delivery
from rua_sink.ingest.identify import SenderIdentifier
from rua_sink.ingest.ingester import Ingester
from rua_sink.ingest.parsepool import ParsePool
from rua_sink.metrics import Metrics
from rua_sink.outcomes import AuthPolicy
from rua_sink.smtp.data import remove_stale_spools
from rua_sink.smtp.handler import ReportHandler
from rua_sink.smtp.policy import AddressPolicy, Sessions
from rua_sink.smtp.session import ReportSMTP
from rua_sink.smtp.tls import Certificate
from rua_sink.storage import changes, migrate
from rua_sink.storage.database import ensure_database
from rua_sink.storage.store import Store

log = logs.get("rua_sink")

#: How often ``serve`` makes sure that the record partitions of this month and the next
#: exist, and how long one turn may try for its table lock (the one before listening, less).
PARTITIONS_EVERY = 3600.0
PARTITIONS_WAIT = 300.0
PARTITIONS_WAIT_AT_START = 30.0


async def keep_session(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is. Nothing here leaves session state behind
    (settings, LISTEN, session locks), and asyncpg rolls back a transaction left open
    itself. asyncpg's default reset would cost a round trip for every message."""


#: What asyncpg runs on a connection given back to its pool (None: its default reset).
Reset = Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]


async def open_database(
    *,
    database_url: str,
    min_size: int,
    max_size: int,
    reset: Reset | None = None,
    apply_migrations: bool = True,
) -> Store:
    """The database created if missing, a pool on it, the schema migrated (unless told
    not to) and the record partitions known: a Store whose pool the caller closes."""
    await ensure_database(database_url)
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, reset=reset
    )
    try:
        if apply_migrations:
            async with pool.acquire() as conn:
                await migrate.migrate(conn)
        store = Store(pool)
        await store.load_partitions()
    except BaseException:
        await pool.close()
        raise
    return store


@asynccontextmanager
async def open_store(*, database_url: str, apply_migrations: bool = True) -> AsyncIterator[Store]:
    """A Store for one command, on a small pool closed when the command is done."""
    store = await open_database(
        database_url=database_url, min_size=1, max_size=4, apply_migrations=apply_migrations
    )
    try:
        yield store
    finally:
        await store.pool.close()


def new_parse_pool(*, settings: Settings) -> ParsePool:
    """Parse workers for large reports, as RUA_SINK_PARSE_WORKERS says; they start with
    the first large report."""
    return ParsePool(settings.parse_workers)


@asynccontextmanager
async def open_parse_pool(*, settings: Settings) -> AsyncIterator[ParsePool]:
    """A command's parse workers, stopped with the command."""
    pool = new_parse_pool(settings=settings)
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.close)


@asynccontextmanager
async def open_ingester(
    *, settings: Settings, database_url: str, limits: Limits
) -> AsyncIterator[Ingester]:
    """An Ingester for ``ingest`` and ``reprocess``: the store, parse workers, and the
    limits of the command line (the environment's, overridden by ``--limit``)."""
    async with (
        open_store(database_url=database_url) as store,
        open_parse_pool(settings=settings) as workers,
    ):
        yield Ingester(
            store,
            limits=limits,
            failure_keep_body=settings.failure_keep_body,
            fanout=workers.fanout,
        )


def new_resolver(*, settings: Settings) -> dns.asyncresolver.Resolver:
    """A resolver on the configured nameservers, for the loop's lookups."""
    return make_resolver(settings.dns_nameservers, settings.dns_timeout)


def _unobserved(result: str) -> None:
    """Authorization lookups that nothing counts (outside ``serve``)."""


def new_authorizer(
    *,
    settings: Settings,
    resolver: dns.asyncresolver.Resolver | None = None,
    observe: Callable[[str], None] = _unobserved,
) -> Authorizer:
    """The external-destination authorization check (RFC 7489 7.1), on ``resolver`` or a
    new one."""
    return Authorizer(
        resolver=resolver or new_resolver(settings=settings),
        allow=settings.authorized_domains,
        observe=observe,
    )


def load_services(*, settings: Settings) -> ServiceMap:
    """The sender services mapping: the shipped one, under RUA_SINK_SERVICES_FILE's;
    ConfigError if that file is broken."""
    return ServiceMap.load(settings.services_file)


def open_ip_databases(*, settings: Settings, metrics: Metrics | None = None) -> IpDatabases | None:
    """The files of RUA_SINK_IP_DATABASES, opened (None without the setting); ConfigError
    naming the file if one does not open or is of an unknown type."""
    if not settings.ip_databases:
        return None
    if metrics is None:
        return IpDatabases.open(settings.ip_databases)
    return IpDatabases.open(
        settings.ip_databases,
        on_loaded=metrics.ip_database_oldest_build.set,
        on_failure=metrics.ip_database_reload_failures.inc,
    )


def new_identifier(
    *,
    settings: Settings,
    pool: asyncpg.Pool,
    resolver: dns.asyncresolver.Resolver,
    services: ServiceMap,
    networks: IpDatabases | None = None,
) -> SenderIdentifier:
    return SenderIdentifier(
        pool=pool,
        resolver=resolver,
        services=services,
        concurrency=settings.identify_concurrency,
        sweep_interval=settings.identify_interval,
        networks=networks,
    )


@asynccontextmanager
async def open_identifier(
    *,
    settings: Settings,
    services: ServiceMap,
    database_url: str,
    networks: IpDatabases | None = None,
) -> AsyncIterator[SenderIdentifier]:
    """Sender identification for ``rua-sink identify``, on a store of its own."""
    async with open_store(database_url=database_url) as store:
        yield new_identifier(
            settings=settings,
            pool=store.pool,
            resolver=new_resolver(settings=settings),
            services=services,
            networks=networks,
        )


def new_certificate(*, settings: Settings, metrics: Metrics) -> Certificate | None:
    """The STARTTLS certificate of RUA_SINK_TLS_CERT and RUA_SINK_TLS_KEY, loaded (None
    without them); ConfigError if the pair does not load."""
    if not settings.tls_cert:
        return None
    certificate = Certificate(
        settings.tls_cert,
        settings.tls_key,
        on_loaded=metrics.tls_expiry.set,
        on_failure=metrics.tls_reload_failures.inc,
    )
    certificate.start()
    return certificate


@dataclass
class App:
    settings: Settings
    pool: asyncpg.Pool
    store: Store
    handler: ReportHandler
    sessions: Sessions
    smtp_server: asyncio.Server | None = None
    http_server: asyncio.Server | None = None
    #: Looks up the source addresses of stored reports, in a task of its own; its
    #: ``notify`` takes the ids of new aggregate reports after their commit.
    identifier: SenderIdentifier | None = None
    identifying: asyncio.Task[None] | None = None
    #: Worker processes for the records of large reports (RUA_SINK_PARSE_WORKERS).
    parse_pool: ParsePool | None = None
    warming: asyncio.Future[None] | None = None
    #: Keeps the record partitions of this month and the next ready, every hour.
    partitioning: asyncio.Task[None] | None = None
    #: The STARTTLS certificate, if configured, and the task that reloads it.
    certificate: Certificate | None = None
    tls_watching: asyncio.Task[None] | None = None
    #: Change detection: new sources and services, pass ratios (``storage.changes``).
    watching_changes: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, settings: Settings, database_url: str) -> App:
        services = load_services(settings=settings)  # a broken file stops us here
        metrics = Metrics(
            max_domains=settings.metrics_max_domains,
            max_reporters=settings.metrics_max_reporters,
        )
        certificate = new_certificate(settings=settings, metrics=metrics)  # and a bad pair
        networks = open_ip_databases(settings=settings, metrics=metrics)  # and a bad file
        store = await open_database(
            database_url=database_url, min_size=2, max_size=20, reset=keep_session
        )
        pool = store.pool
        # One resolver on the configured nameservers for the loop's lookups (the checks of
        # the mail run in threads, on a resolver of their own: see mailauth).
        resolver = new_resolver(settings=settings)
        identifier = new_identifier(
            settings=settings, pool=pool, resolver=resolver, services=services, networks=networks
        )
        lookups = metrics.authorization
        authorizer = new_authorizer(
            settings=settings,
            resolver=resolver,
            observe=lambda result: lookups.labels(result).inc(),
        )
        parse_pool = new_parse_pool(settings=settings)
        delivery = Delivery(
            ingester=Ingester(
                store,
                limits=settings.limits,
                keep_non_reports=False,
                failure_keep_body=settings.failure_keep_body,
                fanout=parse_pool.fanout,
            ),
            authorizer=authorizer,
            reject_unauthorized=settings.unauthorized == "reject",
            authenticator=MailAuthenticator(
                nameservers=settings.dns_nameservers,
                timeout=settings.dns_timeout,
                max_bytes=settings.auth_max_bytes,
            ),
            auth_policy=AuthPolicy(settings.require_authenticated),
            on_stored=identifier.notify,
        )
        handler = ReportHandler(
            addresses=AddressPolicy(settings.addresses + settings.failure_addresses),
            delivery=delivery,
            max_recipients=settings.max_recipients,
            metrics=metrics,
        )
        sessions = Sessions(settings.max_sessions, settings.max_sessions_per_ip)
        return cls(
            settings,
            pool,
            store,
            handler,
            sessions,
            identifier=identifier,
            parse_pool=parse_pool,
            certificate=certificate,
        )

    def _protocol(self) -> ReportSMTP:
        s = self.settings
        return ReportSMTP(
            self.handler,
            sessions=self.sessions,
            data_timeout=s.data_timeout,
            spool_memory=s.limits.spool_memory_bytes,
            data_line_limit=s.limits.max_line_bytes,
            trusted_proxies=s.proxy_protocol_from,
            data_size_limit=s.limits.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=s.hostname or socket.getfqdn(),
            ident=f"rua-sink {__version__}",
            # The context of the moment: a reload gives later sessions a new one.
            tls_context=self.certificate.context if self.certificate else None,
            require_starttls=False,  # RFC 3207 4: a public MX must not require it
            timeout=s.idle_timeout,
            command_call_limit=100,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Before the first message: no current report waits for a partition's DDL.
        await prepare_months(self.store, wait=PARTITIONS_WAIT_AT_START)
        host, port = self.settings.smtp_listen
        with _listening("RUA_SINK_SMTP_LISTEN", host, port):
            self.smtp_server = await loop.create_server(self._protocol, host, port)
        # The port is ours: spool files in the temporary folder are no live session's.
        if removed := remove_stale_spools():
            log.warning("stale_spool_files_removed", count=removed)
        http_host, http_port = self.settings.http_listen
        with _listening("RUA_SINK_HTTP_LISTEN", http_host, http_port):
            self.http_server = await asyncio.start_server(self._http, http_host, http_port)
        if self.parse_pool is not None:
            # Started beside the listeners: the first large report need not wait for them.
            self.warming = loop.run_in_executor(None, self.parse_pool.warm)
        if self.certificate is not None:
            self.tls_watching = asyncio.create_task(
                self.certificate.watch(self.settings.tls_reload_interval), name="tls-reload"
            )
        if self.identifier is not None:
            self.identifying = asyncio.create_task(self.identifier.run(), name="identify")
            self.identifying.add_done_callback(_identification_ended)
        self.partitioning = asyncio.create_task(keep_months_ahead(self.store), name="partitions")
        self.watching_changes = asyncio.create_task(
            keep_detecting_changes(self.pool, self.handler.metrics, self.settings.changes_interval),
            name="changes",
        )
        log.info("listening", smtp=f"{host}:{port}", http=f"{http_host}:{http_port}")

    async def ready(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                return not await migrate.pending(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    async def _read_last_prune(self) -> None:
        """The gauge of the last successful prune, read at each scrape (one indexed
        lookup). When the database does not answer within a second or two, the scrape
        keeps the value read before: readiness and the delivery metrics already say that
        the database is away."""
        try:
            last = await asyncio.wait_for(self.store.last_prune(), 2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return
        if last is not None:
            self.handler.metrics.prune_last_success.set(last.timestamp())

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            content_type = "text/plain"
            if path == "/metrics":
                await self._read_last_prune()
                status, body = "200 OK", self.handler.metrics.exposition().decode()
                content_type = "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/healthz":
                status, body = "200 OK", "ok\n"
            elif path == "/readyz":
                ok = await self.ready()
                status, body = (
                    ("200 OK", "ready\n") if ok else ("503 Service Unavailable", "not ready\n")
                )
            else:
                status, body = "404 Not Found", "not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body.encode())}\r\n"
                f"Connection: close\r\n\r\n{body}".encode()
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def shutdown(self) -> None:
        tasks = (self.identifying, self.partitioning, self.tls_watching, self.watching_changes)
        for task in tasks:  # gives way
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.identifier is not None and self.identifier.networks is not None:
            self.identifier.networks.close()  # its task, the one reader, has ended
        for server in (self.smtp_server, self.http_server):
            if server is not None:
                server.close()
        self.sessions.close_idle()
        try:
            await asyncio.wait_for(self.sessions.idle.wait(), self.settings.shutdown_grace)
        except TimeoutError:
            log.warning("shutdown_grace_over", sessions_open=self.sessions.total)
        if self.parse_pool is not None:
            if self.warming is not None:
                await asyncio.gather(self.warming, return_exceptions=True)
            await asyncio.to_thread(self.parse_pool.close)
        await self.pool.close()


@contextmanager
def _listening(variable: str, host: str, port: int) -> Iterator[None]:
    """A port that cannot be listened on stops the start with a line naming the setting."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{variable}: cannot listen on {host}:{port}: {reason}") from exc


def _identification_ended(task: asyncio.Task[None]) -> None:
    """Sender identification ends only when cancelled; anything else is a bug: logged,
    and mail keeps being received without it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("sender_identification_stopped", exc_info=task.exception())


async def prepare_months(store: Store, *, wait: float) -> None:
    """The record partitions of this month and the next, created if missing by one replica
    at a time; a failure is logged, and the next turn tries again."""
    try:
        created = await store.prepare_months(datetime.now(UTC), wait=wait)
    except (DatabaseError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("partitions_not_prepared", error=str(exc))
        return
    if created:
        log.info("partitions_created", count=created)


async def keep_months_ahead(store: Store) -> None:
    while True:
        await asyncio.sleep(PARTITIONS_EVERY)
        await prepare_months(store, wait=PARTITIONS_WAIT)


#: How far back a sweep of change detection looks again: a report's message may commit
#: well after its received_at (a large report); taking a report twice is harmless.
CHANGES_OVERLAP = timedelta(hours=1)


async def detect_changes(pool: asyncpg.Pool, metrics: Metrics, since: datetime) -> datetime:
    """One turn of change detection: the reports received since ``since`` swept, the
    gauges set; returns the next turn's ``since`` (the same after a failure, logged)."""
    now = datetime.now(UTC)
    try:
        async with pool.acquire() as conn:
            snapshot = await changes.detect(conn, since, now)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.warning("changes_not_detected", error=str(exc))
        return since
    metrics.changes(snapshot.new_sources, snapshot.new_services, snapshot.windows())
    return now - CHANGES_OVERLAP


async def keep_detecting_changes(pool: asyncpg.Pool, metrics: Metrics, interval: float) -> None:
    """Change detection every ``interval`` seconds; the first turn, one interval after the
    start, looks at the reports received in the windows of the pass ratios. It waits because
    that turn takes every report received since the last turn of any replica (a burst, while
    this one was down), and a replica that has just started is taking its first sessions:
    measured with bench/smtp.py, a first turn at start slowed the 400,000-record report
    arriving beside it by a tenth."""
    since = datetime.now(UTC) - changes.KEEP_TOTALS
    while True:
        await asyncio.sleep(interval)
        since = await detect_changes(pool, metrics, since)


async def serve(settings: Settings, database_url: str) -> None:
    fix_mmap_threshold()  # a heap that stays at its working size for months: see heap
    app = await App.create(settings, database_url)
    try:
        await app.start()
    except BaseException:  # a port taken, say: close what started, then say so
        await app.shutdown()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down")
    await app.shutdown()
