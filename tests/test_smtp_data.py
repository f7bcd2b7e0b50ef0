"""DATA as the server reads it: the end of the data, dot-stuffing, line and size limits,
and what a client pipelines after the final dot (RFC 5321 4.1.1.4, 4.5.2, 4.5.3.1.6)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import re
import resource
import socket
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from rua_sink.smtp import read_data

from .reports import report_message
from .smtpserver import Server, replies, running_alone, stored

CRLF = b"\r\n"


@dataclass
class Expected:
    size: int
    state: str
    content: bytes
    rest: bytes  # what follows the final dot


def expected(stream: bytes, line_limit: int, size_limit: int | None) -> Expected:
    """RFC 5321's reading, written as plainly as possible: the data ends at the first
    CRLF.CRLF, counting the CRLF that ended the DATA command."""
    whole = CRLF + stream
    end = whole.find(b"\r\n.\r\n")
    assert end >= 0
    body = whole[2 : end + 2]
    lines = body.split(CRLF)[:-1]
    content = b"".join((line[1:] if line.startswith(b".") else line) + CRLF for line in lines)
    if size_limit and len(body) > size_limit:
        state = "too_much"
    elif any(len(line) > line_limit for line in lines):
        state = "too_long"
    else:
        state = "ok"
    return Expected(len(body), state, content, whole[end + 5 :])


async def read(
    pieces: list[bytes], line_limit: int, size_limit: int | None
) -> tuple[int, str, bytes, bytes]:
    reader = asyncio.StreamReader(limit=line_limit)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    size, state = await read_data(reader, write, line_limit=line_limit, size_limit=size_limit)
    await feeding
    return size, state, b"".join(written), await reader.read()


piece = st.sampled_from(
    [b"a", b"bc", b".", b"..", b"\r", b"\n", CRLF, b".\r\n", b"\r\n.", b"\n.\n", b"x" * 9]
)
streams = st.lists(piece, max_size=40).map(b"".join)


@settings(max_examples=2000, derandomize=True, database=None, deadline=None)
@given(
    stream=streams,
    after=st.sampled_from([b"", b"QUIT\r\n", b".\r\nMAIL FROM:<a@b.c>\r\n"]),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    line_limit=st.integers(3, 24),
    size_limit=st.one_of(st.none(), st.integers(1, 200)),
)
def test_data_is_read_as_rfc_5321_reads_it(
    stream: bytes, after: bytes, cuts: list[int], line_limit: int, size_limit: int | None
) -> None:
    whole = stream + b"\r\n.\r\n" + after
    bounds = sorted({0, len(whole), *(c for c in cuts if c < len(whole))})
    pieces = [whole[a:b] for a, b in itertools.pairwise(bounds)]
    size, state, content, rest = asyncio.run(read(pieces, line_limit, size_limit))
    want = expected(whole, line_limit, size_limit)
    assert (size, state, rest) == (want.size, want.state, want.rest)
    if state == "ok":
        assert content == want.content


def test_a_large_message_in_one_piece() -> None:
    lines = [b"." * (i % 7) + b"%d" % i for i in range(20_000)]
    stream = CRLF.join(lines) + b"\r\n.\r\nQUIT\r\n"
    size, state, content, rest = asyncio.run(read([stream], 1001, None))
    assert (state, rest) == ("ok", b"QUIT\r\n")
    assert content == expected(stream, 1001, None).content
    assert size == len(stream) - len(b".\r\nQUIT\r\n")


# --- over SMTP --------------------------------------------------------------------------


def dialogue(server: Server, content: bytes, replies_after: int = 2) -> list[str]:
    """One message, its content sent as given (already stuffed), then QUIT."""
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30) as conn:
        assert replies(conn, 1) == ["220"]
        conn.sendall(b"EHLO reporter.example\r\n")
        assert replies(conn, 1) == ["250"]
        conn.sendall(b"MAIL FROM:<noreply@reporter.example>\r\nRCPT TO:<dmarc@rua.example.net>\r\n")
        assert replies(conn, 2) == ["250", "250"]
        conn.sendall(b"DATA\r\n")
        assert replies(conn, 1) == ["354"]
        conn.sendall(content + b"QUIT\r\n")
        return replies(conn, replies_after)


def archived(server: Server, report_id: str) -> bytes:
    rows = server.fetch(
        "SELECT m.content_gzip FROM aggregate_reports r "
        "JOIN raw_messages m ON m.id = r.raw_message_id WHERE r.report_id = $1",
        report_id,
    )
    assert len(rows) == 1
    return gzip.decompress(rows[0]["content_gzip"])


def crlf(message: bytes) -> bytes:
    return re.sub(rb"\r?\n", CRLF, message)


def test_dot_stuffed_lines_are_archived_as_sent(server: Server) -> None:
    message = crlf(report_message("stuffed")) + b"X-Trailer: .\r\n.leading\r\n..two\r\n"
    stuffed = re.sub(rb"(?m)^\.", b"..", message)
    assert dialogue(server, stuffed + b".\r\n") == ["250", "221"]
    assert archived(server, "stuffed") == message


def test_a_bare_lf_dot_does_not_end_the_data(server: Server) -> None:
    """SMTP smuggling: a second message hidden behind an end of data that only a lenient
    server would see (LF.LF, CR.CR, LF.CRLF). It stays part of the first message."""
    hidden = (
        b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<dmarc@rua.example.net>\r\n"
        b"DATA\r\nFrom: ceo@victim.example\r\n\r\nwire the money\r\n"
    )
    first = crlf(report_message("smuggle"))
    for fake_end in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
        first += fake_end + hidden
    assert dialogue(server, first + b"\r\n.\r\n") == ["250", "221"]
    assert len(stored(server, "smuggle")) == 1
    # "\r\n.\n" is a line that starts with a dot: the dot goes, as dot-stuffing says.
    assert archived(server, "smuggle") == first.replace(b"\r\n.", CRLF) + CRLF
    assert not server.fetch("SELECT 1 FROM raw_messages WHERE mail_from = 'ceo@victim.example'")


def test_a_line_over_1000_octets_is_refused(server: Server) -> None:
    message = crlf(report_message("long-line")) + b"X-Long: " + b"y" * 1200 + CRLF
    assert dialogue(server, message + b".\r\n") == ["500", "221"]
    assert stored(server, "long-line") == []


def test_a_spool_that_cannot_grow_is_a_temporary_failure(server_url: str) -> None:
    """Out of spool space (here: a file size limit put on the running server), the rest of
    the data is read and dropped, and the reply is 452 4.3.1: the session stays in step,
    nothing of the message is kept, and the sender's retry, once there is room, is stored."""
    padding = b"".join(b"%075d\r\n" % i for i in range(3000))  # 231 KB after the report
    data = crlf(report_message("no-room")) + padding
    with running_alone(server_url, "spool", RUA_SINK_SPOOL_MEMORY_BYTES="16KiB") as (server, _):
        pid = server.process.pid
        unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (100_000, unlimited[1]))
        try:
            assert dialogue(server, data + b".\r\n") == ["452", "221"]
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        assert stored(server, "no-room") == []
        assert not server.fetch("SELECT 1 FROM raw_messages")
        assert dialogue(server, data + b".\r\n") == ["250", "221"]
        assert len(stored(server, "no-room")) == 1
