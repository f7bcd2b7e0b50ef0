"""Builders for report documents and messages used by the tests and the benchmarks."""

from __future__ import annotations

import base64
import functools
import gzip
import io
import random
import zipfile
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

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


# --- DKIM: messages signed as the reporter would sign them ----------------------------

REPORTER = "reporter.example"  # the From domain of ``message``
SELECTOR = "s1"
#: reporter.example's SPF record: the tests' clients connect from loopback
SPF_RECORD = "v=spf1 ip4:127.0.0.0/8 -all"


@functools.cache
def _dkim_key() -> tuple[bytes, str]:
    """A 2048-bit RSA key: private PEM, and the public key as a DKIM record's ``p=``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode()


def dkim_record(service: str | None = None) -> str:
    """The TXT record at ``<selector>._domainkey.<domain>`` for the tests' key."""
    return f"v=DKIM1; k=rsa; p={_dkim_key()[1]}" + (f"; s={service}" if service else "")


def signed(data: bytes, domain: str = REPORTER, selector: str = SELECTOR) -> bytes:
    """``data`` with a DKIM-Signature of ``domain`` (relaxed/simple, RFC 6376)."""
    header = dkim.sign(
        data,
        selector.encode(),
        domain.encode(),
        _dkim_key()[0],
        include_headers=[b"from", b"to", b"subject", b"content-type", b"mime-version"],
    )
    return bytes(header) + data


def tls_message(report_id: str = "tls-1", *, sign: bool = True) -> bytes:
    """A TLS report (RFC 8460) in a message, signed by the reporter unless told not to."""
    data = message(
        (gz(TLS_JSON.replace(b"tls-1", report_id.encode())), "application/tlsrpt+gzip", "t.gz")
    )
    # RFC 8460 5.3: the header fields every TLS report carries
    data = b"TLS-Report-Domain: example.com\r\nTLS-Report-Submitter: reporter.example\r\n" + data
    return signed(data) if sign else data


def report_message(report_id: str, records: int = 2, domain: str = "example.com") -> bytes:
    """A gzip'd aggregate report about ``domain``, in a message as reporters send it."""
    xml = report_xml(records, report_id=report_id, domain=domain)
    return message((gz(xml), "application/gzip", f"r!{domain}!1!2.xml.gz"))


# --- large reports, as large providers write them ---------------------------------------

LARGE_HEAD = """<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <version>1.0</version>
  <report_metadata>
    <org_name>bench.example</org_name>
    <email>noreply-dmarc-support@bench.example</email>
    <extra_contact_info>https://support.bench.example/dmarc</extra_contact_info>
    <report_id>{report_id}</report_id>
    <date_range>
      <begin>1782172800</begin>
      <end>1782259199</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>reject</p>
    <sp>reject</sp>
    <pct>100</pct>
    <np>reject</np>
  </policy_published>
"""

LARGE_RECORD = """  <record>
    <row>
      <source_ip>{ip}</source_ip>
      <count>{count}</count>
      <policy_evaluated>
        <disposition>{disposition}</disposition>
        <dkim>{dkim}</dkim>
        <spf>{spf}</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
      <envelope_from>{env}</envelope_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>{dkim_domain}</domain>
        <selector>s{sel}</selector>
        <result>{dkim}</result>
      </dkim>
      <spf>
        <domain>{env}</domain>
        <scope>mfrom</scope>
        <result>{spf_result}</result>
      </spf>
    </auth_results>
  </record>
"""


def build_report(
    raw: Path, records: int, seed: int = 7, *, begin: int = 1782172800, report_id: str = ""
) -> int:
    """Write a gzip'd aggregate report of ``records`` records, as large providers write
    them (about 680 bytes of XML a record), of the day that starts at ``begin``; returns
    the XML size in bytes."""
    rng = random.Random(seed)
    xml_bytes = 0
    with gzip.open(raw, "wb", compresslevel=6) as packed:
        head = (
            LARGE_HEAD.format(report_id=report_id or f"bench-{records}")
            .replace("1782172800", str(begin))
            .replace("1782259199", str(begin + 86399))
            .encode()
        )
        packed.write(head)
        xml_bytes += len(head)
        batch: list[str] = []
        for i in range(records):
            ok = rng.random() < 0.8
            octets = (rng.randrange(1, 224), *rng.randbytes(2), rng.randrange(1, 255))
            ip = (
                f"2001:db8:{i % 65536:x}::{rng.randrange(1, 65535):x}"
                if i % 10 == 0
                else ".".join(map(str, octets))
            )
            batch.append(
                LARGE_RECORD.format(
                    ip=ip,
                    count=rng.randrange(1, 500),
                    disposition="none" if ok else rng.choice(("reject", "quarantine")),
                    dkim="pass" if ok else "fail",
                    spf="pass" if ok or rng.random() < 0.3 else "fail",
                    spf_result="pass" if ok else rng.choice(("softfail", "fail", "neutral")),
                    env=rng.choice(("example.com", "bounce.example.com", f"m{i % 97}.example.net")),
                    dkim_domain=rng.choice(("example.com", "esp.example.org")),
                    sel=i % 13,
                )
            )
            if len(batch) == 1000:
                data = "".join(batch).encode()
                packed.write(data)
                xml_bytes += len(data)
                batch.clear()
        tail = ("".join(batch) + "</feedback>\n").encode()
        packed.write(tail)
        xml_bytes += len(tail)
    return xml_bytes


def build_email(path: Path, records: int, seed: int = 7) -> int:
    """Write a report email with ``records`` records; returns the XML size in bytes."""
    raw = path.with_suffix(".xml.gz")
    xml_bytes = build_report(raw, records, seed)
    name = f"bench.example!example.com!1782172800!1782259199!{records}.xml.gz"
    with raw.open("rb") as src, path.open("wb") as out:
        out.write(
            (
                "From: noreply-dmarc-support@bench.example\r\n"
                "To: dmarc@rua.example.net\r\n"
                "Subject: Report domain: example.com Submitter: bench.example "
                f"Report-ID: bench-{records}\r\n"
                "Date: Tue, 23 Jun 2026 00:10:00 +0000\r\n"
                "Message-ID: <bench@bench.example>\r\n"
                "MIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                "--b1\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate report.\r\n"
                f'--b1\r\nContent-Type: application/gzip; name="{name}"\r\n'
                "Content-Transfer-Encoding: base64\r\n"
                f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
            ).encode()
        )
        while block := src.read(57 * 1024):
            encoded = base64.encodebytes(block).replace(b"\n", b"\r\n")
            out.write(encoded)
        out.write(b"--b1--\r\n")
    raw.unlink()
    return xml_bytes
