"""`rua-sink serve` as a subprocess, a real SMTP client over TCP, a real DNS server and a
real PostgreSQL: every row of SPEC.md's decision table."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import trustme

from .conftest import ROOT, corpus, readme_table
from .dnsserver import Zone
from .pg import admin, terminate_sessions
from .procs import CLI, cli
from .reports import TLS_JSON, gz, message, report_message, report_xml, signed, tls_message
from .smtpserver import (
    MAX_BYTES,
    RUA,
    Server,
    deltas,
    replies,
    running,
    running_alone,
    scrape,
    send,
    stored,
)
from .test_classify import record as classified_record
from .test_classify import report as classified_report


def test_a_report_is_committed_before_its_250(server: Server) -> None:
    code, reply = send(server, report_message("commit-1", 3), sender="noreply@reporter.example")
    assert (code, reply.split()[0]) == (250, "2.0.0")
    (row,) = stored(server, "commit-1")  # read right after the reply: already there
    assert row["record_count"] == 3
    assert row["authz_verdict"] == "authorized"
    assert (row["status"], row["mail_from"], row["peer"], row["helo"]) == (
        "stored",
        "noreply@reporter.example",
        "127.0.0.1",
        "reporter.example",
    )
    assert row["rcpt_to"] == [RUA]


def test_a_message_larger_than_the_spool_memory(server: Server) -> None:
    xml = report_xml(400, report_id="spooled").replace(b"<record>", b"\n<record>")
    assert 64 * 1024 < len(xml) < MAX_BYTES
    code, _ = send(server, message((xml, "text/xml", "r.xml"), cte="7bit"))
    assert code == 250
    (row,) = stored(server, "spooled")
    assert row["record_count"] == 400


def test_rcpt_to_other_addresses_is_refused_never_relayed(server: Server) -> None:
    for rcpt in ("someone@rua.example.net", "victim@elsewhere.example", "dmarc@example.net"):
        code, reply = send(server, report_message("never"), rcpt=rcpt)
        assert (code, reply.split()[0]) == (550, "5.1.1")
    assert stored(server, "never") == []


def test_wildcard_domain_and_postmaster_are_accepted(server: Server) -> None:
    code, _ = send(server, report_message("wild-1"), rcpt="Anything@Reports.Example.NET")
    assert code == 250
    with server.client() as smtp:
        smtp.ehlo("x.example")
        smtp.mail("")
        assert smtp.rcpt("postmaster@rua.example.net")[0] == 250
        assert smtp.rcpt("<postmaster>")[0] == 250


def test_size_over_the_limit(server: Server) -> None:
    with server.client() as smtp:
        smtp.ehlo("reporter.example")
        assert smtp.has_extn("size") and int(smtp.esmtp_features["size"]) == MAX_BYTES
        assert smtp.has_extn("enhancedstatuscodes")
        code, raw = smtp.mail("a@reporter.example", options=[f"SIZE={MAX_BYTES + 1}"])
        assert (code, raw.decode().split()[0]) == (552, "5.3.4")
    big = message((os.urandom(MAX_BYTES), "application/octet-stream", "big.bin"))
    code, reply = send(server, big)
    assert (code, reply.split()[0]) == (552, "5.3.4")


def test_unauthorized_domain_is_refused(server: Server) -> None:
    code, reply = send(server, report_message("stranger-1", domain="stranger.example"))
    assert (code, reply.split()[0]) == (550, "5.7.1")
    assert stored(server, "stranger-1") == []


def test_dns_trouble_is_a_temporary_failure(server: Server) -> None:
    code, reply = send(server, report_message("broken-1", domain="broken.example"))
    assert (code, reply.split()[0]) == (451, "4.4.3")
    assert stored(server, "broken-1") == []


def test_no_report_in_the_message(server: Server) -> None:
    spam = b"From: a@spam.example\r\nSubject: buy now\r\n\r\nCheap watches.\r\n"
    count = "SELECT count(*) AS n FROM raw_messages"
    before = server.fetch(count)[0]["n"]
    code, reply = send(server, spam)
    assert (code, reply.split()[0]) == (550, "5.6.0")
    assert server.fetch(count)[0]["n"] == before  # refused, so nothing kept


def test_mail_to_the_postmaster_is_kept(server: Server) -> None:
    """RFC 5321 4.5.1: the postmaster takes mail, report or not; there is no mailbox, so
    what is not a report is kept in the archive for the operators."""
    for rcpt in ("Postmaster@rua.example.net", "postmaster"):
        note = f"From: ops@sender.example\r\nSubject: bounces to {rcpt}\r\n\r\nHello.\r\n"
        code, reply = send(server, note.encode(), rcpt=rcpt)
        assert (code, reply) == (250, "2.0.0 Accepted for the postmaster")
        rows = server.fetch(
            "SELECT status, rcpt_to FROM raw_messages WHERE sha256 = sha256($1)", note.encode()
        )
        assert [(r["status"], r["rcpt_to"]) for r in rows] == [("not_a_report", [rcpt.lower()])]
    # A report sent to the postmaster is a report like any other.
    code, _ = send(server, report_message("to-postmaster"), rcpt="postmaster@rua.example.net")
    assert code == 250
    assert [r["status"] for r in stored(server, "to-postmaster")] == ["stored"]


def test_operators_list_and_read_what_was_not_stored(server: Server) -> None:
    """``rua-sink messages`` lists what was kept but not stored as reports, and
    ``rua-sink raw ID`` gives a message back byte for byte."""
    broken = message((gz(report_xml(40, report_id="listed"))[:-40], "application/gzip", "l.gz"))
    note = (
        b"From: =?utf-8?q?Ops_=C3=A9quipe?= <ops@sender.example>\r\n"
        b"Subject: bounce \x1b[31mred\x1b[0m\r\n\r\nHello.\r\n"
    )
    assert send(server, broken)[0] == 250
    assert send(server, note, rcpt="postmaster@rua.example.net")[0] == 250
    env = {"RUA_SINK_DATABASE_URL": server.database_url}
    listed = cli("messages", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    items = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [i["status"] for i in items[:2]] == ["not_a_report", "quarantined"]  # newest first
    kept, quarantined = items[:2]
    assert kept["from"] == "Ops équipe <ops@sender.example>"
    assert kept["subject"] == "bounce ?[31mred?[0m"  # no escape reaches a terminal
    assert kept["rcpt_to"] == ["postmaster@rua.example.net"]
    assert quarantined["reason"] == "truncated_archive"
    text = cli("messages", "--status", "quarantined", env=env).stdout.splitlines()
    header = ["ID", "RECEIVED", "(UTC)", "STATUS", "REASON", "BYTES", "SENDER", "SUBJECT"]
    assert text[0].split() == header
    assert str(quarantined["id"]) in text[1] and "truncated_archive" in text[1]
    assert all("not_a_report" not in line for line in text)
    for item, sent in ((kept, note), (quarantined, broken)):
        raw = subprocess.run(
            [*CLI, "raw", str(item["id"])],
            env={**os.environ, **env},
            capture_output=True,
            check=False,
        )
        assert raw.returncode == 0, raw.stderr
        assert raw.stdout == re.sub(rb"\r?\n", b"\r\n", sent)  # as smtplib sent it
    missing = cli("raw", "999999999", env=env)
    assert (missing.returncode, missing.stderr) == (1, "rua-sink: no raw message 999999999\n")


def test_broken_report_is_accepted_and_quarantined(server: Server) -> None:
    data = message((gz(report_xml(100, report_id="cut"))[:-50], "application/gzip", "c.xml.gz"))
    quarantined = (
        "SELECT count(*) AS n FROM raw_messages WHERE status = 'quarantined' "
        "AND reason = 'truncated_archive'"
    )
    before = server.fetch(quarantined)[0]["n"]
    code, reply = send(server, data)
    assert code == 250
    assert "kept" in reply
    assert server.fetch(quarantined)[0]["n"] == before + 1
    assert stored(server, "cut") == []


def test_duplicate_is_accepted_and_stored_once(server: Server) -> None:
    first = report_message("dup-1")
    again = first.replace(b"Subject:", b"X-Resent: yes\r\nSubject:", 1)
    assert send(server, first)[0] == 250
    code, reply = send(server, again)
    assert code == 250
    assert "already" in reply
    assert len(stored(server, "dup-1")) == 1


def test_several_reports_and_a_tls_report_in_one_message(server: Server) -> None:
    data = message(
        (gz(report_xml(1, report_id="multi-a")), "application/gzip", "a.xml.gz"),
        (gz(report_xml(2, report_id="multi-b")), "application/gzip", "b.xml.gz"),
        (gz(TLS_JSON), "application/tlsrpt+gzip", "t.json.gz"),
    )
    assert send(server, signed(data))[0] == 250
    assert len(stored(server, "multi-a")) == len(stored(server, "multi-b")) == 1
    tls = server.fetch("SELECT authz_verdict FROM tls_reports WHERE report_id = 'tls-1'")
    assert [r["authz_verdict"] for r in tls] == ["authorized"]


def test_health_and_readiness(server: Server) -> None:
    assert server.http("/healthz") == 200
    assert server.http("/readyz") == 200
    assert server.http("/nothing") == 404


@pytest.fixture
def own_server(server_url: str) -> Iterator[tuple[Server, str]]:
    """A server of its own on a database of its own, which the test may take away."""
    with running_alone(server_url, "rua_sink_outage", RUA_SINK_UNAUTHORIZED="flag") as alone:
        yield alone


def test_database_outage_is_451_then_stored_once(
    own_server: tuple[Server, str], server_url: str
) -> None:
    srv, name = own_server
    assert send(srv, report_message("before"))[0] == 250
    admin(
        server_url,
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        terminate_sessions(name),
    )
    outage = [report_message(f"outage-{i}") for i in range(3)]
    for data in outage:
        code, reply = send(srv, data)
        assert (code, reply.split()[0]) == (451, "4.3.0")
        assert "Traceback" not in reply and "asyncpg" not in reply
    assert srv.http("/readyz") == 503
    assert srv.http("/healthz") == 200
    admin(server_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    for data in outage:  # the senders retry
        assert send(srv, data)[0] == 250
    assert send(srv, outage[0])[0] == 250  # and once more: a duplicate
    assert srv.http("/readyz") == 200
    ids = [r["report_id"] for r in srv.fetch("SELECT report_id FROM aggregate_reports")]
    assert sorted(ids) == ["before", "outage-0", "outage-1", "outage-2"]


def test_flag_mode_stores_unauthorized_reports_marked(own_server: tuple[Server, str]) -> None:
    srv, _ = own_server
    assert send(srv, report_message("flagged", domain="stranger.example"))[0] == 250
    rows = srv.fetch("SELECT authz_verdict FROM aggregate_reports WHERE report_id = 'flagged'")
    assert [r["authz_verdict"] for r in rows] == ["not_authorized"]


@pytest.fixture(scope="module")
def tight(database_url: str) -> Iterator[Server]:
    """A server with small limits, to see them hold."""
    with running(
        database_url,
        Zone(),
        RUA_SINK_MAX_SESSIONS_PER_IP="3",
        RUA_SINK_MAX_RECIPIENTS="2",
        RUA_SINK_IDLE_TIMEOUT="1",
        RUA_SINK_DATA_TIMEOUT="2",
    ) as srv:
        yield srv


def test_sessions_per_client_address(tight: Server) -> None:
    time.sleep(0.5)  # the start-up probe's connection is counted until the server sees it close
    held = [socket.create_connection(("127.0.0.1", tight.smtp_port)) for _ in range(3)]
    try:
        for conn in held:
            assert conn.recv(512).startswith(b"220 ")
        extra = socket.create_connection(("127.0.0.1", tight.smtp_port))
        with extra:
            assert extra.recv(512).startswith(b"421 4.7.0")
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    with tight.client() as smtp:  # the slots are free again
        assert smtp.noop()[0] == 250


def test_a_client_gone_before_its_greeting_frees_its_slot(tight: Server) -> None:
    # Each connection closes at once: the server sees its end before the greeting.
    for _ in range(6):
        socket.create_connection(("127.0.0.1", tight.smtp_port)).close()
    time.sleep(0.5)
    held = [socket.create_connection(("127.0.0.1", tight.smtp_port)) for _ in range(3)]
    try:
        assert all(conn.recv(512).startswith(b"220 ") for conn in held)
    finally:
        for conn in held:
            conn.close()
    tight.log.seek(0)
    assert '"level": "error"' not in tight.log.read()  # refusals end without a traceback


def test_pipelined_commands_are_answered_in_order(server: Server) -> None:
    data = report_message("pipelined").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30) as conn:
        assert replies(conn, 1) == ["220"]
        conn.sendall(b"EHLO reporter.example\r\n")
        ehlo = b""
        while not re.search(rb"(^|\r\n)250 ", ehlo):
            ehlo += conn.recv(4096)
        assert b"250-PIPELINING" in ehlo
        # RFC 2920 3.1: one group, DATA last; then the content, the dot and QUIT at once.
        conn.sendall(
            b"MAIL FROM:<noreply@reporter.example>\r\n"
            b"RCPT TO:<nobody@elsewhere.example>\r\n"
            b"RCPT TO:<dmarc@rua.example.net>\r\n"
            b"DATA\r\n"
        )
        assert replies(conn, 4) == ["250", "550", "250", "354"]
        conn.sendall(data.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        assert replies(conn, 2) == ["250", "221"]
    assert len(stored(server, "pipelined")) == 1


def test_recipients_per_message(tight: Server) -> None:
    with tight.client() as smtp:
        smtp.ehlo("x.example")
        smtp.mail("")
        assert smtp.rcpt(RUA)[0] == 250
        assert smtp.rcpt("a@reports.example.net")[0] == 250
        code, reply = smtp.rcpt("b@reports.example.net")
        assert (code, reply.decode().split()[0]) == (452, "4.5.3")


def test_idle_and_slow_clients_are_cut(tight: Server) -> None:
    idle = socket.create_connection(("127.0.0.1", tight.smtp_port))
    with idle:
        idle.recv(512)
        idle.settimeout(10)
        started = time.monotonic()
        assert idle.recv(512) in (b"", b"421 4.4.2 Timeout\r\n")  # closed at the idle timeout
        assert time.monotonic() - started < 5
    slow = socket.create_connection(("127.0.0.1", tight.smtp_port))
    with slow:
        slow.settimeout(10)
        slow.recv(512)
        for line in (b"EHLO x.example\r\n", b"MAIL FROM:<>\r\n", f"RCPT TO:<{RUA}>\r\n".encode()):
            slow.sendall(line)
            time.sleep(0.1)
        slow.sendall(b"DATA\r\n")
        time.sleep(0.3)
        started = time.monotonic()
        reply = b""
        try:
            for _ in range(8):  # one byte now and then: the whole DATA has 2 seconds
                slow.sendall(b"x")
                time.sleep(0.5)
        except OSError:
            pass
        while b"4.4.2" not in reply:
            chunk = slow.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert b"451 4.4.2" in reply
        assert time.monotonic() - started < 8


def test_sigterm_lets_a_delivery_in_flight_finish(database_url: str) -> None:
    with running(database_url) as srv:
        idle = srv.client()
        idle.ehlo("idle.example")
        busy = srv.client()
        busy.ehlo("busy.example")
        busy.mail("")
        busy.rcpt(RUA)
        busy.putcmd("data")
        assert busy.getreply()[0] == 354
        data = report_message("in-flight").replace(b"\n.", b"\n..")
        busy.send(data[: len(data) // 2])
        time.sleep(0.3)
        srv.process.terminate()  # SIGTERM, in the middle of the message
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no new sessions
            socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=2).close()
        try:  # an idle session is told 421 and closed
            assert idle.noop()[0] == 421
        except smtplib.SMTPServerDisconnected:
            pass
        finally:
            idle.close()
        busy.send(data[len(data) // 2 :] + b"\r\n.\r\n")
        assert busy.getreply()[0] == 250
        busy.close()
        assert srv.process.wait(timeout=30) == 0
        assert len(stored(srv, "in-flight")) == 1


def test_send_command_wraps_a_corpus_report(server: Server) -> None:
    path = corpus("georgestarcher__dmarcgo/testdata/fixtures/rfc9990-modern-synthetic.xml.gz")
    server.zone.txt["example.test._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    done = cli("send", str(path), "--to", RUA, "--server", f"127.0.0.1:{server.smtp_port}")
    assert done.returncode == 0 and done.stdout.startswith("250 2.0.0"), done.stdout + done.stderr
    (row,) = server.fetch(
        "SELECT part_filename, record_count FROM aggregate_reports "
        "WHERE report_id = 'synthetic-rfc9990-modern-report'"
    )
    assert row["record_count"] == 2
    # RFC 9990 3.5.2: receiver "!" policy-domain "!" begin "!" end "!" unique-id ".xml.gz"
    assert re.fullmatch(
        r"[\w.-]+!example\.test!\d+!\d+![A-Za-z0-9]+\.xml\.gz", row["part_filename"]
    )


def test_send_command_sends_a_corpus_message(server: Server) -> None:
    # An LF-only file from a mailbox export: sent with CRLF line ends.
    path = corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/103.eml")
    server.zone.txt["stalw.art._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    done = cli("send", str(path), "--to", RUA, "--server", f"127.0.0.1:{server.smtp_port}")
    assert done.stdout.startswith("250 2.0.0"), done.stdout + done.stderr
    assert len(stored(server, "725cbfbe133940149987cfc528387235")) == 1


def test_check_auth_command(dns_zone: tuple[Zone, str]) -> None:
    zone, address = dns_zone
    zone.txt["example.org._report._dmarc.rua.example.net"] = ["v=DMARC1;"]
    env = {"RUA_SINK_DNS_NAMESERVERS": address, "RUA_SINK_DNS_TIMEOUT": "1"}
    ok = cli("check-auth", "example.org", "--rua", RUA, env=env)
    assert ok.returncode == 0
    assert '"verdict": "authorized"' in ok.stdout
    assert '"query": "example.org._report._dmarc.rua.example.net"' in ok.stdout
    no = cli("check-auth", "other.example", "--rua", RUA, env=env)
    assert no.returncode == 1 and '"verdict": "not_authorized"' in no.stdout


def test_starttls_offered_never_required(database_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mx.rua.example.net", "127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    with running(
        database_url,
        Zone(),
        RUA_SINK_TLS_CERT=str(chain),
        RUA_SINK_TLS_KEY=str(key),
        RUA_SINK_AUTHORIZED_DOMAINS="*",
    ) as srv:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with srv.client() as smtp:
            smtp.ehlo("reporter.example")
            assert smtp.has_extn("starttls")
            assert smtp.starttls(context=context)[0] == 220
            smtp.ehlo("reporter.example")  # RFC 3207 4.2: EHLO again after the handshake
            assert not smtp.has_extn("starttls")
            sock = smtp.sock
            assert isinstance(sock, ssl.SSLSocket) and sock.version() is not None
            smtp.sendmail("", [RUA], report_message("over-tls"))
        # Without TLS, the same delivery is accepted as well (RFC 3207 4).
        assert send(srv, report_message("in-clear"))[0] == 250
        time.sleep(0.3)
        ended = scrape(srv)
        assert ended[("rua_sink_smtp_sessions_ended_total", (("tls", "yes"),))] == 1
        assert ended[("rua_sink_smtp_starttls_total", ())] == 1
        assert len(stored(srv, "over-tls")) == len(stored(srv, "in-clear")) == 1


def test_proxy_protocol_from_trusted_balancers_only(database_url: str) -> None:
    allow_all = {"RUA_SINK_AUTHORIZED_DOMAINS": "*"}
    with (
        running(
            database_url, Zone(), RUA_SINK_PROXY_PROTOCOL_FROM="127.0.0.0/8", **allow_all
        ) as trusted,
        running(
            database_url, Zone(), RUA_SINK_PROXY_PROTOCOL_FROM="10.0.0.0/8", **allow_all
        ) as untrusted,
    ):
        data = report_message("via-proxy")
        with socket.create_connection(("127.0.0.1", trusted.smtp_port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.25 40000 25\r\n")
            with smtplib.SMTP() as smtp:
                smtp.sock = s
                smtp.file = None
                assert smtp.getreply()[0] == 220
                smtp.ehlo("reporter.example")
                smtp.sendmail("", [RUA], data)
        (row,) = stored(trusted, "via-proxy")
        assert row["peer"] == "203.0.113.7"
        with socket.create_connection(("127.0.0.1", untrusted.smtp_port), timeout=10) as s:
            s.recv(512)  # the greeting: no PROXY header expected from this peer
            s.sendall(b"PROXY TCP4 203.0.113.8 192.0.2.25 40000 25\r\n")
            assert s.recv(512).startswith(b"500")


def test_metrics_count_what_happened(server: Server) -> None:
    before = scrape(server)
    assert send(server, report_message("metrics-1", 3))[0] == 250
    assert send(server, report_message("metrics-1", 3))[0] == 250  # a duplicate
    assert send(server, report_message("m-stranger", domain="stranger2.example"))[0] == 550
    assert send(server, report_message("never"), rcpt="nobody@rua.example.net")[0] == 550
    after = scrape(server)

    delta = deltas(before, after)

    assert delta("rua_sink_smtp_replies_total", code_class="2xx", reason="stored") == 1
    assert delta("rua_sink_smtp_replies_total", code_class="2xx", reason="duplicate") == 1
    assert delta("rua_sink_smtp_replies_total", code_class="5xx", reason="unauthorized") == 1
    assert delta("rua_sink_smtp_replies_total", code_class="5xx", reason="unknown_recipient") == 1
    assert delta("rua_sink_reports_total", type="aggregate", outcome="stored") == 1
    assert delta("rua_sink_reports_total", type="aggregate", outcome="duplicate") == 1
    assert delta("rua_sink_reports_total", type="aggregate", outcome="rejected") == 1
    assert delta("rua_sink_records_total") == 3
    assert delta("rua_sink_messages_total") == 3  # the refused RCPT sent no DATA
    assert delta("rua_sink_message_size_bytes_count") == 3
    assert delta("rua_sink_smtp_connections_total", result="accepted") == 4
    lookups = {k: v for k, v in after.items() if k[0] == "rua_sink_authorization_lookups_total"}
    assert delta("rua_sink_authorization_lookups_total", result="not_authorized") == 1, lookups
    assert delta("rua_sink_authorization_lookups_total", result="cache_hit") >= 1
    assert delta("rua_sink_stage_duration_seconds_count", stage="store") == 3
    assert delta("rua_sink_stage_duration_seconds_count", stage="parse") == 2  # DATA stored
    assert delta("rua_sink_stage_duration_seconds_count", stage="commit") == 2
    xml = len(report_xml(3, report_id="metrics-1"))
    assert delta("rua_sink_decompressed_bytes_total") == 2 * xml  # the stored and the duplicate
    assert after[("rua_sink_build_info", (("version", "0.1.0"),))] == 1


def send_recent_report(server: Server, report_id: str) -> set[str]:
    """A report of yesterday sent; the names of the exposition once change detection's
    gauges, which need recent reports, are in it (at the next sweep)."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    recent = classified_report(report_id, classified_record("192.0.2.1", 1), begin=yesterday)
    assert send(server, recent)[0] == 250
    deadline = time.monotonic() + 30
    live = {name for name, _ in scrape(server)}
    while "rua_sink_dmarc_pass_ratio" not in live and time.monotonic() < deadline:
        time.sleep(0.2)
        live = {name for name, _ in scrape(server)}
    return live


def test_readme_metrics_table_matches_the_exposition(server: Server) -> None:
    assert send(server, report_message("table-1"))[0] == 250
    assert send(server, tls_message("tls-table"))[0] == 250
    live = send_recent_report(server, "table-2")
    table = readme_table("metrics")
    documented = set(re.findall(r"^\| `(rua_sink_\w+)` \| (\w+) \|", table, re.M))
    for name, kind in documented:
        if kind == "histogram":
            assert f"{name}_count" in live, name
        elif kind == "counter":
            assert name + "_total" in live or name in live, name
        else:
            assert name in live, name
    families = {
        n.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
        for n in live
        if n.startswith("rua_sink_")
    }
    families = {n.removesuffix("_bucket").removesuffix("_created") for n in families}
    assert families <= {n.removesuffix("_total") for n, _ in documented}


def test_dmarc_metrics_for_authorized_domains_only(own_server: tuple[Server, str]) -> None:
    srv, _ = own_server  # flag mode: unauthorized reports are stored, but not labelled
    before = scrape(srv)
    assert send(srv, report_message("dm-1", 3))[0] == 250  # example.com: authorized
    assert send(srv, report_message("dm-2", 2, domain="junk.example"))[0] == 250
    after = scrape(srv)

    delta = deltas(before, after)

    common = {"reporter": "reporter.example", "disposition": "none", "dkim": "pass", "spf": "pass"}
    assert (
        delta("rua_sink_dmarc_messages_total", policy_domain="example.com", dmarc="pass", **common)
        == 6
    )
    assert (
        delta("rua_sink_dmarc_messages_total", policy_domain="other", dmarc="pass", **common) == 3
    )
    assert not any(
        k[0].startswith("rua_sink_dmarc") and ("policy_domain", "junk.example") in k[1]
        for k in after
    )
    stamp = after[
        (
            "rua_sink_last_report_timestamp_seconds",
            (("policy_domain", "example.com"), ("reporter", "reporter.example")),
        )
    ]
    assert stamp == 1700086399
    flagged = delta("rua_sink_reports_total", type="aggregate", outcome="unauthorized")
    assert flagged == 1  # stored, marked


RULES = ROOT / "deploy" / "prometheus"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: ./dev test installs it (Debian package prometheus)")
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, timeout=120, check=False, cwd=RULES
    )


def test_alert_rules_check_and_pass_their_tests() -> None:
    checked = promtool("check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_use_metrics_that_exist(server: Server) -> None:
    assert send(server, report_message("rules-1"))[0] == 250
    live = send_recent_report(server, "rules-2")
    used = set(re.findall(r"\b(rua_sink_\w+)", (RULES / "rules.yaml").read_text()))
    assert used
    for name in used:
        assert name in live or f"{name}_count" in live, name


def test_exposition_passes_promtool_check_metrics(server: Server) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as r:
        text = r.read()
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_250_until_the_commit(server: Server) -> None:
    # While another transaction blocks writes to raw_messages, the delivery cannot commit:
    # no reply may come. Once the lock goes, the 250 comes, and the rows are there.
    async def hold(release: asyncio.Event, locked: threading.Event) -> None:
        conn = await asyncpg.connect(server.database_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE raw_messages IN SHARE MODE")
                locked.set()
                await release.wait()
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    release = asyncio.Event()
    locked = threading.Event()
    holder = threading.Thread(target=loop.run_until_complete, args=(hold(release, locked),))
    holder.start()
    assert locked.wait(10)
    replies: list[tuple[int, bytes]] = []

    def deliver() -> None:
        with server.client() as smtp:
            smtp.ehlo("reporter.example")
            smtp.mail("")
            smtp.rcpt(RUA)
            replies.append(smtp.data(report_message("blocked-commit")))  # before QUIT

    sender = threading.Thread(target=deliver)
    sender.start()
    time.sleep(1.5)
    assert replies == []  # no 250 while the commit cannot happen
    loop.call_soon_threadsafe(release.set)
    sender.join(timeout=30)
    holder.join(timeout=30)
    loop.close()
    assert replies[0][0] == 250
    assert len(stored(server, "blocked-commit")) == 1
