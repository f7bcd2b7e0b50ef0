"""A real DNS server on loopback (dnslib) serving a small zone the tests write."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import pytest
from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSError, DNSHandler, DNSLogger, DNSServer


@dataclass
class Zone:
    """TXT records by name, other records (A, AAAA, PTR, MX) by name and type; names that
    answer SERVFAIL; names that never answer. A TXT name starting with ``*.`` matches any
    name below it, as DNS wildcards do."""

    txt: dict[str, list[str]] = field(default_factory=dict)
    #: (name, "A" | "AAAA" | "PTR" | "MX") -> values; an MX value is "preference host"
    other: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    servfail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    ttl: int = 300
    queries: list[str] = field(default_factory=list)

    def add(self, name: str, rtype: str, *values: str) -> None:
        self.other.setdefault((name.lower().rstrip("."), rtype), []).extend(values)

    def add_ptr(self, ip: str, name: str) -> None:
        """A PTR record for ``ip`` (v4 or v6) naming ``name``."""
        self.add(ip_address(ip).reverse_pointer, "PTR", name)

    def exists(self, name: str) -> bool:
        return self.lookup(name) is not None or any(n == name for n, _ in self.other)

    def lookup(self, name: str) -> list[str] | None:
        if name in self.txt:
            return self.txt[name]
        labels = name.split(".")
        for i in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[i:])
            if wildcard in self.txt:
                return self.txt[wildcard]
        return None


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: Zone) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname = str(request.q.qname).rstrip(".").lower()
        self.zone.queries.append(qname)
        if qname in self.zone.silent:
            raise DNSError("silent")  # dnslib sends nothing back
        reply = request.reply()
        if qname in self.zone.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        texts = self.zone.lookup(qname)
        qtype = QTYPE[request.q.qtype]
        if not self.zone.exists(qname):
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype == "TXT":
            for text in texts or ():
                chunks = [text[i : i + 255].encode() for i in range(0, len(text), 255)] or [b""]
                reply.add_answer(
                    RR(DNSLabel(qname), QTYPE.TXT, rdata=TXT(chunks), ttl=self.zone.ttl)
                )
        else:
            for value in self.zone.other.get((qname, qtype), ()):
                reply.add_answer(
                    RR(
                        DNSLabel(qname),
                        request.q.qtype,
                        rdata=_rdata(qtype, value),
                        ttl=self.zone.ttl,
                    )
                )
        return reply


def _rdata(qtype: str, value: str) -> Any:
    if qtype == "A":
        return A(value)
    if qtype == "AAAA":
        return AAAA(value)
    if qtype == "PTR":
        return PTR(value)
    preference, _, host = value.partition(" ")
    return MX(host, int(preference))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(zone: Zone) -> Iterator[str]:
    """Serve ``zone`` on loopback (UDP and TCP, one port); yields ``host:port``."""
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers: list[DNSServer] = []
    for _ in range(20):  # a port free for UDP may be taken for TCP: try another
        port = _free_port()
        servers = []
        try:
            for tcp in (False, True):
                servers.append(
                    DNSServer(
                        _Resolver(zone), port=port, address="127.0.0.1", tcp=tcp, logger=quiet
                    )
                )
            break
        except OSError:
            for server in servers:
                server.server.server_close()
    for server in servers:
        server.start_thread()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for server in servers:
            server.stop()
            server.server.server_close()


@pytest.fixture
def dns_zone() -> Iterator[tuple[Zone, str]]:
    """A zone and the ``host:port`` of the server answering from it."""
    zone = Zone()
    with serving(zone) as address:
        yield zone, address
