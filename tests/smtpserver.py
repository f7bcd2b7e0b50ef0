"""`rua-sink serve` as a subprocess for the tests, with its helpers (a pytest plugin)."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .dnsserver import Zone, serving
from .pg import fetch, scratch_database
from .procs import CLI
from .reports import REPORTER, SELECTOR, SPF_RECORD, dkim_record

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
    log: IO[str]  # the server's stderr: its structured log lines

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
        return fetch(self.database_url, sql, *args)


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
        "RUA_SINK_SHUTDOWN_GRACE": "5",
        **extra,
    }
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop_server
    process = subprocess.Popen(
        [*CLI, "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        # A file, not a pipe: nobody reads the logs while the server runs, and a full pipe
        # would stop the server at its next log line.
        stderr=log,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"serve exited: {log.read()[-3000:]!r}")
        try:
            with socket.create_connection(("127.0.0.1", smtp_port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                log.close()
                raise RuntimeError("serve did not listen within 60 s") from None
            time.sleep(0.1)
    return Server(smtp_port, http_port, database_url, zone, process, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    server.process.wait(timeout=60)
    server.log.close()


def example_zone() -> Zone:
    """A zone in which example.com has authorized the test's report domain, and the
    reporter's mail passes SPF and DKIM."""
    zone = Zone()
    zone.txt["example.com._report._dmarc.rua.example.net"] = ["v=DMARC1;"]
    # The reporter's mail authenticates: SPF for its loopback address, a DKIM key.
    zone.txt[REPORTER] = [SPF_RECORD]
    zone.txt[f"{SELECTOR}._domainkey.{REPORTER}"] = [dkim_record()]
    return zone


@contextmanager
def running(database_url: str, zone: Zone | None = None, **extra: str) -> Iterator[Server]:
    """``rua-sink serve`` with a DNS server of its own answering from ``zone`` (by default,
    example.com authorized), stopped at the end."""
    zone = zone if zone is not None else example_zone()
    with serving(zone) as address:
        srv = start_server(database_url, address, zone, **extra)
        try:
            yield srv
        finally:
            stop_server(srv)


@contextmanager
def running_alone(server_url: str, prefix: str, **extra: str) -> Iterator[tuple[Server, str]]:
    """``running`` on a database of its own, which the test may take away; yields the
    server and the database's name."""
    with (
        scratch_database(server_url, prefix) as (url, name),
        running(url, None, **extra) as srv,
    ):
        yield srv, name


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    zone = example_zone()
    zone.txt["example.com._report._dmarc.reports.example.net"] = ["v=DMARC1"]
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    zone.servfail.add("broken.example._report._dmarc.rua.example.net")
    # A small spool memory: messages over 64 KiB go through the spool's file. A line
    # limit under the message limit, so that a line over it can be sent. Change detection
    # every second, so that its gauges follow the reports sent.
    with running(
        database_url,
        zone,
        RUA_SINK_SPOOL_MEMORY_BYTES="64KiB",
        RUA_SINK_MAX_LINE_BYTES="256KiB",
        RUA_SINK_CHANGES_INTERVAL="1",
    ) as srv:
        yield srv


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


def replies(conn: socket.socket, count: int) -> list[str]:
    """The next ``count`` replies' codes (a multiline reply counts once)."""
    codes: list[str] = []
    data = b""
    while len(codes) < count:
        chunk = conn.recv(4096)
        assert chunk, f"connection closed after {codes}"
        data += chunk
        *lines, data = data.split(b"\r\n")
        codes += [line[:3].decode() for line in lines if line[3:4] == b" "]
    return codes


def stored(server: Server, report_id: str) -> list[asyncpg.Record]:
    return server.fetch(
        "SELECT r.id, r.record_count, r.authz_verdict, m.status, m.mail_from, m.rcpt_to, "
        "host(m.peer_ip) AS peer, m.helo FROM aggregate_reports r "
        "JOIN raw_messages m ON m.id = r.raw_message_id WHERE r.report_id = $1",
        report_id,
    )


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def deltas(before: Samples, after: Samples) -> Callable[..., float]:
    """``delta(name, **labels)``: how much a series grew between two scrapes, summed over
    the labels not given."""

    def total(samples: Samples, name: str, wanted: set[tuple[str, str]]) -> float:
        return sum(v for (n, labels), v in samples.items() if n == name and wanted <= set(labels))

    def delta(name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return total(after, name, wanted) - total(before, name, wanted)

    return delta
