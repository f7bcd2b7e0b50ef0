"""The use case of one message delivered by SMTP: check the mail, store its reports with
the authorization of each, and say what became of it.

``Delivery.deliver`` takes the spooled message and its envelope and returns a
``Delivered``: its ``status`` (a ``DeliveryStatus``, one member for each distinct reply
the SMTP layer sends after DATA; ``smtp.replies`` holds the table) and what the log lines
and metrics need. The decisions made here:

- under ``AuthPolicy.REJECT``, mail that fails DMARC is refused before anything is
  stored (``UNAUTHENTICATED``; ``AUTHENTICATION_TEMPERROR`` when DNS failed);
- a report whose policy domain has not authorized this destination (RFC 9990 4; RFC 8460
  3 for TLS reports, by address) refuses the whole message under
  ``reject_unauthorized`` (``UNAUTHORIZED``), else it is stored, flagged;
- DNS or the database failing for now is ``DNS_UNAVAILABLE`` / ``DATABASE_UNAVAILABLE``,
  so that the sender retries;
- mail to the postmaster is kept, report or not (RFC 5321 4.5.1: ``POSTMASTER``);
- an unexpected exception is ``INTERNAL_ERROR`` and carries it, to be logged in full and
  answered without detail.

Each refusal rolls the message back: nothing of it is stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import IO

import asyncpg

from rua_sink.core.arrival import Envelope, MailAuth
from rua_sink.core.model import ReportType
from rua_sink.dns.authz import Authorization, Authorizer
from rua_sink.dns.mailauth import MailAuthenticator
from rua_sink.errors import (
    AuthenticationUnavailable,
    AuthorizationUnavailable,
    DatabaseError,
    NotAuthorized,
    Reason,
)
from rua_sink.ingest.ingester import Authorize, Ingester, IngestResult
from rua_sink.outcomes import AuthPolicy, DeliveryStatus, Outcome, RawStatus, Verdict


@dataclass(frozen=True, slots=True)
class Delivered:
    """One delivery's result."""

    status: DeliveryStatus
    #: The ingest's account, when it ran to its end
    ingest: IngestResult | None = None
    #: SPF, DKIM and DMARC of the message; None when not checked (AuthPolicy.OFF)
    auth: MailAuth | None = None
    #: UNAUTHORIZED: the type of the report refused
    refused_kind: ReportType | None = None
    #: Refusals: the unauthorized domains, or the error's text
    detail: str = ""
    #: INTERNAL_ERROR: the exception
    error: Exception | None = None
    #: How long the ingest ran (its "store" stage), when it was started
    store_seconds: float | None = None

    @property
    def authenticated(self) -> str:
        """The message's DMARC result as a metric label."""
        if self.auth is None:
            return "unchecked"
        return "yes" if self.auth.authenticated else "no"


class Delivery:
    """Mail authentication, authorization and ingest of the messages that SMTP receives."""

    def __init__(
        self,
        *,
        ingester: Ingester,
        authorizer: Authorizer,
        reject_unauthorized: bool,
        authenticator: MailAuthenticator | None = None,
        auth_policy: AuthPolicy = AuthPolicy.OFF,
        on_stored: Callable[[Sequence[int]], object] = lambda ids: None,
    ) -> None:
        self.ingester = ingester
        self.authorizer = authorizer
        self.reject_unauthorized = reject_unauthorized
        #: SPF, DKIM and DMARC of each message; not checked under AuthPolicy.OFF
        self.authenticator = authenticator if auth_policy is not AuthPolicy.OFF else None
        self.auth_policy = auth_policy
        #: Told the ids of new aggregate reports once committed; must not wait.
        self.on_stored = on_stored

    async def deliver(
        self, file: IO[bytes], arrival: Envelope, *, to_postmaster: bool
    ) -> Delivered:
        """Check and store the message in ``file`` (seekable), which came as ``arrival``
        says (its ``auth`` is filled in here); ``to_postmaster``: addressed to the
        postmaster (RFC 5321 4.5.1), whose mail is kept, report or not."""
        auth: MailAuth | None = None
        if self.authenticator is not None:
            try:
                auth = await self.authenticator.check(
                    file, peer_ip=arrival.peer_ip, mail_from=arrival.mail_from, helo=arrival.helo
                )
            except Exception as error:  # noqa: BLE001 - a bug: answered 451, logged in full
                return Delivered(DeliveryStatus.INTERNAL_ERROR, error=error)
            if self.auth_policy is AuthPolicy.REJECT and not auth.authenticated:
                if auth.dmarc == "temperror":
                    return Delivered(DeliveryStatus.AUTHENTICATION_TEMPERROR, auth=auth)
                return Delivered(DeliveryStatus.UNAUTHENTICATED, auth=auth)
        return await self._store(file, replace(arrival, auth=auth), to_postmaster)

    async def _store(self, file: IO[bytes], arrival: Envelope, to_postmaster: bool) -> Delivered:
        auth = arrival.auth
        started = time.perf_counter()
        error: Exception
        try:
            result = await self.ingester.ingest(
                file, arrival, authorize=self._authorize(arrival), keep_non_report=to_postmaster
            )
        except NotAuthorized as exc:
            return Delivered(
                DeliveryStatus.UNAUTHORIZED,
                auth=auth,
                refused_kind=exc.kind,
                detail=str(exc),
                store_seconds=time.perf_counter() - started,
            )
        except (AuthorizationUnavailable, AuthenticationUnavailable) as exc:
            status, error = DeliveryStatus.DNS_UNAVAILABLE, exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, DatabaseError) as exc:
            # DatabaseError: LockTimeout, a partition's creation that found its table busy
            status, error = DeliveryStatus.DATABASE_UNAVAILABLE, exc
        except Exception as exc:  # noqa: BLE001 - a bug: answered 451, logged in full
            status, error = DeliveryStatus.INTERNAL_ERROR, exc
        else:
            elapsed = time.perf_counter() - started
            if result.aggregate_report_ids:
                self.on_stored(result.aggregate_report_ids)
            return Delivered(
                status_of(result, to_postmaster=to_postmaster),
                ingest=result,
                auth=auth,
                store_seconds=elapsed,
            )
        return Delivered(
            status,
            auth=auth,
            detail=str(error),
            error=error if status is DeliveryStatus.INTERNAL_ERROR else None,
            store_seconds=time.perf_counter() - started,
        )

    def _authorize(self, arrival: Envelope) -> Authorize:
        """The check the ingest makes of each report's policy domains before storing it."""
        rcpt_domains = tuple(sorted({r.rpartition("@")[2] for r in arrival.rcpt_to}))
        rcpt_addresses = arrival.rcpt_to

        async def authorize(kind: ReportType, domains: tuple[str, ...]) -> str | None:
            verdicts = [await self._check(kind, d, rcpt_domains, rcpt_addresses) for d in domains]
            best = next((v for v in verdicts if v.verdict.allowed), None)
            if best is None:
                if self.reject_unauthorized:
                    raise NotAuthorized(kind, ", ".join(domains))
                return str(Verdict.NOT_AUTHORIZED)
            return str(best.verdict)

        return authorize

    async def _check(
        self,
        kind: ReportType,
        domain: str,
        rcpt_domains: tuple[str, ...],
        rcpt_addresses: tuple[str, ...],
    ) -> Authorization:
        # A TLS report names its destination by address (RFC 8460 3), DMARC by domain.
        check: Callable[[str, str], Awaitable[Authorization]]
        if kind is ReportType.TLSRPT:
            check, destinations = self.authorizer.check_tls, rcpt_addresses
        else:
            check, destinations = self.authorizer.check_dmarc, rcpt_domains
        last = Authorization(Verdict.NOT_AUTHORIZED)
        for destination in destinations:
            last = await check(domain, destination)
            if last.verdict.allowed:
                break
        return last


def status_of(result: IngestResult, *, to_postmaster: bool) -> DeliveryStatus:
    """What the ingest's account means for the sender (docs/serve.md, the reply table)."""
    outcome = result.outcome
    if outcome is Outcome.DUPLICATE and result.archived_status is RawStatus.NOT_A_REPORT:
        outcome = Outcome.NOT_A_REPORT  # these bytes again: still not a report
    if outcome is Outcome.NOT_A_REPORT:
        return DeliveryStatus.POSTMASTER if to_postmaster else DeliveryStatus.NOT_A_REPORT
    if outcome is Outcome.QUARANTINED:
        return _quarantined(result)
    if outcome is Outcome.DUPLICATE:
        if result.archived_status is RawStatus.QUARANTINED:
            return DeliveryStatus.DUPLICATE_KEPT
        return DeliveryStatus.DUPLICATE
    return DeliveryStatus.REPROCESSED if result.reprocessed else DeliveryStatus.STORED


def _quarantined(result: IngestResult) -> DeliveryStatus:
    if result.reason is Reason.UNSIGNED_REPORT:
        return DeliveryStatus.UNSIGNED
    if result.reports_new or result.reports_duplicate:
        return DeliveryStatus.PARTLY_QUARANTINED
    return DeliveryStatus.QUARANTINED
