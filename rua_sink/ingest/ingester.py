"""The ingest use case: one message -> its reports -> PostgreSQL, in one transaction.

The pure core runs in a worker thread and hands its events over in batches through a
bounded queue, so the event loop keeps serving while a large report is parsed, and
memory holds a few batches at most. Records are bulk-loaded with COPY.

Outcomes (SPEC.md, decisions): a report-like part that fails to unpack or parse
quarantines the message (raw bytes kept with the reason, re-parseable later); a report
already stored is a duplicate and is kept once; a message with nothing report-like is
``not_a_report``. A message whose bytes are stored already is a duplicate too, unless an
older parser version (``core.version``) did not store it as reports: it is read again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import hashlib
import itertools
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

from rua_sink.core.arrival import Envelope, MailAuth
from rua_sink.core.failure import exim_text
from rua_sink.core.fanout import Fanout
from rua_sink.core.limits import Limits
from rua_sink.core.mime import leading_header_block
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    Event,
    FailureReport,
    MessageInfo,
    PartFailed,
    Record,
    RecordBatch,
    ReportType,
    TlsReport,
)
from rua_sink.core.pipeline import parse_stream
from rua_sink.dns.mailauth import MAX_HEADER_BYTES
from rua_sink.errors import (
    AuthenticationUnavailable,
    MessageError,
    MissingPartition,
    NotAReport,
    Reason,
    UnsignedReport,
)
from rua_sink.outcomes import AuthPolicy, Outcome, RawStatus
from rua_sink.storage.copytext import prefixed, record_line, report_prefix
from rua_sink.storage.rows import (
    Conn,
    RawMessage,
    epoch,
    month_start,
    reporter_key,
    unpack_archived,
)
from rua_sink.storage.store import Store


@dataclass(slots=True)
class IngestResult:
    outcome: Outcome
    raw_message_id: int | None
    reports_new: int = 0
    reports_duplicate: int = 0
    parts_failed: int = 0
    records: int = 0
    reason: Reason | None = None
    detail: str | None = None
    reports: list[str] = field(default_factory=list)  # "type:report_id" of new ones
    #: Row ids of the new aggregate reports (their sources are looked up after commit)
    aggregate_report_ids: list[int] = field(default_factory=list)
    #: (report type, outcome) -> count; type "unknown" for parts that failed to parse
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Messages reported in the new aggregate reports, by (policy domain or None when the
    #: domain is not authorized, reporter, disposition, policy_evaluated dkim, spf).
    dmarc: Counter[tuple[str | None, str, str, str, str]] = field(default_factory=Counter)
    #: (policy domain, reporter) -> end of the latest new report's period (epoch seconds)
    last_report: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Time the final COMMIT took, and CPU time the core spent parsing.
    commit_seconds: float = 0.0
    parse_seconds: float = 0.0
    #: Decompressed bytes of the aggregate report documents read.
    document_bytes: int = 0
    #: TLS sessions in the new TLS reports, by (policy domain or None, "success"/"failure")
    tls_sessions: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    #: Stored in one statement, as one whole aggregate report (``Ingester.ingest``)
    one_statement: bool = False
    #: Read again: a message stored before, not as reports, by an older parser version
    #: (``rua-sink reprocess``, or the same bytes arriving again)
    reprocessed: bool = False
    #: For a message whose very bytes were stored before: what became of them
    #: (``stored``, ``quarantined``, ``not_a_report``)
    archived_status: RawStatus | None = None


#: Called with each report's type and policy domains before it is stored; returns the
#: verdict to store with it, or raises to refuse the whole message (see smtp.py).
Authorize = Callable[[ReportType, tuple[str, ...]], Awaitable[str | None]]

_END = object()
T = TypeVar("T")


@dataclass(slots=True)
class _Raised:
    exc: BaseException


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
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
    stop = threading.Event()
    ended = asyncio.Event()

    def put(item: object) -> bool:
        if stop.is_set():
            return False
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                fut.result(timeout=0.2)
                return not stop.is_set()
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    fut.cancel()
                    return False

    def run() -> None:
        events = produce()
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
            if cpu is not None:
                cpu.append(time.thread_time())  # this thread's CPU time: the parse
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
                loop.call_soon_threadsafe(ended.set)

    thread = threading.Thread(target=run, name="rua-sink-parse", daemon=True)
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
        stop.set()
        # Emptying the queue lets a put the thread waits on complete; the thread then
        # sees ``stop`` and ends, within one batch of events.
        while not ended.is_set():
            _drain(queue)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 0.05)
        _drain(queue)
        thread.join()  # it has left ``run``: at once


def _drain(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()


#: A message's events up to this many are read ahead of its transaction, to see whether
#: it is one whole aggregate report and nothing else (see ``Ingester.ingest``).
READ_AHEAD = 1000


class Ingester:
    """Stores messages through a ``Store``; one instance serves many messages at once."""

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits,
        copy_batch: int = 10000,
        keep_non_reports: bool = True,
        failure_keep_body: bool = False,
        fanout: Fanout | None = None,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        self.store = store
        #: Events of a small message read before its transaction (0: none, and every
        #: message takes the transaction path).
        self.read_ahead = read_ahead
        #: Worker processes for the records of large reports (``core.fanout``).
        self.fanout = fanout
        self.limits = limits
        self.copy_batch = copy_batch
        self.keep_non_reports = keep_non_reports
        #: Archive a failure report's message whole, the reported message's body too
        #: (RFC 9991 7: by default only its header fields are kept).
        self.failure_keep_body = failure_keep_body

    async def ingest(
        self,
        file: IO[bytes],
        envelope: Envelope,
        *,
        received_at: datetime | None = None,
        authorize: Authorize | None = None,
        keep_non_report: bool | None = None,
    ) -> IngestResult:
        """Store one message read from ``file`` (seekable). Commits before returning.

        A message with nothing report-like is kept (``not_a_report``) or rolled back as
        ``keep_non_report`` says, by default as the ingester was made to. An exception
        raised by ``authorize`` rolls the message back and propagates."""
        keep = self.keep_non_reports if keep_non_report is None else keep_non_report
        small = _size(file) <= INLINE_BYTES
        raw = RawMessage.read(file) if small else await asyncio.to_thread(RawMessage.read, file)
        when = received_at or datetime.now(UTC)
        inline: _Inline | None = None
        if small and self.read_ahead:
            # Most report mail is one small aggregate report: read ahead, and if that is
            # all, store it in one statement, one round trip, with no transaction to open.
            file.seek(0)
            inline = _Inline(file, _name(envelope), self.limits)
            await inline.read(self.read_ahead)
            report = inline.one_report()
            if report is not None:
                alone = await self._alone(raw, envelope, when, authorize, inline, report)
                if alone is not None:
                    return alone
                inline = None

        async def attempt(n: int) -> IngestResult:
            read_ahead = inline if n == 0 else None
            if read_ahead is None:
                file.seek(0)  # parsed again from the start
            async with self.store.pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    raw_id = await self.store.insert_raw(conn, raw, envelope, when)
                    if raw_id is None:
                        result = await self._again(conn, raw, file, envelope, authorize, read_ahead)
                    else:
                        result = await self._process(
                            conn, raw_id, file, envelope, authorize, inline=read_ahead
                        )
                    # A message kept before is kept, whatever this reading makes of it.
                    if (
                        result.outcome is Outcome.NOT_A_REPORT
                        and not keep
                        and not result.reprocessed
                    ):
                        raise _Discard(result)
                except BaseException:
                    await transaction.rollback()
                    raise
                started = time.perf_counter()
                await transaction.commit()
                result.commit_seconds = time.perf_counter() - started
                return result

        try:
            return await self._creating_partitions(attempt)
        except _Discard as discard:
            return discard.result

    async def _again(
        self,
        conn: Conn,
        raw: RawMessage,
        file: IO[bytes],
        envelope: Envelope,
        authorize: Authorize | None,
        inline: _Inline | None,
    ) -> IngestResult:
        """A message whose bytes are stored already: a duplicate, unless an older parser
        version did not store it as reports. Then it is read again, as
        ``rua-sink reprocess`` would, with this arrival's authentication verdicts."""
        archived = await self.store.archived(conn, raw.sha256)
        if archived is None or archived.status is RawStatus.STORED or not archived.older:
            status = None if archived is None else archived.status
            return IngestResult(Outcome.DUPLICATE, None, archived_status=status)
        await self.store.clear_reports(conn, archived.id)
        if envelope.auth is not None:
            await self.store.set_auth(conn, archived.id, envelope.auth)
        result = await self._process(
            conn, archived.id, file, envelope, authorize, reprocessing=True, inline=inline
        )
        result.reprocessed = True
        return result

    async def _creating_partitions(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        """``attempt(n)``, again while it finds a monthly partition missing. Each one is
        created outside the attempt's transaction, which has been rolled back by then:
        creating it from inside could wait on ourselves."""
        for n in range(24):
            try:
                return await attempt(n)
            except MissingPartition as missing:
                await self.store.create_partition(missing.month)
        raise RuntimeError("a message needed more than 24 new monthly partitions")

    async def _alone(
        self,
        raw: RawMessage,
        envelope: Envelope,
        when: datetime,
        authorize: Authorize | None,
        inline: _Inline,
        report: _OneReport,
    ) -> IngestResult | None:
        """A message of one aggregate report, in one statement; None if its verdict is
        an error (refused, or DNS trouble): the transaction path then decides, as for
        any message, where a message already stored is a duplicate before any check."""
        result = IngestResult(
            Outcome.STORED, None, parse_seconds=inline.parse_seconds, one_statement=True
        )
        tally = _Tally(self, result, authorize, envelope.auth)

        async def attempt(_: int) -> IngestResult | None:
            tally.place(report[0])
            try:
                verdict = await tally.verdict()
            except Exception:  # noqa: BLE001 - the transaction path meets it again
                return None
            await tally.alone(raw, envelope, when, verdict, report)
            # These very bytes were stored before: the transaction path finds out how.
            return None if result.raw_message_id is None else result

        return await self._creating_partitions(attempt)

    async def reprocess(
        self, raw_id: int, *, auth_policy: AuthPolicy = AuthPolicy.FLAG
    ) -> IngestResult:
        """Parse a stored raw message again with the current code, replacing what it
        produced before (idempotent). Its stored authentication verdicts are judged by
        ``auth_policy``, today's: under ``off``, a TLS report needs no signature."""
        content, envelope, _ = await self.store.raw_content(raw_id)

        async def attempt(_: int) -> IngestResult:
            with tempfile.SpooledTemporaryFile(max_size=self.limits.spool_memory_bytes) as spool:
                unpack_archived(content, spool)
                spool.seek(0)
                async with self.store.pool.acquire() as conn, conn.transaction():
                    # One reading at a time: a copy arriving now waits for this one.
                    await self.store.lock_raw(conn, raw_id)
                    await self.store.clear_reports(conn, raw_id)
                    return await self._process(
                        conn,
                        raw_id,
                        spool,
                        envelope,
                        reprocessing=True,
                        require_signed=auth_policy is not AuthPolicy.OFF,
                    )

        result = await self._creating_partitions(attempt)
        result.reprocessed = True
        return result

    async def _process(
        self,
        conn: Conn,
        raw_id: int,
        file: IO[bytes],
        envelope: Envelope,
        authorize: Authorize | None = None,
        *,
        reprocessing: bool = False,
        inline: _Inline | None = None,
        require_signed: bool = True,
    ) -> IngestResult:
        result = IngestResult(Outcome.STORED, raw_id)
        run = _Run(self, conn, result, authorize, envelope.auth)
        run.require_signed = require_signed
        name = _name(envelope)
        status, reason, detail = RawStatus.STORED, None, None
        limits = self.limits
        try:
            if inline is not None or _size(file) <= INLINE_BYTES:
                inline = inline or _Inline(file, name, limits)
                try:
                    async for batch in inline.batches():
                        await run.feed(batch)
                finally:
                    result.parse_seconds += inline.parse_seconds
            else:
                cpu: list[float] = []
                async with contextlib.aclosing(
                    events_in_thread(
                        lambda: parse_stream(file, name, limits, fanout=self.fanout), cpu=cpu
                    )
                ) as batches:
                    async for events in batches:
                        await run.feed(events)
                result.parse_seconds += sum(cpu)
        except NotAReport as exc:
            result.outcome = Outcome.NOT_A_REPORT
            status, reason, detail = RawStatus.NOT_A_REPORT, exc.reason, exc.detail
        except MessageError as exc:  # about the whole message: a cap, its structure
            await run.abandon()
            result.outcome = Outcome.QUARANTINED
            status, reason, detail = RawStatus.QUARANTINED, exc.reason, exc.detail
        if result.outcome is Outcome.STORED and run.failures:
            first = run.failures[0].error
            result.outcome = Outcome.QUARANTINED
            status, reason, detail = RawStatus.QUARANTINED, first.reason, first.detail
        elif result.outcome is Outcome.STORED and result.reports_new == 0:
            result.outcome = Outcome.DUPLICATE
        result.parts_failed = len(run.failures)
        result.reason = reason
        result.detail = detail
        # a new raw message is inserted as stored
        if status is not RawStatus.STORED or reprocessing:
            await self.store.set_status(conn, raw_id, status, reason, detail)
        if run.failure_report is not None and not self.failure_keep_body:
            file.seek(0)
            own = leading_header_block(file, MAX_HEADER_BYTES).splitlines()
            copy = redacted_copy(own, run.failure_report)
            await self.store.redact_raw(conn, raw_id, gzip.compress(copy, mtime=0))
        return result


def _name(envelope: Envelope) -> str | None:
    """A backfilled file's name, a hint for a bare report file; None for SMTP."""
    return None if envelope.source == "smtp" else envelope.source.rsplit("/", 1)[-1]


#: Messages up to this size are hashed and parsed on the event loop, not in a thread.
INLINE_BYTES = 256 * 1024
INLINE_BATCH = 500


def _size(file: IO[bytes]) -> int:
    position = file.tell()
    size = file.seek(0, 2)
    file.seek(position)
    return size


_OneReport = tuple[AggregateReport, list[Record], AggregateEnd]


class _Inline:
    """A small message's events, parsed on the event loop in slices between which other
    sessions get their turn: a small message parses in a millisecond or so, less than a
    thread hand-over costs. Events can be read ahead (``read``); ``batches`` hands them
    on, then the rest of the stream."""

    def __init__(self, file: IO[bytes], name: str | None, limits: Limits) -> None:
        self._stream = parse_stream(file, name, limits)
        self._ended = False
        #: read ahead and not handed on yet
        self.events: list[Event] = []
        #: what the stream raised while reading ahead; ``batches`` raises it in turn
        self.error: Exception | None = None
        self.parse_seconds = 0.0

    def _slice(self) -> list[Event]:
        started = time.thread_time()
        try:
            events = list(itertools.islice(self._stream, INLINE_BATCH))
        finally:
            self.parse_seconds += time.thread_time() - started
        self._ended = not events
        return events

    async def read(self, limit: int) -> None:
        """Read ahead to the end of the message, or to ``limit`` events or so."""
        try:
            while not self._ended and len(self.events) < limit:
                self.events += self._slice()
                await asyncio.sleep(0)
        except Exception as exc:  # noqa: BLE001 - the stream's own error, raised in turn
            self.error = exc
            self._ended = True

    def one_report(self) -> _OneReport | None:
        """The message's one aggregate report, whole, if the message was read to its end
        and holds nothing else to store."""
        if not self._ended or self.error is not None:
            return None
        head: AggregateReport | None = None
        end: AggregateEnd | None = None
        records: list[Record] = []
        for ev in self.events:
            if isinstance(ev, Record) and head is not None and end is None:
                records.append(ev)
            elif isinstance(ev, AggregateReport) and head is None:
                head = ev
            elif isinstance(ev, AggregateEnd) and head is not None and end is None:
                end = ev
            elif not isinstance(ev, MessageInfo):
                return None
        return None if head is None or end is None else (head, records, end)

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        events, self.events = self.events, []
        for i in range(0, len(events), INLINE_BATCH):
            yield events[i : i + INLINE_BATCH]
        if self.error is not None:
            raise self.error
        while not self._ended:
            if events := self._slice():
                yield events
            await asyncio.sleep(0)


class _Discard(Exception):
    def __init__(self, result: IngestResult) -> None:
        super().__init__("not a report")
        self.result = result


class _Tally:
    """What a message's reports add to its result: counts, verdicts, message totals."""

    def __init__(
        self,
        ingester: Ingester,
        result: IngestResult,
        authorize: Authorize | None,
        auth: MailAuth | None,
    ) -> None:
        self.ingester = ingester
        self.authorize = authorize
        self.auth = auth
        self.authenticated = None if auth is None else auth.authenticated
        #: RFC 8460 3 applied to TLS reports (not when reprocessing under policy off)
        self.require_signed = True
        self.store = ingester.store
        self.result = result
        self.tally: Counter[tuple[Any, Any, Any]] = Counter()  # (disposition, dkim, spf)
        self.verdict_allowed = True
        self.begin_at = epoch(0)
        self.month = month_start(self.begin_at)
        self.domain = ""
        self.reporter = ""

    def _stored(self, end: AggregateEnd) -> None:
        """A new aggregate report is in: it is counted, and its records and messages join
        the message's totals."""
        self.result.records += end.record_count
        self._count(
            ReportType.AGGREGATE,
            True,
            end.report.metadata.report_id,
            flagged=not self.verdict_allowed,
        )
        domain = self.domain if self.verdict_allowed else None
        for (disposition, dkim, spf), n in self.tally.items():
            key = (domain, self.reporter, str(disposition), str(dkim), str(spf))
            self.result.dmarc[key] += n
        self.tally.clear()
        if self.verdict_allowed:
            last = self.result.last_report
            key2 = (self.domain, self.reporter)
            last[key2] = max(last.get(key2, 0), end.report.metadata.end)

    def _count(self, kind: ReportType, new: bool, label: str, *, flagged: bool = False) -> None:
        # flagged: stored, though its domain has not authorized us (RUA_SINK_UNAUTHORIZED=flag)
        outcome = ("unauthorized" if flagged else "stored") if new else "duplicate"
        self.result.counts[(str(kind), outcome)] += 1
        if new:
            self.result.reports_new += 1
            self.result.reports.append(f"{kind}:{label}")
        else:
            self.result.reports_duplicate += 1

    def place(self, head: AggregateReport) -> None:
        """Where a report goes: its month's partition must exist."""
        self.begin_at = epoch(head.metadata.begin)
        self.month = month_start(self.begin_at)
        if not self.store.has_partition(self.month):
            raise MissingPartition(self.month)
        self.domain = head.policy.domain
        self.reporter = reporter_key(head.metadata.org_name, head.metadata.email)
        self.tally.clear()

    async def verdict(self) -> str | None:
        """The placed report's authorization (``authorize`` may raise to refuse it)."""
        if self.authorize is None:
            self.verdict_allowed = True
            return None
        verdict = await self.authorize(ReportType.AGGREGATE, (self.domain,))
        self.verdict_allowed = verdict != "not_authorized"
        return verdict

    async def alone(
        self,
        raw: RawMessage,
        envelope: Envelope,
        received_at: datetime,
        verdict: str | None,
        report: _OneReport,
    ) -> None:
        """Store a message that holds one whole aggregate report, and nothing else to
        store, in one statement; ``place`` has placed it and ``verdict`` judged it."""
        head, records, end = report
        started = time.perf_counter()
        raw_id, report_id = await self.store.insert_message_with_report(
            raw, envelope, received_at, head, self.reporter, verdict, end, records
        )
        result = self.result
        result.commit_seconds = time.perf_counter() - started
        if raw_id is None:  # these very bytes are stored already
            result.outcome = Outcome.DUPLICATE
            return
        result.raw_message_id = raw_id
        result.document_bytes += end.document_bytes
        if report_id is None:
            self._count(ReportType.AGGREGATE, False, head.metadata.report_id)
            result.outcome = Outcome.DUPLICATE
            return
        for r in records:
            self.tally[(r.disposition, r.dkim, r.spf)] += r.count
        result.aggregate_report_ids.append(report_id)
        self._stored(end)


class _Run(_Tally):
    """What one message's event stream does to its transaction."""

    def __init__(
        self,
        ingester: Ingester,
        conn: Conn,
        result: IngestResult,
        authorize: Authorize | None,
        auth: MailAuth | None,
    ) -> None:
        super().__init__(ingester, result, authorize, auth)
        #: the message's failure report (RFC 5965 2: one a message), for its archive copy
        self.failure_report: FailureReport | None = None
        self.conn = conn
        self.failures: list[PartFailed] = []
        self.rows: list[str] = []  # COPY text: lines, or newline-joined runs of lines
        self.row_count = 0  # the lines in ``rows``
        self.prefix = ""  # the columns every record of the current report shares
        self.report: int | None = None  # row id of the aggregate report being loaded
        self.savepoint: Any = None

    async def _head(self, head: AggregateReport) -> str | None:
        """Where a report goes, and its verdict."""
        self.place(head)
        return await self.verdict()

    def _quarantine(self, failed: PartFailed, kind: str) -> None:
        """A part that yields no report: the message is kept, quarantined with its reason."""
        self.failures.append(failed)
        self.result.counts[(kind, "quarantined")] += 1

    async def feed(self, events: list[Event]) -> None:
        batch = self.ingester.copy_batch
        i, n = 0, len(events)
        while i < n:
            ev = events[i]
            i += 1
            if type(ev) is Record:
                if self.report is not None:
                    self.rows.append(record_line(self.prefix, ev))
                    self.tally[(ev.disposition, ev.dkim, ev.spf)] += ev.count
                    self.row_count += 1
                    if self.row_count >= batch:
                        await self.flush()
            elif type(ev) is RecordBatch:
                self.result.parse_seconds += ev.cpu_seconds
                if self.report is not None and ev.count:
                    lines, tally = ev.payload
                    self.rows.append(prefixed(self.prefix, lines))
                    self.tally.update(tally)
                    self.row_count += ev.count
                    if self.row_count >= batch:
                        await self.flush()
            elif isinstance(ev, AggregateReport):
                j = i
                while j < n and type(events[j]) is Record:
                    j += 1
                end = events[j] if j < n else None
                if isinstance(end, AggregateEnd) and j - i <= batch:
                    self.result.document_bytes += end.document_bytes
                    # The whole report is in hand and valid: one insert with its totals
                    # and one COPY, with no savepoint (most reports are this small).
                    await self.whole(ev, events[i:j], end)
                    i = j + 1
                else:
                    await self.begin(ev)
            elif isinstance(ev, AggregateEnd):
                self.result.document_bytes += ev.document_bytes
                await self.end(ev)
            elif isinstance(ev, PartFailed):
                await self.abandon()
                self._quarantine(ev, "unknown")
            elif isinstance(ev, TlsReport):
                await self.tls(ev)
            elif isinstance(ev, FailureReport):
                await self.failure(ev)

    async def tls(self, ev: TlsReport) -> None:
        if self.auth is not None and self.require_signed:
            # RFC 8460 3: a report without a valid DKIM signature of the reporting domain
            # (its From domain, or that of its contact address) is ignored.
            contact = (ev.contact_info or "").rpartition("@")[2]
            if not self.auth.signed_by((self.auth.from_domain or "", contact)):
                if self.auth.dkim_temporary:
                    raise AuthenticationUnavailable("DKIM key lookup failed")
                unsigned = UnsignedReport("no valid DKIM signature of the reporter")
                self._quarantine(PartFailed(ev.part, unsigned), str(ReportType.TLSRPT))
                return
        domains = tuple(sorted({p.policy_domain for p in ev.policies if p.policy_domain}))
        verdict = None
        if self.authorize is not None:
            verdict = await self.authorize(ReportType.TLSRPT, domains)
        async with self.conn.transaction():
            raw_id = self.result.raw_message_id or 0
            new = await self.store.insert_tls(self.conn, raw_id, ev, verdict, self.authenticated)
        self._count(ReportType.TLSRPT, new, ev.report_id, flagged=verdict == "not_authorized")
        if new:
            allowed = verdict != "not_authorized"
            for policy in ev.policies:
                domain = policy.policy_domain if allowed else None
                self.result.tls_sessions[(domain, "success")] += policy.success_count
                self.result.tls_sessions[(domain, "failure")] += policy.failure_count

    async def failure(self, ev: FailureReport) -> None:
        if not self.ingester.failure_keep_body:
            ev = without_body(ev)
        # RFC 9991 5: ruf destinations are authorized as rua ones are. A report that
        # names no domain cannot be checked, and is kept without a verdict.
        verdict = None
        if self.authorize is not None and ev.reported_domains:
            verdict = await self.authorize(ReportType.FAILURE, ev.reported_domains)
        raw_id = self.result.raw_message_id or 0
        new = await self.store.insert_failure(self.conn, raw_id, ev, verdict, self.authenticated)
        self.failure_report = self.failure_report or ev
        self._count(ReportType.FAILURE, new, ev.feedback_type, flagged=verdict == "not_authorized")

    async def whole(self, head: AggregateReport, records: list[Event], end: AggregateEnd) -> None:
        verdict = await self._head(head)
        raw_id = self.result.raw_message_id or 0
        report = await self.store.insert_aggregate(
            self.conn, raw_id, head, self.reporter, verdict, end, self.authenticated
        )
        if report is None:
            self._count(ReportType.AGGREGATE, False, head.metadata.report_id)
            return
        prefix = report_prefix(report, self.begin_at, self.domain, self.reporter)
        lines = []
        for r in records:
            if type(r) is Record:
                lines.append(record_line(prefix, r))
                self.tally[(r.disposition, r.dkim, r.spf)] += r.count
        if lines:
            await self.store.copy_lines(self.conn, lines, self.month)
        self.result.aggregate_report_ids.append(report)
        self._stored(end)

    async def begin(self, head: AggregateReport) -> None:
        verdict = await self._head(head)
        self.savepoint = self.conn.transaction()
        await self.savepoint.start()
        raw_id = self.result.raw_message_id or 0
        self.report = await self.store.insert_aggregate(
            self.conn, raw_id, head, self.reporter, verdict, authenticated=self.authenticated
        )
        if self.report is not None:
            self.prefix = report_prefix(self.report, self.begin_at, self.domain, self.reporter)
        else:
            await self.savepoint.rollback()
            self.savepoint = None

    async def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.row_count = 0
            await self.store.copy_lines(self.conn, rows, self.month)

    async def end(self, end: AggregateEnd) -> None:
        if self.report is None:
            self._count(ReportType.AGGREGATE, False, end.report.metadata.report_id)
            return
        await self.flush()
        await self.store.finish_aggregate(self.conn, self.report, end)
        await self.savepoint.commit()
        self.savepoint = None
        self.result.aggregate_report_ids.append(self.report)
        self.report = None
        self._stored(end)

    async def abandon(self) -> None:
        """A report broke half-way: what it loaded is rolled back (SPEC.md C.26)."""
        self.rows.clear()
        self.row_count = 0
        self.tally.clear()
        if self.savepoint is not None:
            await self.savepoint.rollback()
            self.savepoint = None
        self.report = None


#: Feedback fields that carry the reported message's body (RFC 6591 3.1)
_BODY_FIELDS = frozenset(("dkim-canonicalized-body",))


def without_body(report: FailureReport) -> FailureReport:
    """The report without the fields that quote the reported message's body."""
    fields = tuple(f for f in report.fields if f[0].lower() not in _BODY_FIELDS)
    return report if len(fields) == len(report.fields) else replace(report, fields=fields)


_MIME_FIELDS = (b"content-type:", b"content-transfer-encoding:", b"mime-version:")


def redacted_copy(headers: list[bytes], report: FailureReport) -> bytes:
    """What the archive keeps of a failure report's message (RFC 9991 7, RFC 6590): its
    own header fields and an ARF body with the feedback fields and the reported
    message's header fields (Exim's text, for its reports), but not that message's
    body. It parses to the same report."""
    kept: list[bytes] = []
    skipping = False
    for line in headers:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(_MIME_FIELDS)
        if not skipping:
            kept.append(line)
    fields = "\r\n".join(f"{k}: {v}" for k, v in report.fields)
    original = (report.original_headers or "").replace("\r\n", "\n").replace("\n", "\r\n")
    boundary = "rua-sink-redacted-" + hashlib.sha256(fields.encode()).hexdigest()[:16]
    if report.report_format == "exim":
        # Exim's report is its text part alone, written again from what was read of it.
        body = (
            f'MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{exim_text(report)}--{boundary}--\r\n"
        )
    else:
        body = (
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; "
            f'boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "The reported message's body was removed on receipt; its header fields are kept.\r\n"
            f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{original.rstrip()}\r\n"
            f"--{boundary}--\r\n"
        )
    return b"\r\n".join(kept) + b"\r\n" + body.encode("utf-8", "surrogateescape")
