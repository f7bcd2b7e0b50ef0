"""A Store on a test database, and the corpus stored through it."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import asyncpg

from rua_sink.core.arrival import Envelope
from rua_sink.core.limits import Limits
from rua_sink.core.model import AggregateReport, Record
from rua_sink.core.pipeline import parse_file
from rua_sink.ingest.ingester import Ingester, IngestResult
from rua_sink.storage.rows import reporter_key
from rua_sink.storage.store import Store

from .conftest import CORPUS
from .pg import run

T = TypeVar("T")

DOMAIN = "stalw.art"  # six reporters in the corpus: Fastmail, Google, Microsoft, ...
PERIOD = (datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))


async def _with_store(url: str, fn: Callable[[Store], Awaitable[T]], size: int = 4) -> T:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=size)
    try:
        store = Store(pool)
        await store.load_partitions()
        return await fn(store)
    finally:
        await pool.close()


def with_store(url: str, fn: Callable[[Store], Awaitable[T]], size: int = 4) -> T:
    """``fn`` on a Store of a pool of ``size`` connections to ``url``; its result."""
    return run(_with_store(url, fn, size))


async def ingest_bytes(
    ingester: Ingester, data: bytes, source: str = "smtp", when: datetime | None = None
) -> IngestResult:
    return await ingester.ingest(io.BytesIO(data), Envelope(source=source), received_at=when)


async def ingest_files(ingester: Ingester, paths: Iterable[Path]) -> list[IngestResult]:
    """Each file stored as a backfill stores it."""
    results = []
    for path in paths:
        with path.open("rb") as f:
            results.append(await ingester.ingest(f, Envelope(source=str(path))))
    return results


def corpus_reports() -> list[Path]:
    """The corpus's emails and XML files: every aggregate report and the ARF emails."""
    return sorted(CORPUS.rglob("*.eml")) + sorted(CORPUS.rglob("*.xml"))


def store_corpus(url: str) -> None:
    """Every corpus report stored in the database at ``url``, as a backfill stores it."""

    async def go(store: Store) -> None:
        await ingest_files(Ingester(store, limits=Limits()), corpus_reports())

    with_store(url, go)


def parsed_records(
    period: tuple[datetime, datetime] = PERIOD,
) -> list[tuple[str, Record, datetime]]:
    """(reporter, record, report begin) of every corpus report for DOMAIN, from the parser."""
    out = []
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.name in ("SOURCES.md", "MANIFEST.sha256"):
            continue
        head: AggregateReport | None = None
        for ev in parse_file(path):
            if isinstance(ev, AggregateReport):
                head = ev
            elif isinstance(ev, Record) and head is not None and head.policy.domain == DOMAIN:
                begin = datetime.fromtimestamp(head.metadata.begin, UTC)
                if period[0] <= begin < period[1]:
                    reporter = reporter_key(head.metadata.org_name, head.metadata.email)
                    out.append((reporter, ev, begin))
    return out
