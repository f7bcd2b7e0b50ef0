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

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rua_sink.smtp.data import read_data

from .reports import report_message, report_xml
from .smtpserver import RUA, Server, replies, running_alone, stored

CRLF = b"\r\n"


@dataclass
class Expected:
    size: int
    state: str
    content: bytes
    rest: bytes  # what follows the final dot


def expected(stream: bytes, line_limit: int, size_limit: int | None) -> Expected:
    """RFC 5321's reading, written as plainly as possible: the data ends at the first
    CRLF.CRLF, counting the CRLF that ended the DATA command; a line ends at CRLF or at a
    bare LF, which is taken for a CRLF (the line policy of the reply table, docs/serve.md)."""
    whole = CRLF + stream
    end = whole.find(b"\r\n.\r\n")
    assert end >= 0
    body = whole[2 : end + 2]
    lines = re.split(rb"\r?\n", body)[:-1]
    content = b"".join((line[1:] if line.startswith(b".") else line) + CRLF for line in lines)
    if size_limit and len(body) > size_limit:
        state = "too_much"
    elif any(len(line) > line_limit for line in lines):
        state = "too_long"
    else:
        state = "ok"
    return Expected(len(body), state, content, whole[end + 5 :])


async def read(
    pieces: list[bytes],
    line_limit: int,
    size_limit: int | None,
    *,
    block: int = 1001,
    carry_limit: int = 65536,
) -> tuple[int, str, bytes, bytes]:
    reader = asyncio.StreamReader(limit=block)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    size, state = await read_data(
        reader, write, line_limit=line_limit, size_limit=size_limit, carry_limit=carry_limit
    )
    await feeding
    return size, state, b"".join(written), await reader.read()


piece = st.sampled_from(
    [
        *(b"a", b"bc", b".", b"..", b"\r", b"\n", CRLF, b".\r\n", b"\r\n.", b"x" * 9),
        # the ends of data that only a lenient server would see (SMTP smuggling)
        *(b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r", b".\n"),
    ]
)
streams = st.lists(piece, max_size=40).map(b"".join)


@pytest.mark.slow
@settings(max_examples=2000, derandomize=True, database=None, deadline=None)
@given(
    stream=streams,
    after=st.sampled_from([b"", b"QUIT\r\n", b".\r\nMAIL FROM:<a@b.c>\r\n"]),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    line_limit=st.integers(3, 24),
    size_limit=st.one_of(st.none(), st.integers(1, 200)),
    block=st.integers(3, 24),
    carry_limit=st.integers(1, 30),
)
def test_data_is_read_as_rfc_5321_reads_it(
    stream: bytes,
    after: bytes,
    cuts: list[int],
    line_limit: int,
    size_limit: int | None,
    block: int,
    carry_limit: int,
) -> None:
    whole = stream + b"\r\n.\r\n" + after
    bounds = sorted({0, len(whole), *(c for c in cuts if c < len(whole))})
    pieces = [whole[a:b] for a, b in itertools.pairwise(bounds)]
    size, state, content, rest = asyncio.run(
        read(pieces, line_limit, size_limit, block=block, carry_limit=carry_limit)
    )
    want = expected(whole, line_limit, size_limit)
    assert (size, state, rest) == (want.size, want.state, want.rest)
    if state == "ok":
        assert content == want.content


def test_a_long_line_is_handed_on_as_it_arrives() -> None:
    """A line of 300 KB, well under the line limit, is not held whole: it goes to the
    spool in blocks, its leading dot unstuffed, as the rest of the data does."""
    line = b".." + bytes(range(33, 127)) * 3200
    stream = b"a\r\n" + line + b"\r\nb\r\n.\r\n"
    pieces = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async def go() -> tuple[int, str]:
        reader = asyncio.StreamReader(limit=1001)

        async def feed() -> None:
            for piece in pieces:
                reader.feed_data(piece)
                await asyncio.sleep(0)

        feeding = asyncio.create_task(feed())
        result = await read_data(reader, write, line_limit=1 << 20, size_limit=None)
        await feeding
        return result

    assert asyncio.run(go()) == (len(stream) - 3, "ok")
    assert b"".join(written) == b"a\r\n" + line[1:] + b"\r\nb\r\n"
    assert len(written) >= 4 and max(map(len, written)) < 140_000


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
    server would see (LF.LF, CR.LF, LF.CRLF, CRLF.CR...). It stays part of the first
    message, whose bare LFs are taken for CRLFs (and the lines after them unstuffed)."""
    hidden = (
        b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<dmarc@rua.example.net>\r\n"
        b"DATA\r\nFrom: ceo@victim.example\r\n\r\nwire the money\r\n"
    )
    first = crlf(report_message("smuggle"))
    for fake_end in (b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r", b"\r\n.\n", b"\r.\r\n"):
        first += fake_end + hidden
    assert dialogue(server, first + b"\r\n.\r\n") == ["250", "221"]
    assert len(stored(server, "smuggle")) == 1
    assert archived(server, "smuggle") == expected(first + b"\r\n.\r\n", 1 << 20, None).content
    assert b"\r\nMAIL FROM:<ceo@victim.example>\r\n" in archived(server, "smuggle")
    assert not server.fetch("SELECT 1 FROM raw_messages WHERE mail_from = 'ceo@victim.example'")


def one_line_report(report_id: str, records: int) -> bytes:
    """An uncompressed aggregate report, its XML on one line, as 8bit text (RFC 6152)."""
    xml = report_xml(records, report_id=report_id).replace(b"\n", b"")
    return (
        b"From: noreply@reporter.example\r\nTo: dmarc@rua.example.net\r\n"
        b"Subject: Report Domain: example.com Submitter: reporter.example Report-ID: "
        + report_id.encode()
        + b"\r\nX-Long-Header: "
        + b"h" * 1500
        + b'\r\nMIME-Version: 1.0\r\nContent-Type: text/xml; name="r.xml"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + xml + b"\r\n"
    )


def test_a_one_line_report_of_200_kb_is_stored(server: Server) -> None:
    """Lines up to max_line_bytes (256 KiB for this server) are taken, in the header as in
    the body: an uncompressed report written without line breaks is one long line."""
    data = one_line_report("one-line", 470)
    assert max(map(len, data.split(CRLF))) > 200_000
    with server.client() as smtp:
        smtp.ehlo("reporter.example")
        smtp.mail("noreply@reporter.example", ["BODY=8BITMIME"])
        smtp.rcpt(RUA)
        code, _ = smtp.data(data)
    assert code == 250
    [row] = stored(server, "one-line")
    assert (row["status"], row["record_count"]) == ("stored", 470)


def test_a_line_over_max_line_bytes_is_refused(server: Server) -> None:
    """Over the limit, one reply: 500 5.5.2, once the data has been read to its end (the
    session stays in step); nothing is stored."""
    data = crlf(report_message("long-line")) + b"X" * (256 * 1024 + 1) + CRLF
    with server.client() as smtp:
        smtp.ehlo("reporter.example")
        smtp.mail("noreply@reporter.example")
        smtp.rcpt(RUA)
        code, text = smtp.data(data)
        assert (code, text) == (500, b"5.5.2 Line too long")
        assert smtp.noop()[0] == 250
    assert stored(server, "long-line") == []


def records_of(server: Server, report_id: str) -> list[str]:
    rows = server.fetch(
        "SELECT (to_jsonb(a) - 'report')::text AS r FROM aggregate_records a "
        "JOIN aggregate_reports r ON r.id = a.report WHERE r.report_id = $1 ORDER BY 1",
        report_id,
    )
    return [row["r"] for row in rows]


def test_a_message_with_bare_lf_is_stored_like_its_crlf_twin(server: Server) -> None:
    """Lines ending in a bare LF (as some scripts send them) are taken for CRLF lines,
    whatever the size of the message: stored, archived as the CRLF twin, same records."""
    twin = crlf(report_message("crlf-twin", records=40))
    bare = crlf(report_message("lf-twin", records=40)).replace(CRLF, b"\n")
    assert len(bare) > 1200 and CRLF not in bare
    # The last line still ends in CRLF: the data ends at CRLF.CRLF only.
    assert dialogue(server, twin + b".\r\n") == ["250", "221"]
    assert dialogue(server, bare[:-1] + b"\r\n.\r\n") == ["250", "221"]
    assert len(stored(server, "lf-twin")) == 1
    assert archived(server, "lf-twin") == bare.replace(b"\n", CRLF)
    assert records_of(server, "lf-twin") == records_of(server, "crlf-twin")
    assert len(records_of(server, "lf-twin")) == 40


def test_command_lines_keep_their_rfc_5321_limits(server: Server) -> None:
    """RFC 5321 4.5.3.1.4: 512 octets for a command line, whatever the DATA line limit."""
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30) as conn:
        assert replies(conn, 1) == ["220"]
        conn.sendall(b"EHLO " + b"a" * 600 + b".example\r\n")
        assert replies(conn, 1) == ["500"]
        conn.sendall(b"EHLO reporter.example\r\nMAIL FROM:<" + b"b" * 2000 + b"@x.example>\r\n")
        assert replies(conn, 2) == ["250", "500"]


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
