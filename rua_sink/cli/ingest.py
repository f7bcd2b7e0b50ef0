"""Commands that store messages: ``ingest`` (backfill from files) and ``reprocess``
(archived messages read again)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from rua_sink.cli.output import Column, Progress, emit
from rua_sink.config import Settings
from rua_sink.core.arrival import Envelope
from rua_sink.core.limits import Limits
from rua_sink.errors import Reason
from rua_sink.ingest import backfill
from rua_sink.ingest.ingester import IngestResult
from rua_sink.outcomes import AuthPolicy, Outcome
from rua_sink.storage.database import resolve_url


@dataclass
class Summary:
    messages: int = 0
    reports_new: int = 0
    reports_duplicate: int = 0
    messages_duplicate: int = 0
    quarantined: int = 0
    not_a_report: int = 0
    #: messages read again (``reprocess``, or stored before by an older parser version)
    reprocessed: int = 0
    records: int = 0
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    #: inputs that could not be read at all: {"source", "detail"}
    unreadable: list[dict[str, Any]] = field(default_factory=list)

    def add(self, label: str, result: IngestResult, progress: Progress | None = None) -> None:
        """Count one message's result, and show the new counts on ``progress``."""
        before = self.counts()
        self._add(label, result)
        if progress is not None:
            after = self.counts()
            progress.step(1, **{name: after[name] - before[name] for name in after})

    def _add(self, label: str, result: IngestResult) -> None:
        self.messages += 1
        self.reports_new += result.reports_new
        self.reports_duplicate += result.reports_duplicate
        self.records += result.records
        self.reprocessed += result.reprocessed
        if result.outcome is Outcome.DUPLICATE and result.raw_message_id is None:
            self.messages_duplicate += 1
        elif result.outcome is Outcome.QUARANTINED:
            self.quarantined += 1
            self.quarantine.append(
                {"source": label, "reason": str(result.reason), "detail": result.detail}
            )
        elif result.outcome is Outcome.NOT_A_REPORT:
            self.not_a_report += 1

    def counts(self) -> dict[str, int]:
        """The counts so far, as the progress line shows them."""
        return {
            "reports new": self.reports_new,
            "duplicate": self.reports_duplicate + self.messages_duplicate,
            "quarantined": self.quarantined,
        }

    def write(self, out: TextIO, *, as_json: bool) -> None:
        """The summary: one JSON object, or a table of the counts, then the messages
        quarantined and the inputs that could not be read, if any."""
        if as_json:
            out.write(json.dumps(self.__dict__) + "\n")
            return
        emit(out, _COUNT_COLUMNS, self.rows(), as_json=False)
        if self.quarantine:
            out.write("\n")
            emit(out, _QUARANTINE_COLUMNS, self.quarantine, as_json=False)
        if self.unreadable:
            out.write("\n")
            emit(out, _UNREADABLE_COLUMNS, self.unreadable, as_json=False)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"what": "messages read", "count": self.messages},
            {"what": "  already stored (skipped)", "count": self.messages_duplicate},
            {"what": "  quarantined", "count": self.quarantined},
            {"what": "  not a report", "count": self.not_a_report},
            {"what": "  read again (reprocessed)", "count": self.reprocessed},
            {"what": "reports stored", "count": self.reports_new},
            {"what": "reports already stored (duplicates)", "count": self.reports_duplicate},
            {"what": "records stored", "count": self.records},
        ]


_COUNT_COLUMNS = (Column("what", "RESULT"), Column("count", "COUNT", right=True))
_QUARANTINE_COLUMNS = (
    Column("source", "QUARANTINED"),
    Column("reason", "REASON"),
    Column("detail", "DETAIL"),
)
_UNREADABLE_COLUMNS = (Column("source", "NOT READ"), Column("detail", "WHY"))


def readable(paths: list[str], unreadable: list[dict[str, Any]]) -> Iterator[backfill.Item]:
    """The messages of ``paths``; a path that cannot be read (or a file in it: the rest of
    that path is skipped) is added to ``unreadable``, and the next path is read. Errors of
    what is done with a message are not caught here: they are not the file's."""
    for path in paths:
        try:
            yield from backfill.items([path])
        except OSError as exc:
            where = exc.filename or path
            unreadable.append({"source": str(where), "detail": exc.strerror or str(exc)})


def cmd_ingest(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_ingester  # noqa: PLC0415 - see main's docstring

    settings = Settings.from_env(os.environ)
    limits: Limits = args.limits
    summary = Summary()

    async def run() -> None:
        async with open_ingester(
            settings=settings, database_url=resolve_url(os.environ), limits=limits
        ) as ingester:
            with Progress("messages ingested") as progress:
                for item in readable(args.paths, summary.unreadable):
                    try:
                        result = await ingester.ingest(item.file, Envelope(source=item.label))
                    finally:
                        item.file.close()
                    summary.add(item.label, result, progress)

    asyncio.run(run())
    summary.write(out, as_json=args.json)
    for bad in summary.unreadable:
        print(f"rua-sink: cannot read {bad['source']}: {bad['detail']}", file=sys.stderr)
    return 1 if summary.unreadable else 0


def cmd_reprocess(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_ingester  # noqa: PLC0415 - see main's docstring

    settings = Settings.from_env(os.environ)
    summary = Summary()
    policy = AuthPolicy(settings.require_authenticated)
    # Under off, a TLS report needs no signature: those kept for the lack of one are due.
    reasons = [str(Reason.UNSIGNED_REPORT)] if policy is AuthPolicy.OFF else []
    missing: list[int] = []

    async def run() -> None:
        async with open_ingester(
            settings=settings, database_url=resolve_url(os.environ), limits=args.limits
        ) as ingester:
            ids = args.ids or await ingester.store.raw_messages(
                every=args.all, any_version=args.any_version, reasons=reasons
            )
            with Progress("messages read again", total=len(ids)) as progress:
                for raw_id in ids:
                    try:
                        result = await ingester.reprocess(raw_id, auth_policy=policy)
                    except KeyError:
                        missing.append(raw_id)
                        progress.step()
                        continue
                    summary.add(f"raw_message {raw_id}", result, progress)

    asyncio.run(run())
    summary.write(out, as_json=args.json)
    for raw_id in missing:
        print(f"rua-sink: no raw message {raw_id}", file=sys.stderr)
    return 1 if missing else 0


def add_ingest(sub: Any, limits_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ingest",
        parents=[limits_parent],
        help="store report files, messages, mbox files and Maildir folders",
        description="Backfill: the same files as parse, plus mbox files and Maildir folders. "
        "Each message is stored once with its reports; failures are quarantined.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest)


def add_reprocess(sub: Any, limits_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "reprocess",
        parents=[limits_parent],
        help="parse stored raw messages again (by default those an older parser version "
        "did not store as reports)",
        description="Parse archived messages again with the current code, replacing what "
        "they produced. By default: the messages kept as not_a_report or quarantined by an "
        "older parser version (and, under RUA_SINK_REQUIRE_AUTHENTICATED=off, those kept as "
        "unsigned_report). The current authentication policy judges their stored verdicts.",
    )
    p.add_argument("ids", nargs="*", type=int, metavar="RAW_MESSAGE_ID")
    p.add_argument(
        "--any-version",
        action="store_true",
        help="every message not stored as reports, whatever parser version read it",
    )
    p.add_argument("--all", action="store_true", help="every raw message, stored ones too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reprocess)
