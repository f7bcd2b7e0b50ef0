"""Property tests: whatever comes in, only typed errors and model values come out.

(a) arbitrary bytes, soups of real MIME lines, and malformed header fields, as a message
    in arbitrary chunks;
(b) arbitrary bytes, and soups of real XML and JSON fragments, as a bare decoded part;
(c) the real corpus, mutated (flips, insertions, deletions, truncations), as files and
    as documents re-wrapped in gzip, zlib or zip;
(d) chunking invariance: a message fed in chunks of any size, down to one byte, gives
    exactly what it gives fed whole.

Property of (a) to (c): nothing but a ``MessageError`` escapes the core, every event is
one of the model's types, and events come in a sensible order (a record belongs to an
open aggregate report, an ``AggregateEnd`` closes the one that is open). Hypothesis runs
derandomized with no example database, so a run is the same on every machine.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rua_sink.core.aggregate import parse_aggregate
from rua_sink.core.limits import KiB, Limits, MiB
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    Event,
    FailureReport,
    MessageInfo,
    PartFailed,
    PartInfo,
    Record,
    TlsReport,
)
from rua_sink.core.pipeline import default_spool, parse_file, parse_message, parse_part
from rua_sink.errors import MessageError, Reason

from .conftest import CORPUS, Collected, collect
from .reports import gz, zipped

#: Small caps, so that no example can make the core do much work.
SMALL = Limits(
    max_message_bytes=1 * MiB,
    max_header_bytes=64 * KiB,
    max_line_bytes=256 * KiB,
    max_decompressed_bytes=4 * MiB,
    max_element_bytes=1 * MiB,
    max_json_bytes=1 * MiB,
    max_records=10_000,
    spool_memory_bytes=256 * KiB,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MODEL_TYPES = (
    MessageInfo,
    AggregateReport,
    Record,
    AggregateEnd,
    TlsReport,
    FailureReport,
    PartFailed,
)
SUFFIXES = (".eml", ".xml", ".gz", ".zip", ".zlib", ".json")

# --- the property ------------------------------------------------------------------------


def checked(events: Iterable[Event]) -> tuple[list[Event], MessageError | None]:
    """Drain ``events``; assert the property; return the events and the error raised."""
    out: list[Event] = []
    open_report: AggregateReport | None = None
    raised: MessageError | None = None
    try:
        for ev in events:
            assert isinstance(ev, MODEL_TYPES), f"not a model type: {type(ev).__name__}"
            if isinstance(ev, MessageInfo):
                assert not out, "MessageInfo after other events"
            elif isinstance(ev, AggregateReport):
                assert open_report is None, "an aggregate report opened inside another"
                open_report = ev
            elif isinstance(ev, Record):
                assert open_report is not None, "a record outside an aggregate report"
            elif isinstance(ev, AggregateEnd):
                assert ev.report is open_report, "AggregateEnd of a report that is not open"
                assert ev.record_count >= 0 and ev.message_count >= 0
                open_report = None
            elif isinstance(ev, PartFailed):
                assert isinstance(ev.error, MessageError)
                assert isinstance(ev.error.reason, Reason)
                open_report = None  # its records are discarded by consumers
            else:
                assert open_report is None, f"{type(ev).__name__} inside an aggregate report"
            out.append(ev)
    except MessageError as exc:
        raised = exc
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} escaped the core: {exc}") from exc
    assert raised is None or isinstance(raised.reason, Reason)
    return out, raised


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` in chunks of the given sizes, cycled; sizes are at least 1."""
    at = 0
    i = 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        yield data[at : at + size]
        at += size
        i += 1


def part_of(payload: bytes) -> Iterator[Event]:
    return parse_part(io.BytesIO(payload), PartInfo(index=1), SMALL, default_spool)


# --- the corpus, and fragments of it -----------------------------------------------------


@cache
def corpus_files() -> tuple[Path, ...]:
    files = tuple(sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in SUFFIXES))
    assert len(files) > 30, f"corpus missing at {CORPUS}"
    return files


@cache
def corpus_bytes() -> dict[str, bytes]:
    return {str(p.relative_to(CORPUS)): p.read_bytes() for p in corpus_files()}


@cache
def emails() -> tuple[bytes, ...]:
    return tuple(data for name, data in corpus_bytes().items() if name.endswith(".eml"))


def _inner(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zlib"):
        return zlib.decompress(data)
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.read(archive.namelist()[0])
    return data


@cache
def documents() -> tuple[bytes, ...]:
    """Every XML and JSON document of the corpus, decompressed."""
    return tuple(
        _inner(name, data) for name, data in corpus_bytes().items() if not name.endswith(".eml")
    )


@cache
def xml_documents() -> tuple[bytes, ...]:
    """The corpus's aggregate report documents."""
    return tuple(doc for doc in documents() if doc.lstrip().startswith(b"<"))


@cache
def mime_lines() -> tuple[bytes, ...]:
    """Lines of the corpus emails (with their line breaks), plus MIME that they lack."""
    lines = {line for data in emails() for line in data.splitlines(keepends=True)}
    report = gzip.compress(documents()[0])
    lines |= {
        b'Content-Type: multipart/mixed; boundary="b"\r\n',
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: message/feedback-report\r\n",
        b"Content-Type: text/rfc822-headers\r\n",
        b'Content-Type: application/gzip; name="r.xml.gz"\r\n',
        b"Content-Type: application/tlsrpt+json\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9port.xml\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"\r\n",
        b"\n",
        b"=\r\n",
        b"<feedback><report_metadata>=3D\r\n",
        base64.encodebytes(report).replace(b"\n", b"\r\n"),
    }
    return tuple(sorted(lines))


@cache
def xml_fragments() -> tuple[bytes, ...]:
    """The corpus XML cut before each '<', plus constructs the repairs deal with."""
    pieces: set[bytes] = set()
    for doc in documents():
        if doc.lstrip().startswith(b"<"):
            pieces.update(p for p in re.split(rb"(?=<)", doc) if p)
    pieces |= {
        b"&",
        b"<",
        b"AT&T",
        b"&amp;",
        b"&#x10FFFF;",
        b"&#0;",
        b"\x00",
        b"\x1f",
        b"\xff\xfe",
        b"\xc3",
        b"<![CDATA[",
        b"]]>",
        b"<!-- c -->",
        b"<?pi x?>",
        b"<xs:schema>",
        b"<ext:thing xmlns:ext='urn:x'>",
        b"</ext:thing>",
        b"<extension>",
        b"</extension>",
        b'<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">',
        b"</feedback>",
    }
    return tuple(sorted(pieces))


# --- strategies ----------------------------------------------------------------------

chunk_sizes = st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=16)
mime_soup = st.lists(st.sampled_from(mime_lines()) | st.binary(max_size=24), max_size=60).map(
    b"".join
)
xml_soup = st.lists(st.sampled_from(xml_fragments()) | st.binary(max_size=8), max_size=80).map(
    b"".join
)
TLS_KEYS = (
    "organization-name",
    "date-range",
    "start-datetime",
    "end-datetime",
    "contact-info",
    "report-id",
    "policies",
    "policy",
    "policy-type",
    "policy-string",
    "policy-domain",
    "mx-host",
    "summary",
    "total-successful-session-count",
    "total-failure-session-count",
    "failure-details",
    "result-type",
    "sending-mta-ip",
    "receiving-mx-hostname",
    "receiving-ip",
    "failed-session-count",
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["2019-04-14T00:00:00Z", "2019-04-14T23:59:59", "192.0.2.1", "sts"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(TLS_KEYS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)
json_docs = json_values.map(lambda v: json.dumps(v).encode())
MAGIC = (
    b"",
    b"\x1f\x8b",
    b"\x1f\x8b\x08\x00",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x78\x9c",
    b"<",
    b"{",
)


def _wrap(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gz(data)
    if kind == "zlib":
        return zlib.compress(data)
    if kind == "zip":
        return zipped({"report.xml": data})
    return data


wrapping = st.sampled_from(["none", "gzip", "zlib", "zip"])


@st.composite
def mutated(draw: st.DrawFn, source: bytes) -> bytes:
    """``source`` after a few random byte flips, insertions, deletions and a truncation."""
    data = bytearray(source)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=64))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(min_value=1, max_value=256))]
    return bytes(data)


def corpus_item(pick: Callable[[], tuple[bytes, ...]]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(pick()).flatmap(mutated)


# --- (a) messages ----------------------------------------------------------------------


@FUZZ
@given(chunks=st.lists(st.binary(max_size=512), max_size=12))
def test_arbitrary_bytes_as_a_message(chunks: list[bytes]) -> None:
    checked(parse_message(chunks, SMALL))


@FUZZ
@given(message=mime_soup, sizes=chunk_sizes)
def test_soup_of_mime_lines_as_a_message(message: bytes, sizes: list[int]) -> None:
    checked(parse_message(split(message, sizes), SMALL))


HEADER_NAMES = (
    "From",
    "Subject",
    "Message-ID",
    "Date",
    "Content-Type",
    "Content-Disposition",
    "Content-Transfer-Encoding",
    "TLS-Report-Domain",
)
# The specials of RFC 5322 3.2.3 and RFC 2045 5.1, and the openings of RFC 2047 and 2231.
HEADER_TOKENS = (
    *"a1@[]:;,<>()\"\\'=*/_. ",
    "\r\n ",
    "=?utf-8?q?",
    "?=",
    "utf-8''",
    "boundary",
    "multipart/mixed",
    "\x80",
)
header_fields = st.lists(
    st.tuples(
        st.sampled_from(HEADER_NAMES),
        st.lists(st.sampled_from(HEADER_TOKENS), max_size=16).map("".join),
    ),
    min_size=1,
    max_size=4,
).map(lambda fields: "".join(f"{n}:{v}\r\n" for n, v in fields).encode("utf-8"))


@cache
def small_report_email() -> tuple[bytes, bytes]:
    """Top-level header fields, and the rest of a small report email from its first part."""
    attachment = base64.encodebytes(gzip.compress(documents()[0], mtime=0))
    head = b"Subject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n"
    rest = (
        b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
        b"--B\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + attachment.replace(b"\n", b"\r\n")
        + b"--B--\r\n"
    )
    return head, rest


@pytest.mark.slow
@settings(FUZZ, max_examples=1000)
@given(fields=header_fields, on_part=st.booleans())
def test_soup_of_header_fields(fields: bytes, on_part: bool) -> None:
    """Malformed header fields (RFC 5322, RFC 2045, RFC 2047, RFC 2231) on a small report
    email, or on the part before its report."""
    head, rest = small_report_email()
    if on_part:
        at = rest.index(b"Content-Type: text/plain")
        message = head + rest[:at] + fields + rest[at:]
    else:
        message = fields + head + rest
    checked(parse_message([message], SMALL))


# --- (b) bare parts --------------------------------------------------------------------


@FUZZ
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_part(magic: bytes, rest: bytes) -> None:
    checked(part_of(magic + rest))


@FUZZ
@given(doc=xml_soup, wrap=wrapping)
def test_soup_of_xml_fragments_as_a_part(doc: bytes, wrap: str) -> None:
    checked(part_of(_wrap(wrap, doc)))


@FUZZ
@given(doc=json_docs, wrap=wrapping)
def test_json_values_as_a_part(doc: bytes, wrap: str) -> None:
    checked(part_of(_wrap(wrap, doc)))


# --- (c) the corpus, mutated -----------------------------------------------------------


@FUZZ
@given(name=st.sampled_from(sorted(corpus_bytes())), data=st.data())
def test_mutated_corpus_file(name: str, data: st.DataObject) -> None:
    mutant = data.draw(mutated(corpus_bytes()[name]), label="mutant")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(mutant)
        checked(parse_file(path, SMALL))


@FUZZ
@given(doc=corpus_item(documents), wrap=wrapping)
def test_mutated_corpus_document(doc: bytes, wrap: str) -> None:
    checked(part_of(_wrap(wrap, doc)))


@FUZZ
@given(message=corpus_item(emails), sizes=chunk_sizes)
def test_mutated_corpus_email_in_chunks(message: bytes, sizes: list[int]) -> None:
    checked(parse_message(split(message, sizes), SMALL))


# --- (d) chunking invariance -------------------------------------------------------------


def _outcome(events: Iterable[Event]) -> tuple[Collected, type[MessageError] | None]:
    got, raised = checked(events)
    return collect(got), type(raised) if raised is not None else None


def _same(a: Collected, b: Collected) -> None:
    assert a.info == b.info
    assert a.aggregates == b.aggregates
    assert a.tls == b.tls
    assert a.failures == b.failures
    assert [(f.part, type(f.error)) for f in a.failed] == [
        (f.part, type(f.error)) for f in b.failed
    ]


@pytest.mark.parametrize("index", range(len(emails())))
def test_corpus_email_one_byte_at_a_time(index: int) -> None:
    message = emails()[index]
    whole, raised = _outcome(parse_message([message]))
    assert raised is None and whole.failed == [] and whole.reports >= 1
    bytewise, raised = _outcome(parse_message(message[i : i + 1] for i in range(len(message))))
    assert raised is None
    _same(bytewise, whole)


@settings(FUZZ, max_examples=150)
@given(
    index=st.integers(min_value=0, max_value=len(emails()) - 1),
    sizes=chunk_sizes,
    crlf=st.booleans(),
)
def test_corpus_email_in_random_chunks(index: int, sizes: list[int], crlf: bool) -> None:
    message = emails()[index]
    if crlf:  # as SMTP delivers it
        message = re.sub(rb"\r?\n", b"\r\n", message)
    whole, _ = _outcome(parse_message([message]))
    assert whole.failed == [] and whole.reports >= 1
    chunked, raised = _outcome(parse_message(split(message, [max(1, s % 97) for s in sizes])))
    assert raised is None
    _same(chunked, whole)


@FUZZ
@given(message=mime_soup, sizes=chunk_sizes)
def test_any_message_in_random_chunks(message: bytes, sizes: list[int]) -> None:
    """The same holds for messages that are not well-formed: only the error raised (by
    class) and the failures (by part and class) are compared, since a limit's value may
    depend on where the chunks end."""
    whole = _outcome(parse_message([message], SMALL))
    chunked = _outcome(parse_message(split(message, sizes), SMALL))
    _same(chunked[0], whole[0])
    assert chunked[1] is whole[1]


def _xml_events(doc: bytes, sizes: list[int]) -> list[Any]:
    got, raised = checked(parse_aggregate(split(doc, sizes), PartInfo(index=1), SMALL))
    return [*got, type(raised) if raised else None]


@settings(FUZZ, max_examples=150)
@given(doc=st.sampled_from(range(len(xml_documents()))), sizes=chunk_sizes, small=st.booleans())
def test_corpus_xml_in_random_chunks(doc: int, sizes: list[int], small: bool) -> None:
    """XmlCleaner carries bytes between chunks so no repair depends on where they end."""
    text = xml_documents()[doc]
    cut = [max(1, s % 13) for s in sizes] if small else sizes
    assert _xml_events(text, cut) == _xml_events(text, [len(text) + 1])
