"""An internal error during a delivery is a 451 4.3.0 that says nothing of the error.

The protocol (ReportSMTP) runs in-process here, on a loop of its own, with a handler whose
delivery step fails as a bug would; the client is smtplib over TCP.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator

import pytest

from rua_sink.smtp import AddressPolicy, ReportHandler, ReportSMTP, Sessions, SpooledMessage


class FailingHandler(ReportHandler):
    async def deliver(self, session: object, envelope: object, spooled: SpooledMessage) -> str:
        raise RuntimeError("secret internal detail /etc/rua-sink")


@pytest.fixture
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    handler = FailingHandler(
        addresses=AddressPolicy(["dmarc@rua.example.net"]),
        ingester=None,  # type: ignore[arg-type]  # never reached: deliver fails first
        authorizer=None,  # type: ignore[arg-type]
        reject_unauthorized=True,
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
