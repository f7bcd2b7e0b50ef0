"""300 sessions held open from 15 client addresses while deliveries go on: the per-address
limit holds, and the held sessions do not stop anyone else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from ..reports import report_message
from ..smtpserver import Server, running, send, stored

PER_IP = 20
ADDRESSES = 15  # 127.0.0.2 ... 127.0.0.16: Linux answers on all of 127/8


@pytest.fixture(scope="module")
def busy(database_url: str) -> Iterator[Server]:
    with running(database_url, RUA_SINK_MAX_SESSIONS_PER_IP=str(PER_IP)) as srv:
        yield srv


def connect_from(server: Server, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", server.smtp_port), timeout=10, source_address=(source, 0)
    )


def test_three_hundred_held_sessions(busy: Server) -> None:
    time.sleep(0.5)  # the start-up probe's connection is counted until the server sees it close
    held: list[socket.socket] = []
    try:
        for n in range(ADDRESSES):
            source = f"127.0.0.{n + 2}"
            for _ in range(PER_IP):
                s = connect_from(busy, source)
                held.append(s)
                assert s.recv(512).startswith(b"220 ")
            # One more from the same address is refused; the others are not affected.
            extra = connect_from(busy, source)
            with extra:
                assert extra.recv(512).startswith(b"421 4.7.0")
        assert len(held) == 300
        started = time.monotonic()
        for i in range(10):
            assert send(busy, report_message(f"while-busy-{i}"))[0] == 250
        assert time.monotonic() - started < 30
        assert all(len(stored(busy, f"while-busy-{i}")) == 1 for i in range(10))
        for s in held[:5]:  # the held sessions still answer
            s.sendall(b"NOOP\r\n")
            assert s.recv(512).startswith(b"250")
    finally:
        for s in held:
            s.close()
