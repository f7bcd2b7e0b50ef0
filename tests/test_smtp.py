"""`rua-sink serve` as a subprocess, a real SMTP client over TCP, a real DNS server and a
real PostgreSQL: every row of SPEC.md's decision table."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from .dnsserver import Zone, serving
from .pg import run
from .reports import TLS_JSON, gz, message, report_xml

RUA = "dmarc@rua.example.net"
MAX_BYTES = 300 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    smtp_port: int
    http_port: int
    database_url: str
    zone: Zone
    process: subprocess.Popen[bytes]

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30)

    def http(self, path: str) -> int:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=10
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.database_url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return run(go())


def start_server(database_url: str, zone_address: str, zone: Zone, **extra: str) -> Server:
    smtp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "RUA_SINK_DATABASE_URL": database_url,
        "RUA_SINK_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
        "RUA_SINK_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "RUA_SINK_ADDRESSES": "dmarc@rua.example.net,*@reports.example.net",
        "RUA_SINK_DNS_NAMESERVERS": zone_address,
        "RUA_SINK_DNS_TIMEOUT": "1",
        "RUA_SINK_MAX_MESSAGE_BYTES": str(MAX_BYTES),
        "RUA_SINK_HOSTNAME": "mx.rua.example.net",
        **extra,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rua_sink.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {process.stderr.read() if process.stderr else ''!r}")
        try:
            with socket.create_connection(("127.0.0.1", smtp_port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return Server(smtp_port, http_port, database_url, zone, process)


def stop_server(server: Server) -> None:
    server.process.terminate()
    server.process.wait(timeout=60)
    if server.process.stderr is not None:
        server.process.stderr.close()


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    zone = Zone()
    zone.txt["example.com._report._dmarc.rua.example.net"] = ["v=DMARC1;"]
    zone.txt["example.com._report._dmarc.reports.example.net"] = ["v=DMARC1"]
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    zone.servfail.add("broken.example._report._dmarc.rua.example.net")
    with serving(zone) as address:
        srv = start_server(database_url, address, zone)
        try:
            yield srv
        finally:
            stop_server(srv)


def send(server: Server, data: bytes, rcpt: str = RUA, sender: str = "") -> tuple[int, str]:
    """One delivery; the server's reply to the final dot (or to the refusing command)."""
    with server.client() as smtp:
        smtp.ehlo("reporter.example")
        code, reply = smtp.mail(sender)
        if code != 250:
            return code, reply.decode()
        code, reply = smtp.rcpt(rcpt)
        if code != 250:
            return code, reply.decode()
        code, reply = smtp.data(data)
        return code, reply.decode()


def report_message(report_id: str, records: int = 2, domain: str = "example.com") -> bytes:
    xml = report_xml(records, report_id=report_id, domain=domain)
    return message((gz(xml), "application/gzip", f"r!{domain}!1!2.xml.gz"))


def stored(server: Server, report_id: str) -> list[asyncpg.Record]:
    return server.fetch(
        "SELECT r.id, r.record_count, r.authz_verdict, m.status, m.mail_from, m.rcpt_to, "
        "host(m.peer_ip) AS peer, m.helo FROM aggregate_reports r "
        "JOIN raw_messages m ON m.id = r.raw_message_id WHERE r.report_id = $1",
        report_id,
    )


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
    code, reply = send(server, spam)
    assert (code, reply.split()[0]) == (550, "5.6.0")
    assert server.fetch("SELECT 1 FROM raw_messages WHERE content_gzip IS NULL") == []


def test_broken_report_is_accepted_and_quarantined(server: Server) -> None:
    data = message((gz(report_xml(100, report_id="cut"))[:-50], "application/gzip", "c.xml.gz"))
    code, reply = send(server, data)
    assert code == 250
    assert "kept" in reply
    rows = server.fetch(
        "SELECT status, reason FROM raw_messages WHERE status = 'quarantined' "
        "AND reason = 'truncated_archive'"
    )
    assert rows
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
    assert send(server, data)[0] == 250
    assert len(stored(server, "multi-a")) == len(stored(server, "multi-b")) == 1
    tls = server.fetch("SELECT authz_verdict FROM tls_reports WHERE report_id = 'tls-1'")
    assert [r["authz_verdict"] for r in tls] == ["authorized"]


def test_health_and_readiness(server: Server) -> None:
    assert server.http("/healthz") == 200
    assert server.http("/readyz") == 200
    assert server.http("/nothing") == 404
