"""Commands that read what is stored: ``messages`` (the archive's list), ``raw`` (one
archived message, as received) and ``report`` (what the reports say about a domain)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import asyncpg

from rua_sink.cli.args import day, domain_name, positive_int
from rua_sink.cli.output import Column, emit, printable
from rua_sink.core.headers import header_text, leading_header_block, parse_fields
from rua_sink.outcomes import RawStatus
from rua_sink.storage.database import resolve_url
from rua_sink.storage.rows import unpack_archived
from rua_sink.storage.summary import DomainSummary, summarize

_STATUSES = tuple(RawStatus)
_HEAD_BYTES = 65536


def message_head(head_gzip: bytes) -> dict[str, str | None]:
    """From and Subject of an archived message, from the first bytes of its gzip'd copy
    (at most 64 KiB of it inflated)."""
    try:
        head = zlib.decompressobj(wbits=31).decompress(head_gzip, _HEAD_BYTES)
    except zlib.error:
        head = b""
    fields = parse_fields(leading_header_block(io.BytesIO(head), _HEAD_BYTES))
    texts = {name: header_text(fields, name) for name in ("from", "subject")}
    return {name: None if text is None else printable(text) for name, text in texts.items()}


def cmd_messages(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    statuses = (
        [RawStatus(s) for s in args.status]
        if args.status
        else [RawStatus.QUARANTINED, RawStatus.NOT_A_REPORT]
    )

    async def run() -> list[asyncpg.Record]:
        async with open_store(database_url=resolve_url(os.environ)) as store:
            return await store.list_raw(statuses, args.limit)

    rows = [
        {
            "id": row["id"],
            "received_at": row["received_at"].isoformat(),
            "status": row["status"],
            "reason": row["reason"],
            "detail": row["detail"],
            "size": row["size_bytes"],
            "source": row["source"],
            "peer_ip": row["peer_ip"],
            "mail_from": row["mail_from"],
            "rcpt_to": list(row["rcpt_to"]),
            **message_head(row["head_gzip"]),
        }
        for row in asyncio.run(run())
    ]
    for item in rows:
        item["received"] = item["received_at"][:19].replace("T", " ")
        item["sender"] = item["mail_from"] or item["source"] or "<>"
    emit(out, _MESSAGE_COLUMNS, rows, as_json=args.json, empty="no messages")
    return 0


_MESSAGE_COLUMNS = (
    Column("id", "ID", right=True),
    Column("received", "RECEIVED (UTC)"),
    Column("status", "STATUS"),
    Column("reason", "REASON"),
    Column("size", "BYTES", right=True),
    Column("sender", "SENDER"),
    Column("subject", "SUBJECT"),
)


def cmd_raw(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    async def run() -> bytes:
        async with open_store(database_url=resolve_url(os.environ)) as store:
            content, _, _ = await store.raw_content(args.id)
            return content

    try:
        content = asyncio.run(run())
    except KeyError:
        print(f"rua-sink: no raw message {args.id}", file=sys.stderr)
        return 1
    out.flush()
    unpack_archived(content, out.buffer)
    out.buffer.flush()
    return 0


def window(args: argparse.Namespace, now: datetime) -> tuple[datetime, datetime]:
    """The report window from --since, --until and --days: any two of them, or one (with
    --days 30, or until now), or none (the last 30 days). ArgumentTypeError if they do not
    make a window."""
    since, until, days = args.since, args.until, args.days
    if since is not None and until is not None and days is not None:
        raise argparse.ArgumentTypeError("give at most two of --since, --until and --days")
    span = timedelta(days=days or DEFAULT_DAYS)
    if since is None and until is None:
        until = now
    if since is None:
        since = until - span
    elif until is None:
        until = since + span if days is not None else now
    if since >= until:
        raise argparse.ArgumentTypeError(
            f"--since ({_when(since)}) must be before --until ({_when(until)})"
        )
    return since, until


DEFAULT_DAYS = 30


def _when(moment: datetime) -> str:
    """A time as the report shows it: the day alone at midnight (UTC), else to the minute."""
    if moment.hour == moment.minute == moment.second == 0:
        return f"{moment:%Y-%m-%d}"
    return f"{moment:%Y-%m-%d %H:%M}"


def hint(result: DomainSummary) -> str | None:
    """What to say when the window holds no report of the domain."""
    if result.reports or result.messages:
        return None
    if not result.all_reports or result.first_report is None or result.last_report is None:
        return f"no reports for {result.domain} are stored"
    first, last = result.first_report, result.last_report
    try_since = f"{first:%Y-%m-%d}"
    try_until = f"{last + timedelta(days=1):%Y-%m-%d}"
    return (
        f"no reports between {_when(result.since)} and {_when(result.until)}; "
        f"{_n(result.all_reports, 'report')} {'exists' if result.all_reports == 1 else 'exist'} "
        f"from {first:%Y-%m-%d} to {last:%Y-%m-%d}: "
        f"try --since {try_since} --until {try_until}"
    )


def _sender(source: dict[str, Any]) -> str | None:
    """What sender identification found: the PTR name, with the service or a warning
    that the name does not lead back to the address."""
    name = source.get("ptr_name")
    if name is None:
        return None
    if not source.get("ptr_confirmed"):
        return f"{name} (not forward-confirmed)"
    service = source.get("service")
    return f"{name} ({service})" if service else str(name)


def _network(source: dict[str, Any]) -> str | None:
    """What the IP databases said: ``FR, AS64500 Example Net``, or nothing."""
    parts = []
    if source.get("country"):
        parts.append(str(source["country"]))
    if source.get("asn") is not None:
        org = source.get("as_org")
        parts.append(f"AS{source['asn']} {org}" if org else f"AS{source['asn']}")
    return ", ".join(parts) or None


_REPORTER_COLUMNS = (
    Column("reporter", "REPORTER"),
    Column("reports", "REPORTS", right=True),
    Column("messages", "MESSAGES", right=True),
)
_SOURCE_COLUMNS = (
    Column("source", "SOURCE"),
    Column("messages", "MESSAGES", right=True),
    Column("passing", "PASSING", right=True),
    Column("classification", "CLASS"),
    Column("network", "NETWORK"),
    Column("sender", "SENDER"),
)
_FAILING_COLUMNS = (
    Column("source", "FAILING SOURCE"),
    Column("failing", "FAILING", right=True),
    Column("reporters", "REPORTERS"),
    Column("classification", "CLASS"),
    Column("network", "NETWORK"),
    Column("sender", "SENDER"),
)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def write_report(out: TextIO, result: DomainSummary) -> None:
    """The text form: a heading, the totals, then the reporters, the top sources and the
    top failing sources, each a table."""
    rate = f"{result.pass_rate}%" if result.pass_rate is not None else "n/a"
    out.write(f"{result.domain}: {_when(result.since)} to {_when(result.until)} (UTC)\n")
    note = hint(result)
    if note is not None:
        out.write(note + "\n")
        return
    out.write(
        f"{_n(result.reports, 'report')}: {_n(result.messages, 'message')}, {result.passing} "
        f"passing DMARC ({rate}), from {_n(result.source_count, 'source')}\n"
    )
    tables = (
        (_REPORTER_COLUMNS, result.reporters),
        (_SOURCE_COLUMNS, result.sources),
        (_FAILING_COLUMNS, result.failing),
    )
    for columns, rows in tables:
        out.write("\n")
        emit(
            out,
            columns,
            [{**row, "sender": _sender(row), "network": _network(row)} for row in rows],
            as_json=False,
            empty=f"{columns[0].header}: none",
        )


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    try:
        since, until = window(args, datetime.now(UTC))
    except argparse.ArgumentTypeError as exc:  # a usage error, as argparse's
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2

    async def run() -> DomainSummary:
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            return await summarize(conn, args.domain, since, until, args.top)

    result = asyncio.run(run())
    if args.json:
        out.write(json.dumps({**result.as_json(), "hint": hint(result)}) + "\n")
    else:
        write_report(out, result)
    return 1 if hint(result) is not None else 0


def add_messages(sub: Any) -> None:
    p = sub.add_parser(
        "messages",
        help="list archived messages: those not stored as reports by default (quarantined, "
        "not a report), newest first",
    )
    p.add_argument(
        "--status",
        action="append",
        choices=_STATUSES,
        help="only messages with this status (repeatable; default: quarantined, not_a_report)",
    )
    p.add_argument("--limit", type=positive_int, default=50, help="at most N messages (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_messages)


def add_raw(sub: Any) -> None:
    p = sub.add_parser("raw", help="write an archived message to stdout, as it was received")
    p.add_argument("id", type=int, metavar="RAW_MESSAGE_ID")
    p.set_defaults(func=cmd_raw)


def add_domain_window(p: Any) -> None:
    """``--days``, ``--since`` and ``--until`` of a command about one domain's reports
    (``report``, ``sources``), read by ``window``."""
    p.add_argument(
        "--days",
        type=positive_int,
        help=f"the window's length in days (default {DEFAULT_DAYS}): the last N days, or N "
        "days from --since, or up to --until",
    )
    p.add_argument(
        "--since", type=day, metavar="YYYY-MM-DD", help="the window's start (UTC); alone: until now"
    )
    p.add_argument(
        "--until",
        type=day,
        metavar="YYYY-MM-DD",
        help="the window's end, not included (default: now)",
    )


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="what the stored reports say about a domain: volume, pass rate, sources"
    )
    p.add_argument("domain", type=domain_name, metavar="DOMAIN")
    add_domain_window(p)
    p.add_argument("--top", type=positive_int, default=10, help="sources listed (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_report)
