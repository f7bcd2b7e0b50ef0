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

from rua_sink.cli.output import Column, emit, printable
from rua_sink.core.headers import header_text, leading_header_block, parse_fields
from rua_sink.outcomes import RawStatus
from rua_sink.storage.database import resolve_url
from rua_sink.storage.rows import unpack_archived

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


def _day(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring
    from rua_sink.core.names import domain as a_label  # noqa: PLC0415
    from rua_sink.storage.summary import summarize  # noqa: PLC0415

    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=args.days)
    name = a_label(args.domain) or args.domain

    async def run() -> Any:
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            return await summarize(conn, name, since, until, args.top)

    result = asyncio.run(run())
    out.write((json.dumps(result.as_json()) if args.json else result.text()) + "\n")
    return 0


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
    p.add_argument("--limit", type=int, default=50, help="at most N messages (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_messages)


def add_raw(sub: Any) -> None:
    p = sub.add_parser("raw", help="write an archived message to stdout, as it was received")
    p.add_argument("id", type=int, metavar="RAW_MESSAGE_ID")
    p.set_defaults(func=cmd_raw)


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="what the stored reports say about a domain: volume, pass rate, sources"
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--days", type=int, default=30, help="the last N days (default 30)")
    p.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="instead of --days")
    p.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="end (default: now)")
    p.add_argument("--top", type=int, default=10, help="sources listed (default 10)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)
