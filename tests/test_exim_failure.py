"""DMARC failure reports as Exim's DMARC module writes them: a multipart/report whose text
part holds the report, with no message/feedback-report part. The fixture below is
synthetic, written for these tests from the shape of such reports."""

from __future__ import annotations

import base64
import gzip
import json
import quopri
from collections.abc import Iterator
from dataclasses import replace

import pytest

from rua_sink.core.model import FailureReport
from rua_sink.core.pipeline import parse_message
from rua_sink.errors import NotAReport
from rua_sink.ingest.redact import redacted_copy
from rua_sink.smtp.replies import REPLY_DUPLICATE, REPLY_NOT_A_REPORT, REPLY_STORED

from .conftest import chunks, collect
from .procs import cli
from .smtpserver import Server, send
from .test_failure_key import relayed
from .test_failure_reports import RUF, arf, emptied, failure_sink

OPENING = (
    "A message claiming to be from you has failed the published DMARC\r\n"
    "policy for your domain.\r\n"
)
ORIGINAL_HEADERS = (
    "Received: from [203.0.113.45] (port=52114 helo=bulk7.mailer.invalid)\r\n"
    "\tby mx1.receiver.example with esmtp (Exim 4.97)\r\n"
    "\tid 1vQwXe-0007Kd-1R\r\n"
    "\tfor alice@receiver.example; Tue, 03 Feb 2026 10:15:41 +0000\r\n"
    'From: "Order desk" <orders@shop.example.org>\r\n'
    "To: alice@receiver.example\r\n"
    "Subject: Your parcel is waiting\r\n"
    "Message-ID: <b41f9c0e.5521@bulk7.mailer.invalid>\r\n"
    "Date: Tue, 03 Feb 2026 10:15:39 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
)
SECRET = "Follow this link to pay the customs fee for parcel 55-1207."


def exim_text(
    *,
    opening: str = OPENING,
    spf: str = "no",
    dkim: str = "no",
    ip_line: bool = True,
) -> str:
    ip = "  Sender IP Address: 203.0.113.45\r\n" if ip_line else ""
    return (
        f"{opening}\r\n"
        "  Sender Domain: shop.example.org\r\n"
        f"{ip}"
        "  Received date: Tue, 03 Feb 2026 10:15:41 +0000\r\n"
        f"  SPF Alignment: {spf}\r\n"
        f"  DKIM Alignment: {dkim}\r\n"
        "  DMARC Results: Reject\r\n"
        "\r\n"
        "------ The header fields of the failed message follow ------\r\n"
        "\r\n"
        f"{ORIGINAL_HEADERS}"
    )


def exim_report(
    text: str | None = None,
    *,
    content_type: str = 'multipart/report; report-type=feedback-report; boundary="=_rx_1"',
    cte: str = "7bit",
    with_message: bool = False,
) -> bytes:
    """The report mail; ``with_message`` attaches the failed message, body and all."""
    body = text if text is not None else exim_text()
    if cte == "base64":
        encoded = base64.encodebytes(body.encode()).decode().replace("\n", "\r\n")
    elif cte == "quoted-printable":
        encoded = quopri.encodestring(body.encode()).decode()
    else:
        encoded = body
    attached = (
        f"--=_rx_1\r\nContent-Type: message/rfc822\r\n\r\n{ORIGINAL_HEADERS}\r\n{SECRET}\r\n"
        if with_message
        else ""
    )
    return (
        "Return-Path: <>\r\n"
        "From: Mail Delivery System <Mailer-Daemon@mx1.receiver.example>\r\n"
        "To: ruf@failures.example.net\r\n"
        "Subject: DMARC failure report for shop.example.org from 203.0.113.45\r\n"
        "Message-Id: <E1vQwXf-0007Ke-3T@mx1.receiver.example>\r\n"
        "Date: Tue, 03 Feb 2026 10:15:42 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        "\r\n"
        "This is a MIME-formatted message.\r\n"
        "\r\n"
        "--=_rx_1\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n"
        "\r\n"
        f"{encoded}"
        f"{attached}"
        "--=_rx_1--\r\n"
    ).encode()


def parsed(data: bytes, chunk: int = 4096) -> list[FailureReport]:
    found = collect(parse_message(chunks(data, chunk)))
    assert found.failed == [] and found.aggregates == [] and found.tls == []
    return found.failures


# -- the parser --------------------------------------------------------------------------


@pytest.mark.parametrize("cte", ["7bit", "base64", "quoted-printable"])
@pytest.mark.parametrize("chunk", [1, 97, 1 << 20])
def test_an_exim_report_is_a_failure_report(cte: str, chunk: int) -> None:
    (report,) = parsed(exim_report(cte=cte), chunk)
    assert report.report_format == "exim"
    assert (report.feedback_type, report.auth_failure) == ("auth-failure", "dmarc")
    assert report.reported_domains == ("shop.example.org",)
    assert report.source_ip == "203.0.113.45"
    assert report.arrival_date == "Tue, 03 Feb 2026 10:15:41 +0000"
    assert report.arrived_at == 1770113741  # 2026-02-03T10:15:41Z
    assert report.alignment_failed == ("dkim", "spf")
    assert report.identity_alignment is None and report.alignment_spec is None
    assert report.fields == (
        ("Sender Domain", "shop.example.org"),
        ("Sender IP Address", "203.0.113.45"),
        ("Received date", "Tue, 03 Feb 2026 10:15:41 +0000"),
        ("SPF Alignment", "no"),
        ("DKIM Alignment", "no"),
        ("DMARC Results", "Reject"),
    )
    # The copied header block, from its first field to its last, and nothing before it.
    assert report.original_headers is not None
    assert report.original_headers.split() == ORIGINAL_HEADERS.split()


def test_alignment_lines_say_which_mechanisms_failed() -> None:
    (report,) = parsed(exim_report(exim_text(dkim="yes")))
    assert report.alignment_failed == ("spf",)
    (report,) = parsed(exim_report(exim_text(spf="Yes", dkim="No")))
    assert report.alignment_failed == ("dkim",)
    (report,) = parsed(exim_report(exim_text(spf="unknown")))
    assert report.alignment_failed is None  # not said: not guessed


@pytest.mark.parametrize(
    "content_type",
    [
        'multipart/report; report-type=feedback-report; boundary="=_rx_1"',
        'multipart/report; report-type=dmarc; boundary="=_rx_1"',
        'multipart/report; boundary="=_rx_1"',
    ],
)
def test_whatever_the_report_type(content_type: str) -> None:
    (report,) = parsed(exim_report(content_type=content_type))
    assert report.source_ip == "203.0.113.45"


@pytest.mark.parametrize(
    "data",
    [
        # the same text, outside a multipart/report
        exim_report(content_type='multipart/mixed; boundary="=_rx_1"'),
        b"From: a@b.example\r\nSubject: fwd\r\nContent-Type: text/plain\r\n\r\n"
        + exim_text().encode(),
        # another opening: a bounce, someone's message quoting the fields
        exim_report(exim_text(opening="Your message could not be delivered.\r\n")),
        exim_report(exim_text(opening=f"FYI:\r\n\r\n{OPENING}")),
        # the opening without the fields that make it a report
        exim_report(exim_text(ip_line=False)),
        exim_report(OPENING),
    ],
    ids=["mixed", "single-part", "bounce", "quoted", "no-ip", "opening-only"],
)
def test_other_text_is_not_a_report(data: bytes) -> None:
    with pytest.raises(NotAReport):
        list(parse_message([data]))


def test_an_arf_report_is_read_as_arf_whatever_its_text() -> None:
    data = arf("004.eml")
    text = b"Content-Type: text/plain\r\n\r\n" + exim_text().encode()
    data = data.replace(b"Content-Type: text/plain\r\n\r\nThis is an authentication", text, 1)
    assert exim_text().encode() in data
    (report,) = parsed(data)
    assert (report.report_format, report.source_ip) == ("arf", "148.163.85.135")


def test_the_archived_copy_parses_to_the_same_report() -> None:
    data = exim_report(with_message=True)
    (report,) = parsed(data)
    own = [b"From: Mail Delivery System <Mailer-Daemon@mx1.receiver.example>", b"Subject: x"]
    copy = redacted_copy(own, report)
    assert SECRET.encode() not in copy
    (again,) = parsed(copy)
    assert again.original_headers is not None and report.original_headers is not None
    assert again.original_headers.split() == report.original_headers.split()
    # All else is equal (the header block differs in its line ends only).
    assert again == replace(report, part=again.part, original_headers=again.original_headers)


# -- over SMTP ---------------------------------------------------------------------------

ROW_SQL = """
SELECT f.*, m.id AS raw_id, m.content_gzip, m.redacted FROM failure_reports f
JOIN raw_messages m ON m.id = f.raw_message_id
"""


@pytest.fixture(scope="module")
def ruf_alone(server_url: str) -> Iterator[Server]:
    with failure_sink(server_url, "rua_sink_exim") as srv:
        yield srv


@pytest.fixture
def ruf(ruf_alone: Server) -> Server:
    return emptied(ruf_alone)


def test_stored_over_smtp_with_its_fields(ruf: Server) -> None:
    data = exim_report(with_message=True)
    assert send(ruf, data, rcpt=RUF) == (250, REPLY_STORED[4:])
    (row,) = ruf.fetch(ROW_SQL)
    assert row["report_format"] == "exim"
    assert (row["feedback_type"], row["auth_failure"]) == ("auth-failure", "dmarc")
    assert row["reported_domains"] == ["shop.example.org"]
    assert str(row["source_ip"]) == "203.0.113.45"
    assert row["arrived_at"].isoformat() == "2026-02-03T10:15:41+00:00"
    assert row["alignment_failed"] == ["dkim", "spf"]
    assert row["authz_verdict"] == "allow_list"
    assert dict(json.loads(row["fields"]))["DMARC Results"] == "Reject"
    assert "Message-ID: <b41f9c0e.5521@bulk7.mailer.invalid>" in row["original_headers"]
    # The same privacy as ARF (RFC 9991 7): the failed message's body is not archived.
    assert row["redacted"] is True
    archived = gzip.decompress(row["content_gzip"])
    assert SECRET.encode() not in archived
    assert b"Sender IP Address: 203.0.113.45" in archived
    # Parsed again from the archive: the same report, the same key.
    env = {"RUA_SINK_DATABASE_URL": ruf.database_url}
    done = cli("reprocess", str(row["raw_id"]), env=env)
    assert done.returncode == 0, done.stderr
    (again,) = ruf.fetch(ROW_SQL)
    assert again["id"] != row["id"]
    keys = ("report_key", "fields", "source_ip", "arrived_at", "alignment_failed", "report_format")
    assert [again[k] for k in keys] == [row[k] for k in keys]


def test_a_copy_over_another_path_is_a_duplicate(ruf: Server) -> None:
    data = exim_report()
    assert send(ruf, relayed(data, "a"), rcpt=RUF) == (250, REPLY_STORED[4:])
    # Another path, on which the text part was also re-encoded, as a relay may do for a
    # next hop without 8BITMIME (RFC 6152).
    other = relayed(exim_report(cte="quoted-printable"), "b", "c")
    assert send(ruf, other, rcpt=RUF) == (250, REPLY_DUPLICATE[4:])
    assert len(ruf.fetch(ROW_SQL)) == 1


def test_plain_text_mail_is_still_refused(ruf: Server) -> None:
    data = exim_report(exim_text(opening="Your message could not be delivered.\r\n"))
    assert send(ruf, data, rcpt=RUF) == (550, REPLY_NOT_A_REPORT[4:])
    assert ruf.fetch(ROW_SQL) == []


def test_a_broken_text_part_of_a_report_quarantines_nothing() -> None:
    # The text part is kept to be read, not as a report: bad base64 in it, past the bytes
    # sniffed, does not make the report beside it a failed part.
    text = base64.encodebytes(b"Your TLS report is attached.\n" * 400).decode()
    broken = text.replace("\n", "\r\n") + "!!!!\r\n"
    report = base64.encodebytes(gzip.compress(b"{}")).decode().replace("\n", "\r\n")
    data = (
        'Subject: TLS report\r\nContent-Type: multipart/report; report-type=tlsrpt; boundary="b"'
        "\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{broken}--b\r\nContent-Type: application/tlsrpt+gzip\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{report}--b--\r\n"
    ).encode()
    found = collect(parse_message(chunks(data, 512)))  # sniffed before the bad bytes come
    # The JSON is empty: its part fails as a TLS report, and only that part.
    assert [f.part.content_type for f in found.failed] == ["application/tlsrpt+gzip"]
    assert found.failures == []
