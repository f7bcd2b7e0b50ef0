"""Has a domain authorized this destination to receive its reports?

DMARC (RFC 7489 7.1, RFC 9990 4): when the Organizational Domain of the report's policy
domain differs from that of the destination (the RCPT domain), the destination must
publish ``<policy-domain>._report._dmarc.<destination-host>`` TXT, a record whose first
tag is ``v=DMARC1``; several records may exist, one valid is enough, and a wildcard
``*._report._dmarc.<destination-host>`` authorizes every domain. A name longer than DNS
allows authorizes nothing (RFC 9990 4 step 4).

SMTP TLS reporting has no such mechanism (RFC 8460 3); rua-sink accepts a TLS report when
the policy domain's ``_smtp._tls`` record (``v=TLSRPTv1``) names the RCPT address in its
``rua=``.

Answers are cached for their TTL, failures to answer are not: a temporary DNS error is
``AuthorizationUnavailable``, which the SMTP layer turns into ``451 4.4.3`` so that the
sender retries. The Public Suffix List comes from the ``publicsuffixlist`` package, which
ships the list: nothing is downloaded at run time.

The resolvers on the configured nameservers are made here too (``make_resolver`` for the
event loop, ``make_sync_resolver`` for the mail checks of ``mailauth``, which run in
threads).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from rua_sink.core.names import domain as a_label
from rua_sink.core.names import organizational_domain
from rua_sink.dns.ttlcache import TtlCache
from rua_sink.errors import AuthorizationUnavailable
from rua_sink.outcomes import Verdict


@dataclass(frozen=True, slots=True)
class Authorization:
    """The answer of one check: the verdict, and the DNS name it rests on."""

    verdict: Verdict
    query: str | None = None  # the name looked up, if any
    cached: bool = False


_DMARC1 = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)", re.IGNORECASE)
_TLSRPT1 = re.compile(r"^\s*v\s*=\s*TLSRPTv1\s*(;|$)", re.IGNORECASE)


def make_resolver(nameservers: Iterable[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver on ``host[:port]`` nameservers, or the system's when none is given."""
    return _configure(dns.asyncresolver.Resolver, nameservers, timeout)


def make_sync_resolver(nameservers: Iterable[str], timeout: float) -> dns.resolver.Resolver:
    """The same, for code that runs in a worker thread, with a cache of its own."""
    resolver = _configure(dns.resolver.Resolver, nameservers, timeout)
    resolver.cache = dns.resolver.LRUCache(10_000)
    return resolver


_R = TypeVar("_R", bound=dns.resolver.BaseResolver)


def _configure(kind: type[_R], nameservers: Iterable[str], timeout: float) -> _R:
    servers = list(nameservers)
    resolver = kind(configure=not servers)
    if servers:
        resolver.nameservers = [_nameserver(s) for s in servers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def _nameserver(spec: str) -> dns.nameserver.Nameserver:
    host, port = spec, 53
    if spec.startswith("["):  # [IPv6]:port
        host, _, rest = spec[1:].partition("]")
        port = int(rest.lstrip(":") or 53)
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
        port = int(port_text)
    return dns.nameserver.Do53Nameserver(host, port)


class Authorizer:
    """The DMARC and TLSRPT destination checks, with a TTL cache of the TXT answers and
    an allow list (``allow``) of domains accepted without a lookup."""

    def __init__(
        self,
        *,
        resolver: dns.asyncresolver.Resolver,
        allow: Iterable[str] = (),
        cache_size: int = 10_000,
        negative_ttl: int = 300,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._resolver = resolver
        #: Told each lookup's result: a verdict, "cache_hit" or "temporary_error".
        self._observe = observe
        entries = [x.strip() for x in allow]
        # "*" accepts every domain without a lookup: for trials and closed networks.
        self._allow_all = "*" in entries
        self._allow = frozenset(d for d in (a_label(x) for x in entries if x != "*") if d)
        self._cache: TtlCache[str, tuple[str, ...]] = TtlCache(cache_size, clock)
        self._negative_ttl = negative_ttl

    def _allowed(self, policy_domain: str) -> bool:
        return (
            self._allow_all
            or policy_domain in self._allow
            or organizational_domain(policy_domain) in self._allow
        )

    async def check_dmarc(self, policy_domain: str, rcpt_domain: str) -> Authorization:
        """RFC 7489 7.1 / RFC 9990 4, for a report about ``policy_domain`` sent to an
        address at ``rcpt_domain``."""
        policy = a_label(policy_domain) or ""
        dest = a_label(rcpt_domain) or ""
        if self._allowed(policy):
            return self._seen(Authorization(Verdict.ALLOW_LIST))
        if organizational_domain(policy) == organizational_domain(dest):
            return self._seen(Authorization(Verdict.SAME_ORGANIZATION))
        name = f"{policy}._report._dmarc.{dest}"
        if not _valid_name(name):
            return self._seen(Authorization(Verdict.NOT_AUTHORIZED, name))  # RFC 9990 4 step 4
        texts, cached = await self._txt(name)
        if not any(_DMARC1.match(t) for t in texts):
            # A wildcard is served for any name by the DNS itself; asking for it by name
            # too covers servers that hold it as a literal label.
            wildcard, wildcard_cached = await self._txt(f"*._report._dmarc.{dest}")
            texts = texts + wildcard
            cached = cached and wildcard_cached
        verdict = (
            Verdict.AUTHORIZED if any(_DMARC1.match(t) for t in texts) else Verdict.NOT_AUTHORIZED
        )
        return self._seen(Authorization(verdict, name, cached))

    async def check_tls(self, policy_domain: str, rcpt_address: str) -> Authorization:
        """A TLS report for ``policy_domain`` to ``rcpt_address``: does the domain's
        TLSRPT record (RFC 8460 3) name this address?"""
        policy = a_label(policy_domain) or ""
        if self._allowed(policy):
            return self._seen(Authorization(Verdict.ALLOW_LIST))
        name = f"_smtp._tls.{policy}"
        if not _valid_name(name):
            return self._seen(Authorization(Verdict.NOT_AUTHORIZED, name))
        texts, cached = await self._txt(name)
        target = "mailto:" + rcpt_address.strip().lower()
        for text in texts:
            if not _TLSRPT1.match(text):
                continue
            for tag in text.split(";"):
                key, _, value = tag.partition("=")
                if key.strip().lower() == "rua":
                    uris = [u.strip().lower() for u in value.split(",")]
                    if target in uris:
                        return self._seen(Authorization(Verdict.AUTHORIZED, name, cached))
        return self._seen(Authorization(Verdict.NOT_AUTHORIZED, name, cached))

    def _seen(self, result: Authorization) -> Authorization:
        self._observe("cache_hit" if result.cached else str(result.verdict))
        return result

    async def _txt(self, name: str) -> tuple[tuple[str, ...], bool]:
        """TXT strings at ``name`` (each record's strings joined), and whether cached."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit, True
        try:
            answer = await self._resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._cache.put(name, (), self._negative_ttl)
            return (), False
        except dns.exception.DNSException as exc:  # SERVFAIL, timeout, ...: temporary
            self._observe("temporary_error")
            raise AuthorizationUnavailable(f"DNS lookup of {name} failed: {exc}") from exc
        texts = tuple(
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in answer
            if rdata.rdtype == dns.rdatatype.TXT
        )
        ttl = answer.rrset.ttl if answer.rrset is not None else self._negative_ttl
        self._cache.put(name, texts, ttl)
        return texts, False


def _valid_name(name: str) -> bool:
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException:  # too long, a label over 63 octets, empty label
        return False
    return True
