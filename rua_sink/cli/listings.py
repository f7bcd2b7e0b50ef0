"""Commands that list what is stored: ``domains`` (every policy domain with aggregate
reports), ``tls-reports`` (the SMTP TLS reports, policy by policy) and ``failure-reports``
(the DMARC failure reports)."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from rua_sink.cli.args import count
from rua_sink.cli.output import Column, emit
from rua_sink.cli.window import add_domain, add_window, domain_of, window
from rua_sink.storage.database import resolve_url
from rua_sink.storage.rows import Conn

T = TypeVar("T")

#: The window of a listing without --days, --since or --all: that of ``rua-sink report``.
DEFAULT_DAYS = 30


def _query(fn: Callable[[Conn], Awaitable[T]]) -> T:
    from rua_sink.app import open_store  # noqa: PLC0415 - see main's docstring

    async def run() -> T:
        async with (
            open_store(database_url=resolve_url(os.environ)) as store,
            store.pool.acquire() as conn,
        ):
            return await fn(conn)

    return asyncio.run(run())


def _empty(what: str, args: argparse.Namespace) -> str:
    if args.since is None and args.days is None and not args.all:
        return f"no {what} in the last {DEFAULT_DAYS} days (--all for every one)"
    return f"no {what}"


def _date(text: str | None) -> str | None:
    return None if text is None else text[:10]


def _minute(text: str | None) -> str | None:
    return None if text is None else text[:16].replace("T", " ")


_DOMAIN_COLUMNS = (
    Column("domain", "DOMAIN"),
    Column("reports", "REPORTS", right=True),
    Column("messages", "MESSAGES", right=True),
    Column("passing", "PASSING", right=True),
    Column("pass_rate", "PASS %", right=True),
    Column("reporters", "REPORTERS", right=True),
    Column("last", "LAST REPORT"),
)


def cmd_domains(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.storage.listings import domains  # noqa: PLC0415

    since, until = window(args)
    rows = _query(lambda conn: domains(conn, since, until))
    for row in rows:
        if not args.json:
            row["last"] = _date(row["last_report"])
    emit(out, _DOMAIN_COLUMNS, rows, as_json=args.json, empty=_empty("aggregate reports", args))
    return 0


_TLS_COLUMNS = (
    Column("begin_day", "BEGIN"),
    Column("reporter", "REPORTER"),
    Column("report_id", "REPORT ID"),
    Column("policy_domain", "POLICY DOMAIN"),
    Column("policy_type", "TYPE"),
    Column("success_count", "SUCCESS", right=True),
    Column("failure_count", "FAILURE", right=True),
    Column("raw_message_id", "RAW", right=True),
)
_TLS_DETAIL_COLUMNS = (
    Column("begin_day", "BEGIN"),
    Column("reporter", "REPORTER"),
    Column("policy_domain", "POLICY DOMAIN"),
    Column("result_type", "RESULT"),
    Column("failed_session_count", "SESSIONS", right=True),
    Column("receiving_mx_hostname", "RECEIVING MX"),
    Column("receiving_ip", "RECEIVING IP"),
    Column("sending_mta_ip", "SENDING MTA IP"),
    Column("raw_message_id", "RAW", right=True),
)


def cmd_tls_reports(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.storage.listings import tls_reports  # noqa: PLC0415

    since, until = window(args)
    name = domain_of(args)
    rows = _query(
        lambda conn: tls_reports(
            conn, since, until, domain=name, result=args.result, limit=args.limit or None
        )
    )
    if args.json:
        emit(out, _TLS_COLUMNS, rows, as_json=True)
        return 0
    for row in rows:
        row["begin_day"] = _date(row["begin"])
    if args.details:
        details = [{**row, **detail} for row in rows for detail in row["failure_details"]]
        emit(out, _TLS_DETAIL_COLUMNS, details, as_json=False, empty="no failure details")
        return 0
    emit(out, _TLS_COLUMNS, rows, as_json=False, empty=_empty("TLS reports", args))
    return 0


_FAILURE_COLUMNS = (
    Column("id", "ID", right=True),
    Column("raw_message_id", "RAW", right=True),
    Column("arrived", "ARRIVED (UTC)"),
    Column("reported_domains", "DOMAIN"),
    Column("source_ip", "SOURCE IP"),
    Column("auth_failure", "AUTH FAILURE"),
    Column("delivery_result", "DELIVERY"),
    Column("original_mail_from", "MAIL FROM"),
    Column("original_rcpt_to", "RCPT TO"),
    Column("reporter", "REPORTER"),
)


def cmd_failure_reports(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.storage.listings import failure_reports  # noqa: PLC0415

    since, until = window(args)
    name = domain_of(args)
    rows = _query(
        lambda conn: failure_reports(conn, since, until, domain=name, limit=args.limit or None)
    )
    if not args.json:
        for row in rows:
            # a report that does not say when the message arrived: when it was stored, marked
            row["arrived"] = f"{_minute(row['arrived_at'])}{'*' if row['arrival_unknown'] else ''}"
            row["reporter"] = row["user_agent"] or row["reporting_mta"]
    emit(out, _FAILURE_COLUMNS, rows, as_json=args.json, empty=_empty("failure reports", args))
    return 0


def _limit(p: Any, default: int) -> None:
    p.add_argument(
        "--limit",
        type=count,
        default=default,
        metavar="N",
        help=f"at most N rows, newest first (default {default}; 0: no limit)",
    )


def add_domains(sub: Any) -> None:
    p = sub.add_parser(
        "domains",
        help="every policy domain with aggregate reports: reports, messages, DMARC pass rate, "
        "reporters, last report; the most messages first",
    )
    add_window(p, default_days=DEFAULT_DAYS)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_domains)


def add_tls_reports(sub: Any) -> None:
    p = sub.add_parser(
        "tls-reports",
        help="the stored SMTP TLS reports, one row per policy: sessions that succeeded and "
        "failed; --details for the failures",
    )
    add_domain(p, "the policies of this domain")
    add_window(p, default_days=DEFAULT_DAYS)
    p.add_argument(
        "--result",
        choices=("success", "failure"),
        help="failure: only policies with failed sessions; success: only those without",
    )
    p.add_argument(
        "--details",
        action="store_true",
        help="one row per failure detail: result type, sessions, receiving MX, sending MTA",
    )
    _limit(p, 100)
    p.add_argument(
        "--json", action="store_true", help="one JSON object per policy, its failure details in it"
    )
    p.set_defaults(func=cmd_tls_reports)


def add_failure_reports(sub: Any) -> None:
    p = sub.add_parser(
        "failure-reports",
        help="the stored DMARC failure reports, newest first, with their raw message's ID "
        "(rua-sink raw ID)",
    )
    add_domain(p, "reports about this domain")
    add_window(p, default_days=DEFAULT_DAYS)
    _limit(p, 100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_failure_reports)
