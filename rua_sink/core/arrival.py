"""How a message arrived: its SMTP envelope, or the file it came from, and the verdicts of
the checks made on the mail itself (SPF, DKIM, DMARC). Plain values, made by the SMTP
session and the DNS checks, stored with the raw message."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rua_sink.core.names import organizational_domain


@dataclass(frozen=True, slots=True)
class DkimCheck:
    domain: str
    selector: str
    #: pass | fail | permerror | temperror | none (not checked: too large)
    result: str


@dataclass(frozen=True, slots=True)
class MailAuth:
    """The verdicts on one message, as stored in ``raw_messages``."""

    from_domain: str | None
    spf: str  # pass | fail | softfail | neutral | none | temperror | permerror
    spf_domain: str | None
    dkim: tuple[DkimCheck, ...] = ()
    dkim_aligned: bool = False
    spf_aligned: bool = False
    #: pass | fail | temperror | none (no single From domain to evaluate)
    dmarc: str = "none"

    @property
    def authenticated(self) -> bool:
        return self.dmarc == "pass"

    def signed_by(self, domains: Iterable[str]) -> bool:
        """A valid DKIM signature of one of ``domains`` or its organization (RFC 8460 3)."""
        wanted = {organizational_domain(d) for d in domains if d}
        return any(
            c.result == "pass" and organizational_domain(c.domain) in wanted for c in self.dkim
        )

    @property
    def dkim_temporary(self) -> bool:
        return any(c.result == "temperror" for c in self.dkim)


@dataclass(frozen=True, slots=True)
class Envelope:
    """How a message arrived: the SMTP envelope (RFC 5321 3.3), or the file it came from."""

    source: str = "smtp"
    peer_ip: str | None = None
    helo: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    #: SPF, DKIM and DMARC of the message itself; None when not checked
    auth: MailAuth | None = None

    @property
    def authenticated(self) -> bool | None:
        return None if self.auth is None else self.auth.authenticated
