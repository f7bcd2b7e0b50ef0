"""Archive layers: gzip members and trailing bytes, zlib, zip members, nesting."""

from __future__ import annotations

import io
import zlib

from rua_sink.core.limits import Limits
from rua_sink.core.model import PartInfo
from rua_sink.core.pipeline import default_spool, parse_part
from rua_sink.errors import DecompressionError, TruncatedArchive, UnknownFormat

from .conftest import Collected, collect
from .reports import TLS_JSON, gz, report_xml, zipped


def unpack(data: bytes, limits: Limits | None = None) -> Collected:
    return collect(
        parse_part(io.BytesIO(data), PartInfo(index=1), limits or Limits(), default_spool)
    )


def layers(got: Collected) -> list[tuple[str, ...]]:
    return [head.part.layers for head, _, _ in got.aggregates]


def test_plain_xml_and_plain_json() -> None:
    assert layers(unpack(report_xml(1))) == [()]
    assert unpack(TLS_JSON).tls[0].report_id == "tls-1"


def test_multi_member_gzip_is_one_document() -> None:
    xml = report_xml(3)
    half = len(xml) // 2
    got = unpack(gz(xml[:half]) + gz(xml[half:]))
    assert got.aggregates[0][2].record_count == 3


def test_trailing_garbage_after_gzip_is_ignored() -> None:
    # Mimecast adds a CRLF after the gzip stream (SPEC.md I.58).
    for tail in (b"\r\n", b"\x00\x00", b"unused data"):
        got = unpack(gz(report_xml(2)) + tail)
        assert got.failed == [] and got.aggregates[0][2].record_count == 2


def test_bare_zlib_stream() -> None:
    got = unpack(zlib.compress(report_xml(1)))
    assert layers(got) == [("zlib",)]


def test_nested_archives() -> None:
    assert layers(unpack(gz(gz(report_xml(1))))) == [("gzip", "gzip")]
    assert layers(unpack(gz(zipped({"r.xml": report_xml(1)})))) == [("gzip", "zip:r.xml")]
    assert layers(unpack(zipped({"r.xml.gz": gz(report_xml(1))}))) == [("zip:r.xml.gz", "gzip")]


def test_every_zip_member_is_read() -> None:
    got = unpack(
        zipped(
            {
                "a.xml": report_xml(1, report_id="a"),
                "dir/b.xml": report_xml(2, report_id="b"),
                "c.json": TLS_JSON,
            }
        )
    )
    assert [h.metadata.report_id for h, _, _ in got.aggregates] == ["a", "b"]
    assert [t.part.layers for t in got.tls] == [("zip:c.json",)]


def test_unknown_zip_member_fails_alone() -> None:
    got = unpack(zipped({"README.txt": b"hello", "a.xml": report_xml(1)}))
    assert len(got.aggregates) == 1
    (failed,) = got.failed
    assert isinstance(failed.error, UnknownFormat)
    assert failed.part.layers == ("zip:README.txt",)


def test_corrupt_and_truncated_gzip() -> None:
    data = bytearray(gz(report_xml(50)))
    data[40:60] = b"\xff" * 20
    (failed,) = unpack(bytes(data)).failed
    assert isinstance(failed.error, DecompressionError)
    (failed,) = unpack(gz(report_xml(50))[:-30]).failed
    assert isinstance(failed.error, TruncatedArchive)


def test_truncated_zip() -> None:
    data = zipped({"a.xml": report_xml(30)})
    (failed,) = unpack(data[: len(data) // 2]).failed
    assert isinstance(failed.error, DecompressionError)
