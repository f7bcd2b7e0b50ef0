"""The time window and domain of the commands that list or export what is stored:
``--days N``, or ``--since D [--until D]``, or ``--all``; ``--domain D``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from rua_sink.cli.args import day, positive_int
from rua_sink.core.names import domain as a_label

#: Before any report: the start of ``--all``.
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


def add_window(p: Any, *, default_days: int | None) -> None:
    """``--days``, ``--since``, ``--until`` (and ``--all`` where the default is a number of
    days)."""
    if default_days is None:
        days_help = "reports of the last N days (default: every report)"
    else:
        days_help = f"reports of the last N days (default {default_days})"
    group = p.add_mutually_exclusive_group()
    group.add_argument("--days", type=positive_int, metavar="N", help=days_help)
    group.add_argument(
        "--since", type=day, metavar="YYYY-MM-DD", help="reports from this day on (UTC)"
    )
    if default_days is not None:
        group.add_argument("--all", action="store_true", help="every report, however old")
    p.add_argument(
        "--until",
        type=day,
        metavar="YYYY-MM-DD",
        help="reports before this day (UTC; not included; default: now)",
    )
    p.set_defaults(default_days=default_days)


def window(args: argparse.Namespace) -> tuple[datetime, datetime]:
    """``[since, until)`` from the arguments of ``add_window``; a clear error for an empty
    window."""
    until: datetime = args.until or datetime.now(UTC)
    if args.since is not None:
        since: datetime = args.since
    elif args.days is not None:
        since = until - timedelta(days=args.days)
    elif getattr(args, "all", False) or args.default_days is None:
        since = BEGINNING
    else:
        since = until - timedelta(days=args.default_days)
    if since >= until:
        raise SystemExit(
            f"rua-sink: --since ({since:%Y-%m-%d}) must come before --until ({until:%Y-%m-%d})"
        )
    return since, until


def add_domain(p: Any, what: str) -> None:
    p.add_argument("--domain", metavar="DOMAIN", help=f"only {what}")


def domain_of(args: argparse.Namespace) -> str | None:
    """``--domain`` as stored: an A-label in lower case."""
    if args.domain is None:
        return None
    name = a_label(args.domain)
    if not name:
        raise SystemExit(f"rua-sink: not a domain name: {args.domain!r}")
    return name
