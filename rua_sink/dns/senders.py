"""Who is behind a source address, as DNS tells: its PTR name, confirmed, and a service.

``SenderLookup.resolve`` gives the name an address's PTR record gives, whether that name
is forward-confirmed (its A or AAAA records include the address: FCrDNS, RFC 8601 2.7.3's
``iprev``), the name's organizational domain (RFC 7489 3.2), and a service label from
``ServiceMap``. Only a forward-confirmed name gets a label: anyone can publish
``mail.google.com`` as the PTR of their own address, but only Google can make
``mail.google.com`` resolve to it.

Outcomes: NXDOMAIN or an empty answer for the PTR is "no name" (a complete lookup, an
``Identity``); SERVFAIL, a timeout or another DNS error is ``Unanswered``, to be tried
again later. Storing the answers and the sweeps over the stored reports are sender
identification's (``rua_sink.ingest.identify``).
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from ipaddress import ip_address
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.reversename

from rua_sink.core.names import domain as a_label
from rua_sink.core.names import organizational_domain
from rua_sink.dns.ttlcache import TtlCache
from rua_sink.errors import ServicesFileError

#: PTR names of one address checked for forward confirmation; more are ignored (a
#: hostile reverse zone could list hundreds).
MAX_NAMES = 5


class ServiceMap:
    """Domain name suffix -> service; the longest suffix matching on label boundaries wins.

    The mapping shipped in ``rua_sink/dns/services.toml``, with a user's file (same format)
    laid over it: its entries add to and replace the shipped ones, and an empty service
    removes a suffix's label. A suffix of the ``[forwarders]`` table names a service that
    passes on mail others wrote (a mailing list host, a forwarding service): its sources
    are classed ``forwarded`` (docs/classification.md); one of ``[suffixes]``, a service
    that sends its customers' own mail.
    """

    def __init__(
        self, suffixes: Mapping[str, str], forwarders: Mapping[str, str] | None = None
    ) -> None:
        self._suffixes = {suffix: (service, False) for suffix, service in suffixes.items()}
        self._suffixes.update(
            (suffix, (service, True)) for suffix, service in (forwarders or {}).items()
        )

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> ServiceMap:
        shipped = resources.files("rua_sink.dns").joinpath("services.toml").read_text("utf-8")
        entries = _entries(shipped, "rua_sink/dns/services.toml")
        if user_file:
            try:
                text = Path(user_file).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ServicesFileError(f"{user_file}: {exc}") from exc
            entries.update(_entries(text, str(user_file)))
        return cls(
            {suffix: service for suffix, (service, fwd) in entries.items() if not fwd},
            {suffix: service for suffix, (service, fwd) in entries.items() if fwd},
        )

    def __len__(self) -> int:
        return sum(1 for service, _ in self._suffixes.values() if service)

    def _entry(self, name: str) -> tuple[str, bool] | None:
        labels = name.rstrip(".").lower().split(".")
        for i in range(len(labels)):
            entry = self._suffixes.get(".".join(labels[i:]))
            if entry is not None:
                return entry
        return None

    def lookup(self, name: str) -> str | None:
        """The service of ``name``: of its longest suffix in the mapping, if any."""
        entry = self._entry(name)
        return (entry[0] or None) if entry is not None else None  # "": a user removed it

    def forwarder(self, name: str) -> bool:
        """Whether the service of ``name`` is a forwarder (its longest suffix is one of
        ``[forwarders]``, with a service)."""
        entry = self._entry(name)
        return entry is not None and bool(entry[0]) and entry[1]


#: The tables of a services file, and whether their services are forwarders.
_TABLES = {"suffixes": False, "forwarders": True}


def _entries(text: str, where: str) -> dict[str, tuple[str, bool]]:
    """suffix -> (service, forwarder) of one file; a suffix in both tables is an error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ServicesFileError(f"{where}: {exc}") from exc
    unknown = set(data) - set(_TABLES)
    if unknown:
        raise ServicesFileError(f"{where}: unknown tables or keys: {sorted(unknown)}")
    entries: dict[str, tuple[str, bool]] = {}
    for name, forwarder in _TABLES.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ServicesFileError(f"{where}: {name} must be a table")
        for raw, service in table.items():
            suffix = a_label(raw.strip().removeprefix("*.").lstrip(".")) or ""
            if not suffix or "" in suffix.split(".") or not isinstance(service, str):
                raise ServicesFileError(f"{where}: not a domain suffix and a service: {raw!r}")
            if suffix in entries:
                raise ServicesFileError(f"{where}: {raw!r} is both a service and a forwarder")
            entries[suffix] = (service.strip(), forwarder)
    return entries


@dataclass(frozen=True, slots=True)
class Identity:
    """A complete lookup of one address; all None when it has no PTR name."""

    ptr_name: str | None = None
    confirmed: bool | None = None
    org_domain: str | None = None
    service: str | None = None
    #: the service is a forwarder (``ServiceMap.forwarder``)
    forwarder: bool = False


@dataclass(frozen=True, slots=True)
class Unanswered:
    """DNS could not answer now (SERVFAIL, timeout): look the address up again later."""

    detail: str


class SenderLookup:
    """Looks up addresses with at most ``concurrency`` at once, and keeps complete answers
    in-process for ``cache_ttl`` seconds."""

    def __init__(
        self,
        *,
        resolver: dns.asyncresolver.Resolver,
        services: ServiceMap,
        concurrency: int = 8,
        cache_ttl: float = 3600.0,
        cache_size: int = 10_000,
    ) -> None:
        self.resolver = resolver
        self.services = services
        self._lookups = asyncio.Semaphore(concurrency)
        self._cache: TtlCache[str, Identity] = TtlCache(cache_size)
        self._cache_ttl = cache_ttl

    def label(self, name: str) -> str | None:
        """The service of a forward-confirmed name. The suffixes tried run from the name
        itself down to its organizational domain and beyond, so an entry for an
        organizational domain labels every name under it."""
        return self.services.lookup(name)

    async def resolve(self, ip: str) -> Identity | Unanswered:
        """The PTR name of ``ip`` and whether it is forward-confirmed (cached in-process
        for ``cache_ttl`` seconds; temporary errors are not cached)."""
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        async with self._lookups:
            result = await self._resolve(ip)
        if isinstance(result, Identity):
            self._cache.put(ip, result, self._cache_ttl)
        return result

    async def _resolve(self, ip: str) -> Identity | Unanswered:
        address = ip_address(ip)
        try:
            answer = await self.resolver.resolve(
                dns.reversename.from_address(ip), "PTR", search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Identity()
        except dns.exception.DNSException as exc:
            return Unanswered(f"PTR {ip}: {_describe(exc)}")
        names = sorted(
            {
                name
                for rdata in answer
                if rdata.rdtype == dns.rdatatype.PTR
                and (name := rdata.target.to_text(omit_final_dot=True).lower()) not in ("", ".")
            }
        )[:MAX_NAMES]
        if not names:
            return Identity()
        # FCrDNS: a name of the address whose own addresses include it (RFC 8601 2.7.3).
        rtype = "A" if address.version == 4 else "AAAA"
        trouble = None
        for name in names:
            try:
                forward = await self.resolver.resolve(name + ".", rtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                trouble = f"{rtype} {name}: {_describe(exc)}"
                continue
            if any(ip_address(r.address) == address for r in forward if r.rdtype == forward.rdtype):
                return self._named(name, confirmed=True)
        if trouble is not None:  # a name not checked might have confirmed: decide later
            return Unanswered(trouble)
        return self._named(names[0], confirmed=False)

    def _named(self, name: str, *, confirmed: bool) -> Identity:
        return Identity(
            ptr_name=name,
            confirmed=confirmed,
            org_domain=organizational_domain(name),
            service=self.label(name) if confirmed else None,
            forwarder=confirmed and self.services.forwarder(name),
        )


def _describe(exc: dns.exception.DNSException) -> str:
    return f"{type(exc).__name__}: {exc}"
