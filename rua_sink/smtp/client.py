"""``rua-sink send``: wrap a report file in a conformant report email and deliver it.

Operators use it to smoke-test a deployment. An aggregate report is sent as RFC 9990 3.5
asks: gzip'd (``application/gzip``), named ``receiver!policy-domain!begin!end!id.xml.gz``
(3.5.2), under the Subject ``Report Domain: ... Submitter: ... Report-ID: ...`` (3.5.1).
A TLS report goes as ``application/tlsrpt+gzip`` with the RFC 8460 5.3 header fields. A
message (.eml) is sent as it is.
"""

from __future__ import annotations

import gzip
import re
import smtplib
import socket
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateReport, PartFailed, PartInfo, TlsReport
from rua_sink.core.pipeline import default_spool, is_bare_report, parse_file
from rua_sink.core.unpack import payloads
from rua_sink.errors import MessageError, SendError


def _document(path: Path) -> bytes:
    """The innermost document of a bare report file (decompressed, first member)."""
    with path.open("rb") as f:
        try:
            for payload in payloads(f, PartInfo(index=1), Limits(), default_spool):
                return b"".join(payload.chunks)
        except MessageError as exc:
            raise SendError(f"{path}: {exc.reason}: {exc.detail}") from exc
    raise SendError(f"{path}: no report document in it")


def _first_report(path: Path) -> AggregateReport | TlsReport:
    """The file's first aggregate or TLS report; SendError saying why there is none."""
    failure: MessageError | None = None
    try:
        for event in parse_file(path):
            if isinstance(event, AggregateReport | TlsReport):
                return event
            if isinstance(event, PartFailed) and failure is None:
                failure = event.error
    except MessageError as exc:
        failure = exc
    if failure is not None:
        raise SendError(f"{path}: {failure.reason}: {failure.detail}")
    raise SendError(f"{path}: not a report rua-sink can send (aggregate or TLS)")


def build_message(path: Path, sender: str, to: str) -> bytes:
    with path.open("rb") as f:
        bare = is_bare_report(f.read(64))
    if not bare:
        # SMTP lines end in CRLF (RFC 5321 2.3.8); files saved from a mailbox often use LF.
        return re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())
    first = _first_report(path)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["MIME-Version"] = "1.0"
    document = gzip.compress(_document(path), mtime=0)
    if isinstance(first, AggregateReport):
        meta, domain = first.metadata, first.policy.domain
        submitter = (meta.email or "").rpartition("@")[2] or meta.org_name
        unique = "".join(ch for ch in meta.report_id if ch.isalnum())[:64] or "1"
        name = f"{submitter}!{domain}!{meta.begin}!{meta.end}!{unique}.xml.gz"
        msg["Subject"] = (
            f"Report Domain: {domain} Submitter: {submitter} Report-ID: {meta.report_id}"
        )
        msg.set_content(f"This is a DMARC aggregate report for {domain}.\n")
        msg.add_attachment(document, maintype="application", subtype="gzip", filename=name)
    else:
        domain = first.policies[0].policy_domain if first.policies else ""
        submitter = (first.contact_info or "").rpartition("@")[2] or first.org_name
        msg["Subject"] = (
            f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{first.report_id}>"
        )
        msg["TLS-Report-Domain"] = domain
        msg["TLS-Report-Submitter"] = submitter
        msg.set_content(f"This is an SMTP TLS report for {domain}.\n")
        name = f"{submitter}!{domain}!{first.begin}!{first.end}.json.gz"
        msg.add_attachment(document, maintype="application", subtype="tlsrpt+gzip", filename=name)
    return msg.as_bytes(policy=SMTP)


def send(
    path: Path,
    *,
    to: str,
    server: tuple[str, int] = ("127.0.0.1", 2525),
    starttls: bool = False,
    sender: str | None = None,
) -> tuple[int, str]:
    """Deliver; returns the server's reply to the message (code, text). A file that is not
    a report is a SendError; a server that cannot be reached, an OSError or an
    smtplib.SMTPException."""
    mail_from = sender or f"rua-sink@{socket.getfqdn()}"
    data = build_message(path, mail_from, to)
    host, port = server
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.ehlo()
        if starttls:
            smtp.starttls()
            smtp.ehlo()
        try:
            for code, reply in (smtp.mail(mail_from), smtp.rcpt(to)):
                if code >= 300:
                    return code, reply.decode(errors="replace")
            code, reply = smtp.data(data)
        except smtplib.SMTPResponseException as exc:  # DATA refused: the reply is the answer
            error = exc.smtp_error
            text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            return exc.smtp_code, text
        return code, reply.decode(errors="replace")
