"""Hypothesis over the SMTP dialogue: random command sequences, any order, odd arguments.
Every reply is a well-formed SMTP reply with no internal detail, and the server keeps
answering everyone."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..reports import report_message
from ..smtpserver import RUA, Server, running, send

REPLY = re.compile(rb"^[2-5][0-9][0-9][ -]")

commands = st.one_of(
    st.sampled_from(
        [
            b"EHLO fuzz.example",
            b"HELO fuzz.example",
            b"MAIL FROM:<>",
            b"MAIL FROM:<a@fuzz.example> SIZE=100",
            b"MAIL FROM:<a@fuzz.example> SIZE=99999999999999",
            f"RCPT TO:<{RUA}>".encode(),
            b"RCPT TO:<victim@elsewhere.example>",
            b"RCPT TO:<postmaster>",
            b"DATA",
            b".",
            b"RSET",
            b"NOOP",
            b"VRFY root",
            b"EXPN list",
            b"HELP",
            b"STARTTLS",
            b"AUTH PLAIN AGFhAGI=",
            b"BDAT 10 LAST",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            b"Subject: hello",
            b"",
        ]
    ),
    st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@pytest.fixture(scope="module")
def target(database_url: str) -> Iterator[Server]:
    with running(database_url, RUA_SINK_IDLE_TIMEOUT="5") as srv:
        yield srv


def replies(sock: socket.socket, first: float = 10.0) -> bytes:
    """What the server says: waiting up to ``first`` seconds for it to start, then until
    it has been silent for 0.2 s or has closed."""
    data = b""
    sock.settimeout(first)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk
        sock.settimeout(0.2)


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(commands, min_size=1, max_size=12))
def test_random_dialogues(target: Server, script: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", target.smtp_port), timeout=5) as s:
        greeting = replies(s)
        assert greeting.startswith(b"220 ")
        s.sendall(b"".join(line + b"\r\n" for line in script))
        got = replies(s)
    assert got  # every line of a script is a command, or data after a 354: one reply at least
    for line in got.split(b"\r\n"):
        if line:
            assert REPLY.match(line), line
            assert b"Traceback" not in line and b"Error: (" not in line, line
    # Whatever that session did, the server still serves a real delivery.
    assert send(target, report_message("after-fuzz"))[0] == 250
