"""The aiosmtpd handler: EHLO's extensions, the RCPT policy, the reply to an exception,
and the hand-over of each received message to the use case (``ingest.delivery``), whose
result it answers (``replies``), counts and logs."""

from __future__ import annotations

from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from rua_sink import logs
from rua_sink.core.arrival import Envelope as Arrival
from rua_sink.ingest.delivery import Delivered, Delivery
from rua_sink.metrics import Metrics
from rua_sink.outcomes import DeliveryStatus, ReplyReason
from rua_sink.smtp.data import SpooledMessage
from rua_sink.smtp.policy import AddressPolicy, client_address
from rua_sink.smtp.replies import (
    EHLO_EXTENSIONS,
    REPLY_NO_SUCH_USER,
    REPLY_RECIPIENT_OK,
    REPLY_TEMPORARY,
    REPLY_TOO_MANY_RCPTS,
    reply_for,
)

log = logs.get("rua_sink.smtp")

#: The refusals logged as the mail's own failure to authenticate
_UNAUTHENTICATED = (DeliveryStatus.UNAUTHENTICATED, DeliveryStatus.AUTHENTICATION_TEMPERROR)


class ReportHandler:
    """aiosmtpd handler: RCPT policy, then the delivery of each message."""

    def __init__(
        self,
        *,
        addresses: AddressPolicy,
        delivery: Delivery,
        max_recipients: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.addresses = addresses
        self.delivery = delivery
        self.max_recipients = max_recipients

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], *EHLO_EXTENSIONS, responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.addresses.accepts(address):
            return self._reply(REPLY_NO_SUCH_USER, ReplyReason.UNKNOWN_RECIPIENT)
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return self._reply(REPLY_TOO_MANY_RCPTS, ReplyReason.TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        return REPLY_RECIPIENT_OK

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: Any
    ) -> bool:
        return bool(proxy_data and proxy_data.valid)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default reply quotes the exception; nothing internal leaves here.
        log.error("internal_error", exc_info=error)
        return self._reply(REPLY_TEMPORARY, ReplyReason.INTERNAL_ERROR)

    async def deliver(self, session: Session, envelope: Envelope, spooled: SpooledMessage) -> str:
        """Store one message; the reply tells the client what happened to it."""
        rcpt_addresses = tuple(r.strip("<>").lower() for r in envelope.rcpt_tos)
        arrival = Arrival(
            source="smtp",
            peer_ip=client_address(session),
            helo=session.host_name or None,
            mail_from=envelope.mail_from,
            rcpt_to=rcpt_addresses,
        )
        # RFC 5321 4.5.1: mail to the postmaster is accepted, report or not; what is not
        # a report is kept (status not_a_report) for the operators to read.
        to_postmaster = any(AddressPolicy.postmaster(r) for r in rcpt_addresses)
        delivered = await self.delivery.deliver(spooled.file, arrival, to_postmaster=to_postmaster)
        if delivered.store_seconds is not None:
            self.metrics.stage.labels("store").observe(delivered.store_seconds)
        if delivered.error is not None:
            return await self.handle_exception(delivered.error)
        bound = log.bind(peer=arrival.peer_ip, mail_from=arrival.mail_from, rcpt_to=rcpt_addresses)
        if delivered.ingest is None:
            self._refused(delivered, bound)
        else:
            self._stored(delivered, bound, spooled.size)
        return self._reply(*reply_for(delivered))

    def _refused(self, delivered: Delivered, bound: Any) -> None:
        """Logs and counts a message refused with nothing stored."""
        status, auth = delivered.status, delivered.auth
        if status in _UNAUTHENTICATED and auth is not None:
            bound.info("refused_not_authenticated", dmarc=auth.dmarc, spf=auth.spf)
        elif status is DeliveryStatus.UNAUTHORIZED:
            bound.info("refused_not_authorized", domains=delivered.detail)
            kind = str(delivered.refused_kind)
            self.metrics.reports.labels(kind, "rejected", delivered.authenticated).inc()
        elif status is DeliveryStatus.DNS_UNAVAILABLE:
            bound.warning("authorization_unavailable", error=delivered.detail)
        elif status is DeliveryStatus.DATABASE_UNAVAILABLE:
            bound.warning("database_unavailable", error=delivered.detail)
            self.metrics.database_errors.inc()

    def _stored(self, delivered: Delivered, bound: Any, size: int) -> None:
        """Logs and counts a message the ingest has committed."""
        result, auth, m = delivered.ingest, delivered.auth, self.metrics
        assert result is not None
        bound.info(
            "message",
            outcome=str(result.outcome),
            raw_message_id=result.raw_message_id,
            reports=result.reports,
            reports_duplicate=result.reports_duplicate,
            records=result.records,
            reason=str(result.reason) if result.reason else None,
            size=size,
            dmarc=auth.dmarc if auth else None,
        )
        for (kind, outcome), count in result.counts.items():
            m.reports.labels(kind, outcome, delivered.authenticated).inc(count)
        m.records.inc(result.records)
        m.stage.labels("commit").observe(result.commit_seconds)
        m.stage.labels("parse").observe(result.parse_seconds)
        m.decompressed_bytes.inc(result.document_bytes)
        m.dmarc(result.dmarc, result.last_report, result.tls_sessions)

    def _reply(self, status: str, reason: ReplyReason) -> str:
        self.metrics.reply(status, reason)
        return status
