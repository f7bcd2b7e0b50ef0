"""The per-message run: what a message's events do to its transaction and its result.

``Tally`` counts a message's reports into its ``IngestResult`` (outcomes, verdicts, the
messages its aggregate reports describe); ``Run`` feeds the events of one message to the
store, within the message's transaction: a whole small aggregate report in one insert
and one COPY, a large one under a savepoint with its records in COPY batches, a TLS or
failure report in its own rows. A part that yields no report is kept as a failure, for
the message's quarantine.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rua_sink.core.arrival import Envelope, MailAuth
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    Event,
    FailureReport,
    PartFailed,
    Record,
    RecordBatch,
    ReportType,
    TlsReport,
)
from rua_sink.errors import AuthenticationUnavailable, MissingPartition, UnsignedReport
from rua_sink.ingest.inline import OneReport
from rua_sink.ingest.redact import without_body
from rua_sink.outcomes import Outcome
from rua_sink.storage.copytext import prefixed, record_line, report_prefix
from rua_sink.storage.rows import Conn, RawMessage, epoch, month_start, reporter_key
from rua_sink.storage.store import Store

if TYPE_CHECKING:
    from rua_sink.ingest.ingester import Authorize, IngestResult


class Tally:
    """What a message's reports add to its result: counts, verdicts, message totals."""

    def __init__(
        self,
        store: Store,
        result: IngestResult,
        authorize: Authorize | None,
        auth: MailAuth | None,
    ) -> None:
        self.authorize = authorize
        self.auth = auth
        self.authenticated = None if auth is None else auth.authenticated
        #: RFC 8460 3 applied to TLS reports (not when reprocessing under policy off)
        self.require_signed = True
        self.store = store
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
        report: OneReport,
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


class Run(Tally):
    """What one message's event stream does to its transaction."""

    def __init__(
        self,
        store: Store,
        conn: Conn,
        result: IngestResult,
        authorize: Authorize | None,
        auth: MailAuth | None,
        *,
        copy_batch: int,
        keep_body: bool,
    ) -> None:
        super().__init__(store, result, authorize, auth)
        #: records loaded in one COPY, at most
        self.copy_batch = copy_batch
        #: archive a failure report's message whole (``Ingester.failure_keep_body``)
        self.keep_body = keep_body
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
        batch = self.copy_batch
        i, n = 0, len(events)
        while i < n:
            ev = events[i]
            i += 1
            # Records first: one by one, they are the most of a large report's events.
            if type(ev) is Record:
                if self.report is not None:
                    self.rows.append(record_line(self.prefix, ev))
                    self.tally[(ev.disposition, ev.dkim, ev.spf)] += ev.count
                    self.row_count += 1
                    if self.row_count >= batch:
                        await self.flush()
            elif type(ev) is RecordBatch:
                await self._records(ev)
            elif isinstance(ev, AggregateReport):
                i = await self._aggregate(ev, events, i)
            else:
                await self._other(ev)

    async def _records(self, ev: RecordBatch) -> None:
        """Records parsed by a worker, as COPY text lines with their tally."""
        self.result.parse_seconds += ev.cpu_seconds
        if self.report is not None and ev.count:
            lines, tally = ev.payload
            self.rows.append(prefixed(self.prefix, lines))
            self.tally.update(tally)
            self.row_count += ev.count
            if self.row_count >= self.copy_batch:
                await self.flush()

    async def _aggregate(self, head: AggregateReport, events: list[Event], i: int) -> int:
        """An aggregate report begins (``events[i]`` follows its head); returns the index
        of the event to feed next."""
        j, n = i, len(events)
        while j < n and type(events[j]) is Record:
            j += 1
        end = events[j] if j < n else None
        if isinstance(end, AggregateEnd) and j - i <= self.copy_batch:
            self.result.document_bytes += end.document_bytes
            # The whole report is in hand and valid: one insert with its totals
            # and one COPY, with no savepoint (most reports are this small).
            await self.whole(head, events[i:j], end)
            return j + 1
        await self.begin(head)
        return i

    async def _other(self, ev: Event) -> None:
        """Any event but a record or an aggregate report's head."""
        if isinstance(ev, AggregateEnd):
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
        if not self.keep_body:
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
