"""One SMTP session: aiosmtpd's protocol, with DATA streamed to a spool, command arguments
checked before they can reach the database, SIZE refusals with enhanced codes, PROXY from
trusted balancers, and the connection limits.

``ReportSMTP.smtp_DATA`` replaces aiosmtpd's, which keeps the whole message in memory: it
reads the data with ``data.read_data`` into a ``data.Spool`` and hands the spooled message
to the handler. It follows aiosmtpd 1.4's ``smtp_DATA`` closely (``aiosmtpd`` is pinned to
1.4.x for that reason).
"""

from __future__ import annotations

import asyncio
import re
import time
from ipaddress import IPv4Network, IPv6Network
from typing import IO, Any, cast

from aiosmtpd.smtp import SMTP, syntax

from rua_sink import logs
from rua_sink.core.limits import Limits
from rua_sink.outcomes import ReplyReason
from rua_sink.smtp.data import Spool, SpooledMessage, read_data
from rua_sink.smtp.handler import ReportHandler
from rua_sink.smtp.policy import Sessions, in_networks, plain_path
from rua_sink.smtp.replies import (
    REPLY_BAD_HELO,
    REPLY_BAD_RECIPIENT,
    REPLY_BAD_SENDER,
    REPLY_BUSY,
    REPLY_DATA_SYNTAX,
    REPLY_DATA_TIMEOUT,
    REPLY_LINE_TOO_LONG,
    REPLY_NEED_RCPT,
    REPLY_NO_STORAGE,
    REPLY_SHUTTING_DOWN,
    REPLY_START_DATA,
    REPLY_TOO_BIG,
)

log = logs.get("rua_sink.smtp")

#: What a command argument must not hold, as aiosmtpd decodes it (UTF-8, undecodable bytes
#: as lone surrogates): NUL, which no PostgreSQL text can hold, and bytes that are not
#: UTF-8 (RFC 6531 3.3 allows UTF-8 only).
_UNSTORABLE = re.compile("[\x00\udc80-\udcff]")

_SIZE = re.compile(r"\bSIZE=(\d+)", re.IGNORECASE)


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
        proxy = in_networks(ip, self.trusted_proxies)
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
            transport.write(f"{REPLY_SHUTTING_DOWN}\r\n".encode())
            transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_path(arg, self.local_part_limit)
        return plain if plain is not None else super()._getaddr(arg)

    async def _refused(self, arg: str | None, reply: str) -> bool:
        """Refuses an argument that could not be stored (see ``_UNSTORABLE``) at its
        command, so that it never reaches the database."""
        if not arg or _UNSTORABLE.search(arg) is None:
            return False
        await self._push(reply, ReplyReason.BAD_SYNTAX)
        return True

    async def _push(self, reply: str, reason: ReplyReason) -> None:
        """A refusal: counted, then sent."""
        self.report_handler.metrics.reply(reply, reason)
        await self.push(reply)

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
            await self._push(REPLY_TOO_BIG, ReplyReason.TOO_BIG)  # RFC 1870 6
            return
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(REPLY_NEED_RCPT)
            return
        if arg:
            await self.push(REPLY_DATA_SYNTAX)
            return
        await self.push(REPLY_START_DATA)
        spool = Spool(self.spool_memory)
        self.busy = True
        try:
            received = await self._receive(spool)
            if received is not None:
                await self._answer(spool, *received)
        finally:
            spool.close()  # first, and not awaited: a cancelled session frees it too
            self.busy = False
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd's own

    async def _receive(self, spool: Spool) -> tuple[int, str] | None:
        """The data into ``spool``: its size and ``read_data``'s state; None when it did not
        end within data_timeout (answered, and the connection closed)."""
        metrics = self.report_handler.metrics
        started = time.perf_counter()
        try:
            self._in_data = True
            try:
                size, state = await asyncio.wait_for(
                    read_data(
                        self._reader,
                        spool.write,
                        line_limit=self.data_line_limit,
                        size_limit=self.data_size_limit,
                    ),
                    self.data_timeout,
                )
            finally:
                self._in_data = False
        except TimeoutError:
            await self._push(REPLY_DATA_TIMEOUT, ReplyReason.DATA_TIMEOUT)
            if self.transport is not None:
                self.transport.close()
            return None
        metrics.stage.labels("receive").observe(time.perf_counter() - started)
        metrics.messages.inc()
        metrics.message_size.observe(size)
        return size, state

    async def _answer(self, spool: Spool, size: int, state: str) -> None:
        """The reply to the final dot."""
        if state == "too_long":
            await self._push(REPLY_LINE_TOO_LONG, ReplyReason.LINE_TOO_LONG)
        elif state == "too_much":
            await self._push(REPLY_TOO_BIG, ReplyReason.TOO_BIG)
        elif state == "no_storage" or (file := await self._spooled(spool)) is None:
            await self._push(REPLY_NO_STORAGE, ReplyReason.NO_STORAGE)  # RFC 5321 4.2.2, SPEC H.47
        else:
            assert self.session is not None
            assert self.envelope is not None
            handler = self.report_handler
            try:
                status = await handler.deliver(
                    self.session, self.envelope, SpooledMessage(file, size)
                )
            except Exception as error:  # noqa: BLE001 - answered 451, logged in full
                status = await handler.handle_exception(error)
            await self.push(status)

    @staticmethod
    async def _spooled(spool: Spool) -> IO[bytes] | None:
        """The spooled data to read, or None when its last bytes could not be written."""
        try:
            return await spool.reader()
        except OSError as exc:
            log.error("spool_write_failed", error=str(exc))
            return None
