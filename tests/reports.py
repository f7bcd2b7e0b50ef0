"""Builders for report documents and messages used by the tests."""

from __future__ import annotations

import gzip
import io
import zipfile
from email.message import EmailMessage
from email.policy import SMTP

NS_9990 = "urn:ietf:params:xml:ns:dmarc-2.0"


def record_xml(ip: str = "192.0.2.1", count: int = 1, extra: str = "") -> str:
    return (
        "<record><row>"
        f"<source_ip>{ip}</source_ip><count>{count}</count>"
        "<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>"
        "</policy_evaluated></row>"
        "<identifiers><header_from>example.com</header_from></identifiers>"
        "<auth_results><dkim><domain>example.com</domain><selector>s1</selector>"
        "<result>pass</result></dkim>"
        "<spf><domain>example.com</domain><scope>mfrom</scope><result>pass</result></spf>"
        f"</auth_results>{extra}</record>"
    )


def report_xml(
    records: int = 1,
    *,
    org: str = "reporter.example",
    report_id: str = "r-1",
    domain: str = "example.com",
    ns: str | None = None,
    body: str | None = None,
    head_extra: str = "",
) -> bytes:
    xmlns = f' xmlns="{ns}"' if ns else ""
    recs = body if body is not None else "".join(record_xml(count=i + 1) for i in range(records))
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<feedback{xmlns}>'
        "<version>1.0</version>"
        f"<report_metadata><org_name>{org}</org_name><email>d@{org}</email>"
        f"<report_id>{report_id}</report_id>"
        "<date_range><begin>1700000000</begin><end>1700086399</end></date_range>"
        "</report_metadata>"
        f"<policy_published><domain>{domain}</domain><p>reject</p></policy_published>"
        f"{head_extra}{recs}</feedback>\n"
    ).encode()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


TLS_JSON = (
    b'{"organization-name":"Example MTA","date-range":{"start-datetime":"2026-01-01T00:00:00Z",'
    b'"end-datetime":"2026-01-01T23:59:59Z"},"contact-info":"tls@mta.example",'
    b'"report-id":"tls-1","policies":[{"policy":{"policy-type":"sts","policy-string":'
    b'["version: STSv1"],"policy-domain":"example.com","mx-host":"mx.example.com"},'
    b'"summary":{"total-successful-session-count":10,"total-failure-session-count":2},'
    b'"failure-details":[{"result-type":"certificate-expired","sending-mta-ip":"192.0.2.9",'
    b'"receiving-ip":"198.51.100.1","receiving-mx-hostname":"mx.example.com",'
    b'"failed-session-count":2}]}]}'
)


def message(
    *attachments: tuple[bytes, str, str | None],
    text: str | None = "This is an aggregate report.",
    cte: str = "base64",
) -> bytes:
    """A multipart/mixed message: a text part, then each (data, media type, filename)."""
    msg = EmailMessage()
    msg["From"] = "noreply@reporter.example"
    msg["To"] = "dmarc@rua.example.net"
    msg["Subject"] = "Report Domain: example.com Submitter: reporter.example Report-ID: r-1"
    if text is not None:
        msg.set_content(text)
    for data, media, filename in attachments:
        maintype, subtype = media.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename, cte=cte)
    return msg.as_bytes(policy=SMTP)
