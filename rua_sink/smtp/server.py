"""The SMTP front door: aiosmtpd's protocol, with DATA streamed to a spool.

Reply codes follow SPEC.md's decision table (RFC 5321 4.2, RFC 3463 enhanced codes):

=====================================================  =========================
RCPT to an address that is not a report address        550 5.1.1 (never relays)
SIZE= or DATA over the limit                            552 5.3.4
a DATA line over max_line_bytes (bare LF ends a line)   500 5.5.2
a NUL or bytes that are not UTF-8 in HELO/EHLO          501 5.5.2
... in MAIL FROM, in RCPT TO                            501 5.1.7, 501 5.1.3
database unreachable, commit failed                     451 4.3.0
out of spool space                                      452 4.3.1
DNS temporary error during the authorization check      451 4.4.3
report for a domain that has not authorized us          550 5.7.1 (or stored, flagged)
mail failing DMARC, RUA_SINK_REQUIRE_AUTHENTICATED=reject 550 5.7.1 (451 4.4.3: DNS failed)
TLS report without a DKIM signature of its reporter     250, kept for review (RFC 8460 3)
no report-like part at all                              550 5.6.0
the same, to postmaster (RFC 5321 4.5.1)                250, kept as not_a_report
report-like part that fails to decompress or parse      250, quarantined
duplicate of a stored report                            250, stored once
internal error                                          451 4.3.0, no detail
=====================================================  =========================

A 250 is sent only after the message, its reports and their records are committed.

aiosmtpd's own DATA handling keeps the whole message in memory (about three times its
size); ``ReportSMTP.smtp_DATA`` replaces it with one that writes blocks to a ``Spool`` as
they arrive (memory, then a temporary file without a name), so a session's
memory does not grow with the message. It follows aiosmtpd 1.4's ``smtp_DATA`` closely
(``aiosmtpd`` is pinned to 1.4.x for that reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import IO, Any, cast

import aiofiles.threadpool
import asyncpg
from aiofiles.threadpool.binary import AsyncBufferedIOBase
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from rua_sink import logs
from rua_sink.core.arrival import Envelope as Arrival
from rua_sink.core.arrival import MailAuth
from rua_sink.core.limits import Limits
from rua_sink.core.model import ReportType
from rua_sink.dns.authz import Authorization, Authorizer
from rua_sink.dns.mailauth import MailAuthenticator
from rua_sink.errors import (
    AuthenticationUnavailable,
    AuthorizationUnavailable,
    NotAuthorized,
    Reason,
)
from rua_sink.ingest.ingester import Ingester, IngestResult
from rua_sink.metrics import Metrics
from rua_sink.outcomes import AuthPolicy, Outcome, RawStatus, ReplyReason, Verdict

log = logs.get("rua_sink.smtp")

REPLY_STORED = "250 2.0.0 Report accepted"
REPLY_DUPLICATE = "250 2.0.0 Report already received, accepted"
REPLY_QUARANTINED = "250 2.0.0 Accepted; the report could not be parsed and is kept for review"
REPLY_PARTLY = "250 2.0.0 Accepted; a part could not be parsed and is kept for review"
REPLY_UNSIGNED = "250 2.0.0 Accepted; kept for review: not signed by its reporter"
REPLY_KEPT = "250 2.0.0 Already received; kept for review"
REPLY_REPROCESSED = "250 2.0.0 Report accepted; received before, now read again"
REPLY_NOT_A_REPORT = "550 5.6.0 No DMARC or TLS report found in this message"
REPLY_POSTMASTER = "250 2.0.0 Accepted for the postmaster"
REPLY_UNAUTHORIZED = "550 5.7.1 The report's domain has not authorized this destination"
REPLY_UNAUTHENTICATED = "550 5.7.1 The report's mail failed DMARC authentication"
REPLY_DNS = "451 4.4.3 Temporary DNS failure checking authorization, try again later"
REPLY_TEMPORARY = "451 4.3.0 Temporary failure, try again later"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds the maximum"
REPLY_NO_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_NO_SUCH_USER = "550 5.1.1 No such report address here"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"
REPLY_LINE_TOO_LONG = "500 5.5.2 Line too long"
# RFC 3463 3.6: X.5.2 syntax error; 3.2: X.1.7 bad sender's, X.1.3 bad destination
# mailbox address syntax
REPLY_BAD_HELO = "501 5.5.2 Invalid characters in the host name"
REPLY_BAD_SENDER = "501 5.1.7 Invalid characters in the sender address"
REPLY_BAD_RECIPIENT = "501 5.1.3 Invalid characters in the recipient address"

#: What a command argument must not hold, as aiosmtpd decodes it (UTF-8, undecodable bytes
#: as lone surrogates): NUL, which no PostgreSQL text can hold, and bytes that are not
#: UTF-8 (RFC 6531 3.3 allows UTF-8 only).
_UNSTORABLE = re.compile("[\x00\udc80-\udcff]")

_SIZE = re.compile(r"\bSIZE=(\d+)", re.IGNORECASE)

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: A path in angle brackets around a dot-atom address, then its parameters: what nearly
#: every sender writes in MAIL and RCPT (RFC 5321 4.1.2).
_PLAIN_PATH = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]++(?!\()(.*))?",
    re.DOTALL,
)


def plain_path(arg: str, local_part_limit: int = 0) -> tuple[str, str] | None:
    """``(address, parameters)`` of a plain path, as aiosmtpd's parser reads it; None for
    anything else (quoted or bracketed parts, comments, the null path), which is left to
    that parser. It builds a token tree per address, a tenth of a millisecond a command."""
    m = _PLAIN_PATH.fullmatch(arg)
    if m is None:
        return None
    local, domain, rest = m.groups()
    if local_part_limit and len(local) > local_part_limit:
        return None
    return f"{local}@{domain}", rest or ""


class AddressPolicy:
    """Report addresses: exact (``dmarc@rua.example.net``) or a whole domain
    (``*@reports.example.net``), case-insensitive, plus postmaster (RFC 5321 4.5.1)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.domains: set[str] = set()
        for address in addresses:
            local, _, dom = address.lower().rpartition("@")
            if local == "*":
                self.domains.add(dom)
            else:
                self.exact.add(f"{local}@{dom}")
        self.local_domains = self.domains | {a.rpartition("@")[2] for a in self.exact}

    def accepts(self, address: str) -> bool:
        address = _bare(address)
        _, at, dom = address.rpartition("@")
        if at and (address in self.exact or dom in self.domains):
            return True
        # RFC 5321 4.5.1: <postmaster> with no domain, or at one of ours
        return self.postmaster(address) and (not at or dom in self.local_domains)

    @staticmethod
    def postmaster(address: str) -> bool:
        address = _bare(address)
        return address == "postmaster" or address.rpartition("@")[0] == "postmaster"


def _bare(address: str) -> str:
    """A path's address as the policy compares it: no brackets, lower case."""
    return address.strip().strip("<>").lower()


def _in_networks(ip: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


@dataclass
class SpooledMessage:
    file: IO[bytes]
    size: int


class ReportHandler:
    """aiosmtpd handler: RCPT policy, then the ingest of each message."""

    def __init__(
        self,
        *,
        addresses: AddressPolicy,
        ingester: Ingester,
        authorizer: Authorizer,
        reject_unauthorized: bool,
        max_recipients: int,
        metrics: Metrics | None = None,
        authenticator: MailAuthenticator | None = None,
        auth_policy: AuthPolicy = AuthPolicy.OFF,
        on_stored: Callable[[Sequence[int]], object] = lambda ids: None,
    ) -> None:
        self.metrics = metrics or Metrics()
        #: Told the ids of new aggregate reports once committed; must not wait.
        self.on_stored = on_stored
        #: SPF, DKIM and DMARC of each message; not checked under AuthPolicy.OFF
        self.authenticator = authenticator if auth_policy is not AuthPolicy.OFF else None
        self.auth_policy = auth_policy
        self.addresses = addresses
        self.ingester = ingester
        self.authorizer = authorizer
        self.reject_unauthorized = reject_unauthorized
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
        # RFC 2034: the replies below carry enhanced status codes; say so. RFC 2920:
        # commands may come in groups (MAIL, RCPT and DATA in one packet, as large
        # senders send them); aiosmtpd reads them in turn from its buffer and answers
        # each in order.
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.addresses.accepts(address):
            self.metrics.reply(REPLY_NO_SUCH_USER, ReplyReason.UNKNOWN_RECIPIENT)
            return REPLY_NO_SUCH_USER
        if len(envelope.rcpt_tos) >= self.max_recipients:
            self.metrics.reply(REPLY_TOO_MANY_RCPTS, ReplyReason.TOO_MANY_RECIPIENTS)
            return REPLY_TOO_MANY_RCPTS
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: Envelope, proxy_data: Any
    ) -> bool:
        return bool(proxy_data and proxy_data.valid)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default reply quotes the exception; nothing internal leaves here.
        log.error("internal_error", exc_info=error)
        self.metrics.reply(REPLY_TEMPORARY, ReplyReason.INTERNAL_ERROR)
        return REPLY_TEMPORARY

    async def deliver(self, session: Session, envelope: Envelope, spooled: SpooledMessage) -> str:
        """Store one message; the reply tells the client what happened to it."""
        rcpt_domains = tuple(sorted({r.rpartition("@")[2].lower() for r in envelope.rcpt_tos}))
        rcpt_addresses = tuple(r.strip("<>").lower() for r in envelope.rcpt_tos)
        # RFC 5321 4.5.1: mail to the postmaster is accepted, report or not; what is not
        # a report is kept (status not_a_report) for the operators to read.
        to_postmaster = any(AddressPolicy.postmaster(r) for r in rcpt_addresses)

        async def authorize(kind: ReportType, domains: tuple[str, ...]) -> str | None:
            verdicts = [
                await self._authorize(kind, d, rcpt_domains, rcpt_addresses) for d in domains
            ]
            best = next((v for v in verdicts if v.verdict.allowed), None)
            if best is None:
                if self.reject_unauthorized:
                    raise NotAuthorized(kind, ", ".join(domains))
                return str(Verdict.NOT_AUTHORIZED)
            return str(best.verdict)

        peer_ip = client_address(session)
        bound = log.bind(peer=peer_ip, mail_from=envelope.mail_from, rcpt_to=rcpt_addresses)
        m = self.metrics
        auth: MailAuth | None = None
        if self.authenticator is not None:
            auth = await self.authenticator.check(
                spooled.file,
                peer_ip=peer_ip,
                mail_from=envelope.mail_from,
                helo=session.host_name or None,
            )
            if self.auth_policy is AuthPolicy.REJECT and not auth.authenticated:
                bound.info("refused_not_authenticated", dmarc=auth.dmarc, spf=auth.spf)
                if auth.dmarc == "temperror":
                    return self._reply(REPLY_DNS, ReplyReason.DNS_UNAVAILABLE)
                return self._reply(REPLY_UNAUTHENTICATED, ReplyReason.UNAUTHENTICATED)
        arrival = Arrival(
            source="smtp",
            peer_ip=peer_ip,
            helo=session.host_name or None,
            mail_from=envelope.mail_from,
            rcpt_to=rcpt_addresses,
            auth=auth,
        )
        authenticated = "unchecked" if auth is None else ("yes" if auth.authenticated else "no")
        started = time.perf_counter()
        try:
            result = await self.ingester.ingest(
                spooled.file, arrival, authorize=authorize, keep_non_report=to_postmaster
            )
        except NotAuthorized as exc:
            bound.info("refused_not_authorized", domains=str(exc))
            m.reports.labels(str(exc.kind), "rejected", authenticated).inc()
            return self._reply(REPLY_UNAUTHORIZED, ReplyReason.UNAUTHORIZED)
        except (AuthorizationUnavailable, AuthenticationUnavailable) as exc:
            bound.warning("authorization_unavailable", error=str(exc))
            return self._reply(REPLY_DNS, ReplyReason.DNS_UNAVAILABLE)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            bound.warning("database_unavailable", error=str(exc))
            m.database_errors.inc()
            return self._reply(REPLY_TEMPORARY, ReplyReason.DATABASE_UNAVAILABLE)
        finally:
            m.stage.labels("store").observe(time.perf_counter() - started)
        bound.info(
            "message",
            outcome=str(result.outcome),
            raw_message_id=result.raw_message_id,
            reports=result.reports,
            reports_duplicate=result.reports_duplicate,
            records=result.records,
            reason=str(result.reason) if result.reason else None,
            size=spooled.size,
            dmarc=auth.dmarc if auth else None,
        )
        for (kind, outcome), count in result.counts.items():
            m.reports.labels(kind, outcome, authenticated).inc(count)
        m.records.inc(result.records)
        m.stage.labels("commit").observe(result.commit_seconds)
        m.stage.labels("parse").observe(result.parse_seconds)
        m.decompressed_bytes.inc(result.document_bytes)
        m.dmarc(result.dmarc, result.last_report, result.tls_sessions)
        if result.aggregate_report_ids:
            self.on_stored(result.aggregate_report_ids)
        status, reason = reply_for(result, to_postmaster=to_postmaster)
        return self._reply(status, reason)

    def _reply(self, status: str, reason: ReplyReason) -> str:
        self.metrics.reply(status, reason)
        return status

    async def _authorize(
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


def reply_for(result: IngestResult, *, to_postmaster: bool) -> tuple[str, ReplyReason]:
    """What the reply says happened to a message (README, the reply table)."""
    outcome = result.outcome
    if outcome is Outcome.DUPLICATE and result.archived_status is RawStatus.NOT_A_REPORT:
        outcome = Outcome.NOT_A_REPORT  # these bytes again: still not a report
    if outcome is Outcome.NOT_A_REPORT:
        if to_postmaster:
            return REPLY_POSTMASTER, ReplyReason.POSTMASTER
        return REPLY_NOT_A_REPORT, ReplyReason.NOT_A_REPORT
    if outcome is Outcome.QUARANTINED:
        if result.reason is Reason.UNSIGNED_REPORT:
            return REPLY_UNSIGNED, ReplyReason.UNSIGNED
        if result.reports_new or result.reports_duplicate:
            return REPLY_PARTLY, ReplyReason.QUARANTINED
        return REPLY_QUARANTINED, ReplyReason.QUARANTINED
    if outcome is Outcome.DUPLICATE:
        if result.archived_status is RawStatus.QUARANTINED:
            return REPLY_KEPT, ReplyReason.DUPLICATE
        return REPLY_DUPLICATE, ReplyReason.DUPLICATE
    if result.reprocessed:
        return REPLY_REPROCESSED, ReplyReason.REPROCESSED
    return REPLY_STORED, ReplyReason.STORED


def client_address(session: Session) -> str | None:
    """The real client: from the PROXY header when a trusted balancer sent one."""
    proxied = getattr(session, "proxy_data", None)
    if proxied is not None and proxied.src_addr is not None:
        return str(proxied.src_addr)
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else None


class Sessions:
    """Counts sessions, in all and per client address, for the connection limits."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.open_sessions: set[ReportSMTP] = set()
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.idle = asyncio.Event()
        self.idle.set()

    def open(self, ip: str, *, per_ip: bool = True) -> bool:
        if self.total >= self.max_total or (per_ip and self.per_ip[ip] >= self.max_per_ip):
            return False
        self.total += 1
        self.per_ip[ip] += 1
        self.idle.clear()
        return True

    def close_idle(self) -> None:
        """At shutdown: end every session that is not in the middle of a message."""
        for session in list(self.open_sessions):
            if not session.busy:
                session.say_goodbye()

    def close(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        if self.total == 0:
            self.idle.set()


#: The name that spool files of earlier versions (and of a crash inside
#: ``tempfile.TemporaryFile``'s fallback, between creating and unlinking) start with.
SPOOL_PREFIX = "rua-sink-data-"


class Spool:
    """DATA as it arrives: in memory up to ``memory`` bytes, then in a temporary file
    written through aiofiles (in a worker thread), so that disk writes never hold up the
    event loop.

    The file has no name (``tempfile.TemporaryFile``: O_TMPFILE, or unlinked as soon as
    created), so it cannot outlive its session: the kernel frees it when it is closed,
    whether by ``close`` at the end of DATA, by a cancellation of the session's task (the
    file object is then closed when collected) or by the death of the process."""

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self._buffer = io.BytesIO()
        self._file: IO[bytes] | None = None  # once the data outgrows memory
        self._writer: AsyncBufferedIOBase | None = None  # the same file, written async

    async def write(self, data: bytes) -> None:
        if self._file is None:
            if self._buffer.tell() + len(data) <= self.memory:
                self._buffer.write(data)
                return
            self._file = tempfile.TemporaryFile(prefix=SPOOL_PREFIX)  # noqa: SIM115 - see close()
            self._writer = aiofiles.threadpool.wrap(self._file)
            data = self._buffer.getvalue() + data
            self._buffer = io.BytesIO()
        assert self._writer is not None
        await self._writer.write(data)

    async def reader(self) -> IO[bytes]:
        """The data, from its start, as a file the (synchronous) parser can read."""
        file, writer = self._file, self._writer
        if file is None or writer is None:
            self._buffer.seek(0)
            return self._buffer
        await writer.flush()
        file.seek(0)
        return file

    def close(self) -> None:
        """Frees the data; synchronous, so that nothing (a cancellation) can stop it half
        way."""
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):  # what is left to flush may not fit either
                file.close()
        self._buffer = io.BytesIO()


def remove_stale_spools() -> int:
    """Removes the spool files that earlier runs left in the temporary folder (the named
    files of older versions, killed or cut off before they removed them); returns how
    many. Called at start, once the SMTP port is ours."""
    try:
        with os.scandir(tempfile.gettempdir()) as entries:
            stale = [
                e.path
                for e in entries
                if e.name.startswith(SPOOL_PREFIX) and e.is_file(follow_symlinks=False)
            ]
    except OSError:
        return 0
    removed = 0
    for path in stale:
        try:
            os.unlink(path)
        except OSError:
            continue
        removed += 1
    return removed


_END = b".\r\n"
_FLUSH_BYTES = 65536
#: A bare LF, not the end of a CRLF: the line ends there all the same (see read_data).
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _over(lines: list[bytes], limit: int) -> bool:
    """Whether one of ``lines`` (split at LF) is longer than ``limit``, a CR before its LF
    not counted."""
    longest = max(map(len, lines))
    if longest <= limit:
        return False
    return longest > limit + 1 or any(
        len(line) == longest and not line.endswith(b"\r") for line in lines
    )


async def read_data(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], Awaitable[None]],
    *,
    line_limit: int,
    size_limit: int | None,
    carry_limit: int = _FLUSH_BYTES,
) -> tuple[int, str]:
    """Read DATA from ``reader`` up to its end (a line holding only a dot, RFC 5321
    4.1.1.4), undo dot-stuffing (4.5.2) and hand the content to ``write``. Returns the
    size (the bytes before the final dot line, as received) and "ok", "too_much" (over
    ``size_limit``; nothing more is written), "no_storage" (``write`` failed; nothing more
    is written either) or "too_long" (a line longer than ``line_limit``, its end not
    counted). Whatever the state, the data is read to its end, so that none of it is
    taken for commands.

    Lines end at CRLF or at a bare LF, which is taken for a CRLF (as Postfix does by
    default): it ends the line for the length check, the line after it is unstuffed, and
    it is handed on as CRLF, so that such a message is stored like its CRLF twin. The
    data itself ends only at CRLF.CRLF: a bare LF or CR around the dot (LF.LF, CR.LF,
    LF.CRLF, CRLF.CR) does not end it, so no second message can hide behind such an end
    (the SMTP smuggling attacks of 2023). Whatever follows the final dot (pipelined
    commands, RFC 2920) stays in ``reader``.

    The data is read in blocks, not lines: each ``readuntil`` stops at the next ".CRLF",
    or, when that is further off than the reader's limit, gives way to a read of the bytes
    before it (which never end inside a ".CRLF"). An unfinished line is held back to the
    next block, up to ``carry_limit`` bytes; past that, all of it but its last byte (a CR
    may start the CRLF) is handed on and only its length is kept, so a session's memory
    does not grow with ``line_limit``.
    """
    size = 0
    too_long = no_storage = too_much = False
    carry = b""  # the current line's bytes not handed on yet: all of them, or its last one
    line_len = 0  # the current line's bytes handed on before ``carry``
    after_crlf = True  # the line in ``carry`` follows a CRLF (at first: DATA's own)
    pending: list[bytes] = []
    pending_bytes = 0
    while True:
        try:
            chunk = await reader.readuntil(_END)
            at_dot = True
        except asyncio.LimitOverrunError as e:
            chunk = await reader.read(e.consumed)  # no ".CRLF" starts in these bytes
            at_dot = False
        size += len(chunk)
        data = carry + chunk if carry else chunk
        if at_dot and (
            data.endswith(b"\r\n.\r\n") or (data == _END and after_crlf and not line_len)
        ):
            body, carry, size, done = data[:-3], b"", size - 3, True
        else:
            cut = data.rfind(b"\n") + 1
            body, carry, done = data[:cut], data[cut:], False
        at_line_start = not line_len
        if body and not too_long:
            end = body.find(b"\n")  # of the first line, which may have begun before
            first = line_len + end - (body[end - 1 : end] == b"\r")
            too_long = first > line_limit or (
                len(body) > line_limit + 1 and _over(body.split(b"\n"), line_limit)
            )
        if body:
            line_len = 0
            after_crlf = body.endswith(b"\r\n")
        if line_len + len(carry) - carry.endswith(b"\r") > line_limit:
            too_long = True
        piece = b""
        if len(carry) > carry_limit or (too_long and carry):
            piece, carry = carry[:-1], carry[-1:]
            line_len += len(piece)
        too_much = too_much or bool(size_limit and size > size_limit)
        if too_long or no_storage or too_much:
            pending.clear()  # the message is refused: keep reading, store nothing
        else:
            if body:
                if at_line_start and body.startswith(b"."):
                    body = body[1:]
                if body.count(b"\n") != body.count(b"\r\n"):
                    body = _BARE_LF.sub(b"\r\n", body)
                pending.append(body.replace(b"\r\n.", b"\r\n"))
                pending_bytes += len(body)
            if piece:
                if not line_len - len(piece) and piece.startswith(b"."):
                    piece = piece[1:]  # the line starts with this piece
                pending.append(piece)
                pending_bytes += len(piece)
        if pending and (done or pending_bytes >= _FLUSH_BYTES):
            try:
                await write(b"".join(pending))
            except OSError as exc:  # a full disk, a file size limit
                log.error("spool_write_failed", error=str(exc))
                no_storage = True
            pending.clear()
            pending_bytes = 0
        if done:
            break
    if too_much:
        return size, "too_much"
    if no_storage:
        return size, "no_storage"
    return size, "too_long" if too_long else "ok"


class ReportSMTP(SMTP):
    """aiosmtpd's protocol with streamed DATA, SIZE refusals with enhanced codes, and
    connection limits."""

    def __init__(
        self,
        handler: ReportHandler,
        *,
        sessions: Sessions,
        data_timeout: float,
        spool_memory: int,
        data_line_limit: int = Limits().max_line_bytes,
        trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.trusted_proxies = trusted_proxies
        self.report_handler = handler
        self.sessions = sessions
        self.data_timeout = data_timeout
        self.spool_memory = spool_memory
        #: DATA lines; command lines keep aiosmtpd's RFC 5321 4.5.3.1.4-6 limits
        self.data_line_limit = data_line_limit
        self._counted_ip: str | None = None
        self._in_data = False
        self._tls_used = False
        self.busy = False  # from DATA to its reply: a message the server must finish

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts its idle timer per command only, so a large DATA would be cut
        # at the idle timeout; during DATA, arriving bytes count as activity and
        # data_timeout bounds the whole transfer.
        if self._in_data:
            self._reset_timeout()
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        metrics = self.report_handler.metrics
        if self._counted_ip is not None:
            # aiosmtpd calls this again with the TLS transport after STARTTLS.
            metrics.starttls.inc()
            self._tls_used = True
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unix"
        proxy = _in_networks(ip, self.trusted_proxies)
        # A trusted load balancer's connections start with a PROXY header (read by
        # aiosmtpd when _proxy_timeout is set); from anyone else, PROXY is an unknown
        # command. The balancer carries many clients: no per-address limit for it.
        self._proxy_timeout = 10.0 if proxy else None
        if not self.sessions.open(ip, per_ip=not proxy):
            metrics.connections.labels("refused").inc()
            metrics.reply(REPLY_BUSY, ReplyReason.TOO_MANY_CONNECTIONS)
            # A stream transport, whatever its class: uvloop's do not derive from asyncio's.
            writer = cast(asyncio.WriteTransport, transport)
            writer.write(f"{REPLY_BUSY}\r\n".encode())
            writer.close()
            return
        metrics.connections.labels("accepted").inc()
        metrics.sessions.inc()
        self._counted_ip = ip
        self.sessions.open_sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is None:
            return  # refused in connection_made: aiosmtpd never saw it
        if self._counted_ip is not None:
            self.sessions.close(self._counted_ip)
            self.sessions.open_sessions.discard(self)
            metrics = self.report_handler.metrics
            metrics.sessions.dec()
            metrics.sessions_ended.labels("yes" if self._tls_used else "no").inc()
            self._counted_ip = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        super().eof_received()
        # aiosmtpd cancels the session's task on EOF, and that task closes the connection,
        # unless the EOF came before the task's first step (uvloop may deliver it then):
        # the session would stay open, and counted, until its idle timeout. Closed here.
        return False

    def say_goodbye(self) -> None:
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_path(arg, self.local_part_limit)
        return plain if plain is not None else super()._getaddr(arg)

    async def _refused(self, arg: str | None, reply: str) -> bool:
        """Refuses an argument that could not be stored (see ``_UNSTORABLE``) at its
        command, so that it never reaches the database."""
        if not arg or _UNSTORABLE.search(arg) is None:
            return False
        self.report_handler.metrics.reply(reply, ReplyReason.BAD_SYNTAX)
        await self.push(reply)
        return True

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not await self._refused(hostname, REPLY_BAD_HELO):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not await self._refused(hostname, REPLY_BAD_HELO):
            await super().smtp_EHLO(hostname)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._refused(arg, REPLY_BAD_RECIPIENT):
            await super().smtp_RCPT(arg)

    @syntax("MAIL FROM:<address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str) -> None:
        if await self._refused(arg, REPLY_BAD_SENDER):
            return
        m = _SIZE.search(arg or "")
        if m and self.data_size_limit and int(m.group(1)) > self.data_size_limit:
            self.report_handler.metrics.reply(REPLY_TOO_BIG, ReplyReason.TOO_BIG)
            await self.push(REPLY_TOO_BIG)  # RFC 1870 6
            return
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool = Spool(self.spool_memory)
        metrics = self.report_handler.metrics
        self.busy = True
        try:
            started = time.perf_counter()
            try:
                self._in_data = True
                try:
                    size, state = await asyncio.wait_for(self._receive(spool), self.data_timeout)
                finally:
                    self._in_data = False
            except TimeoutError:
                metrics.reply("451", ReplyReason.DATA_TIMEOUT)
                await self.push("451 4.4.2 Timeout waiting for the end of data")
                if self.transport is not None:
                    self.transport.close()
                return
            metrics.stage.labels("receive").observe(time.perf_counter() - started)
            metrics.messages.inc()
            metrics.message_size.observe(size)
            if state == "too_long":
                metrics.reply(REPLY_LINE_TOO_LONG, ReplyReason.LINE_TOO_LONG)
                await self.push(REPLY_LINE_TOO_LONG)
            elif state == "too_much":
                metrics.reply(REPLY_TOO_BIG, ReplyReason.TOO_BIG)
                await self.push(REPLY_TOO_BIG)
            elif state == "no_storage" or (file := await self._spooled(spool)) is None:
                metrics.reply(REPLY_NO_STORAGE, ReplyReason.NO_STORAGE)
                await self.push(REPLY_NO_STORAGE)  # RFC 5321 4.2.2, SPEC H.47
            else:
                assert self.session is not None
                try:
                    status = await self.report_handler.deliver(
                        self.session, self.envelope, SpooledMessage(file, size)
                    )
                except Exception as error:  # noqa: BLE001 - answered 451, logged in full
                    status = await self.report_handler.handle_exception(error)
                await self.push(status)
        finally:
            spool.close()  # first, and not awaited: a cancelled session frees it too
            self.busy = False
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd's own

    @staticmethod
    async def _spooled(spool: Spool) -> IO[bytes] | None:
        """The spooled data to read, or None when its last bytes could not be written."""
        try:
            return await spool.reader()
        except OSError as exc:
            log.error("spool_write_failed", error=str(exc))
            return None

    async def _receive(self, spool: Spool) -> tuple[int, str]:
        return await read_data(
            self._reader,
            spool.write,
            line_limit=self.data_line_limit,
            size_limit=self.data_size_limit,
        )
