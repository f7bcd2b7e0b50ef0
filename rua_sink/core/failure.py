"""DMARC failure reports and other ARF feedback (RFC 5965 3, RFC 6591, RFC 9991 4).

The ``message/feedback-report`` part is a header block; every field is kept in order,
and the ones the specs name are also typed. Fields whose presence rules differ between
the specs (SPEC.md G.42, G.43) are all optional here; ``Identity-Alignment`` is kept
raw because its meaning was inverted between RFC 7489 and RFC 9991.

Exim's DMARC module writes its failure reports without a ``message/feedback-report``
part: the ``text/plain`` part of its ``multipart/report`` opens with a fixed sentence,
then lists indented "Name: value" lines, then copies the failed message's header block.
``parse_exim_text`` reads exactly that shape into the same ``FailureReport``, and
nothing else: any other text is not a report.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from datetime import UTC

from rua_sink.core.model import FailureReport, PartInfo
from rua_sink.core.names import domain

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


# --- Exim's plain-text DMARC failure report -----------------------------------------

#: The sentence that opens Exim's report, compared with its white space collapsed.
EXIM_OPENING = (
    "A message claiming to be from you has failed the published DMARC policy for your domain."
)
# "  Sender IP Address: 192.0.2.1": indented, a name of words, a colon, the value.
_EXIM_FIELD = re.compile(r"[ \t]+([A-Za-z][A-Za-z -]*[A-Za-z])[ \t]*:[ \t]*(.*?)[ \t]*$")
# A header field's first line (RFC 5322 2.2: printable ASCII but ":" and SP, then ":").
_HEADER_START = re.compile(r"[!-9;-~]+:")
_ALIGNED = frozenset(("yes", "pass", "aligned", "true"))
_NOT_ALIGNED = frozenset(("no", "fail", "unaligned", "false", "none"))


def parse_exim_text(data: bytes, info: PartInfo) -> FailureReport | None:
    """The DMARC failure report in the text of an Exim ``multipart/report``, or None when
    the text is not one: it must open with ``EXIM_OPENING`` and list at least the
    sender domain and IP address, so that no other mail is taken for a report.

    What the lines say goes where the ARF fields of a DMARC failure report would
    (RFC 9991 4): ``Sender Domain`` is the reported domain, ``Sender IP Address`` the
    source IP, ``Received Date`` the arrival date, the two alignment lines give the
    mechanisms that failed, and every line is kept, in order, in ``fields``.
    """
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    i, n = 0, len(lines)
    while i < n and not lines[i].strip():
        i += 1
    opening: list[str] = []
    while i < n and lines[i].strip():
        opening.append(lines[i])
        i += 1
    if " ".join("".join(opening).split()).lower() != EXIM_OPENING.lower():
        return None
    while i < n and not lines[i].strip():
        i += 1
    fields: list[tuple[str, str]] = []
    while i < n and (m := _EXIM_FIELD.match(lines[i].rstrip("\r\n"))):
        fields.append((" ".join(m.group(1).split()), m.group(2)))
        i += 1
    named = {k.lower(): v for k, v in reversed(fields)}  # the first of each name
    sender_domain = domain(named.get("sender domain"))
    source_ip = _COMMENT.sub("", named.get("sender ip address", ""))
    if sender_domain is None or not source_ip:
        return None
    arrival = named.get("received date") or None
    return FailureReport(
        part=info,
        feedback_type="auth-failure",  # RFC 6591 3.1: what a DMARC failure report is
        version=None,
        user_agent=None,
        auth_failure="dmarc",  # RFC 7489 7.3.1, RFC 9991 4
        delivery_result=None,
        identity_alignment=None,
        reported_domains=(sender_domain,),
        source_ip=source_ip,
        arrival_date=arrival,
        original_mail_from=None,
        original_rcpt_to=(),
        original_envelope_id=None,
        reporting_mta=None,
        authentication_results=(),
        dkim_domain=None,
        dkim_identity=None,
        dkim_selector=None,
        spf_dns=None,
        incidents=None,
        fields=tuple(fields),
        original_headers=_copied_headers(lines[i:]),
        arrived_at=_epoch(arrival),
        alignment_failed=_exim_failed(named),
        report_format="exim",
    )


def _copied_headers(lines: list[str]) -> str | None:
    """The header block copied after the fields: from the first line that starts a header
    field (a line of text may introduce it) to the blank line or text that ends it."""
    start = next((k for k, line in enumerate(lines) if _HEADER_START.match(line)), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines):
        line = lines[end]
        folded = line[:1] in (" ", "\t") and bool(line.strip())  # RFC 5322 2.2.3
        if not (folded or _HEADER_START.match(line)):
            break
        end += 1
    return "".join(lines[start:end])


def _exim_failed(named: dict[str, str]) -> tuple[str, ...] | None:
    """The mechanisms that gave no aligned pass, when both alignment lines say yes or no."""
    failed = []
    for mechanism in _MECHANISMS:
        value = named.get(f"{mechanism} alignment", "").strip().lower()
        if value in _NOT_ALIGNED:
            failed.append(mechanism)
        elif value not in _ALIGNED:
            return None
    return tuple(failed)


def exim_text(report: FailureReport) -> str:
    """An Exim report's text written again from what was read of it: it parses to the
    same report (the archive keeps it in place of the message, RFC 9991 7)."""
    fields = "".join(f"  {k}: {v}\r\n" for k, v in report.fields)
    headers = (report.original_headers or "").replace("\r\n", "\n").replace("\n", "\r\n")
    return f"{EXIM_OPENING}\r\n\r\n{fields}\r\n{headers.rstrip()}\r\n"
