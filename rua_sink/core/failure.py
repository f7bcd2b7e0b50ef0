"""DMARC failure reports and other ARF feedback (RFC 5965 3, RFC 6591, RFC 9991 4).

The ``message/feedback-report`` part is a header block; every field is kept in order,
and the ones the specs name are also typed. Fields whose presence rules differ between
the specs (SPEC.md G.42, G.43) are all optional here; ``Identity-Alignment`` is kept
raw because its meaning was inverted between RFC 7489 and RFC 9991.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from datetime import UTC

from .aggregate import domain
from .model import FailureReport, PartInfo

_PARSER = email.parser.BytesParser(policy=email.policy.compat32)
_COMMENT = re.compile(r"\s*\(.*\)\s*$")


def _unfold(value: str) -> str:
    return " ".join(value.split())


def parse_feedback(data: bytes, info: PartInfo, original_headers: bytes | None) -> FailureReport:
    # The part body is "name: value" lines like a header block (RFC 5965 3.1); a blank
    # line separating groups (RFC 5965 3.2's per-message fields) is not an end.
    block = b"\n".join(line for line in data.splitlines() if line.strip()) + b"\n\n"
    msg = _PARSER.parsebytes(block, headersonly=True)
    fields = tuple((k, _unfold(str(v))) for k, v in msg.items())
    first: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    for key, value in fields:
        low = key.lower()
        first.setdefault(low, value)
        every.setdefault(low, []).append(value)

    def one(name: str) -> str | None:
        value = first.get(name)
        return value or None

    arrival = one("arrival-date") or one("received-date")
    auth_failure = (one("auth-failure") or "").lower() or None
    alignment = one("identity-alignment")
    spec, failed = alignment_reading(alignment, auth_failure)
    source_ip = one("source-ip")
    incidents = one("incidents")
    headers = original_headers.decode("utf-8", "replace") if original_headers else None
    return FailureReport(
        part=info,
        feedback_type=(one("feedback-type") or "").lower(),
        version=one("version"),
        user_agent=one("user-agent"),
        auth_failure=auth_failure,
        delivery_result=(one("delivery-result") or "").lower() or None,
        identity_alignment=alignment,
        reported_domains=tuple(
            d for v in every.get("reported-domain", []) if (d := domain(v)) is not None
        ),
        # A trailing comment, e.g. "192.0.2.1 (host.example)", is not the address.
        source_ip=_COMMENT.sub("", source_ip) if source_ip else None,
        arrival_date=arrival,
        original_mail_from=one("original-mail-from"),
        original_rcpt_to=tuple(every.get("original-rcpt-to", [])),
        original_envelope_id=one("original-envelope-id"),
        reporting_mta=one("reporting-mta"),
        authentication_results=tuple(every.get("authentication-results", [])),
        dkim_domain=domain(one("dkim-domain")),
        dkim_identity=one("dkim-identity"),
        dkim_selector=one("dkim-selector"),
        spf_dns=one("spf-dns"),
        incidents=int(incidents) if incidents and incidents.isdigit() else None,
        fields=fields,
        original_headers=headers,
        arrived_at=_epoch(arrival),
        alignment_spec=spec,
        alignment_failed=failed,
    )


_MECHANISMS = ("dkim", "spf")


def alignment_reading(
    value: str | None, auth_failure: str | None
) -> tuple[str | None, tuple[str, ...] | None]:
    """Which spec an Identity-Alignment value follows, and the mechanisms it says failed.

    RFC 7489 7.3.1 lists the mechanisms that *produced* an aligned identity, RFC 9991 4
    those that *failed to* (SPEC.md G.43). A DMARC failure report had no aligned pass,
    so under RFC 7489 its value can only be ``none``, and a list of mechanisms means RFC
    9991; ``none`` on any failure report means RFC 7489, since under RFC 9991 it would
    say nothing failed. A list on a report of another failure (RFC 6591 ``dkim``,
    ``spf``...) fits both readings: the spec is not known.
    """
    if value is None:
        return None, None
    listed = {m.strip().lower() for m in value.split(",")} & set(_MECHANISMS)
    if not listed:
        return "rfc7489", _MECHANISMS
    if auth_failure == "dmarc":
        return "rfc9991", tuple(m for m in _MECHANISMS if m in listed)
    return None, None


def _epoch(date: str | None) -> int | None:
    if not date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(_COMMENT.sub("", date))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 5322 -0000: UTC, no zone information
        return int(parsed.replace(tzinfo=UTC).timestamp())
    return int(parsed.timestamp())
