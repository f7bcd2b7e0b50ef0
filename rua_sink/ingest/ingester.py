"""The ingest use case: one message -> its reports -> PostgreSQL, in one transaction.

``Ingester.ingest`` reads a message's bytes (``RawMessage``), parses them on the event
loop when the message is small (``inline``), in a worker thread otherwise (``threads``),
and feeds its events to the store (``run``); records are bulk-loaded with COPY. A message
of one small aggregate report, and nothing else, is stored in one statement.

Outcomes (SPEC.md, decisions): a report-like part that fails to unpack or parse
quarantines the message (raw bytes kept with the reason, re-parseable later); a report
already stored is a duplicate and is kept once; a message with nothing report-like is
``not_a_report``. A message whose bytes are stored already is a duplicate too, unless an
older parser version (``core.version``) did not store it as reports: it is read again.
A failure report's message is archived without the reported message's body (``redact``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, TypeVar

from rua_sink.core.arrival import Envelope
from rua_sink.core.fanout import Fanout
from rua_sink.core.headers import leading_header_block
from rua_sink.core.limits import Limits
from rua_sink.core.model import ReportType
from rua_sink.core.pipeline import parse_stream
from rua_sink.dns.mailauth import MAX_HEADER_BYTES
from rua_sink.errors import MessageError, MissingPartition, NotAReport, Reason
from rua_sink.ingest.inline import INLINE_BYTES, Inline, OneReport, size_of
from rua_sink.ingest.redact import redacted_copy
from rua_sink.ingest.run import Run, Tally
from rua_sink.ingest.threads import events_in_thread
from rua_sink.outcomes import AuthPolicy, Outcome, RawStatus
from rua_sink.storage.rows import Conn, RawMessage, unpack_archived
from rua_sink.storage.store import Store


@dataclass(slots=True)
class IngestResult:
    outcome: Outcome
    raw_message_id: int | None
    reports_new: int = 0
    reports_duplicate: int = 0
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
#: verdict to store with it, or raises to refuse the whole message (see ``smtp.server``).
Authorize = Callable[[ReportType, tuple[str, ...]], Awaitable[str | None]]
T = TypeVar("T")


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
        small = size_of(file) <= INLINE_BYTES
        raw = RawMessage.read(file) if small else await asyncio.to_thread(RawMessage.read, file)
        when = received_at or datetime.now(UTC)
        inline: Inline | None = None
        if small and self.read_ahead:
            # Most report mail is one small aggregate report: read ahead, and if that is
            # all, store it in one statement, one round trip, with no transaction to open.
            file.seek(0)
            inline = Inline(file, _name(envelope), self.limits)
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

            async def work(conn: Conn) -> IngestResult:
                raw_id = await self.store.insert_raw(conn, raw, envelope, when)
                if raw_id is None:
                    result = await self._again(conn, raw, file, envelope, authorize, read_ahead)
                else:
                    result = await self._process(
                        conn, raw_id, file, envelope, authorize, inline=read_ahead
                    )
                # A message kept before is kept, whatever this reading makes of it.
                if result.outcome is Outcome.NOT_A_REPORT and not keep and not result.reprocessed:
                    raise _Discard(result)
                return result

            return await self._in_transaction(work)

        try:
            return await self._creating_partitions(attempt)
        except _Discard as discard:
            return discard.result

    async def _in_transaction(
        self, work: Callable[[Conn], Awaitable[IngestResult]]
    ) -> IngestResult:
        """``work`` in a transaction of its own, committed when it returns, rolled back
        when it raises; the commit's time is noted in its result."""
        async with self.store.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                result = await work(conn)
            except BaseException:
                await transaction.rollback()
                raise
            started = time.perf_counter()
            await transaction.commit()
            result.commit_seconds = time.perf_counter() - started
            return result

    async def _again(
        self,
        conn: Conn,
        raw: RawMessage,
        file: IO[bytes],
        envelope: Envelope,
        authorize: Authorize | None,
        inline: Inline | None,
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
        inline: Inline,
        report: OneReport,
    ) -> IngestResult | None:
        """A message of one aggregate report, in one statement; None if its verdict is
        an error (refused, or DNS trouble): the transaction path then decides, as for
        any message, where a message already stored is a duplicate before any check."""
        result = IngestResult(
            Outcome.STORED, None, parse_seconds=inline.parse_seconds, one_statement=True
        )
        tally = Tally(self.store, result, authorize, envelope.auth)

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
        inline: Inline | None = None,
        require_signed: bool = True,
    ) -> IngestResult:
        result = IngestResult(Outcome.STORED, raw_id)
        run = Run(
            self.store,
            conn,
            result,
            authorize,
            envelope.auth,
            copy_batch=self.copy_batch,
            keep_body=self.failure_keep_body,
        )
        run.require_signed = require_signed
        status, reason, detail = RawStatus.STORED, None, None
        try:
            await self._feed(run, file, _name(envelope), inline)
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

    async def _feed(
        self, run: Run, file: IO[bytes], name: str | None, inline: Inline | None
    ) -> None:
        """The message's events, fed to ``run``: parsed on the event loop when it is small
        (or was read ahead), in a worker thread otherwise."""
        result, limits = run.result, self.limits
        if inline is not None or size_of(file) <= INLINE_BYTES:
            inline = inline or Inline(file, name, limits)
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


def _name(envelope: Envelope) -> str | None:
    """A backfilled file's name, a hint for a bare report file; None for SMTP."""
    return None if envelope.source == "smtp" else envelope.source.rsplit("/", 1)[-1]


class _Discard(Exception):
    def __init__(self, result: IngestResult) -> None:
        super().__init__("not a report")
        self.result = result
