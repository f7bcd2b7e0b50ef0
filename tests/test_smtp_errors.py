"""An internal error during a delivery is a 451 4.3.0 that says nothing of the error.

The protocol (ReportSMTP) and its handler (ReportHandler) run in-process here, on a loop
of their own, with an ingester that fails as a bug would; the client is smtplib over TCP.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import IO

import pytest

from rua_sink.core.arrival import Envelope
from rua_sink.core.limits import Limits
from rua_sink.dns.authz import Authorizer, make_resolver
from rua_sink.ingest.delivery import Delivery
from rua_sink.ingest.ingester import Authorize, Ingester, IngestResult
from rua_sink.smtp.handler import ReportHandler
from rua_sink.smtp.policy import AddressPolicy, Sessions
from rua_sink.smtp.session import ReportSMTP


class BrokenIngester(Ingester):
    async def ingest(
        self,
        file: IO[bytes],
        envelope: Envelope,
        *,
        received_at: datetime | None = None,
        authorize: Authorize | None = None,
        keep_non_report: bool | None = None,
    ) -> IngestResult:
        raise RuntimeError("secret internal detail /etc/rua-sink")


@pytest.fixture
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    handler = ReportHandler(
        addresses=AddressPolicy(["dmarc@rua.example.net"]),
        delivery=Delivery(
            # no store: ingest fails before it would use one
            ingester=BrokenIngester(None, limits=Limits()),  # type: ignore[arg-type]
            authorizer=Authorizer(resolver=make_resolver(["127.0.0.1:9"], 1), allow=["*"]),
            reject_unauthorized=True,
        ),
        max_recipients=5,
    )
    sessions = Sessions(10, 10)

    def protocol() -> ReportSMTP:
        return ReportSMTP(
            handler, sessions=sessions, data_timeout=10, spool_memory=1 << 20, hostname="t"
        )

    server = loop.run_until_complete(loop.create_server(protocol, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def test_internal_error_is_451_without_detail(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("x.example")
        smtp.mail("")
        smtp.rcpt("dmarc@rua.example.net")
        code, reply = smtp.data(b"Subject: x\r\n\r\nbody\r\n")
    text = reply.decode()
    assert code == 451, text
    assert text.startswith("4.3.0")
    assert "secret" not in text and "RuntimeError" not in text
