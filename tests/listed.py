"""What the listing and export tests store: the corpus (aggregate, TLS and failure reports),
the corpus's bare TLS report files, and two hostile reports whose text holds control
characters and a spreadsheet formula. What the parser reads from the same files is the
reference."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateReport, FailureReport, Record, TlsReport
from rua_sink.core.names import domain
from rua_sink.core.pipeline import parse_file
from rua_sink.ingest.ingester import Ingester
from rua_sink.storage.rows import reporter_key
from rua_sink.storage.store import Store

from .conftest import CORPUS, corpus
from .storage import corpus_reports, ingest_files, with_store

#: Text a stranger may write into a report: an escape sequence that recolours the
#: operator's terminal, a bell, a carriage return that hides what came before.
HOSTILE = "Evil\x1b[31m\x07Org\rX"
#: The same in a mail header field, where a carriage return would end the line.
HOSTILE_FIELD = "Evil\x1b[31m\x07Filter"
#: A cell a spreadsheet would run as a formula.
FORMULA = '=HYPERLINK("http://evil.example")'

HOSTILE_TLS = {
    "organization-name": HOSTILE,
    "date-range": {
        "start-datetime": "2021-03-01T00:00:00Z",
        "end-datetime": "2021-03-01T23:59:59Z",
    },
    "contact-info": "tls@evil.example",
    "report-id": FORMULA,
    "policies": [
        {
            "policy": {
                "policy-type": "sts",
                "policy-string": ["version: STSv1", "mode: enforce"],
                "policy-domain": "hostile.example",
                "mx-host": ["mx.hostile.example"],
            },
            "summary": {
                "total-successful-session-count": 7,
                "total-failure-session-count": 4,
            },
            "failure-details": [
                {
                    "result-type": "certificate-expired",
                    "sending-mta-ip": "192.0.2.77",
                    "receiving-ip": "198.51.100.7",
                    "receiving-mx-hostname": "mx\x1b[2J.hostile.example",
                    "failed-session-count": 4,
                }
            ],
        }
    ],
}


def hostile_failure() -> bytes:
    """The corpus's ARF report 003.eml, its reporter and envelope sender rewritten with
    control characters (raw bytes in the header fields, as a hostile MTA would send them)."""
    data = corpus("stalwartlabs__mail-auth/resources/arf/003.eml").read_bytes()
    return (
        data.replace(b"User-Agent: SomeDKIMFilter/1.0", b"User-Agent: " + HOSTILE_FIELD.encode())
        .replace(b"<randomuser@example.net>", b"<evil\x1b]0;owned\x07@example.net>")
        .replace(b"Reported-Domain: example.net", b"Reported-Domain: hostile.example")
    )


def tls_files() -> list[Path]:
    return sorted(CORPUS.rglob("smtp-tls-reports/*.json")) + sorted(CORPUS.rglob("tlsrpt/*.json"))


def store_all(url: str, tmp: Path) -> None:
    """The corpus, its TLS report files and the hostile reports, stored as a backfill
    stores them."""
    hostile_tls = tmp / "hostile-tls.json"
    hostile_tls.write_text(json.dumps(HOSTILE_TLS))
    hostile_arf = tmp / "hostile-arf.eml"
    hostile_arf.write_bytes(hostile_failure())
    paths = [*corpus_reports(), *tls_files(), hostile_tls, hostile_arf]

    async def go(store: Store) -> None:
        await ingest_files(Ingester(store, limits=Limits()), paths)

    with_store(url, go)


@dataclass
class Parsed:
    """What the parser reads from the stored files."""

    aggregates: list[tuple[AggregateReport, list[Record]]]
    tls: list[TlsReport]
    failures: list[FailureReport]


def _events(paths: list[Path]) -> Iterator[object]:
    for path in paths:
        yield from parse_file(path)


def parsed(tmp: Path) -> Parsed:
    """The reports of the files ``store_all`` stores (after it wrote the hostile ones)."""
    paths = [*corpus_reports(), *tls_files(), tmp / "hostile-tls.json", tmp / "hostile-arf.eml"]
    out = Parsed([], [], [])
    seen: set[tuple[object, ...]] = set()
    keep = False
    for ev in _events(paths):
        if isinstance(ev, AggregateReport):
            meta = ev.metadata
            key = (
                reporter_key(meta.org_name, meta.email),
                meta.report_id,
                domain(ev.policy.domain),
                meta.begin,
                meta.end,
            )
            keep = key not in seen  # a copy of a stored report is not stored again
            seen.add(key)
            if keep:
                out.aggregates.append((ev, []))
        elif isinstance(ev, Record) and keep:
            out.aggregates[-1][1].append(ev)
        elif isinstance(ev, TlsReport):
            tls_key = (
                "tls",
                reporter_key(ev.org_name, ev.contact_info),
                ev.report_id,
                ev.begin,
                ev.end,
            )
            if tls_key not in seen:
                out.tls.append(ev)
            seen.add(tls_key)
        elif isinstance(ev, FailureReport):
            out.failures.append(ev)
    return out
