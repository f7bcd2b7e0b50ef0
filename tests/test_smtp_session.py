"""What a session leaves behind: nothing on disk once it has ended however it ended, no
command argument that the database cannot hold, no worker process once the server is
gone (the real ``rua-sink serve``, a real client over TCP)."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rua_sink.smtp.data import SPOOL_PREFIX

from .procs import descendants
from .reports import report_message
from .smtpserver import RUA, Server, deltas, replies, running, scrape, stored

CRLF = b"\r\n"


def crlf(message: bytes) -> bytes:
    return re.sub(rb"\r?\n", CRLF, message)


# --- command arguments that PostgreSQL cannot store --------------------------------------


def test_nul_and_non_utf8_arguments_are_refused_at_the_command(server: Server) -> None:
    """A NUL or bytes that are not UTF-8 in HELO/EHLO, MAIL FROM or RCPT TO: 501 at the
    command, with its enhanced code; the session goes on, nothing reaches the database,
    and no database error is counted."""
    before = scrape(server)
    with server.client() as smtp:
        for command, reply in [
            (b"EHLO bad\x00host.example", (501, b"5.5.2 Invalid characters in the host name")),
            (b"HELO caf\xe9.example", (501, b"5.5.2 Invalid characters in the host name")),
            (b"EHLO reporter.example", (250, None)),
            (
                b"MAIL FROM:<a\x00b@reporter.example>",
                (501, b"5.1.7 Invalid characters in the sender address"),
            ),
            (b"MAIL FROM:<\xff\xfe@reporter.example> BODY=8BITMIME", (501, None)),
            (b"MAIL FROM:<nul-test@reporter.example>", (250, None)),
            (
                b"RCPT TO:<dmarc\xc3@rua.example.net>",
                (501, b"5.1.3 Invalid characters in the recipient address"),
            ),
            (b"RCPT TO:<dmarc@rua.example.net> X-OPT=\x00", (501, None)),
            (b"RCPT TO:<dmarc@rua.example.net>", (250, None)),
        ]:
            smtp.send(command + CRLF)
            code, text = smtp.getreply()
            assert code == reply[0], command
            if reply[1] is not None:
                assert text == reply[1]
        code, _ = smtp.data(crlf(report_message("nul-test")))
        assert code == 250
    after = scrape(server)
    delta = deltas(before, after)
    assert delta("rua_sink_database_errors_total") == 0
    assert delta("rua_sink_smtp_replies_total", reason="bad_syntax", code_class="5xx") == 6
    [row] = stored(server, "nul-test")
    assert (row["helo"], row["mail_from"]) == ("reporter.example", "nul-test@reporter.example")


# --- spool files -------------------------------------------------------------------------


def spool_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(SPOOL_PREFIX))


def open_in(pid: int, folder: Path) -> list[str]:
    """The files of ``folder`` (deleted ones included) that process ``pid`` holds open."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            continue
    return [link for link in links if link.startswith(f"{folder}/")]


def wait_for(condition: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, condition
        time.sleep(0.1)


def sessions_open(server: Server) -> float:
    return scrape(server)[("rua_sink_smtp_sessions", ())]


def start_data(server: Server, mail_from: str = "noreply@reporter.example") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)
    assert replies(conn, 1) == ["220"]
    conn.sendall(
        b"EHLO reporter.example\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
        % (mail_from.encode(), RUA.encode())
    )
    assert replies(conn, 4) == ["250", "250", "250", "354"]
    return conn


#: 1.3 MB after the report, as the probe that found the leak sent
PADDING = b"".join(b"%075d\r\n" % i for i in range(17_000))


@pytest.mark.slow
def test_spool_files_do_not_outlive_sessions_cut_off_after_250(
    database_url: str, tmp_path: Path
) -> None:
    """Spool files left by an earlier run are removed at start (others are left alone);
    a client that resets the connection as soon as it has its 250, before the 221 to its
    QUIT, leaves no spool file behind, on disk or open in the server."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    (folder / f"{SPOOL_PREFIX}k2j4h1l0").write_bytes(b"x" * 4096)
    (folder / "not-ours").write_bytes(b"y")
    with running(
        database_url,
        TMPDIR=str(folder),
        RUA_SINK_MAX_MESSAGE_BYTES="4MiB",
        RUA_SINK_SPOOL_MEMORY_BYTES="64KiB",
    ) as server:
        assert spool_files(folder) == []
        assert (folder / "not-ours").exists()
        for i in range(10):
            conn = start_data(server)
            message = crlf(report_message(f"cut-off-{i}")) + PADDING
            conn.sendall(message + b".\r\nQUIT\r\n")
            assert replies(conn, 1)[0] == "250"
            # closed at once, unread data pending: the server sees a reset
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        wait_for("sessions ended", lambda: sessions_open(server) == 0)
        assert spool_files(folder) == []
        assert open_in(server.process.pid, folder) == []
        assert (
            len(server.fetch("SELECT 1 FROM aggregate_reports WHERE report_id LIKE 'cut-off-%'"))
            == 10
        )


@pytest.mark.slow
def test_no_spool_file_stays_after_kill_9(database_url: str, tmp_path: Path) -> None:
    """The server killed in the middle of a message's data: its spool file goes with it
    (it never had a name)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    with running(database_url, TMPDIR=str(folder), RUA_SINK_SPOOL_MEMORY_BYTES="16KiB") as server:
        pid = server.process.pid
        with start_data(server) as conn:
            conn.sendall(crlf(report_message("killed")) + PADDING[:200_000])
            wait_for("spooling to a file", lambda: open_in(pid, folder) != [])
            os.kill(pid, signal.SIGKILL)
            server.process.wait(timeout=30)
        assert spool_files(folder) == []
        assert stored(server, "killed") == []


# --- parse workers -----------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for a parent to reap it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.slow
def test_parse_workers_end_with_the_server(database_url: str) -> None:
    """``kill -9`` of serve: its parse workers and their fork server end within seconds
    rather than stay behind as orphans."""
    with running(database_url, RUA_SINK_PARSE_WORKERS="2") as server:
        pid = server.process.pid
        # the fork server and its two workers, at least (warmed at start)
        wait_for("workers started", lambda: len(descendants(pid)) >= 3, timeout=60)
        children = descendants(pid)
        os.kill(pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(child) for child in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [child for child in children if alive(child)] == []
