"""The aggregate XML parser: both schemas, normalization, repairs and their limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from rua_sink.core.aggregate import new_parser, parse_aggregate
from rua_sink.core.limits import Limits
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    AuthResult,
    Disposition,
    PartInfo,
    Record,
    Schema,
    Verdict,
)
from rua_sink.core.xmlclean import NAME_CHECK_BYTES
from rua_sink.errors import InvalidReport, TruncatedXml, XmlSyntaxError

from .reports import NS_9990, record_xml, report_xml


def parse(doc: bytes, size: int = 64) -> tuple[AggregateReport, list[Record], AggregateEnd]:
    chunks = iter([doc[i : i + size] for i in range(0, len(doc), size)])
    events = list(parse_aggregate(chunks, PartInfo(index=1), Limits()))
    head, *records, end = events
    assert isinstance(head, AggregateReport) and isinstance(end, AggregateEnd)
    assert all(isinstance(r, Record) for r in records)
    return head, records, end  # type: ignore[return-value]


def test_rfc9990_namespace_and_extensions() -> None:
    doc = report_xml(
        ns=NS_9990,
        head_extra='<extension><x:info xmlns:x="urn:example:x">raw</x:info></extension>',
        body=record_xml(extra='<y:tag xmlns:y="urn:example:y" a="1">v</y:tag>'),
    )
    head, (rec,), end = parse(doc)
    assert head.schema is Schema.RFC9990
    (ext,) = head.extensions
    assert ext.startswith('<x:info xmlns:x="urn:example:x"') and ext.endswith(">raw</x:info>")
    (ext,) = rec.extensions
    assert ext.startswith('<y:tag xmlns:y="urn:example:y"') and ext.endswith('a="1">v</y:tag>')
    assert rec.spf_results[0].domain == "example.com"  # extension did not disturb results
    assert not end.repaired


def test_values_are_normalized() -> None:
    body = (
        "<record><row><source_ip> 2001:DB8:0:0:0:0:0:1 </source_ip><count>3</count>"
        "<policy_evaluated><disposition>Quarantine</disposition><dkim>FAIL</dkim>"
        "<spf>Pass</spf><reason><type>Local_Policy</type><comment> c </comment></reason>"
        "</policy_evaluated></row>"
        "<identifiers><header_from>Bücher.Example.</header_from>"
        "<envelope_from></envelope_from></identifiers>"
        "<auth_results><dkim><domain>EXAMPLE.com</domain><result>TempError</result></dkim>"
        "<spf><domain>example.com</domain><result>hardfail</result></spf></auth_results></record>"
    )
    head, (rec,), _ = parse(report_xml(org='  "Reporter Inc" ', body=body), size=7)
    assert head.metadata.org_name == "Reporter Inc"
    assert rec.source_ip == "2001:db8::1"
    assert (rec.disposition, rec.dkim, rec.spf) == (
        Disposition.QUARANTINE,
        Verdict.FAIL,
        Verdict.PASS,
    )
    assert rec.reasons[0].type == "local_policy" and rec.reasons[0].comment == "c"
    assert rec.header_from == "xn--bcher-kva.example"
    assert rec.envelope_from is None  # empty for a null reverse-path (RFC 9990 3.1.1.10)
    assert rec.dkim_results[0].domain == "example.com"
    assert rec.dkim_results[0].result is AuthResult.TEMPERROR
    assert rec.dkim_results[0].selector is None
    assert rec.spf_results[0].result == "hardfail"  # unknown: kept verbatim
    assert not isinstance(rec.spf_results[0].result, AuthResult)


def test_fractional_timestamps_and_repeated_policy() -> None:
    doc = report_xml(
        head_extra="<policy_published><domain>second.example</domain></policy_published>"
    ).replace(b"<begin>1700000000</begin>", b"<begin>1700000000.25</begin>")
    head, _, _ = parse(doc)
    assert head.metadata.begin == 1700000000
    assert head.policy.domain == "example.com"  # the first policy_published wins


def test_old_draft_format() -> None:
    doc = (
        b'<feedback xmlns="http://dmarc.org/dmarc-xml/0.2"><version>2.0</version>'
        b"<report_metadata><org_name>old</org_name><report_id>d1</report_id>"
        b"<date_range><begin>1</begin><end>2</end></date_range></report_metadata>"
        b"<policy_published><domain>example.com</domain></policy_published>"
        b"<record><row><source_ip>192.0.2.1</source_ip><count>4</count></row>"
        b"<identities><header_from>example.com</header_from></identities></record></feedback>"
    )
    head, (rec,), _ = parse(doc)
    assert head.schema is Schema.DRAFT
    assert rec.header_from == "example.com" and rec.count == 4


def test_bom_and_whitespace_before_declaration() -> None:
    _, records, end = parse(b"\xef\xbb\xbf \r\n" + report_xml(2))
    assert len(records) == 2 and not end.repaired


def test_declared_windows_1252_is_decoded_not_repaired() -> None:
    doc = report_xml(org="Café").replace(b'encoding="UTF-8"', b'encoding="windows-1252"')
    doc = doc.replace("Café".encode(), "Café".encode("cp1252"))
    head, _, end = parse(doc)
    assert head.metadata.org_name == "Café" and not end.repaired


@pytest.mark.parametrize(
    ("org_xml", "org", "repair"),
    [
        (b"AT&T", "AT&T", "unescaped_ampersand"),
        (b"Tom &amp; Jerry &nbsp;", "Tom & Jerry &nbsp;", "unescaped_ampersand"),
        (b"a < b", "a < b", "unescaped_lt"),
        (b"Quote\x91s", "Quote\ufffds", "invalid_utf8"),
        (b"bell\x07", "bell", "control_characters"),
    ],
)
def test_recoverable_text_is_repaired(org_xml: bytes, org: str, repair: str) -> None:
    doc = report_xml(2).replace(b"reporter.example</org_name>", org_xml + b"</org_name>")
    for size in (3, 64, len(doc)):
        head, records, end = parse(doc, size)
        assert head.metadata.org_name == org
        assert len(records) == 2
        assert end.repairs == (repair,)


def test_stray_element_with_undeclared_prefix() -> None:
    # A stray <xs:schema> (IKEA, parsedmarc #18): no records are lost, the report is marked.
    doc = report_xml(3, head_extra="<xs:schema><xs:element/></xs:schema>")
    _, records, end = parse(doc)
    assert len(records) == 3
    assert end.repairs == ("undeclared_namespace_prefix",)


def test_stray_unclosed_element_around_records() -> None:
    doc = report_xml(body="<wrapper>" + record_xml() + record_xml("192.0.2.2"))
    _, records, end = parse(doc)
    assert [r.source_ip for r in records] == ["192.0.2.1", "192.0.2.2"]
    assert end.repairs == ("unclosed_element",)


def test_unclosed_record_is_not_repaired() -> None:
    doc = report_xml(body=record_xml().replace("</record>", ""))
    with pytest.raises(XmlSyntaxError):
        parse(doc)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_document_is_an_error(keep: float) -> None:
    doc = report_xml(20)
    with pytest.raises(TruncatedXml):
        parse(doc[: int(len(doc) * keep)])


def test_records_before_metadata_are_held_until_the_head() -> None:
    doc = (
        b"<feedback>" + record_xml().encode() + b"<report_metadata><org_name>o</org_name>"
        b"<report_id>late</report_id><date_range><begin>1</begin><end>2</end></date_range>"
        b"</report_metadata><policy_published><domain>example.com</domain>"
        b"</policy_published>" + record_xml("192.0.2.2").encode() + b"</feedback>"
    )
    head, records, end = parse(doc)
    assert head.metadata.report_id == "late"
    assert [r.source_ip for r in records] == ["192.0.2.1", "192.0.2.2"]
    assert end.record_count == 2


def test_report_without_records() -> None:
    head, records, end = parse(report_xml(body=""))
    assert records == [] and end.record_count == 0 and head.policy.domain == "example.com"


@pytest.mark.parametrize(
    "broken",
    [
        b"<report_id>r-1</report_id>",  # report_id missing
        b"<domain>example.com</domain>",  # policy domain missing
    ],
)
def test_missing_required_values(broken: bytes) -> None:
    with pytest.raises(InvalidReport):
        parse(report_xml(1).replace(broken, b""))


def test_bad_count_is_invalid() -> None:
    with pytest.raises(InvalidReport, match="count"):
        parse(report_xml(body=record_xml().replace("<count>1</count>", "<count>many</count>")))


def test_nested_record_inside_record_is_not_a_second_record() -> None:
    _, records, _ = parse(report_xml(body=record_xml(extra=record_xml("192.0.2.99"))))
    assert [r.source_ip for r in records] == ["192.0.2.1"]
    assert len(records[0].extensions) == 1


def test_parser_reads_no_external_resource(tmp_path: Path) -> None:
    # The second lock, behind the byte filter that refuses any DTD: were one to reach
    # the parser, its external subset is not read, so the entity it declares stays a
    # bare reference. (A parser that loads DTDs and resolves entities writes TOP-SECRET.)
    secret = tmp_path / "secret.dtd"
    secret.write_text('<!ENTITY sec "TOP-SECRET">\n')
    doc = f'<!DOCTYPE feedback SYSTEM "{secret.as_uri()}"><feedback><a>&sec;</a></feedback>'
    parser = new_parser()
    parser.feed(doc.encode())
    root = parser.close()
    assert b"TOP-SECRET" not in etree.tostring(root)


def test_an_earlier_broken_document_does_not_change_the_repairs() -> None:
    # The errors of a document abandoned half-way stay in lxml's log of the thread; the
    # next document's stray prefix must still be recognized as such.
    with pytest.raises(TruncatedXml):
        parse(report_xml(3)[:-40])
    doc = report_xml(3, head_extra="<xs:schema><xs:element/></xs:schema>")
    _, records, end = parse(doc)
    assert len(records) == 3
    assert end.repairs == ("undeclared_namespace_prefix",)


def test_trailing_markup_read_in_the_same_feed_as_the_root_end() -> None:
    doc = report_xml(3) + b"<trailing>" + b"a" * 100 + b"</trailing>\n"
    for size in (64, len(doc)):
        _, records, end = parse(doc, size)
        assert len(records) == 3
        assert end.repairs == ("trailing_content",)


def test_records_read_in_the_feed_that_fails_are_not_lost() -> None:
    # An element left open around the last records: the error comes with </feedback>,
    # in the same feed as the records; they are read, and the repair is noted.
    doc = report_xml(body="<wrapper>" + "".join(record_xml(f"192.0.2.{i}") for i in range(1, 9)))
    # Line breaks after </feedback>: the byte filter holds nothing back, and the records,
    # </feedback> and the error all come in the one feed.
    doc += b"\n" * 16
    _, records, end = parse(doc, len(doc))
    assert len(records) == 8
    assert end.repairs == ("unclosed_element",)


def test_a_record_after_the_unclosed_element_error_is_not_repaired() -> None:
    # The same, with a record after </feedback> on the error's line: the document is
    # broken, not repaired, however it is fed.
    body = "<wrapper>" + record_xml() + "</feedback>" + record_xml("192.0.2.2")
    doc = report_xml(body=body).replace(b"</feedback>\n", b"\n" * 16)
    for size in (64, len(doc)):
        with pytest.raises(XmlSyntaxError):
            parse(doc, size)


# --- a report inside an unrelated wrapper element -------------------------------------

XSD_WRAPPER = b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n'


def wrapped(doc: bytes, wrapper: bytes = XSD_WRAPPER, after: bytes = b"") -> bytes:
    """``doc`` with ``wrapper`` on the line before <feedback>, left open unless ``after``
    closes it."""
    return doc.replace(b"<feedback", wrapper + b"<feedback", 1) + after


def outcomes(doc: bytes) -> set[object]:
    """What parsing ``doc`` gives, cut in two at every byte: records and repairs, or the
    error's class. One element when no outcome depends on where the input is cut."""
    seen: set[object] = set()
    for cut in range(len(doc) + 1):
        chunks = iter([doc[:cut], doc[cut:]])
        try:
            *events, end = parse_aggregate(chunks, PartInfo(index=1), Limits())
        except (InvalidReport, XmlSyntaxError, TruncatedXml) as exc:
            seen.add(type(exc))
            continue
        assert isinstance(end, AggregateEnd)
        records = tuple(e.source_ip for e in events if isinstance(e, Record))
        seen.add((records, end.repairs))
    return seen


IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3")
THREE = report_xml(body="".join(record_xml(ip) for ip in IPS))


@pytest.mark.parametrize(
    ("wrapper", "after"),
    [
        (XSD_WRAPPER, b""),  # opened before <feedback>, never closed
        (XSD_WRAPPER, b"</xs:schema>\n"),
        (b"<xs:schema>", b""),  # its prefix undeclared as well
        (b"<outer><inner>\n", b"</inner>"),  # two of them, one closed
    ],
)
def test_report_inside_a_wrapper_element(wrapper: bytes, after: bytes) -> None:
    doc = wrapped(THREE, wrapper, after)
    head, records, end = parse(doc)
    assert head.metadata.report_id == "r-1" and head.policy.domain == "example.com"
    assert [r.source_ip for r in records] == list(IPS)
    assert end.repairs[0] == "wrapper_element"
    assert set(end.repairs) <= {"wrapper_element", "undeclared_namespace_prefix"}
    assert outcomes(doc) == {(IPS, end.repairs)}


def test_content_after_the_wrapped_report_is_noted() -> None:
    for after in (b"junk\n", b"</xs:schema><junk/>\n", b"<record/>\n"):
        assert outcomes(wrapped(THREE, after=after)) == {
            (IPS, ("wrapper_element", "trailing_content"))
        }


def test_a_wrapper_without_feedback_is_not_a_report() -> None:
    # The same records and metadata, with no <feedback> around them.
    bare = THREE.replace(b"<feedback>", b"").replace(b"</feedback>", b"")
    no_feedback = XSD_WRAPPER + bare.split(b"?>", 1)[1] + b"</xs:schema>"
    # <feedback> only after the report's first element: the wrapper holds the report.
    late = THREE.replace(b"<feedback>", XSD_WRAPPER + b"<version>1.0</version><feedback>")
    for doc in (no_feedback, late):
        assert outcomes(doc) == {InvalidReport}
        with pytest.raises(InvalidReport, match="root element is <schema>"):
            parse(doc)
    # An empty <feedback> before the report's elements: a report without its metadata.
    with pytest.raises(InvalidReport, match="report_metadata is missing"):
        parse(wrapped(bare.replace(b"<version>", b"<feedback/><version>")))


def test_a_truncated_wrapped_report_is_an_error() -> None:
    doc = wrapped(THREE)
    for keep in (len(doc) // 2, len(doc) - 4):
        with pytest.raises(TruncatedXml):
            parse(doc[:keep])


# --- "<" in text before a name that cannot be a tag ------------------------------------


def test_unescaped_lt_before_a_name_in_metadata_and_records() -> None:
    doc = report_xml(
        body=record_xml().replace("example.com</header_from>", "bad<example.net</header_from>")
    )
    doc = doc.replace(b"<email>d@reporter.example</email>", b"<email><noreply@example.net></email>")
    head, records, end = parse(doc)
    assert head.metadata.email == "<noreply@example.net>"  # as written
    assert records[0].header_from == "bad<example.net"
    assert end.repairs == ("unescaped_lt",)
    assert outcomes(doc) == {(("192.0.2.1",), ("unescaped_lt",))}


@pytest.mark.parametrize(
    "broken",
    [
        b"<email><noreply></email>",  # a well-formed tag that never ends: mismatched
        b"<email>d@example.net</emial>",
        b"<email><noreply@example.net></mail>",
    ],
)
def test_broken_structure_beside_an_unescaped_lt_is_still_an_error(broken: bytes) -> None:
    doc = report_xml(2).replace(b"<email>d@reporter.example</email>", broken)
    assert outcomes(doc) == {XmlSyntaxError}


def test_truncated_document_with_an_unescaped_lt_is_an_error() -> None:
    doc = report_xml(2).replace(
        b"<email>d@reporter.example</email>", b"<email><noreply@example.net></email>"
    )
    end = doc.index(b"</email>")
    for keep in (end - 5, end, end + 40, len(doc) - 30):
        with pytest.raises(TruncatedXml):
            parse(doc[:keep])


def test_names_are_checked_in_a_documents_first_mib_only() -> None:
    # Past NAME_CHECK_BYTES only the cheap test runs (see xmlclean): the same fault is
    # an error there, however the document is cut.
    many = "".join(record_xml(f"192.0.2.{i % 250}") for i in range(NAME_CHECK_BYTES // 300))
    bad = record_xml().replace("example.com</header_from>", "bad<example.net</header_from>")
    doc = report_xml(body=many + bad)
    assert len(doc) > NAME_CHECK_BYTES + 1000
    for size in (4096, 65536, len(doc)):
        with pytest.raises(XmlSyntaxError):
            parse(doc, size)
    early = report_xml(body=bad + many)
    _, records, end = parse(early, 65536)
    assert records[0].header_from == "bad<example.net" and end.repairs == ("unescaped_lt",)
