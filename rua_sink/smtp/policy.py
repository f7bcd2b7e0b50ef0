"""Who may talk to the server and to whom: report addresses (RCPT), the session counts of
the connection limits, trusted proxies, and the fast reading of a plain MAIL/RCPT path."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Protocol

from aiosmtpd.smtp import Session

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: A path in angle brackets around a dot-atom address, then its parameters: what nearly
#: every sender writes in MAIL and RCPT (RFC 5321 4.1.2).
_PLAIN_PATH = re.compile(
    rf"[ \t]*<({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]++(?!\()(.*))?",
    re.DOTALL,
)


def plain_path(arg: str, local_part_limit: int = 0) -> tuple[str, str] | None:
    """``(address, parameters)`` of a plain path, as aiosmtpd's parser reads it; None for
    anything else (quoted or bracketed parts, comments, the null path), which is left to
    that parser. It builds a token tree per address, a tenth of a millisecond a command."""
    m = _PLAIN_PATH.fullmatch(arg)
    if m is None:
        return None
    local, domain, rest = m.groups()
    if local_part_limit and len(local) > local_part_limit:
        return None
    return f"{local}@{domain}", rest or ""


class AddressPolicy:
    """Report addresses: exact (``dmarc@rua.example.net``) or a whole domain
    (``*@reports.example.net``), case-insensitive, plus postmaster (RFC 5321 4.5.1)."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.domains: set[str] = set()
        for address in addresses:
            local, _, dom = address.lower().rpartition("@")
            if local == "*":
                self.domains.add(dom)
            else:
                self.exact.add(f"{local}@{dom}")
        self.local_domains = self.domains | {a.rpartition("@")[2] for a in self.exact}

    def accepts(self, address: str) -> bool:
        address = _bare(address)
        _, at, dom = address.rpartition("@")
        if at and (address in self.exact or dom in self.domains):
            return True
        # RFC 5321 4.5.1: <postmaster> with no domain, or at one of ours
        return self.postmaster(address) and (not at or dom in self.local_domains)

    @staticmethod
    def postmaster(address: str) -> bool:
        address = _bare(address)
        return address == "postmaster" or address.rpartition("@")[0] == "postmaster"


def _bare(address: str) -> str:
    """A path's address as the policy compares it: no brackets, lower case."""
    return address.strip().strip("<>").lower()


def in_networks(ip: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_address(session: Session) -> str | None:
    """The real client: from the PROXY header when a trusted balancer sent one."""
    proxied = getattr(session, "proxy_data", None)
    if proxied is not None and proxied.src_addr is not None:
        return str(proxied.src_addr)
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else None


class OpenSession(Protocol):
    """What shutdown needs of a session (``session.ReportSMTP``)."""

    @property
    def busy(self) -> bool: ...

    def say_goodbye(self) -> None: ...


class Sessions:
    """Counts sessions, in all and per client address, for the connection limits."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.open_sessions: set[OpenSession] = set()
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.idle = asyncio.Event()
        self.idle.set()

    def open(self, ip: str, *, per_ip: bool = True) -> bool:
        if self.total >= self.max_total or (per_ip and self.per_ip[ip] >= self.max_per_ip):
            return False
        self.total += 1
        self.per_ip[ip] += 1
        self.idle.clear()
        return True

    def close_idle(self) -> None:
        """At shutdown: end every session that is not in the middle of a message."""
        for session in list(self.open_sessions):
            if not session.busy:
                session.say_goodbye()

    def close(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        if self.total == 0:
            self.idle.set()
