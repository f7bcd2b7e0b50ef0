"""Authentication of report mail (SPF, DKIM, DMARC) against a real DNS server on loopback,
messages signed here with dkimpy; then end to end through `rua-sink serve`."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest

from rua_sink.core.arrival import MailAuth
from rua_sink.dns.mailauth import MailAuthenticator

from .dnsserver import Zone, serving
from .reports import (
    REPORTER,
    SELECTOR,
    dkim_record,
    report_message,
    signed,
    tls_message,
)
from .smtpserver import Server, deltas, example_zone, running, scrape, send

OTHER_IP = "198.51.100.7"  # not in reporter.example's SPF record


@pytest.fixture(scope="module")
def zone_address() -> Iterator[tuple[Zone, str]]:
    zone = example_zone()
    zone.txt[f"tls._domainkey.{REPORTER}"] = [dkim_record("tlsrpt")]
    zone.txt["_dmarc.strict.reporter.example"] = ["v=DMARC1; p=reject; adkim=s; aspf=s"]
    zone.servfail.add(f"broken._domainkey.{REPORTER}")
    with serving(zone) as address:
        yield zone, address


def check(
    address: str,
    data: bytes,
    *,
    ip: str | None = OTHER_IP,
    mail_from: str | None = "",
    helo: str = REPORTER,
    max_bytes: int = 16 << 20,
) -> MailAuth:
    checker = MailAuthenticator(nameservers=[address], timeout=1, max_bytes=max_bytes)
    return asyncio.run(checker.check(io.BytesIO(data), peer_ip=ip, mail_from=mail_from, helo=helo))


def from_(data: bytes, address: str) -> bytes:
    return data.replace(b"From: noreply@reporter.example", f"From: {address}".encode(), 1)


def test_a_signed_report_passes_dkim_aligned(zone_address: tuple[Zone, str]) -> None:
    auth = check(zone_address[1], signed(report_message("a-1")))
    assert [(c.domain, c.selector, c.result) for c in auth.dkim] == [(REPORTER, SELECTOR, "pass")]
    assert auth.spf == "fail"  # the connecting address is not the reporter's
    assert (auth.dkim_aligned, auth.spf_aligned, auth.dmarc) == (True, False, "pass")
    assert auth.authenticated and auth.from_domain == REPORTER


def test_a_tampered_report_fails(zone_address: tuple[Zone, str]) -> None:
    data = signed(report_message("a-2"))
    body_start = data.index(b"\r\n\r\n")
    tampered = data[:body_start] + data[body_start:].replace(b"aggregate", b"AGGREGATE", 1)
    auth = check(zone_address[1], tampered)
    assert [c.result for c in auth.dkim] == ["fail"]
    assert (auth.dkim_aligned, auth.dmarc, auth.authenticated) == (False, "fail", False)


def test_spf_alone_authenticates_when_aligned(zone_address: tuple[Zone, str]) -> None:
    unsigned = report_message("a-3")
    auth = check(zone_address[1], unsigned, ip="127.0.0.1", mail_from="bounce@reporter.example")
    assert (auth.spf, auth.spf_domain, auth.spf_aligned, auth.dkim) == (
        "pass",
        REPORTER,
        True,
        (),
    )
    assert auth.dmarc == "pass"
    # An SPF pass for a domain unrelated to From is no DMARC pass.
    other = check(zone_address[1], from_(unsigned, "x@elsewhere.example"), ip="127.0.0.1")
    assert (other.spf, other.spf_aligned, other.dmarc) == ("pass", False, "fail")
    # A null MAIL FROM is checked with the HELO name (RFC 7208 2.3).
    assert check(zone_address[1], unsigned, ip="127.0.0.1", mail_from="").spf == "pass"


def test_strict_alignment_from_the_dmarc_record(zone_address: tuple[Zone, str]) -> None:
    # Signed by reporter.example, From a subdomain: relaxed alignment passes, adkim=s not.
    data = signed(from_(report_message("a-4"), "noreply@strict.reporter.example"))
    auth = check(zone_address[1], data)
    assert [c.result for c in auth.dkim] == ["pass"]
    assert (auth.dkim_aligned, auth.dmarc) == (False, "fail")
    relaxed = signed(from_(report_message("a-4"), "noreply@relaxed.reporter.example"))
    assert check(zone_address[1], relaxed).dmarc == "pass"


def test_no_key_is_a_permanent_error_and_dns_trouble_a_temporary_one(
    zone_address: tuple[Zone, str],
) -> None:
    missing = check(zone_address[1], signed(report_message("a-5"), selector="nokey"))
    assert ([c.result for c in missing.dkim], missing.dmarc) == (["permerror"], "fail")
    broken = check(zone_address[1], signed(report_message("a-5"), selector="broken"))
    assert ([c.result for c in broken.dkim], broken.dmarc) == (["temperror"], "temperror")
    assert broken.dkim_temporary and not broken.authenticated


def test_a_tlsrpt_key_signs_tls_reports_only(zone_address: tuple[Zone, str]) -> None:
    tls = signed(tls_message("t-1", sign=False), selector="tls")
    auth = check(zone_address[1], tls)
    assert [c.result for c in auth.dkim] == ["pass"] and auth.signed_by([REPORTER])
    aggregate = signed(report_message("a-6"), selector="tls")  # RFC 8460 3: s=tlsrpt only
    assert [c.result for c in check(zone_address[1], aggregate).dkim] == ["fail"]


def test_no_single_from_domain_is_no_dmarc_pass(zone_address: tuple[Zone, str]) -> None:
    data = signed(report_message("a-7"))
    two = data.replace(b"\r\nTo:", b"\r\nFrom: other@elsewhere.example\r\nTo:", 1)
    auth = check(zone_address[1], two, ip="127.0.0.1")
    assert (auth.from_domain, auth.dmarc, auth.authenticated) == (None, "none", False)


def test_large_messages_are_not_dkim_checked(zone_address: tuple[Zone, str]) -> None:
    data = signed(report_message("a-8"))
    auth = check(zone_address[1], data, max_bytes=len(data) - 1)
    assert [(c.domain, c.result) for c in auth.dkim] == [(REPORTER, "none")]
    assert auth.dmarc == "fail"


# --- through `rua-sink serve` ---------------------------------------------------------

AUTH_SQL = (
    "SELECT r.authenticated, m.auth_dkim_domains, m.auth_dkim_results, m.auth_dkim_aligned, "
    "m.auth_spf, m.auth_spf_aligned, m.auth_dmarc, m.auth_from_domain FROM aggregate_reports r "
    "JOIN raw_messages m ON m.id = r.raw_message_id WHERE r.report_id = $1"
)


@pytest.fixture(scope="module")
def flag_server(database_url: str) -> Iterator[Server]:
    zone = example_zone()
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    with running(database_url, zone) as srv:
        yield srv


def test_verdicts_are_stored_with_each_report(flag_server: Server) -> None:
    before = scrape(flag_server)
    assert send(flag_server, signed(report_message("e2e-signed")))[0] == 250
    (row,) = flag_server.fetch(AUTH_SQL, "e2e-signed")
    assert row["auth_dkim_domains"] == [REPORTER] and row["auth_dkim_results"] == ["pass"]
    assert row["auth_dkim_aligned"] and row["auth_dmarc"] == "pass" and row["authenticated"]
    assert row["auth_from_domain"] == REPORTER

    # From changed after signing, to a domain whose SPF does not cover the client: stored
    # (RUA_SINK_REQUIRE_AUTHENTICATED=flag), marked.
    data = signed(report_message("e2e-tampered"))
    code, _ = send(flag_server, from_(data, "noreply@elsewhere.example"))
    assert code == 250
    (bad,) = flag_server.fetch(AUTH_SQL, "e2e-tampered")
    assert bad["auth_dkim_results"] == ["fail"] and bad["auth_dmarc"] == "fail"
    assert bad["authenticated"] is False and bad["auth_spf"] == "pass"  # HELO reporter.example
    assert bad["auth_spf_aligned"] is False
    delta = deltas(before, scrape(flag_server))
    assert delta("rua_sink_reports_total", type="aggregate", authenticated="yes") == 1
    assert delta("rua_sink_reports_total", type="aggregate", authenticated="no") == 1


def test_an_unsigned_tls_report_is_quarantined(flag_server: Server) -> None:
    code, reply = send(flag_server, tls_message("tls-unsigned", sign=False))
    assert (code, reply.split()[0]) == (250, "2.0.0")
    assert flag_server.fetch("SELECT 1 FROM tls_reports WHERE report_id = 'tls-unsigned'") == []
    rows = flag_server.fetch(
        "SELECT status, reason FROM raw_messages WHERE status = 'quarantined' "
        "AND reason = 'unsigned_report'"
    )
    assert len(rows) == 1
    assert send(flag_server, tls_message("tls-signed"))[0] == 250
    (tls,) = flag_server.fetch(
        "SELECT authenticated FROM tls_reports WHERE report_id = 'tls-signed'"
    )
    assert tls["authenticated"] is True


def test_reject_refuses_mail_that_fails_dmarc(database_url: str) -> None:
    with running(database_url, RUA_SINK_REQUIRE_AUTHENTICATED="reject") as srv:
        forged = from_(report_message("rej-forged"), "noreply-dmarc-support@google.com")
        code, reply = send(srv, forged)
        assert (code, reply.split()[0]) == (550, "5.7.1")
        assert srv.fetch("SELECT 1 FROM aggregate_reports WHERE report_id = 'rej-forged'") == []
        assert send(srv, signed(report_message("rej-signed")))[0] == 250
        (row,) = srv.fetch(AUTH_SQL, "rej-signed")
        assert row["authenticated"] is True


def test_off_checks_nothing(database_url: str) -> None:
    zone = example_zone()
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    with running(database_url, zone, RUA_SINK_REQUIRE_AUTHENTICATED="off") as srv:
        assert send(srv, report_message("off-1"))[0] == 250
        (row,) = srv.fetch(AUTH_SQL, "off-1")
        assert row["authenticated"] is None and row["auth_dmarc"] is None
        assert send(srv, tls_message("tls-off", sign=False))[0] == 250
        assert len(srv.fetch("SELECT 1 FROM tls_reports WHERE report_id = 'tls-off'")) == 1


def test_an_unsigned_report_authenticates_by_spf(flag_server: Server) -> None:
    assert send(flag_server, report_message("plain-1"))[0] == 250
    (row,) = flag_server.fetch(AUTH_SQL, "plain-1")
    # SPF of the HELO name (MAIL FROM is null), reporter.example, passes for loopback
    assert (row["auth_spf"], row["auth_spf_aligned"], row["authenticated"]) == (
        "pass",
        True,
        True,
    )
