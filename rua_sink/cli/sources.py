"""Commands about the senders of a domain: ``sources`` (who sends as it, and is each
legitimate) and ``changes`` (new sources and services, pass rates that dropped)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from rua_sink.cli.args import domain_name, positive_int
from rua_sink.cli.browse import add_domain_window, window
from rua_sink.cli.output import Column, emit
from rua_sink.storage import changes
from rua_sink.storage.classify import CLASSES
from rua_sink.storage.database import resolve_url

_SOURCE_COLUMNS = (
    Column("source", "IP"),
    Column("ptr_name", "PTR NAME"),
    Column("service", "SERVICE"),
    Column("country", "COUNTRY"),
    Column("asn", "ASN", right=True),
    Column("as_org", "AS ORG"),
    Column("messages", "MESSAGES", right=True),
    Column("passing", "PASSING", right=True),
    Column("failing", "FAILING", right=True),
    Column("pass_rate", "PASS %", right=True),
    Column("classification", "CLASS"),
)


def cmd_sources(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring
    from rua_sink.storage.classify import sources  # noqa: PLC0415

    try:
        since, until = window(args, datetime.now(UTC))
    except argparse.ArgumentTypeError as exc:  # a usage error, as argparse's
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2
    name = args.domain

    async def run() -> list[dict[str, Any]]:
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            return await sources(
                conn,
                name,
                since,
                until,
                failing=args.failing,
                classification=args.classification,
            )

    rows = asyncio.run(run())
    if not args.json:  # a name that does not lead back to the address is marked
        for row in rows:
            if row["ptr_name"] is not None and not row["ptr_confirmed"]:
                row["ptr_name"] += " (unconfirmed)"
    emit(out, _SOURCE_COLUMNS, rows, as_json=args.json, empty=f"no sources for {name}")
    return 0


_CHANGE_COLUMNS = (
    Column("change", "CHANGE"),
    Column("domain", "DOMAIN"),
    Column("what", "WHAT"),
    Column("first_seen_day", "FIRST SEEN"),
    Column("noticed", "NOTICED (UTC)"),
    Column("detail", "DETAIL"),
)


def _named(ptr_name: str | None, service: str | None) -> str:
    return " ".join(x for x in (ptr_name, f"({service})" if service else None) if x)


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:.1f}%"


def change_rows(
    sources: list[dict[str, Any]],
    services: list[dict[str, Any]],
    ratios: list[changes.PassRatio],
    threshold: float,
) -> list[dict[str, Any]]:
    """One row per change: new sources, new services, then pass rates that dropped by more
    than ``threshold``."""
    rows: list[dict[str, Any]] = []
    for s in sources:
        rows.append(
            {
                "change": "new_source",
                "domain": s["policy_domain"],
                "what": s["source"],
                "first_seen": s["first_seen"].isoformat(),
                "noticed_at": s["noticed_at"].isoformat(),
                "ptr_name": s["ptr_name"],
                "service": s["service"],
                "detail": _named(s["ptr_name"], s["service"]),
            }
        )
    for s in services:
        rows.append(
            {
                "change": "new_service",
                "domain": s["policy_domain"],
                "what": s["service"],
                "first_seen": s["first_seen"].isoformat(),
                "noticed_at": s["noticed_at"].isoformat(),
                "sources": s["addresses"],
                "detail": ", ".join(s["addresses"]),
            }
        )
    for r in ratios:
        if r.drop is not None and r.drop > threshold:
            rows.append(
                {
                    "change": "pass_rate_drop",
                    **r.as_json(),
                    "what": f"{_percent(r.trailing)} -> {_percent(r.day)}",
                    "detail": f"{r.day_messages} messages in the last day, "
                    f"{r.trailing_messages} in the 14 days before",
                }
            )
    for row in rows:
        row["first_seen_day"] = row.get("first_seen", "")[:10]
        row["noticed"] = row.get("noticed_at", "")[:16].replace("T", " ")
    return rows


def cmd_changes(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    if not 0 <= args.threshold < 1:  # a usage error: exit status 2, as argparse's
        print("rua-sink: --threshold is a ratio, from 0 to 1 (0.1: 10 points)", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            now = await conn.fetchval("SELECT now()")
            since = now - timedelta(days=args.days)
            # The tables brought up to date first, as serve's sweep keeps them.
            await changes.sweep(conn, now - changes.KEEP_TOTALS)
            return change_rows(
                await changes.new_sources(conn, since),
                await changes.new_services(conn, since),
                await changes.pass_ratios(conn, now),
                args.threshold,
            )

    rows = asyncio.run(run())
    if args.json:
        for row in rows:
            del row["first_seen_day"], row["noticed"], row["detail"]
    emit(out, _CHANGE_COLUMNS, rows, as_json=args.json, empty="no changes")
    return 0


def add_sources(sub: Any) -> None:
    p = sub.add_parser(
        "sources",
        help="who sends as a domain: each source address, its name, service, network, "
        "DMARC results and class (authorized, forwarded, misconfigured, suspicious)",
    )
    p.add_argument("domain", type=domain_name, metavar="DOMAIN")
    add_domain_window(p)
    p.add_argument(
        "--failing", action="store_true", help="only sources with failing messages, most first"
    )
    p.add_argument("--classification", choices=CLASSES, help="only sources of this class")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_sources)


def add_changes(sub: Any) -> None:
    p = sub.add_parser(
        "changes",
        help="what changed: sources and services new to a domain, pass rates that dropped",
    )
    p.add_argument(
        "--days",
        type=positive_int,
        default=1,
        help="new sources and services of the last N days (default 1)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="a pass-rate drop listed: the last day's ratio under the 14 days before's by more "
        "than this (default 0.1: 10 points)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_changes)
