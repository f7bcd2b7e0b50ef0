"""STARTTLS certificate rotation under a running `rua-sink serve`: the files swapped the way
Kubernetes updates a mounted Secret, a real TLS client reading the served certificate."""

from __future__ import annotations

import itertools
import os
import smtplib
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from .dnsserver import Zone
from .procs import cli
from .reports import report_message
from .smtpserver import RUA, Server, running, scrape, send, stored

EXPIRY = "rua_sink_tls_certificate_expiry_timestamp_seconds"
FAILURES = "rua_sink_tls_reload_failures_total"
INTERVAL = 1.0  # RUA_SINK_TLS_RELOAD_INTERVAL in these tests


class Secret:
    """A directory as the kubelet keeps a mounted Secret: ``tls.crt`` and ``tls.key`` are
    symlinks into ``..data``, itself a symlink to a timestamped directory; an update writes
    a new directory, renames a new ``..data`` link over the old one (atomic), and deletes
    the old directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = itertools.count()
        self.cert, self.key = root / "tls.crt", root / "tls.key"

    def put(self, cert: bytes, key: bytes) -> None:
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        version = f"..2026_12_05_00_00_00.{next(self.versions)}"
        (self.root / version).mkdir()
        (self.root / version / "tls.crt").write_bytes(cert)
        (self.root / version / "tls.key").write_bytes(key)
        (self.root / "..data_tmp").symlink_to(version)
        os.rename(self.root / "..data_tmp", data)
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def issue(ca: trustme.CA, days: int = 90) -> tuple[trustme.LeafCert, int, float]:
    """A certificate for the server, its serial and its notAfter (whole seconds)."""
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    leaf = ca.issue_cert("mx.rua.example.net", "127.0.0.1", not_after=not_after)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return leaf, cert.serial_number, not_after.timestamp()


def pem(leaf: trustme.LeafCert) -> tuple[bytes, bytes]:
    return b"".join(p.bytes() for p in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


def tls_client(server: Server, ca: trustme.CA) -> smtplib.SMTP:
    """A session switched to TLS, trusting ``ca`` only."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    smtp = server.client()
    smtp.ehlo("reporter.example")
    assert smtp.starttls(context=context)[0] == 220
    smtp.ehlo("reporter.example")
    return smtp


def peer_serial(smtp: smtplib.SMTP) -> int:
    sock = smtp.sock
    assert isinstance(sock, ssl.SSLSocket)
    return int(sock.getpeercert()["serialNumber"], 16)  # type: ignore[index, arg-type]


def served_serial(server: Server, ca: trustme.CA) -> int:
    with tls_client(server, ca) as smtp:
        return peer_serial(smtp)


def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` held; fails after ``within``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "not within the reload interval"
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.slow
def test_a_rotated_certificate_is_served_and_a_bad_one_never(
    database_url: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    first, first_serial, first_expiry = issue(ca, days=60)
    second, second_serial, second_expiry = issue(ca, days=90)
    secret = Secret(tmp_path)
    secret.put(*pem(first))
    with running(
        database_url,
        Zone(),
        RUA_SINK_TLS_CERT=str(secret.cert),
        RUA_SINK_TLS_KEY=str(secret.key),
        RUA_SINK_TLS_RELOAD_INTERVAL=str(INTERVAL),
        RUA_SINK_AUTHORIZED_DOMAINS="*",
    ) as srv:
        assert served_serial(srv, ca) == first_serial
        assert scrape(srv)[(EXPIRY, ())] == first_expiry
        assert scrape(srv)[(FAILURES, ())] == 0

        # A session in flight across the swap keeps its certificate and delivers.
        in_flight = tls_client(srv, ca)
        secret.put(*pem(second))
        eventually(lambda: served_serial(srv, ca) == second_serial, within=INTERVAL + 2)
        assert peer_serial(in_flight) == first_serial
        in_flight.sendmail("", [RUA], report_message("tls-in-flight"))
        in_flight.quit()
        assert len(stored(srv, "tls-in-flight")) == 1
        assert scrape(srv)[(EXPIRY, ())] == second_expiry

        # A certificate with another certificate's key: never served, counted once
        # however many checks see it.
        third, _, _ = issue(ca, days=5)
        secret.put(pem(third)[0], pem(first)[1])
        eventually(lambda: scrape(srv)[(FAILURES, ())] == 1, within=INTERVAL + 2)
        time.sleep(3 * INTERVAL)
        assert scrape(srv)[(FAILURES, ())] == 1
        assert served_serial(srv, ca) == second_serial
        assert scrape(srv)[(EXPIRY, ())] == second_expiry
        # Sessions without TLS are not hurt either.
        assert send(srv, report_message("tls-plain"))[0] == 250

        # A half-written key: another change, another failure; still the good pair.
        secret.put(pem(third)[0], pem(third)[1][:100])
        eventually(lambda: scrape(srv)[(FAILURES, ())] == 2, within=INTERVAL + 2)
        assert served_serial(srv, ca) == second_serial

        # The pair made whole: served from the next check.
        secret.put(*pem(third))
        eventually(lambda: served_serial(srv, ca) != second_serial, within=INTERVAL + 2)
        assert scrape(srv)[(EXPIRY, ())] == issue_expiry(third)
        assert scrape(srv)[(FAILURES, ())] == 2
        srv.log.seek(0)
        logged = srv.log.read()
        assert logged.count("tls_reload_failed") == 2, logged[-3000:]


def issue_expiry(leaf: trustme.LeafCert) -> float:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return cert.not_valid_after_utc.timestamp()


def test_serve_refuses_to_start_without_a_good_pair(database_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    good, other = ca.issue_cert("mx.rua.example.net"), ca.issue_cert("mx.rua.example.net")
    secret = Secret(tmp_path)
    secret.put(pem(good)[0], pem(other)[1])
    env = {
        "RUA_SINK_DATABASE_URL": database_url,
        "RUA_SINK_ADDRESSES": RUA,
        "RUA_SINK_SMTP_LISTEN": "127.0.0.1:0",
        "RUA_SINK_HTTP_LISTEN": "127.0.0.1:0",
        "RUA_SINK_TLS_CERT": str(secret.cert),
        "RUA_SINK_TLS_KEY": str(secret.key),
    }
    done = cli("serve", env=env, timeout=60)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"rua-sink: RUA_SINK_TLS_CERT={secret.cert} and RUA_SINK_TLS_KEY=")
    assert "do not load" in line and "KEY_VALUES_MISMATCH" in line
    missing = cli("serve", env={**env, "RUA_SINK_TLS_KEY": str(tmp_path / "none")}, timeout=60)
    assert missing.returncode == 2
    assert "RUA_SINK_TLS_KEY" in missing.stderr and "No such file" in missing.stderr
