"""Reporters' formats that need a repair, and a MIME shape that was misread, end to end:
the real ``rua-sink ingest`` and ``rua-sink serve`` storing into a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path

import asyncpg

from rua_sink.core.sniff import SNIFF_BYTES
from rua_sink.core.unpack import CHUNK

from .pg import fetch
from .procs import cli
from .reports import gz, message, record_xml, report_xml, signed
from .smtpserver import Server, send, stored

XSD_WRAPPER = b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n'


def ingest(db: str, *paths: Path) -> dict[str, int]:
    proc = cli("ingest", "--json", *map(str, paths), env={"RUA_SINK_DATABASE_URL": db})
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, int] = json.loads(proc.stdout)
    return summary


def report_row(db: str, report_id: str) -> tuple[asyncpg.Record, list[tuple[str, str]]]:
    """A stored report, with its message's status, and its records' (source IP,
    header_from)."""
    (row,) = fetch(
        db,
        "SELECT r.id, r.email, r.repairs, r.record_count, m.status FROM aggregate_reports r "
        "JOIN raw_messages m ON m.id = r.raw_message_id WHERE r.report_id = $1",
        report_id,
    )
    records = fetch(
        db,
        "SELECT coalesce(host(source_ip), source_ip_text) AS ip, header_from "
        "FROM aggregate_records WHERE report = $1 ORDER BY 1",
        row["id"],
    )
    return row, [(r["ip"], r["header_from"]) for r in records]


def test_ingest_stores_a_report_inside_a_wrapper_element(db: str, tmp_path: Path) -> None:
    body = "".join(record_xml(f"192.0.2.{i}") for i in (1, 2, 3))
    xml = report_xml(body=body, report_id="wrapped").replace(
        b"<feedback>", XSD_WRAPPER + b"<feedback>"
    )
    plain = tmp_path / "wrapped.xml"
    plain.write_bytes(xml)
    email = tmp_path / "wrapped.eml"
    email.write_bytes(
        message((gz(xml.replace(b"wrapped", b"wrapped-gz")), "application/gzip", "w.xml.gz"))
    )
    summary = ingest(db, plain, email)
    assert (summary["reports_new"], summary["records"], summary["quarantined"]) == (2, 6, 0)
    for report_id in ("wrapped", "wrapped-gz"):
        row, records = report_row(db, report_id)
        assert row["status"] == "stored" and row["record_count"] == 3
        assert row["repairs"] == ["wrapper_element"]
        assert [ip for ip, _ in records] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_ingest_does_not_take_a_wrapper_without_feedback_for_a_report(
    db: str, tmp_path: Path
) -> None:
    xml = report_xml(2, report_id="no-feedback").replace(b"<feedback>", XSD_WRAPPER)
    path = tmp_path / "no-feedback.xml"
    path.write_bytes(xml.replace(b"</feedback>", b"</xs:schema>"))
    summary = ingest(db, path)
    assert (summary["reports_new"], summary["quarantined"]) == (0, 1)
    (row,) = fetch(db, "SELECT status, reason FROM raw_messages")
    assert (row["status"], row["reason"]) == ("quarantined", "invalid_report")


def test_ingest_stores_values_with_an_unescaped_lt_as_written(db: str, tmp_path: Path) -> None:
    bad = record_xml("192.0.2.7").replace(
        "example.com</header_from>", "bad<example.net</header_from>"
    )
    xml = report_xml(body=record_xml() + bad, report_id="lt").replace(
        b"<email>d@reporter.example</email>", b"<email><noreply@example.net></email>"
    )
    path = tmp_path / "lt.eml"
    path.write_bytes(message((gz(xml), "application/gzip", "lt.xml.gz")))
    summary = ingest(db, path)
    assert (summary["reports_new"], summary["records"], summary["quarantined"]) == (1, 2, 0)
    row, records = report_row(db, "lt")
    assert row["status"] == "stored" and row["repairs"] == ["unescaped_lt"]
    assert row["email"] == "<noreply@example.net>"
    assert records == [("192.0.2.1", "example.com"), ("192.0.2.7", "bad<example.net")]


def test_ingest_quarantines_a_broken_report_beside_an_unescaped_lt(db: str, tmp_path: Path) -> None:
    xml = report_xml(2, report_id="lt-broken").replace(
        b"<email>d@reporter.example</email>", b"<email><noreply@example.net></mail>"
    )
    path = tmp_path / "lt-broken.xml"
    path.write_bytes(xml)
    summary = ingest(db, path)
    assert (summary["reports_new"], summary["quarantined"]) == (0, 1)
    (row,) = fetch(db, "SELECT status, reason FROM raw_messages")
    assert (row["status"], row["reason"]) == ("quarantined", "xml_syntax")


# --- a discarded base64 part across a read boundary, over SMTP ---------------------------


def _b64_before(data: bytes, offset: int, body_start: int) -> int:
    """Base64 characters of the part whose body starts at ``body_start`` before ``offset``."""
    return len(re.sub(rb"[\r\n]", b"", data[body_start:offset]))


def _messages_across_a_read_boundary() -> list[bytes]:
    """Report messages with a base64 logo (not a report) that crosses the message's first
    read boundary (``CHUNK`` bytes) after its first ``SNIFF_BYTES`` decoded bytes; one for
    each count of base64 characters the decoder can hold there."""
    logo = random.Random(5).randbytes(80_000)
    out: list[bytes] = []
    held: set[int] = set()
    for pad in range(12):
        report = (gz(report_xml(2, report_id=f"logo-{pad}")), "application/gzip", "r.xml.gz")
        data = signed(
            message(
                report,
                (logo, "image/png", "logo.png"),
                text="This is an aggregate report." + " " * pad,
            )
        )
        start = data.index(b"\r\n\r\n", data.index(b'filename="logo.png"')) + 4
        assert _b64_before(data, CHUNK, start) > SNIFF_BYTES * 4 // 3
        held.add(_b64_before(data, CHUNK, start) % 4)
        out.append(data)
    # The fault needed a single character held back: at least one message has it.
    assert held == {0, 1, 2, 3}
    return out


def test_discarded_base64_part_across_a_read_boundary_is_stored(server: Server) -> None:
    for i, data in enumerate(_messages_across_a_read_boundary()):
        code, reply = send(server, data)
        assert (code, reply) == (250, "2.0.0 Report accepted"), i
        (row,) = stored(server, f"logo-{i}")
        assert (row["status"], row["record_count"]) == ("stored", 2)


def test_the_logo_is_base64_of_the_logo() -> None:
    # Each message's logo really is base64 that the walk discards: decoding it gives
    # the logo back, and it is not taken for a report.
    data = _messages_across_a_read_boundary()[0]
    body = data.split(b'filename="logo.png"', 1)[1].split(b"\r\n\r\n", 1)[1].split(b"--", 1)[0]
    assert base64.b64decode(body) == random.Random(5).randbytes(80_000)
