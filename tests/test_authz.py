"""External-destination authorization against a real DNS server on loopback."""

from __future__ import annotations

import time

import pytest

from rua_sink.core.names import organizational_domain
from rua_sink.dns.authz import Authorization, Authorizer, make_resolver
from rua_sink.errors import AuthorizationUnavailable
from rua_sink.outcomes import Verdict

from .dnsserver import Zone
from .pg import run

RUA = "rua.example.net"


def authorizer(server: str, **kw: object) -> Authorizer:
    return Authorizer(resolver=make_resolver([server], timeout=1.0), **kw)  # type: ignore[arg-type]


def check(a: Authorizer, policy: str, rcpt: str = RUA) -> Authorization:
    return run(a.check_dmarc(policy, rcpt))


def test_organizational_domains() -> None:
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("rua.example.net") == "example.net"
    assert organizational_domain("co.uk") == "co.uk"


def test_published_record_authorizes(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.txt["example.org._report._dmarc.rua.example.net"] = ["v=DMARC1;"]
    zone.txt["bare.example._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    zone.txt["several.example._report._dmarc.rua.example.net"] = ["v=spf1 -all", "v=DMARC1; rua=x"]
    zone.txt["wrong.example._report._dmarc.rua.example.net"] = ["v=spf1 -all", "p=none; v=DMARC1"]
    a = authorizer(server)
    got = check(a, "Example.ORG")
    assert got == Authorization(Verdict.AUTHORIZED, "example.org._report._dmarc.rua.example.net")
    assert check(a, "bare.example").verdict is Verdict.AUTHORIZED
    assert check(a, "several.example").verdict is Verdict.AUTHORIZED
    assert check(a, "wrong.example").verdict is Verdict.NOT_AUTHORIZED  # v= must come first
    assert check(a, "nothing.example").verdict is Verdict.NOT_AUTHORIZED


def test_wildcard_authorizes_every_domain(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.txt["*._report._dmarc.wild.example.net"] = ["v=DMARC1"]
    a = authorizer(server)
    assert check(a, "any.example", "wild.example.net").verdict is Verdict.AUTHORIZED
    assert check(a, "any.example", RUA).verdict is Verdict.NOT_AUTHORIZED


def test_same_organization_and_allow_list_skip_dns(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    a = authorizer(server, allow=["customer.example"])
    assert check(a, "example.net").verdict is Verdict.SAME_ORGANIZATION
    assert check(a, "sub.customer.example").verdict is Verdict.ALLOW_LIST
    assert zone.queries == []


def test_name_too_long_authorizes_nothing(dns_zone: tuple[Zone, str]) -> None:
    # RFC 9990 4 step 4: no lookup of a name DNS cannot hold.
    zone, server = dns_zone
    long_domain = ".".join(["a" * 60] * 4) + ".example"
    assert check(authorizer(server), long_domain).verdict is Verdict.NOT_AUTHORIZED
    assert zone.queries == []


def test_servfail_and_silence_are_temporary(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.servfail.add("broken.example._report._dmarc.rua.example.net")
    zone.silent.add("silent.example._report._dmarc.rua.example.net")
    a = authorizer(server)
    with pytest.raises(AuthorizationUnavailable):
        check(a, "broken.example")
    started = time.monotonic()
    with pytest.raises(AuthorizationUnavailable):
        check(a, "silent.example")
    assert time.monotonic() - started < 5  # bounded by the configured timeout


def test_answers_are_cached_for_their_ttl(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.txt["example.org._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    zone.ttl = 60
    now = [1000.0]
    a = authorizer(server, clock=lambda: now[0])
    assert not check(a, "example.org").cached
    assert check(a, "example.org").cached
    assert check(a, "gone.example").verdict is Verdict.NOT_AUTHORIZED
    assert check(a, "gone.example").cached  # negative answers too
    asked = len(zone.queries)
    now[0] += 61
    assert not check(a, "example.org").cached
    assert len(zone.queries) == asked + 1


def test_tls_reports_are_authorized_by_the_tlsrpt_record(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.txt["_smtp._tls.example.org"] = [
        "v=TLSRPTv1; rua=mailto:other@x.example,mailto:TLS@rua.example.net"
    ]
    a = authorizer(server)
    assert run(a.check_tls("example.org", "tls@rua.example.net")).verdict is Verdict.AUTHORIZED
    assert run(a.check_tls("example.org", "dmarc@rua.example.net")).verdict is (
        Verdict.NOT_AUTHORIZED
    )
    assert run(a.check_tls("none.example", "tls@rua.example.net")).verdict is (
        Verdict.NOT_AUTHORIZED
    )


def test_allow_everything_for_a_trial(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    a = authorizer(server, allow=["*"])
    assert check(a, "anything.example").verdict is Verdict.ALLOW_LIST
    assert run(a.check_tls("anything.example", RUA)).verdict is Verdict.ALLOW_LIST
    assert zone.queries == []


def test_each_lookup_is_observed(dns_zone: tuple[Zone, str]) -> None:
    zone, server = dns_zone
    zone.txt["example.org._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    zone.servfail.add("broken.example._report._dmarc.rua.example.net")
    seen: list[str] = []
    a = authorizer(server, observe=seen.append, allow=["listed.example"])
    check(a, "example.org")
    check(a, "example.org")
    check(a, "stranger.example")
    check(a, "listed.example")
    check(a, "example.net")
    with pytest.raises(AuthorizationUnavailable):
        check(a, "broken.example")
    assert seen == [
        "authorized",
        "cache_hit",
        "not_authorized",
        "allow_list",
        "same_organization",
        "temporary_error",
    ]
