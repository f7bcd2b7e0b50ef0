"""Was a report's mail really sent by the organization it names?

For each message received over SMTP: SPF of the connecting address for the MAIL FROM
domain (or the HELO name for a null reverse-path; RFC 7208 2.3, 2.4) with ``pyspf``,
every DKIM signature (up to ``MAX_SIGNATURES``) with ``dkimpy``, and DMARC alignment of
the From domain (RFC 7489 3.1, 4.2): the message authenticates when an SPF or DKIM pass
is aligned with it. ``adkim``/``aspf`` of the DMARC record of the From domain (or, without
one, of its organizational domain) are honoured; without a record, or when DNS cannot
answer for it, alignment is relaxed.

Report mail MUST produce an aligned DMARC pass (RFC 7489 7.2.1.1, RFC 9990 3.5.2), but
reports can be forged (RFC 9990 8.2), so the verdicts are recorded with every report and
acted on as ``RUA_SINK_REQUIRE_AUTHENTICATED`` says. TLS reports are different: RFC 8460
3 requires a valid DKIM signature of the reporting domain, and unsigned ones are ignored
(``MailAuth.signed_by``); a key whose ``s=`` tag is ``tlsrpt`` is valid only for them.

Both libraries are synchronous: the check runs in a worker thread, and DNS goes through
one dnspython resolver on the configured nameservers (``RUA_SINK_DNS_NAMESERVERS``)
with its own cache; an SPF result other than ``temperror`` is kept for
``SPF_CACHE_SECONDS`` per (address, MAIL FROM, HELO). DKIM needs the whole message in
memory (dkimpy hashes the body in one piece), so only signed messages are read whole,
signed messages over ``max_bytes`` are not DKIM-checked (result ``none``), and only one
message over ``SHARED_BYTES`` is checked at a time.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import dkim
import dns.exception
import dns.rdatatype
import dns.resolver
import spf

from rua_sink.core.arrival import DkimCheck, MailAuth
from rua_sink.core.headers import Headers, leading_header_block, parse_fields
from rua_sink.core.names import domain as a_label
from rua_sink.core.names import organizational_domain
from rua_sink.dns.authz import make_sync_resolver
from rua_sink.dns.ttlcache import TtlCache

MAX_SIGNATURES = 5  # DKIM signatures checked per message
SHARED_BYTES = 1 << 20
MAX_HEADER_BYTES = 256 * 1024
SPF_CACHE_SECONDS = 300.0
SPF_CACHE_SIZE = 10_000

_DMARC_TAG = re.compile(r"^\s*(adkim|aspf)\s*=\s*([rs])\s*$", re.IGNORECASE)

# dkimpy logs every failed signature at error level; the verdict is what we keep.
_DKIM_LOG = logging.getLogger("rua_sink.dkim")
_DKIM_LOG.addHandler(logging.NullHandler())
_DKIM_LOG.propagate = False


@dataclass
class _Lookups:
    """DNS through one resolver; remembers whether any answer was a temporary failure."""

    resolver: dns.resolver.Resolver
    temporary: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def txt(self, name: str) -> list[bytes] | None:
        try:
            answer = self.resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self.missing.append(name)
            return None
        except dns.exception.DNSException as exc:
            self.temporary.append(f"{name}: {exc}")
            raise
        return [b"".join(r.strings) for r in answer if r.rdtype == dns.rdatatype.TXT]

    def dkim_key(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's ``dnsfunc``: the key record's text, or None."""
        try:
            texts = self.txt(name.decode("ascii", "replace"))
        except dns.exception.DNSException as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        return texts[0] if texts else None

    def spf(self, name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
        """pyspf's ``DNSLookup``: [((name, type), value), ...], TempError when DNS fails."""
        try:
            answer = self.resolver.resolve(name, qtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        out: list[Any] = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange.to_text(True))))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out


# pyspf looks names up through its module-level ``DNSLookup``; each check binds its own
# resolver to the thread running it, so that the configured nameservers answer.
_thread = threading.local()


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    lookups: _Lookups = _thread.lookups
    return lookups.spf(name, qtype, strict, timeout)


spf.DNSLookup = _spf_lookup


class MailAuthenticator:
    """SPF, DKIM and DMARC of one received message (``check``), off the event loop."""

    def __init__(
        self,
        *,
        nameservers: Iterable[str] = (),
        timeout: float = 5.0,
        max_bytes: int = 16 << 20,
        resolver: dns.resolver.Resolver | None = None,
    ) -> None:
        self._resolver = resolver or make_sync_resolver(nameservers, timeout)
        self._max_bytes = max_bytes
        self._large = asyncio.Semaphore(1)
        #: (client address, MAIL FROM, HELO) -> SPF result: a reporter sends many
        #: messages from one address, and the answer holds for a while.
        self._spf_cache: TtlCache[tuple[str | None, str, str], str] = TtlCache(SPF_CACHE_SIZE)

    async def check(
        self, file: IO[bytes], *, peer_ip: str | None, mail_from: str | None, helo: str | None
    ) -> MailAuth:
        size = file.seek(0, 2)
        file.seek(0)
        if size <= SHARED_BYTES:
            return await asyncio.to_thread(self._check, file, size, peer_ip, mail_from, helo)
        async with self._large:
            return await asyncio.to_thread(self._check, file, size, peer_ip, mail_from, helo)

    def _check(
        self,
        file: IO[bytes],
        size: int,
        peer_ip: str | None,
        mail_from: str | None,
        helo: str | None,
    ) -> MailAuth:
        lookups = _Lookups(self._resolver)
        file.seek(0)
        fields = parse_fields(leading_header_block(file, MAX_HEADER_BYTES))
        headers = Headers.of(fields)
        from_domain = _from_domain(fields.get_all("From") or [])
        # RFC 8460 5.3: multipart/report; report-type=tlsrpt, with TLS-Report-Domain
        tlsrpt = headers.report_type == "tlsrpt" or "TLS-Report-Domain" in fields
        signatures = fields.get_all("DKIM-Signature")
        if not signatures:
            dkims: tuple[DkimCheck, ...] = ()  # nothing to verify: the body is not read
        elif size <= self._max_bytes:
            file.seek(0)
            dkims = _dkim(file.read(), lookups, tlsrpt=tlsrpt)
        else:
            dkims = tuple(DkimCheck(d, s, "none") for d, s in _signatures(signatures))
        spf_result, spf_domain = self._spf(lookups, peer_ip, mail_from, helo)
        file.seek(0)
        return _dmarc(lookups, from_domain, dkims, spf_result, spf_domain)

    def _spf(
        self, lookups: _Lookups, peer_ip: str | None, mail_from: str | None, helo: str | None
    ) -> tuple[str, str | None]:
        sender = (mail_from or "").strip().strip("<>")
        domain = a_label(sender.rpartition("@")[2]) if "@" in sender else a_label(helo or "")
        key = (peer_ip, sender.lower(), (helo or "").lower())
        result = self._spf_cache.get(key)
        if result is None:
            result = _spf(lookups, peer_ip, sender, helo, domain)
            if result != "temperror":
                self._spf_cache.put(key, result, SPF_CACHE_SECONDS)
        return result, domain


def _from_domain(values: list[Any]) -> str | None:
    """The RFC5322.From domain, when there is exactly one (RFC 7489 6.6.1)."""
    addresses = email.utils.getaddresses([str(v) for v in values])
    domains = {a_label(addr.rpartition("@")[2]) for _, addr in addresses if "@" in addr}
    if len(values) != 1 or len(domains) != 1:
        return None
    return next(iter(domains))


def _signatures(values: list[Any] | None) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        try:
            tags = dkim.util.parse_tag_value(str(value).encode("utf-8", "replace"))
        except dkim.util.InvalidTagValueList:
            continue
        out.append(
            (
                tags.get(b"d", b"").decode("ascii", "replace").lower(),
                tags.get(b"s", b"").decode("ascii", "replace"),
            )
        )
    return out


def _dkim(message: bytes, lookups: _Lookups, *, tlsrpt: bool) -> tuple[DkimCheck, ...]:
    try:
        verifier = dkim.DKIM(message, logger=_DKIM_LOG, tlsrpt=tlsrpt)
    except dkim.DKIMException:
        return ()
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(min(count, MAX_SIGNATURES)):
        lookups.temporary.clear()
        lookups.missing.clear()
        verifier.domain = verifier.selector = None
        try:
            ok = verifier.verify(idx=index, dnsfunc=lookups.dkim_key)
            result = "pass" if ok else "fail"
            if not ok and lookups.temporary:
                result = "temperror"
            elif not ok and lookups.missing:
                result = "permerror"  # no key published
        except dkim.ValidationError:
            result = "fail"
        except dkim.DKIMException:
            result = "permerror"
        domain = (verifier.domain or b"").decode("ascii", "replace").lower()
        selector = (verifier.selector or b"").decode("ascii", "replace")
        results.append(DkimCheck(domain, selector, result))
    return tuple(results)


def _spf(
    lookups: _Lookups, peer_ip: str | None, sender: str, helo: str | None, domain: str | None
) -> str:
    if not peer_ip or not domain:
        return "none"
    _thread.lookups = lookups
    try:
        result, _ = spf.check2(i=peer_ip, s=sender, h=helo or domain, querytime=20)
    except Exception:  # noqa: BLE001 - pyspf on input it cannot handle: no verdict
        return "permerror"
    finally:
        _thread.lookups = None
    return str(result).lower()


def _aligned(identifier: str | None, from_domain: str, strict: bool) -> bool:
    if not identifier:
        return False
    if strict:
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def _dmarc(
    lookups: _Lookups,
    from_domain: str | None,
    dkims: tuple[DkimCheck, ...],
    spf_result: str,
    spf_domain: str | None,
) -> MailAuth:
    base = MailAuth(from_domain, spf_result, spf_domain, dkims)
    if from_domain is None:
        return base
    passing = [c.domain for c in dkims if c.result == "pass"]
    if spf_result == "pass":
        passing.append(spf_domain or "")
    relaxed = any(_aligned(d, from_domain, False) for d in passing)
    modes: dict[str, str] = {}
    if relaxed and any(d != from_domain for d in passing):
        try:
            modes = _alignment_modes(lookups, from_domain)
        except dns.exception.DNSException:
            modes = {}  # no answer now: relaxed, the default
    dkim_ok = any(
        c.result == "pass" and _aligned(c.domain, from_domain, modes.get("adkim") == "s")
        for c in dkims
    )
    spf_ok = spf_result == "pass" and _aligned(spf_domain, from_domain, modes.get("aspf") == "s")
    if dkim_ok or spf_ok:
        verdict = "pass"
    elif spf_result == "temperror" or any(c.result == "temperror" for c in dkims):
        verdict = "temperror"
    else:
        verdict = "fail"
    return MailAuth(from_domain, spf_result, spf_domain, dkims, dkim_ok, spf_ok, verdict)


def _alignment_modes(lookups: _Lookups, from_domain: str) -> dict[str, str]:
    """adkim/aspf of the DMARC record for ``from_domain`` (or its organization)."""
    for name in dict.fromkeys((from_domain, organizational_domain(from_domain))):
        for text in lookups.txt(f"_dmarc.{name}") or []:
            tags = text.decode("utf-8", "replace").split(";")
            if tags and tags[0].strip().replace(" ", "").lower() == "v=dmarc1":
                modes = {}
                for tag in tags[1:]:
                    match = _DMARC_TAG.match(tag)
                    if match:
                        modes[match.group(1).lower()] = match.group(2).lower()
                return modes
    return {}
