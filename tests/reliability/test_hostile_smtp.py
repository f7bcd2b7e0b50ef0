"""Strangers on port 25: junk, floods of commands and recipients, bombs over SMTP. The
server answers them as the decision table says, keeps serving everyone else, and its
memory stays bounded."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ..procs import proc_status
from ..reports import gz, message, report_message, report_xml
from ..smtpserver import RUA, Server, running, send, stored


@pytest.fixture(scope="module")
def exposed(database_url: str) -> Iterator[Server]:
    with running(database_url, RUA_SINK_MAX_MESSAGE_BYTES="8MiB") as srv:
        yield srv


def raw_session(
    server: Server, payload: bytes, until: tuple[bytes, ...], read_for: float = 30.0
) -> bytes:
    """What the server answers ``payload``: read until one of ``until`` has come, the server
    closes, or ``read_for`` seconds (a loaded machine may take a while to answer)."""
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10) as s:
        s.settimeout(read_for)
        s.recv(512)
        with contextlib.suppress(OSError):  # the server may cut a flood short
            s.sendall(payload)
        got = b""
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline and not any(marker in got for marker in until):
            try:
                chunk = s.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk
        return got


def test_junk_floods_and_bombs_while_others_deliver(exposed: Server) -> None:
    errors: list[str] = []

    def legitimate() -> None:
        for i in range(20):
            code, reply = send(exposed, report_message(f"calm-{i}"))
            if code != 250:
                errors.append(f"calm-{i}: {code} {reply}")

    calm = threading.Thread(target=legitimate)
    calm.start()
    # Binary junk instead of commands.
    junk = raw_session(exposed, os.urandom(256 * 1024), until=(b"500",))
    assert b"500" in junk or junk == b""
    # Pipelined floods: thousands of recipients, then far too many commands.
    rcpts = b"EHLO x\r\nMAIL FROM:<>\r\n" + b"".join(
        f"RCPT TO:<u{i}@reports.example.net>\r\n".encode() for i in range(3000)
    )
    flood = raw_session(exposed, rcpts, until=(b"452 4.5.3", b"421"))
    assert b"452 4.5.3" in flood or b"421" in flood
    assert flood.count(b"250 2.1.5") <= 20
    noops = raw_session(exposed, b"NOOP\r\n" * 5000, until=(b"421",))
    assert b"421" in noops  # aiosmtpd's command repetition limit
    # A gzip bomb, delivered properly: quarantined, 250.
    bomb = gz(b"<feedback>" + b"\0" * (64 * 1024 * 1024))
    code, reply = send(exposed, message((bomb, "application/gzip", "bomb.xml.gz")))
    assert code == 250 and "kept" in reply
    calm.join(timeout=120)
    assert errors == []
    assert all(len(stored(exposed, f"calm-{i}")) == 1 for i in range(20))
    # Still serving, and not grown with what it was sent.
    assert send(exposed, report_message("after-the-storm"))[0] == 250
    assert proc_status(exposed.process.pid, "VmHWM") < 200 * 2**20


def test_oversized_message_is_refused_at_size_without_being_read(exposed: Server) -> None:
    with socket.create_connection(("127.0.0.1", exposed.smtp_port), timeout=10) as s:
        s.recv(512)
        s.sendall(b"EHLO x.example\r\n")
        time.sleep(0.2)
        s.recv(4096)
        s.sendall(f"MAIL FROM:<> SIZE={64 * 2**20}\r\n".encode())
        assert s.recv(512).startswith(b"552 5.3.4")
    # Streamed past the limit anyway: refused at the end, never stored.
    data = message(
        (gz(report_xml(1, report_id="huge")) + os.urandom(9 * 2**20), "application/gzip", "h.gz")
    )
    code, _ = send(exposed, data, rcpt=RUA)
    assert code == 552
    assert stored(exposed, "huge") == []
