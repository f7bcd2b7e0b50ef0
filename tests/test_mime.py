"""The streaming MIME walk, on messages built here with shapes reporters really send."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rua_sink.core.headers import Headers, parse_fields
from rua_sink.core.limits import Limits
from rua_sink.core.mime import FailedPart, MimeWalker, SpooledPart, WalkResult
from rua_sink.core.pipeline import default_spool, parse_message
from rua_sink.errors import NotAReport, TransferEncodingError

from .conftest import Collected, chunks, collect
from .reports import TLS_JSON, gz, message, report_xml, zipped


def parse(data: bytes, size: int = 65536) -> Collected:
    return collect(parse_message(chunks(data, size)))


def report_ids(got: Collected) -> list[str]:
    return [head.metadata.report_id for head, _, _ in got.aggregates]


def test_multipart_with_gzip_attachment() -> None:
    data = message((gz(report_xml(3)), "application/gzip", "r!example.com!1!2.xml.gz"))
    got = parse(data)
    assert report_ids(got) == ["r-1"]
    head, records, tail = got.aggregates[0]
    assert head.part.filename == "r!example.com!1!2.xml.gz"
    assert head.part.layers == ("gzip",)
    assert [r.count for r in records] == [1, 2, 3] and tail.message_count == 6
    assert got.info is not None and got.info.from_addr == "noreply@reporter.example"


@pytest.mark.parametrize("size", [1, 7, 76, 4096])
def test_any_chunking_gives_the_same_reports(size: int) -> None:
    data = message(
        (gz(report_xml(2, report_id="a")), "application/gzip", "a.xml.gz"),
        (report_xml(1, report_id="b"), "text/xml", "b.xml"),
    )
    whole = parse(data, len(data))
    split = parse(data, size)
    assert report_ids(split) == report_ids(whole) == ["a", "b"]
    assert [recs for _, recs, _ in split.aggregates] == [recs for _, recs, _ in whole.aggregates]


def test_single_part_message_whose_body_is_the_report() -> None:
    # Google sends a top-level application/zip; Mimecast a top-level gzip.
    body = base64.encodebytes(zipped({"google.com!example.com!1!2.xml": report_xml(2)}))
    data = (
        b"From: noreply-dmarc-support@google.com\r\n"
        b"Subject: Report domain: example.com Submitter: google.com Report-ID: 42\r\n"
        b'Content-Type: application/zip;\r\n name="google.com!example.com!1!2.zip"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body.replace(b"\n", b"\r\n")
    )
    got = parse(data)
    ((head, _, tail),) = got.aggregates
    assert head.part.content_type == "application/zip"
    assert head.part.layers == ("zip:google.com!example.com!1!2.xml",)
    assert tail.record_count == 2


def test_nested_multiparts_and_forwarded_message() -> None:
    inner = message((gz(report_xml(1, report_id="fwd")), "application/gzip", "f.xml.gz"))
    data = (
        b"From: someone@example.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"preamble --outer not a delimiter\r\n"
        b"--outer\r\n"
        b'Content-Type: multipart/related; boundary="rel"\r\n\r\n'
        b"--rel\r\n"
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--alt\r\nContent-Type: text/html\r\n\r\n<html><body>hi</body></html>\r\n"
        b"--alt--\r\n"
        b"--rel--\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n"
        b"--outer--\r\nepilogue\r\n"
    )
    got = parse(data, 13)
    assert report_ids(got) == ["fwd"]
    assert got.failed == []


def test_several_reports_in_one_message_are_all_yielded() -> None:
    data = message(
        (gz(report_xml(1, report_id="one")), "application/gzip", "one.xml.gz"),
        (
            zipped(
                {
                    "two.xml": report_xml(1, report_id="two"),
                    "three.xml": report_xml(2, report_id="three"),
                }
            ),
            "application/zip",
            "both.zip",
        ),
        (gz(TLS_JSON), "application/tlsrpt+gzip", "mta!example.com!1!2.json.gz"),
    )
    got = parse(data)
    assert report_ids(got) == ["one", "two", "three"]
    assert [t.report_id for t in got.tls] == ["tls-1"]
    assert got.tls[0].policies[0].mx_hosts == ("mx.example.com",)


def test_quoted_printable_and_7bit_xml() -> None:
    xml = report_xml(1, org="Q=P & Co".replace("&", "&amp;"))
    got = parse(message((xml, "text/xml", "r.xml"), cte="quoted-printable"))
    assert got.aggregates[0][0].metadata.org_name == "Q=P & Co"
    got = parse(message((xml, "text/xml", "r.xml"), cte="7bit"))
    assert got.aggregates[0][0].metadata.org_name == "Q=P & Co"


def test_rfc2231_split_and_rfc2047_encoded_filenames() -> None:
    body = base64.encodebytes(gz(report_xml(1))).replace(b"\n", b"\r\n")
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/octet-stream;\r\n"
        b' name*0="amazonses.com!example.com!17000";\r\n'
        b' name*1="00000!1700086400.xml.gz"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b\r\n"
        b"Content-Type: application/gzip\r\n"
        b'Content-Disposition: attachment; filename="=?utf-8?B?w6lwcmV1dmUueG1sLmd6?="\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--b--\r\n"
    )
    got = parse(data)
    names = [head.part.filename for head, _, _ in got.aggregates]
    assert names == ["amazonses.com!example.com!1700000000!1700086400.xml.gz", "épreuve.xml.gz"]


def test_media_type_is_a_hint_only() -> None:
    # zip labelled gzip, gzip labelled zip (GMX), gzip as octet-stream (Amazon SES).
    data = message(
        (zipped({"a.xml": report_xml(1, report_id="a")}), "application/gzip", "a.xml.gz"),
        (gz(report_xml(1, report_id="b")), "application/zip", "b.zip"),
        (gz(report_xml(1, report_id="c")), "application/octet-stream", "c"),
    )
    assert report_ids(parse(data)) == ["a", "b", "c"]


def test_misspelled_content_type_header() -> None:
    # Trustwave's "ContentType:" leaves the part text/plain; the bytes say gzip.
    body = base64.encodebytes(gz(report_xml(1))).replace(b"\n", b"\r\n")
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"ContentType: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + body
        + b"--b--\r\n"
    )
    assert report_ids(parse(data)) == ["r-1"]


def test_lf_only_line_endings_and_boundary_with_trailing_space() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="=_b"\n\n'
        b"--=_b \n"
        b"Content-Type: text/xml\n\n" + report_xml(2) + b"\n--=_b--\t\n"
    )
    got = parse(data, 5)
    assert got.aggregates[0][2].record_count == 2


def test_unterminated_multipart_still_yields_its_report() -> None:
    data = message((report_xml(1), "text/xml", "r.xml"), cte="7bit")
    cut = data.rindex(b"--")  # drop the closing delimiter line
    got = parse(data[: data.rindex(b"\n", 0, cut)])
    assert report_ids(got) == ["r-1"]


def test_html_and_text_bodies_are_not_reports() -> None:
    data = message((b"<html><body><p>report</p></body></html>", "text/html", None))
    with pytest.raises(NotAReport):
        parse(data)


def test_plain_json_in_a_tlsrpt_gzip_part() -> None:
    # A TLS-RPT "+gzip" part that is actually plain JSON (SPEC.md I.58).
    data = message((TLS_JSON, "application/tlsrpt+gzip", "x.json.gz"))
    got = parse(data)
    assert got.tls[0].failure_count == 2
    assert got.tls[0].policies[0].failure_details[0].sending_mta_ip == "192.0.2.9"


def test_reported_message_inside_arf_is_not_searched_for_reports() -> None:
    original = message((gz(report_xml(1, report_id="inner")), "application/gzip", "i.xml.gz"))
    data = (
        b"From: arf@mbp.example\r\nSubject: FW: auth failure\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="arf"\r\n\r\n'
        b"--arf\r\nContent-Type: text/plain\r\n\r\nAn authentication failure report.\r\n"
        b"--arf\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: auth-failure\r\nUser-Agent: Test/1\r\nVersion: 1\r\n"
        b"Auth-Failure: dmarc\r\nIdentity-Alignment: none\r\n"
        b"Source-IP: 2001:db8::25\r\nReported-Domain: Example.COM\r\n"
        b"Original-Rcpt-To: <a@example.net>\r\nOriginal-Rcpt-To: <b@example.net>\r\n\r\n"
        b"--arf\r\nContent-Type: message/rfc822\r\n\r\n" + original + b"\r\n--arf--\r\n"
    )
    got = parse(data, 11)
    assert got.aggregates == []
    (report,) = got.failures
    assert (report.feedback_type, report.auth_failure, report.identity_alignment) == (
        "auth-failure",
        "dmarc",
        "none",
    )
    assert report.reported_domains == ("example.com",)
    assert report.original_rcpt_to == ("<a@example.net>", "<b@example.net>")
    assert report.original_headers is not None
    assert "Subject: Report Domain: example.com" in report.original_headers


def test_broken_base64_fails_the_part_not_the_message() -> None:
    good = base64.encodebytes(gz(report_xml(1, report_id="good"))).replace(b"\n", b"\r\n")
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"H4sIAAAAAAAA!!!notbase64***\r\n"
        b"--b\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + good
        + b"--b--\r\n"
    )
    got = parse(data)
    assert report_ids(got) == ["good"]
    (failed,) = got.failed
    assert isinstance(failed.error, TransferEncodingError)
    assert isinstance(failed.error.__cause__, binascii.Error)


def _walk(pieces: list[bytes]) -> list[WalkResult]:
    walker = MimeWalker(Limits(), default_spool)
    out = [item for piece in pieces for item in walker.feed(piece)]
    return out + walker.close()


@pytest.mark.slow
@pytest.mark.parametrize("report_first", [True, False])
def test_discarded_base64_part_cut_at_any_point_fails_nothing(report_first: bool) -> None:
    # A base64 attachment that is not a report (a logo, a signature) is dropped once its
    # first SNIFF_BYTES are decoded. Cut the message in two at every byte, so the
    # attachment's body crosses a chunk boundary at every possible point after that.
    report = (gz(report_xml(2)), "application/gzip", "r!example.com!1!2.xml.gz")
    blob = bytes(range(256)) * 19  # 4,864 bytes, more than SNIFF_BYTES
    other = (blob, "application/octet-stream", "logo.bin")
    data = message(*((report, other) if report_first else (other, report)))
    for cut in range(len(data) + 1):
        out = _walk([data[:cut], data[cut:]])
        failed = [item for item in out if isinstance(item, FailedPart)]
        assert failed == [], f"cut at {cut}: {failed}"
        spooled = [item for item in out if isinstance(item, SpooledPart)]
        assert [p.info.filename for p in spooled] == ["r!example.com!1!2.xml.gz"], cut
        content = spooled[0].file.read()
        for part in spooled:
            part.file.close()
        assert content == report[0], cut


def test_missing_final_base64_padding_is_tolerated() -> None:
    encoded = base64.b64encode(gz(report_xml(1))).rstrip(b"=")
    data = b"Content-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    assert report_ids(parse(data)) == ["r-1"]


def test_long_quoted_printable_line_in_tiny_chunks() -> None:
    # One 30 KB line with escapes and no soft breaks, fed a few bytes at a time.
    xml = report_xml(40, org="A=B").replace(b"\n", b" ")
    qp = xml.replace(b"=", b"=3D")
    data = b"Content-Type: text/xml\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp
    got = parse(data, 3)
    assert got.aggregates[0][0].metadata.org_name == "A=B"
    assert got.aggregates[0][2].record_count == 40


def test_header_block_fed_a_byte_at_a_time() -> None:
    data = message((gz(report_xml(1)), "application/gzip", "r.xml.gz"))
    assert report_ids(parse(data, 1)) == ["r-1"]


# Header lines as reporters write them, and as they break them: names in any case, ones
# the walk ignores, envelope lines, missing names and colons; folded values, RFC 2231
# and RFC 2047 parameters, quoting, 8-bit bytes; every line break str.splitlines knows.
FIELD_NAMES = [
    "Content-Type",
    "content-type",
    "CONTENT-TRANSFER-ENCODING",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "X-Other",
    "From ",
    "",
    "Bad Name",
    "From",
]
VALUE_PIECES = [
    "multipart/mixed",
    "application/gzip",
    "text/plain",
    "base64",
    " QUOTED-PRINTABLE ",
    "attachment",
    '; boundary="b 1"',
    "; boundary=b2",
    ";BOUNDARY=b3",
    "; boundary",
    "; name=r.xml.gz",
    '; filename="a\\"b.xml"',
    "; filename*=utf-8''r%20x.xml",
    "; filename*0=a; filename*1=b.zip",
    "; filename=",
    "; report-type=feedback-report",
    "=?utf-8?q?r=2Exml?=",
    "(comment)",
    ";",
    "=",
    '"',
    " ",
    "\x80\xe9",
]
ENDS = ["\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85"]
line = st.one_of(
    st.builds(
        lambda name, colon, value, end: f"{name}{colon}{value}{end}",
        st.sampled_from(FIELD_NAMES),
        st.sampled_from([":", ": ", ":\t", ""]),
        st.lists(st.sampled_from(VALUE_PIECES), max_size=5).map("".join),
        st.sampled_from(ENDS),
    ),
    st.builds(
        lambda lead, value, end: f"{lead}{value}{end}",  # a continuation line
        st.sampled_from([" ", "\t"]),
        st.lists(st.sampled_from(VALUE_PIECES), max_size=3).map("".join),
        st.sampled_from(ENDS),
    ),
    st.sampled_from(["\r\n", "\n", "no colon here\r\n"]),
)
header_block = st.lists(line, min_size=1, max_size=8).map(
    lambda lines: "".join(lines).encode("latin-1")
)


@pytest.mark.slow
@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(block=header_block)
def test_a_parts_fields_read_as_the_email_package_reads_them(block: bytes) -> None:
    assert Headers.parse(block) == Headers.of(parse_fields(block))


def test_a_parts_fields() -> None:
    block = (
        b'Content-Type: application/gzip;\r\n name="google.com!example.com!1!2.xml.gz"\r\n'
        b"Content-Transfer-Encoding: BASE64\r\n"
        b"Content-Disposition: attachment;\r\n\tfilename*=utf-8''r%C3%A9.xml.gz\r\n"
    )
    assert Headers.parse(block) == Headers(
        content_type="application/gzip",
        boundary=None,
        report_type=None,
        cte="base64",
        filename="ré.xml.gz",
    )
