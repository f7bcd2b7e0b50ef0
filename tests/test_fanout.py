"""Large reports parsed in worker processes give what one process gives, or its error.

Every test parses the same document twice, with real worker processes and small
segments (so a few hundred records make many), and without; the records (as COPY text)
and the totals, or the error, must be the same.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from rua_sink.core.aggregate import parse_aggregate
from rua_sink.core.fanout import Fanout, parse_segment
from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateEnd, AggregateReport, PartInfo, Record, RecordBatch
from rua_sink.errors import MessageError
from rua_sink.ingest.parsepool import ParsePool
from rua_sink.storage.copytext import encode_records

from .reports import NS_9990, record_xml, report_xml

SEGMENT = 4096  # about 6 records


@pytest.fixture(scope="module")
def executor() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        yield pool


def run(
    doc: bytes, fanout: Fanout | None, limits: Limits | None = None
) -> tuple[tuple[Any, ...], int]:
    """(head, COPY lines, totals, batches) of a document, or the error it raises."""
    chunks = iter([doc[i : i + 1000] for i in range(0, len(doc), 1000)])
    lines: list[str] = []
    head = end = None
    batches = 0
    try:
        for ev in parse_aggregate(chunks, PartInfo(index=1), limits or Limits(), fanout):
            if isinstance(ev, RecordBatch):
                batches += 1
                lines.extend(ev.payload[0].split("\n"))
            elif isinstance(ev, Record):
                lines.extend(encode_records([ev])[0].split("\n"))
            elif isinstance(ev, AggregateReport):
                head = ev
            elif isinstance(ev, AggregateEnd):
                end = (ev.record_count, ev.message_count, ev.repairs, ev.document_bytes)
    except MessageError as exc:
        return ("error", type(exc).__name__, str(exc)), batches
    return (head, lines, end), batches


def same(doc: bytes, executor: ProcessPoolExecutor, limits: Limits | None = None) -> int:
    """Asserts both parses agree; returns the number of batches the workers made."""
    fanout = Fanout(executor, encode_records, segment_bytes=SEGMENT)
    expected, none = run(doc, None, limits)
    got, batches = run(doc, fanout, limits)
    assert none == 0
    assert got == expected
    return batches


def records(n: int, start: int = 0) -> str:
    return "\n".join(record_xml(f"192.0.2.{i % 250 + 1}", i + 1) for i in range(start, start + n))


def test_a_large_report_is_parsed_by_the_workers(executor: ProcessPoolExecutor) -> None:
    doc = report_xml(body=records(400))
    assert same(doc, executor) > 20


def test_namespaced_records(executor: ProcessPoolExecutor) -> None:
    doc = report_xml(body=records(300), ns=NS_9990)
    assert same(doc, executor) > 20
    prefixed = (
        b'<?xml version="1.0"?><d:feedback xmlns:d="urn:example:dmarc">'
        b"<d:report_metadata><d:org_name>o</d:org_name><d:report_id>p</d:report_id>"
        b"<d:date_range><d:begin>1</d:begin><d:end>2</d:end></d:date_range>"
        b"</d:report_metadata><d:policy_published><d:domain>example.com</d:domain>"
        b"</d:policy_published>"
        + records(300).replace("<", "<d:").replace("<d:/", "</d:").encode()
        + b"</d:feedback>"
    )
    assert same(prefixed, executor) > 20


@pytest.mark.parametrize(
    "insert",
    [
        "<!-- </record> -->",  # a cut inside a comment
        "<![CDATA[ </record> ]]>",  # inside a CDATA section (text at the top level)
        "<report_metadata><org_name>late</org_name></report_metadata>",  # repeated head
        "<unknown><record>" + record_xml()[8:] + "</unknown>",  # a stray wrapper
        "<extension><x:y xmlns:x='urn:x'/></extension>",
    ],
)
def test_what_is_not_a_record_is_read_by_the_parser(
    executor: ProcessPoolExecutor, insert: str
) -> None:
    doc = report_xml(body=records(150) + insert + records(150, 150))
    same(doc, executor)


@pytest.mark.parametrize(
    "broken",
    [
        record_xml().replace("<source_ip>192.0.2.1</source_ip>", ""),  # invalid record
        record_xml().replace("<count>1</count>", "<count>many</count>"),
        record_xml().replace("</row>", ""),  # not well-formed: the error names its line
        "<record>" + "<a>" * 40 + "</a>" * 40 + "</record>",  # too deep
    ],
)
def test_errors_are_those_of_one_process(executor: ProcessPoolExecutor, broken: str) -> None:
    doc = report_xml(body=records(200) + "\n" + broken + "\n" + records(200, 200))
    got, _ = run(doc, Fanout(executor, encode_records, segment_bytes=SEGMENT))
    assert got[0] == "error"
    same(doc, executor)


def test_the_record_cap_counts_batches(executor: ProcessPoolExecutor) -> None:
    doc = report_xml(body=records(300))
    assert same(doc, executor, Limits(max_records=200)) > 0


def test_truncated_and_trailing(executor: ProcessPoolExecutor) -> None:
    doc = report_xml(body=records(300))
    same(doc[: len(doc) * 3 // 4], executor)
    same(doc + b"<trailing/>", executor)


def test_other_encodings_stay_in_one_process(executor: ProcessPoolExecutor) -> None:
    doc = report_xml(body=records(300)).replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"')
    assert same(doc, executor) == 0


def test_a_worker_refuses_anything_but_records() -> None:
    root, end = b"<feedback>", b"</feedback>"
    ok = parse_segment(root, end, records(3).encode(), 32, encode_records)
    assert ok is not None and ok[0].count == 3 and ok[0].messages == 6
    for segment in ("<other/>" + records(1), records(1) + "<!-- ", "<record>"):
        assert parse_segment(root, end, segment.encode(), 32, encode_records) is None


def test_a_dead_worker_costs_nothing() -> None:
    pool = ParsePool(2)
    try:
        pool.warm()
        assert pool.fanout is not None
        fanout = Fanout(pool.fanout.executor, encode_records, segment_bytes=SEGMENT)
        doc = report_xml(body=records(400))
        expected, _ = run(doc, None)
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        got, _ = run(doc, fanout)  # the pool is broken: the parser reads it all
        assert got == expected
        got, batches = run(doc, fanout)  # and a new pool takes over
        assert got == expected and batches > 20
    finally:
        pool.close()


def test_no_workers_means_no_fanout() -> None:
    assert ParsePool(0).fanout is None
