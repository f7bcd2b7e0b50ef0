"""Hostile inputs, built inside the tests: each must end in its own typed error, fast and small.

Every payload here is generated on the fly (nothing hostile is committed). Archive bombs
and MIME abuse are delivered both as a base64 attachment of a real email (the whole
pipeline: MIME walk, transfer decoding, spooling, archive layers, parser) and as a bare
payload through ``parse_part``. Each case asserts the exact error class (not a parent),
and for several its ``reason``; ``bounded`` checks wall time and, where the work is done
by Python objects, the peak traced by ``tracemalloc`` (lxml's C allocations are not
traced, so the XML cases bound time only).
"""

from __future__ import annotations

import base64
import email.policy
import io
import random
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from functools import cache
from pathlib import Path

import pytest

from rua_sink.core.limits import KiB, Limits, MiB
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    Event,
    MessageInfo,
    PartFailed,
    PartInfo,
    Record,
    TlsReport,
)
from rua_sink.core.pipeline import default_spool, parse_message, parse_part
from rua_sink.errors import (
    ArchiveTooDeep,
    CompressionRatioExceeded,
    DecompressedTooLarge,
    ElementTooLarge,
    ForbiddenXml,
    HeaderTooLarge,
    InvalidReport,
    JsonTooLarge,
    LimitExceeded,
    LineTooLong,
    MessageError,
    MessageTooLarge,
    MimeTooDeep,
    NotAReport,
    Reason,
    TooManyArchiveMembers,
    TooManyParts,
    TooManyRecords,
    TransferEncodingError,
    TruncatedArchive,
    TruncatedXml,
    UnknownFormat,
    XmlSyntaxError,
    XmlTooDeep,
)

from .conftest import chunks
from .reports import message

DEFAULT = Limits()
SMTP_CHUNK = 64 * KiB
#: Peak of Python allocations allowed while a bomb is parsed.
PEAK = 64 * MiB
#: Wall time allowed for one hostile input.
SECONDS = 10.0

# --- measuring ---------------------------------------------------------------------------


@contextmanager
def bounded(*, seconds: float = SECONDS, peak: int | None = PEAK) -> Iterator[None]:
    """Fail if the block takes longer than ``seconds`` or, when ``peak`` is set, if the
    Python allocations traced while it runs peak above ``peak`` bytes."""
    tracing = peak is not None
    if tracing:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        used = tracemalloc.get_traced_memory()[1] if tracing else 0
        if tracing:
            tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f} s (limit {seconds} s)"
    if peak is not None:
        assert used < peak, f"peak of traced memory {used / MiB:.1f} MiB (limit {peak / MiB} MiB)"


# --- running the core ------------------------------------------------------------------


def _no_stray(run: Callable[[], list[Event]], where: str) -> list[Event]:
    """Only MessageError may escape the core (errors.py); anything else is a bug."""
    try:
        return run()
    except MessageError:
        raise
    except Exception as exc:
        raise AssertionError(
            f"{type(exc).__name__} escaped {where} (only MessageError may): {exc}"
        ) from exc


def message_events(data: bytes | Iterable[bytes], limits: Limits = DEFAULT) -> list[Event]:
    source = chunks(data, SMTP_CHUNK) if isinstance(data, bytes) else data
    return _no_stray(lambda: list(parse_message(source, limits)), "parse_message")


def part_events(payload: bytes, limits: Limits = DEFAULT) -> list[Event]:
    info = PartInfo(index=1, filename="hostile")
    return _no_stray(
        lambda: list(parse_part(io.BytesIO(payload), info, limits, default_spool)), "parse_part"
    )


def failure(events: list[Event]) -> MessageError:
    """The error of the one ``PartFailed`` among ``events``."""
    failed = [e for e in events if isinstance(e, PartFailed)]
    assert len(failed) == 1, f"expected one PartFailed, got {events!r:.600}"
    return failed[0].error


def assert_error(
    error: BaseException, cls: type[MessageError], reason: Reason | None = None
) -> None:
    assert type(error) is cls, f"expected {cls.__name__}, got {type(error).__name__}: {error}"
    if reason is not None:
        assert isinstance(error, MessageError)
        assert error.reason is reason


def reports(events: list[Event]) -> list[AggregateReport | TlsReport]:
    return [e for e in events if isinstance(e, AggregateReport | TlsReport)]


# --- building payloads -----------------------------------------------------------------

XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
RECORD = (
    b"<record><row><source_ip>192.0.2.1</source_ip><count>1</count>"
    b"<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>"
    b"</policy_evaluated></row><identifiers><header_from>example.com</header_from>"
    b"</identifiers><auth_results><spf><domain>example.com</domain><result>pass</result>"
    b"</spf></auth_results></record>\n"
)


def aggregate(
    body: bytes = RECORD,
    *,
    metadata_extra: bytes = b"",
    begin: bytes = b"1700000000",
    policy_extra: bytes = b"",
    prolog: bytes = b"",
) -> bytes:
    """A valid RFC 7489 aggregate report around ``body`` (records and anything else)."""
    return (
        XML_DECL + prolog + b"<feedback>\n<report_metadata><org_name>example.net</org_name>"
        b"<email>dmarc@example.net</email><report_id>hostile-1</report_id>"
        b"<date_range><begin>"
        + begin
        + b"</begin><end>1700086399</end></date_range>"
        + metadata_extra
        + b"</report_metadata>\n<policy_published><domain>example.com</domain>"
        b"<adkim>r</adkim><aspf>r</aspf><p>none</p>"
        + policy_extra
        + b"</policy_published>\n"
        + body
        + b"</feedback>\n"
    )


def gzip_of(data: bytes, level: int = 9) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def zlib_of(data: bytes) -> bytes:
    return zlib.compress(data, 9)


def gzip_filled(prefix: bytes, filler: bytes, size: int) -> bytes:
    """One gzip member: ``prefix`` then ``size`` bytes of ``filler``, compressed as a
    stream so the uncompressed text is never held whole."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = filler * (MiB // len(filler))
    out = [comp.compress(prefix)]
    for _ in range(size // len(block)):
        out.append(comp.compress(block))
    out.append(comp.flush())
    return b"".join(out)


def zip_of(members: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buf.getvalue()


@cache
def blank_bomb() -> bytes:
    """Gzip, 64 MiB of blanks after a report's first tag: 1028:1."""
    return gzip_filled(XML_DECL + b"<feedback>\n", b" ", 64 * MiB)


@cache
def gigabyte_bomb() -> bytes:
    """Multi-member gzip (RFC 1952 2.2) that inflates to 1 GiB: a report's first tag,
    then sixteen copies of a 64 MiB member of blanks. About 1 MB."""
    blanks = gzip_filled(b"", b" ", 64 * MiB)
    return gzip_of(XML_DECL + b"<feedback>\n") + blanks * 16


@cache
def passwd_lines() -> tuple[str, ...]:
    path = Path("/etc/passwd")
    text = path.read_text(errors="replace") if path.is_file() else "root:x:0:0:root:/root:"
    return tuple(line for line in text.splitlines() if line.strip())


def report_email(
    payload: bytes,
    *,
    maintype: str = "application",
    subtype: str = "gzip",
    filename: str = "example.net!example.com!1700000000!1700086399.xml.gz",
) -> bytes:
    """A real multipart email carrying ``payload`` as a base64 attachment."""
    return message((payload, f"{maintype}/{subtype}", filename))


HEAD = (
    b"From: dmarc-reports@example.net\r\nTo: rua@example.com\r\n"
    b"Subject: hostile\r\nMessage-ID: <hostile-2@example.net>\r\nMIME-Version: 1.0\r\n"
)


def ratio(compressed: bytes, produced: int) -> float:
    return produced / len(compressed)


# --- archive bombs -------------------------------------------------------------------


def test_zero_bomb_is_refused_after_one_chunk() -> None:
    """A bomb of bare zeros is not report-like: sniffing its first inflated chunk
    (256 KiB) refuses it as UnknownFormat; the rest is never inflated."""
    bomb = gzip_filled(b"", b"\0", 64 * MiB)
    assert ratio(bomb, 64 * MiB) >= 1000
    with bounded(seconds=2):
        err = failure(part_events(bomb))
        assert_error(err, UnknownFormat, Reason.UNKNOWN_FORMAT)
        err = failure(message_events(report_email(bomb)))
        assert_error(err, UnknownFormat)


@pytest.mark.parametrize("bomb", [blank_bomb, gigabyte_bomb], ids=["64MiB", "1GiB-multimember"])
def test_gzip_bomb_hits_compression_ratio(bomb: Callable[[], bytes]) -> None:
    payload = bomb()
    produced = 64 * MiB if bomb is blank_bomb else 1024 * MiB
    assert ratio(payload, produced) >= 1000
    with bounded():
        err = failure(part_events(payload))
    assert_error(err, CompressionRatioExceeded, Reason.COMPRESSION_RATIO)
    assert isinstance(err, LimitExceeded)
    assert err.maximum == DEFAULT.max_compression_ratio and err.value > err.maximum
    with bounded():
        events = message_events(report_email(payload))
    assert_error(failure(events), CompressionRatioExceeded)
    assert not reports(events)
    assert isinstance(events[0], MessageInfo)


def test_gzip_below_ratio_cap_hits_decompressed_cap() -> None:
    """Random hex in comments compresses about 2:1, far below the ratio cap; the output
    cap (lowered to 4 MiB) stops it."""
    rng = random.Random(1)
    comments = b"".join(b"<!-- %s -->\n" % rng.randbytes(48).hex().encode() for _ in range(90_000))
    text = XML_DECL + b"<feedback>\n" + comments + b"</feedback>\n"
    payload = gzip_of(text, level=1)
    assert len(text) > 8 * MiB
    assert ratio(payload, len(text)) < DEFAULT.max_compression_ratio
    limits = Limits(max_decompressed_bytes=4 * MiB)
    with bounded():
        err = failure(part_events(payload, limits))
        assert_error(err, DecompressedTooLarge, Reason.DECOMPRESSED_TOO_LARGE)
        assert isinstance(err, LimitExceeded) and err.maximum == 4 * MiB
        assert_error(failure(message_events(report_email(payload), limits)), DecompressedTooLarge)


def _zip_bomb() -> tuple[bytes, int]:
    text = XML_DECL + b"<feedback>\n" + b" " * (12 * MiB)
    return zip_of([("example.net!example.com!1700000000!1700086399.xml", text)]), len(text)


def test_zip_bomb_hits_compression_ratio() -> None:
    """A zip member is metered against its compressed size from the central directory
    (unpack._zip_read), so a 1000:1 member trips the ratio cap once its output passes
    500 x that size: half-way through, at 6 MiB here, long before the 1 GiB output cap
    and before the 8 MiB element cap of the XML parser."""
    payload, produced = _zip_bomb()
    assert ratio(payload, produced) >= 1000
    with bounded():
        err = failure(part_events(payload))
        assert_error(err, CompressionRatioExceeded, Reason.COMPRESSION_RATIO)
        events = message_events(report_email(payload, subtype="zip", filename="report.zip"))
        assert_error(failure(events), CompressionRatioExceeded)
        assert failure(events).reason is Reason.COMPRESSION_RATIO


def test_zip_bomb_under_lower_output_cap_hits_decompressed_cap() -> None:
    """The same bomb with the output cap below the point where the ratio trips."""
    payload, _ = _zip_bomb()
    with bounded():
        err = failure(part_events(payload, Limits(max_decompressed_bytes=2 * MiB)))
    assert_error(err, DecompressedTooLarge, Reason.DECOMPRESSED_TOO_LARGE)


def test_zip_members_share_one_decompressed_cap() -> None:
    """One budget for every member: max_decompressed_bytes counts "all archive layers
    together" (limits.py), so a zip of N members cannot inflate N times the cap: four
    members of 900 KiB each (3.6 MiB) stop at a 2 MiB cap."""
    doc = (
        b'{"organization-name": "example.net", "report-id": "r-%d", "date-range": '
        b'{"start-datetime": "2023-11-14T00:00:00Z", "end-datetime": "2023-11-15T00:00:00Z"}, '
        b'"policies": []'
    )
    members = [(f"r{i}.json", doc % i + b" " * (900 * KiB) + b"}") for i in range(4)]
    payload = zip_of(members)
    total = sum(len(data) for _, data in members)
    limits = Limits(max_decompressed_bytes=2 * MiB)
    assert total > 1.5 * limits.max_decompressed_bytes
    with bounded():
        events = part_events(payload, limits)
    failed = [e.error for e in events if isinstance(e, PartFailed)]
    assert any(type(e) is DecompressedTooLarge for e in failed), (
        f"{total} bytes inflated from one part under max_decompressed_bytes="
        f"{limits.max_decompressed_bytes}: {len(reports(events))} reports, no "
        "DecompressedTooLarge"
    )


def test_zip_with_ten_thousand_members() -> None:
    members = [(f"m{i}.xml", b"<feedback/>") for i in range(10_000)]
    payload = zip_of(members)
    with bounded():
        err = failure(part_events(payload))
        assert_error(err, TooManyArchiveMembers, Reason.TOO_MANY_MEMBERS)
        assert isinstance(err, LimitExceeded)
        assert (err.value, err.maximum) == (10_000, DEFAULT.max_zip_members)
        events = message_events(report_email(payload, subtype="zip", filename="r.zip"))
        assert_error(failure(events), TooManyArchiveMembers)


def test_zip_whose_end_record_understates_its_members() -> None:
    """The end-of-central-directory count says 1; the central directory holds 10,000.
    zipfile reads the directory by size, so the second check counts them."""
    payload = bytearray(zip_of((f"m{i}.xml", b"<feedback/>") for i in range(10_000)))
    eocd = payload.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", payload, eocd + 8, 1, 1)
    with bounded():
        err = failure(part_events(bytes(payload)))
    assert_error(err, TooManyArchiveMembers)
    assert isinstance(err, LimitExceeded) and err.value == 10_000


def test_archive_layers_beyond_max_depth() -> None:
    report = aggregate()
    zip_gz_gz = gzip_of(gzip_of(zip_of([("report.xml", report)])))
    # Three layers are the default maximum: this one is read.
    ok = part_events(zip_gz_gz)
    assert not [e for e in ok if isinstance(e, PartFailed)]
    (head,) = reports(ok)
    assert head.part.layers == ("gzip", "gzip", "zip:report.xml")
    with bounded():
        err = failure(part_events(zip_gz_gz, Limits(max_archive_depth=2)))
        assert_error(err, ArchiveTooDeep, Reason.ARCHIVE_TOO_DEEP)
        assert isinstance(err, LimitExceeded) and (err.value, err.maximum) == (3, 2)
        events = message_events(report_email(gzip_of(zip_gz_gz)))
        err = failure(events)
        assert_error(err, ArchiveTooDeep)
        assert isinstance(err, LimitExceeded) and (err.value, err.maximum) == (4, 3)


def test_zip_quine_like_nesting_of_zips() -> None:
    """42.zip in miniature: zips in zips, each layer small."""
    data = aggregate()
    for level in range(8):
        data = zip_of([(f"layer{level}.zip", data)])
    with bounded():
        assert_error(failure(part_events(data)), ArchiveTooDeep)


@pytest.mark.parametrize("wrap", [gzip_of, zlib_of], ids=["gzip", "zlib"])
def test_truncated_archive(wrap: Callable[[bytes], bytes]) -> None:
    whole = wrap(aggregate(RECORD * 200))
    for cut in (len(whole) // 2, len(whole) - 3):
        with bounded(peak=None):
            err = failure(part_events(whole[:cut]))
        assert_error(err, TruncatedArchive, Reason.TRUNCATED_ARCHIVE)
    events = message_events(report_email(whole[: len(whole) // 2]))
    assert_error(failure(events), TruncatedArchive)


# --- XML -------------------------------------------------------------------------------

XXE_SYSTEM = b'<!DOCTYPE feedback SYSTEM "file:///etc/passwd">\n'
XXE_ENTITY = b'<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
BILLION_LAUGHS = (
    b'<!DOCTYPE feedback [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n"
)


def _assert_no_passwd(events: list[Event]) -> None:
    text = repr(events)
    for line in passwd_lines():
        assert line not in text


@pytest.mark.parametrize(
    ("prolog", "field"),
    [(XXE_SYSTEM, b"hostile-1"), (XXE_ENTITY, b"&xxe;"), (BILLION_LAUGHS, b"&lol9;")],
    ids=["xxe-external-subset", "xxe-external-entity", "billion-laughs"],
)
def test_dtd_is_forbidden(prolog: bytes, field: bytes) -> None:
    doc = aggregate(prolog=prolog).replace(b"hostile-1</report_id>", field + b"</report_id>")
    with bounded(seconds=2, peak=None):
        events = part_events(doc)
        err = failure(events)
        assert_error(err, ForbiddenXml, Reason.FORBIDDEN_XML)
        _assert_no_passwd(events)
        events = message_events(report_email(gzip_of(doc)))
        assert_error(failure(events), ForbiddenXml)
        _assert_no_passwd(events)


@pytest.mark.parametrize(
    "prolog",
    [
        b'<!DOC\x01TYPE feedback SYSTEM "file:///etc/passwd">\n',
        b'<!DOC\x01TYPE feedback [<!ENT\x01ITY % x SYSTEM "file:///etc/passwd"> %x;]>\n',
        b'<!DOC\x08TYPE feedback [<!ATTLIST feedback a CDATA "b">]>\n',
    ],
    ids=["external-subset", "parameter-entity", "internal-subset"],
)
def test_dtd_hidden_by_a_control_character_is_forbidden(prolog: bytes) -> None:
    """A DTD behind a control character (``<!DOC\\x01TYPE``) is ForbiddenXml like any
    other: XmlCleaner removes the control characters XML forbids *before* it looks for
    markup declarations, so none reaches libxml2, which would open the file an external
    subset or parameter entity names (a file-existence oracle; a FIFO would hang it)."""
    doc = aggregate(prolog=prolog)
    with bounded(seconds=2, peak=None):
        events = part_events(doc)
    _assert_no_passwd(events)
    failed = [e.error for e in events if isinstance(e, PartFailed)]
    got = [f"{type(e).__name__}: {e}" for e in failed] or [f"{len(reports(events))} report(s)"]
    assert [type(e) for e in failed] == [ForbiddenXml], (
        f"a DTD behind a control character is not refused; got {got}"
    )


def test_truncated_xml() -> None:
    doc = aggregate(RECORD * 500)
    for cut in (len(doc) // 2, len(doc) - 5, 300):
        with bounded(seconds=2, peak=None):
            err = failure(part_events(doc[:cut]))
        assert_error(err, TruncatedXml, Reason.TRUNCATED_XML)
    events = message_events(report_email(gzip_of(doc[: len(doc) // 2])))
    assert_error(failure(events), TruncatedXml)


def test_small_malformed_document_is_a_syntax_error_not_truncated() -> None:
    """A mismatched tag is XmlSyntaxError in a short document as in a long one, although
    XmlCleaner holds back the first 256 bytes, so a short document reaches the parser
    only at its end: TruncatedXml is for input that stops inside markup."""
    bad = b"<feedback><report_metadata></policy_published></feedback>\n"
    long_doc = aggregate(bad[len(b"<feedback>") :] + RECORD * 20)
    assert_error(failure(part_events(long_doc)), XmlSyntaxError, Reason.XML_SYNTAX)
    err = failure(part_events(XML_DECL + bad))
    assert type(err) is XmlSyntaxError, (
        f"a complete, short, malformed document is reported as {type(err).__name__}"
    )


def _nested(depth: int, name: bytes = b"x") -> bytes:
    return b"<%s>" % name * depth + b"deep" + b"</%s>" % name * depth


@pytest.mark.parametrize(
    "body",
    [
        # 1000 levels inside a record: libxml2 stops at 256 (no huge_tree).
        RECORD.replace(b"</record>", _nested(1000) + b"</record>"),
        # 1000 levels in an <extension>.
        b"<extension>" + _nested(1000) + b"</extension>\n" + RECORD,
        # Past max_xml_depth (32), under libxml2's 256: the walk of kept subtrees.
        b"<extension>" + _nested(40) + b"</extension>\n" + RECORD,
        RECORD.replace(b"</record>", _nested(40) + b"</record>"),
    ],
    ids=["record-1000", "extension-1000", "extension-40", "record-40"],
)
def test_deep_xml(body: bytes) -> None:
    with bounded(seconds=2, peak=None):
        err = failure(part_events(aggregate(body)))
    assert_error(err, XmlTooDeep, Reason.XML_TOO_DEEP)
    events = message_events(report_email(gzip_of(aggregate(body))))
    assert_error(failure(events), XmlTooDeep)


@pytest.mark.parametrize(
    "where",
    ["row", "report_metadata", "policy_published"],
)
def test_max_xml_depth_holds_inside_known_elements(where: str) -> None:
    """max_xml_depth is "Element nesting in a report XML document" (limits.py): it holds
    under <row>, <report_metadata> and <policy_published> too, not only in the subtrees
    kept raw (extensions, unknown children of a record), and well below libxml2's own
    256."""
    deep = _nested(100)
    doc = aggregate(
        RECORD.replace(b"</row>", deep + b"</row>") if where == "row" else RECORD,
        metadata_extra=deep if where == "report_metadata" else b"",
        policy_extra=deep if where == "policy_published" else b"",
    )
    with bounded(seconds=2, peak=None):
        events = part_events(doc)
    failed = [type(e.error) for e in events if isinstance(e, PartFailed)]
    assert failed == [XmlTooDeep], (
        f"100 nested elements under <{where}> pass max_xml_depth="
        f"{DEFAULT.max_xml_depth}: {len(reports(events))} report(s), failures {failed}"
    )


def test_too_many_records() -> None:
    limits = Limits(max_records=10)
    doc = aggregate(RECORD * 11)
    with bounded(seconds=2, peak=None):
        events = part_events(doc, limits)
    err = failure(events)
    assert_error(err, TooManyRecords, Reason.TOO_MANY_RECORDS)
    assert isinstance(err, LimitExceeded) and (err.value, err.maximum) == (11, 10)
    # The records read before the cap belong to a report that is not valid (SPEC.md C.26).
    assert sum(isinstance(e, Record) for e in events) == 10
    assert not any(isinstance(e, AggregateEnd) for e in events)
    assert_error(failure(message_events(report_email(gzip_of(doc)), limits)), TooManyRecords)
    assert not [e for e in part_events(aggregate(RECORD * 10), limits) if isinstance(e, PartFailed)]


def test_root_that_is_not_feedback() -> None:
    for doc in (
        XML_DECL + b"<report><record><row/></record></report>\n",
        XML_DECL + b"<html><body>not a report</body></html>\n",
        aggregate().replace(b"feedback>", b"feedbacks>"),
    ):
        with bounded(seconds=2, peak=None):
            err = failure(part_events(doc))
        assert_error(err, InvalidReport, Reason.INVALID_REPORT)
    # In a gzip the root cannot be sniffed by the MIME walk: the part is parsed and refused.
    events = message_events(report_email(gzip_of(XML_DECL + b"<report><a/></report>")))
    assert_error(failure(events), InvalidReport)


def test_element_larger_than_its_cap() -> None:
    doc = aggregate(b"<record><row><source_ip>" + b"9" * (2 * MiB) + b"</source_ip></row></record>")
    with bounded(seconds=2, peak=None):
        err = failure(part_events(doc, Limits(max_element_bytes=256 * KiB)))
    assert_error(err, ElementTooLarge, Reason.ELEMENT_TOO_LARGE)


@pytest.mark.parametrize(
    ("doc", "what", "invalid"),
    [
        (aggregate(begin=b"1e999"), "date_range/begin 1e999", True),
        (aggregate(begin=b"9" * 5000), "a 5000-digit date_range/begin", True),
        (aggregate(RECORD.replace(b"<count>1<", b"<count>inf<")), "record count inf", True),
        # pct is optional (RFC 7489 only): a value that is not a number is ignored
        (aggregate(policy_extra="<pct>\u00b2</pct>".encode()), "pct of a superscript two", False),
        (
            b'{"organization-name": "o", "report-id": "r", "date-range": {"start-datetime": '
            b'"2023-11-14T00:00:00Z", "end-datetime": "2023-11-15T00:00:00Z"}, "policies": '
            b'[{"policy": {"policy-type": "sts", "policy-domain": "example.com"}, "summary": '
            b'{"total-successful-session-count": 1e999, "total-failure-session-count": 0}}]}',
            "TLS session count 1e999",
            True,
        ),
    ],
    ids=["begin-1e999", "begin-5000-digits", "count-inf", "pct-superscript", "tls-count-1e999"],
)
def test_out_of_range_numbers_are_invalid_reports(doc: bytes, what: str, invalid: bool) -> None:
    """Numbers int() cannot take (1e999, inf, 5000 digits, a superscript digit) never
    escape as OverflowError or ValueError, which would take down the whole message: a
    date or a count is InvalidReport, a pct that is not ASCII digits is ignored."""
    events = part_events(doc)
    failed = [ev.error for ev in events if isinstance(ev, PartFailed)]
    if invalid:
        assert [type(e) for e in failed] == [InvalidReport], what
    else:
        assert failed == [], what
        (head,) = [ev for ev in events if isinstance(ev, AggregateReport)]
        assert head.policy.pct is None
    events = message_events(report_email(gzip_of(doc)))
    assert isinstance(events[0], MessageInfo), what


def test_json_larger_than_its_cap() -> None:
    doc = b'{"report-id": "' + b"a" * (2 * MiB) + b'"}'
    with bounded():
        err = failure(part_events(doc, Limits(max_json_bytes=MiB)))
    assert_error(err, JsonTooLarge, Reason.JSON_TOO_LARGE)


# --- MIME ------------------------------------------------------------------------------


def nested_multiparts(depth: int) -> Iterator[bytes]:
    yield HEAD + b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n'
    for level in range(1, depth):
        yield b'--b%d\r\nContent-Type: multipart/mixed; boundary="b%d"\r\n\r\n' % (
            level - 1,
            level,
        )
    for level in range(depth - 1, -1, -1):
        yield b"--b%d--\r\n" % level


def nested_messages(depth: int) -> Iterator[bytes]:
    yield HEAD + b"Content-Type: message/rfc822\r\n\r\n"
    for _ in range(depth):
        yield b"Subject: inner\r\nContent-Type: message/rfc822\r\n\r\n"


@pytest.mark.parametrize("build", [nested_multiparts, nested_messages], ids=["multipart", "rfc822"])
def test_ten_thousand_nested_parts(build: Callable[[int], Iterator[bytes]]) -> None:
    message = b"".join(build(10_000))
    with bounded(), pytest.raises(MimeTooDeep) as info:
        message_events(message)
    assert_error(info.value, MimeTooDeep, Reason.MIME_TOO_DEEP)
    assert (info.value.value, info.value.maximum) == (21, DEFAULT.max_mime_depth)


class Pulled:
    """A lazy chunk source that counts what the consumer took."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.taken += len(chunk)
            yield chunk


def one_long_line(head: bytes, total: int, tail: bytes = b"") -> Iterator[bytes]:
    yield head
    block = b"QUFB" * (SMTP_CHUNK // 4)  # valid base64, no line break ever
    for _ in range(total // len(block)):
        yield block
    yield tail


@pytest.mark.parametrize("multipart", [False, True], ids=["single-part", "in-multipart"])
def test_hundred_megabyte_base64_line(multipart: bool) -> None:
    """100 MB in one line, produced lazily: LineTooLong (1 MiB) comes long before
    MessageTooLarge (64 MiB), after reading little more than 1 MiB."""
    assert DEFAULT.max_line_bytes < DEFAULT.max_message_bytes == 64 * MiB
    attachment = (
        b'Content-Type: application/gzip; name="r.xml.gz"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    if multipart:
        head = HEAD + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + attachment
        tail = b"\r\n--B--\r\n"
    else:
        head, tail = HEAD + attachment, b"\r\n"
    source = Pulled(one_long_line(head, 100 * 1000 * 1000, tail))
    with bounded(), pytest.raises(LineTooLong) as info:
        message_events(source)
    assert_error(info.value, LineTooLong, Reason.LINE_TOO_LONG)
    assert info.value.maximum == DEFAULT.max_line_bytes
    assert source.taken <= DEFAULT.max_line_bytes + 2 * SMTP_CHUNK + len(head)


def test_message_larger_than_its_cap() -> None:
    source = Pulled(one_long_line(HEAD + b"Content-Type: text/plain\r\n\r\n", 8 * MiB))
    limits = Limits(max_message_bytes=MiB, max_line_bytes=4 * MiB)
    with bounded(), pytest.raises(MessageTooLarge) as info:
        message_events(source, limits)
    assert_error(info.value, MessageTooLarge, Reason.MESSAGE_TOO_LARGE)
    assert source.taken <= MiB + SMTP_CHUNK + 1024


def test_broken_base64_is_a_part_failure() -> None:
    good = base64.encodebytes(gzip_of(aggregate())).replace(b"\n", b"\r\n")
    broken = good[:40] + b"!!*&^%$#@" + good[40:]
    message = (
        HEAD + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nreport attached\r\n"
        b'--B\r\nContent-Type: application/gzip; name="r.xml.gz"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + broken + b"--B--\r\n"
    )
    with bounded():
        events = message_events(message)
    err = failure(events)
    assert_error(err, TransferEncodingError, Reason.TRANSFER_ENCODING)
    assert not reports(events)
    # A lone trailing character cannot be padded into a byte either.
    data = gzip_of(aggregate())
    unpadded = base64.b64encode(data[: len(data) - len(data) % 3])
    message = HEAD + b"Content-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert_error(failure(message_events(message + unpadded + b"A\r\n")), TransferEncodingError)


def endless_header(head: bytes, limit: int = 16 * MiB) -> Iterator[bytes]:
    yield head
    sent = 0
    line = 0
    while sent < limit:
        block = b"".join(b"X-Filler-%d: %s\r\n" % (line + i, b"a" * 60) for i in range(1000))
        line += 1000
        sent += len(block)
        yield block


@pytest.mark.parametrize("nested", [False, True], ids=["message", "part"])
def test_header_block_without_end(nested: bool) -> None:
    head = HEAD
    if nested:
        head += b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
    source = Pulled(endless_header(head))
    with bounded(), pytest.raises(HeaderTooLarge) as info:
        message_events(source)
    assert_error(info.value, HeaderTooLarge, Reason.HEADER_TOO_LARGE)
    assert source.taken <= DEFAULT.max_header_bytes + 2 * 100 * KiB


def test_too_many_parts() -> None:
    parts = b"".join(
        b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
        for i in range(DEFAULT.max_mime_parts + 100)
    )
    message = HEAD + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + b"--B--\r\n"
    with bounded(), pytest.raises(TooManyParts) as info:
        message_events(message)
    assert_error(info.value, TooManyParts, Reason.TOO_MANY_PARTS)
    assert (info.value.value, info.value.maximum) == (501, 500)


def _multipart_report(top_fields: bytes, part_fields: bytes = b"") -> bytes:
    attachment = base64.encodebytes(gzip_of(aggregate())).replace(b"\n", b"\r\n")
    return (
        top_fields + b"Subject: report\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\n" + part_fields + b"\r\nA report is attached.\r\n"
        b"--B\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment
        + b"--B--\r\n"
    )


@pytest.mark.parametrize(
    "message",
    [
        _multipart_report(b"From: a@[\r\n"),
        _multipart_report(b"From: :;@\r\n"),
        _multipart_report(b"From: .:\r\n"),
        _multipart_report(b"From:\r\n .;\r\n"),
        _multipart_report(b"From: r@example.net\r\n", b"Content-Type: text/plain; a_*\r\n"),
    ],
    ids=["from-a@[", "from-:;@", "from-.:", "from-folded-.;", "part-content-type-a_*"],
)
def test_malformed_header_fields_do_not_lose_the_report(message: bytes) -> None:
    """Header fields that the stdlib's structured header parsers crash on (``From: a@[``,
    ``From: :;@``, ``From: .:``, a folded ``From:`` of ``.;``, a ``Content-Type``
    parameter without "=") are read as absent or raw, and the report is parsed: one
    malformed field in any part does not lose the message."""
    with bounded(seconds=2):
        events = message_events(message)
    assert len(reports(events)) == 1


def test_message_without_report_like_part() -> None:
    msg = EmailMessage()
    msg["From"] = "someone@example.net"
    msg["To"] = "rua@example.com"
    msg["Subject"] = "Hello"
    msg.set_content("Not a report.\n" * 100)
    msg.add_attachment(b"\x89PNG\r\n\x1a\n" + bytes(4000), maintype="image", subtype="png")
    msg.add_attachment(b"<html><p>hi</p></html>", maintype="text", subtype="xml")
    with bounded(), pytest.raises(NotAReport) as info:
        message_events(msg.as_bytes(policy=email.policy.SMTP))
    assert_error(info.value, NotAReport, Reason.NOT_A_REPORT)
    with pytest.raises(NotAReport):
        message_events(b"")
