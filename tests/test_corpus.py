"""Every file of the real corpus, with values read off each file by hand.

The expected values were established by reading the decoded XML, JSON and headers, not
by running rua-sink; see ../shared/corpus/real/SOURCES.md for where each file comes from.
"""

from __future__ import annotations

import pytest

from rua_sink.core.model import (
    AuthResult,
    DiscoveryMethod,
    Disposition,
    OverrideType,
    Policy,
    PolicyTesting,
    Schema,
    SpfScope,
    TlsPolicyType,
    Verdict,
)
from rua_sink.core.pipeline import parse_file

from .conftest import CORPUS, collect, corpus

# (path, org_name, report_id, policy domain, begin, end, records, messages)
AGGREGATES = [
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/acme.xml",
        "acme.com",
        "9391651994964116463",
        "example.com",
        1335571200,
        1335657599,
        1,
        2,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/aol.xml",
        "AOL",
        "website.com_1504828800",
        "website.com",
        1504742400,
        1504828800,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/gmxnet.xml",
        "GMX",
        "6d2be94cbabf4e838a3cf58fb4a42ab5",
        "myserver.com",
        1733184000,
        1733270399,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/google.xml",
        "google.com",
        "3166094538684628578",
        "foo-bar.io",
        1709683200,
        1709769599,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/hardfail.xml",
        "reporting org",
        "abcdef",
        "mydomain.org",
        1727049600,
        1727135999,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/invalid_casing.xml",
        "reporting org",
        "abcdef",
        "mydomain.org",
        1727049600,
        1727135999,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/mailru.xml",
        "Mail.Ru",
        "28327321193681154911721360800",
        "foobar.de",
        1721260800,
        1721347200,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/outlook.xml",
        "Outlook.com",
        "a4f4ef0654474d3faa5dca167a34a86a",
        "random.net",
        1709683200,
        1709769600,
        2,
        3,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/solamora.xml",
        "solarmora.com",
        "9391651994964116463",
        "bix-business.com",
        1335571200,
        1335657599,
        1,
        2,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/webde.xml",
        "WEB.DE",
        "a3345c7cb5fd4f26aa62144bf449a54b",
        "foobar.com",
        1722816000,
        1722902399,
        1,
        1,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/dmarc-reports/yahoo.xml",
        "Yahoo",
        "1709600619.487850",
        "random.org",
        1709510400,
        1709596799,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/examples/go/report-directory/samples/georgestarcher.com/google.com!georgestarcher.com!1783382400!1783468799.xml",
        "google.com",
        "18028803163198988333",
        "georgestarcher.com",
        1783382400,
        1783468799,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/examples/go/report-directory/samples/georgestarcher.com/mimecast.org!georgestarcher.com!1781568000!1781654399.xml",
        "Mimecast",
        "a877f65e16f46789f8428d867e2393c86772449e2ae4711f7d0ec8bbc2447ea2",
        "georgestarcher.com",
        1781568000,
        1781654399,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/examples/go/report-directory/samples/georgestarcher.com/yahoo.com!georgestarcher.com!1781740800!1781827199.xml",
        "Yahoo",
        "1781848448.914260",
        "georgestarcher.com",
        1781740800,
        1781827199,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/examples/go/report-directory/testdata/reports/receiver.example!example.test!1782172800!1782259199!synthetic.xml",
        "Example Receiver",
        "synthetic-newcomer-report",
        "example.test",
        1782172800,
        1782259199,
        2,
        7,
    ),
    (
        "georgestarcher__dmarcgo/testdata/fixtures/amazonses.com!georgestarcher.com!1518134400!1518220800.xml.gz",
        "AMAZON-SES",
        "072b67ad-a2bd-4ee2-bbb3-533ca391825f",
        "georgestarcher.com",
        1518134400,
        1518220800,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/testdata/fixtures/aol.com!georgestarcher.com!1342497600!1342584000.zip",
        "AOL",
        "georgestarcher.com_1342584000",
        "georgestarcher.com",
        1342497600,
        1342584000,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/testdata/fixtures/aol.com!georgestarcher.com!1342497600!1342584000.zlib",
        "AOL",
        "georgestarcher.com_1342584000",
        "georgestarcher.com",
        1342497600,
        1342584000,
        1,
        1,
    ),
    (
        "georgestarcher__dmarcgo/testdata/fixtures/rfc9990-modern-synthetic.xml.gz",
        "Example Mail Receiver",
        "synthetic-rfc9990-modern-report",
        "example.test",
        1782172800,
        1782259199,
        2,
        3,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/001.xml",
        "Sample Reporter",
        "3v98abbp8ya9n3va8yr8oa3ya",
        "example.com",
        161212415,
        161221511,
        1,
        123,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/002.xml",
        "google.com",
        "2122885654478337555",
        "example.org",
        1661558400,
        1661644799,
        1,
        2,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/003.xml",
        "Fastmail Pty Ltd",
        "758848224",
        "stalw.art",
        1667347200,
        1667433599,
        4,
        9,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/005.xml",
        "Legacy Reporter",
        "legacy-1",
        "example.com",
        100,
        200,
        1,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/100.eml",
        "google.com",
        "5264580628977113351",
        "stalw.art",
        1669507200,
        1669593599,
        1,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/101.eml",
        "backschues.NET",
        "stalw.art.1667948400.1668034800",
        "stalw.art",
        1667948400,
        1668034800,
        1,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/102.eml",
        "Mail.Ru",
        "28551467700969547611667865600",
        "stalw.art",
        1667865600,
        1667952000,
        1,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/103.eml",
        "Outlook.com",
        "725cbfbe133940149987cfc528387235",
        "stalw.art",
        1666483200,
        1666569600,
        1,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/dmarc-feedback/104.eml",
        "AMAZON-SES",
        "6b06c366-0631-4ca0-8337-f5aecf137918",
        "stalw.art",
        1663545600,
        1663632000,
        1,
        1,
    ),
]

# (path, org_name, report_id, begin, end, policies, successful sessions, failed sessions)
TLS = [
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/google.json",
        "Google Inc.",
        "2025-05-22T00:00:00Z_foo-bar.io",
        1747872000,
        1747958399,
        1,
        1,
        0,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/microsoft.json",
        "Microsoft Corporation",
        "133925885310113267+random.net",
        1747958400,
        1748044799,
        2,
        4,
        0,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/no-contact.json",
        "server.com",
        "123_456",
        1768089600,
        1768176000,
        1,
        1,
        0,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/no-policy.json",
        "Google Inc.",
        "2025-03-27T00:00:00Z_foo-bar.io",
        1743033600,
        1743119999,
        1,
        1,
        0,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/no_ip_and_mx.json",
        "Microsoft Corporation",
        "1234567890+",
        1749859200,
        1749945599,
        1,
        0,
        3,
    ),
    (
        "cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/rfc-example.json",
        "Company-X",
        "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
        1459468800,
        1459555199,
        1,
        5326,
        303,
    ),
    (
        "stalwartlabs__mail-auth/resources/tlsrpt/rpt01.eml",
        "Company-X",
        "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
        1459468800,
        1459555199,
        1,
        5326,
        303,
    ),
    (
        "stalwartlabs__mail-auth/resources/tlsrpt/rpt02.eml",
        "Google Inc.",
        "2020-01-01T00:00:00Z_example.com",
        1577836800,
        1578441599,
        1,
        23,
        1,
    ),
    (
        "stalwartlabs__mail-auth/resources/tlsrpt/rpt03.json",
        "Google Inc.",
        "2019-04-14T00:00:00Z_example.org",
        1555200000,
        1555286399,
        2,
        2,
        0,
    ),
]

# (path, feedback type, auth failure, source IP, reported domain)
ARF = [
    ("stalwartlabs__mail-auth/resources/arf/001.eml", "abuse", None, None, None),
    ("stalwartlabs__mail-auth/resources/arf/002.eml", "abuse", None, "192.0.2.1", "example.net"),
    (
        "stalwartlabs__mail-auth/resources/arf/003.eml",
        "auth-failure",
        "bodyhash",
        "192.0.2.1",
        "example.net",
    ),
    (
        "stalwartlabs__mail-auth/resources/arf/004.eml",
        "auth-failure",
        "dmarc",
        "148.163.85.135 (sainay.interpublication.org)",
        "interpublication.org",
    ),
    (
        "stalwartlabs__mail-auth/resources/arf/005.eml",
        "auth-failure",
        "bodyhash",
        "192.0.2.1",
        "a.sender.example",
    ),
]


@pytest.mark.parametrize(
    ("rel", "org", "report_id", "domain", "begin", "end", "records", "messages"), AGGREGATES
)
def test_aggregate_reports(
    rel: str,
    org: str,
    report_id: str,
    domain: str,
    begin: int,
    end: int,
    records: int,
    messages: int,
) -> None:
    got = collect(parse_file(corpus(rel)))
    assert got.failed == []
    assert len(got.aggregates) == 1 and not got.tls and not got.failures
    head, recs, tail = got.aggregates[0]
    assert head.metadata.org_name == org
    assert head.metadata.report_id == report_id
    assert head.policy.domain == domain
    assert (head.metadata.begin, head.metadata.end) == (begin, end)
    assert len(recs) == tail.record_count == records
    assert sum(r.count for r in recs) == tail.message_count == messages
    assert not tail.repaired


@pytest.mark.parametrize(
    ("rel", "org", "report_id", "begin", "end", "policies", "success", "failure"), TLS
)
def test_tls_reports(
    rel: str,
    org: str,
    report_id: str,
    begin: int,
    end: int,
    policies: int,
    success: int,
    failure: int,
) -> None:
    got = collect(parse_file(corpus(rel)))
    assert got.failed == [] and not got.aggregates and not got.failures
    (report,) = got.tls
    assert (report.org_name, report.report_id) == (org, report_id)
    assert (report.begin, report.end) == (begin, end)
    assert len(report.policies) == policies
    assert (report.success_count, report.failure_count) == (success, failure)


@pytest.mark.parametrize(("rel", "feedback_type", "auth_failure", "source_ip", "domain"), ARF)
def test_arf_emails_are_failure_reports(
    rel: str,
    feedback_type: str,
    auth_failure: str | None,
    source_ip: str | None,
    domain: str | None,
) -> None:
    got = collect(parse_file(corpus(rel)))
    assert got.failed == [] and not got.aggregates and not got.tls
    (report,) = got.failures
    assert report.feedback_type == feedback_type
    assert report.auth_failure == auth_failure
    # A trailing comment after the address ("(host.example)") is not part of it.
    assert report.source_ip == (source_ip.split(" ")[0] if source_ip else None)
    assert (report.reported_domains[:1] or (None,))[0] == domain
    assert report.original_headers is not None and "From:" in report.original_headers


def test_every_corpus_file_is_covered() -> None:
    listed = {row[0] for row in AGGREGATES} | {row[0] for row in TLS} | {row[0] for row in ARF}
    present = {
        str(p.relative_to(CORPUS))
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in ("SOURCES.md", "MANIFEST.sha256")
    }
    assert present == listed


def test_pascal_case_results_and_eight_spf() -> None:
    got = collect(
        parse_file(corpus("cry-inc__dmarc-report-viewer/testdata/dmarc-reports/invalid_casing.xml"))
    )
    ((_, (record,), _),) = got.aggregates
    assert (record.disposition, record.dkim, record.spf) == (
        Disposition.QUARANTINE,
        Verdict.FAIL,
        Verdict.FAIL,
    )
    assert [s.result for s in record.spf_results] == [
        AuthResult.NONE,
        AuthResult.NEUTRAL,
        AuthResult.PASS,
        AuthResult.FAIL,
        "HardFail",  # not an RFC 8601 result: kept verbatim
        AuthResult.SOFTFAIL,
        AuthResult.TEMPERROR,
        AuthResult.PERMERROR,
    ]
    assert {s.domain for s in record.spf_results} == {"mydomain.org"}
    (dkim,) = record.dkim_results
    assert (dkim.domain, dkim.selector, dkim.result) == (None, None, AuthResult.FAIL)


def test_human_result_and_reasons_in_fastmail_report() -> None:
    got = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/003.xml")))
    ((_, records, _),) = got.aggregates
    assert [r.count for r in records] == [3, 4, 1, 1]
    assert [[d.human_result for d in r.dkim_results] for r in records] == [
        ["pass"],
        ["pass"],
        ["pass"],
        ["pass", "pass"],
    ]
    assert records[3].dkim_results[1].domain == "amazonses.com"
    assert records[3].dkim_results[1].selector == "6gbrjpgwjskckoa6a5zn6fwqkn67xbtw"
    for r in records[:3]:
        (reason,) = r.reasons
        assert reason.type is OverrideType.TRUSTED_FORWARDER
        assert reason.comment == "Policy ignored due to local white list"
    assert records[3].reasons == ()
    assert records[0].envelope_from == "jmap.bounce.topicbox.com"


@pytest.mark.parametrize(
    ("rel", "first_ip", "first_count"),
    [
        ("cry-inc__dmarc-report-viewer/testdata/dmarc-reports/gmxnet.xml", "11.222.33.44", 1),
        ("cry-inc__dmarc-report-viewer/testdata/dmarc-reports/webde.xml", "111.69.13.71", 1),
    ],
)
def test_rfc9990_fields_of_gmx_and_webde(rel: str, first_ip: str, first_count: int) -> None:
    got = collect(parse_file(corpus(rel)))
    ((head, records, _),) = got.aggregates
    assert head.schema is Schema.RFC9990
    assert head.version == "1.0"
    assert head.policy.testing is PolicyTesting.NO
    assert head.policy.discovery_method is DiscoveryMethod.PSL
    assert head.policy.np is None and head.metadata.generator is None
    assert (records[0].source_ip, records[0].count) == (first_ip, first_count)
    assert records[0].disposition is Disposition.NONE
    assert records[0].header_from == records[0].envelope_from


def test_rfc9990_sample_with_generator_and_spf_human_result() -> None:
    got = collect(
        parse_file(
            corpus("georgestarcher__dmarcgo/testdata/fixtures/rfc9990-modern-synthetic.xml.gz")
        )
    )
    ((head, records, _),) = got.aggregates
    assert head.part.layers == ("gzip",)
    assert head.schema is Schema.RFC9990
    assert head.policy.np is Policy.REJECT
    assert head.policy.testing is PolicyTesting.NO
    assert head.policy.discovery_method is DiscoveryMethod.TREEWALK
    assert head.policy.fo == "1" and head.policy.pct is None
    assert head.metadata.generator == "synthetic fixture based on 2026 aggregate report shapes"
    first, second = records
    assert (first.source_ip, first.count, first.envelope_to) == (
        "203.0.113.10",
        2,
        "receiver.example",
    )
    assert [(d.domain, d.selector) for d in first.dkim_results] == [
        ("example.test", "selector1"),
        ("mail.example.test", "selector2"),
    ]
    assert first.dkim_results[1].human_result == "secondary aligned signature"
    assert second.spf_results[0].human_result == "sender not authorized"
    assert (second.disposition, second.dkim, second.spf) == (
        Disposition.REJECT,
        Verdict.FAIL,
        Verdict.FAIL,
    )
    assert second.reasons[0].type is OverrideType.OTHER


def test_rfc9990_synthetic_report_directory_sample() -> None:
    rel = (
        "georgestarcher__dmarcgo/examples/go/report-directory/testdata/reports/"
        "receiver.example!example.test!1782172800!1782259199!synthetic.xml"
    )
    ((head, records, tail),) = collect(parse_file(corpus(rel))).aggregates
    assert head.schema is Schema.RFC9990
    assert head.policy.np is Policy.REJECT
    assert head.policy.discovery_method is DiscoveryMethod.TREEWALK
    assert records[0].count == 6 and records[1].spf_results[0].domain == "unrecognized.example"
    assert records[1].dkim_results == ()
    assert tail.message_count == 7


def test_aol_zip_and_bare_zlib_give_identical_results() -> None:
    base = (
        "georgestarcher__dmarcgo/testdata/fixtures/aol.com!georgestarcher.com!1342497600!1342584000"
    )
    from_zip = collect(parse_file(corpus(base + ".zip")))
    from_zlib = collect(parse_file(corpus(base + ".zlib")))
    ((zhead, zrecs, ztail),) = from_zip.aggregates
    ((lhead, lrecs, ltail),) = from_zlib.aggregates
    assert zhead.part.layers == ("zip:aol.com!georgestarcher.com!1342497600!1342584000.xml",)
    assert lhead.part.layers == ("zlib",)
    assert (zhead.metadata, zhead.policy, zhead.schema) == (
        lhead.metadata,
        lhead.policy,
        lhead.schema,
    )
    assert zrecs == lrecs
    assert (ztail.record_count, ztail.message_count) == (ltail.record_count, ltail.message_count)
    # The 2012 draft-era report has no policy_evaluated dkim/spf: absent, not invented.
    assert (zrecs[0].dkim, zrecs[0].spf) == (None, None)


def test_google_single_part_zip_email() -> None:
    got = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/100.eml")))
    ((head, _, _),) = got.aggregates
    assert head.part.content_type == "application/zip"
    assert head.part.layers[0].startswith("zip:")
    assert got.info is not None and got.info.subject is not None
    assert "stalw.art" in got.info.subject


def test_microsoft_nested_multipart_with_encoded_subject() -> None:
    got = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/103.eml")))
    ((head, _, _),) = got.aggregates
    assert head.part.content_type == "application/gzip"
    assert head.part.filename == "protection.outlook.com!stalw.art!1666483200!1666569600.xml.gz"
    assert got.info is not None and got.info.subject is not None
    assert got.info.subject.startswith("Report Domain: stalw.art")


def test_amazon_ses_octet_stream_and_stray_quote() -> None:
    ses = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/104.eml")))
    assert ses.aggregates[0][0].part.content_type == "application/octet-stream"
    assert ses.aggregates[0][0].part.layers == ("gzip",)
    quoted = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/101.eml")))
    assert quoted.aggregates[0][0].metadata.org_name == "backschues.NET"


def test_tls_report_details() -> None:
    got = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/tlsrpt/rpt01.eml")))
    (report,) = got.tls
    assert report.part.content_type == "application/tlsrpt+gzip"
    assert got.info is not None and got.info.tls_report_domain is not None
    (policy,) = report.policies
    assert policy.policy_type is TlsPolicyType.STS
    assert sum(d.failed_session_count for d in policy.failure_details) == report.failure_count
    untyped = collect(parse_file(corpus("stalwartlabs__mail-auth/resources/tlsrpt/rpt02.eml")))
    assert untyped.tls[0].part.content_type == "application/tlsrpt"
    missing = collect(
        parse_file(
            corpus("cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/no_ip_and_mx.json")
        )
    )
    details = [d for p in missing.tls[0].policies for d in p.failure_details]
    assert details and all(d.sending_mta_ip is None for d in details)
    nocontact = collect(
        parse_file(corpus("cry-inc__dmarc-report-viewer/testdata/smtp-tls-reports/no-contact.json"))
    )
    assert nocontact.tls[0].contact_info is None


def test_arf_fields_of_opendmarc_report() -> None:
    (report,) = collect(
        parse_file(corpus("stalwartlabs__mail-auth/resources/arf/004.eml"))
    ).failures
    assert report.user_agent == "OpenDMARC-Filter/1.3.2"
    assert report.original_mail_from == "info@interpublication.org"
    assert report.authentication_results == (
        "box.mydomain.name; dmarc=fail header.from=interpublication.org",
    )
    assert ("Feedback-Type", "auth-failure") in report.fields


def test_spf_scope_enum() -> None:
    ((_, records, _),) = collect(
        parse_file(corpus("cry-inc__dmarc-report-viewer/testdata/dmarc-reports/acme.xml"))
    ).aggregates
    assert records[0].spf_results[0].scope is SpfScope.HELO
    assert records[0].dkim_results[0].selector == "ExamplesSelector"
