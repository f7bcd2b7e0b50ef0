"""Commands that look after the database: ``migrate`` (the schema), ``prune`` (retention),
``identify`` (PTR names and services of source addresses) and ``db`` (the embedded
PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from rua_sink import config
from rua_sink.cli.args import positive_int
from rua_sink.config import Settings
from rua_sink.storage import migrate
from rua_sink.storage.database import embedded, resolve_url
from rua_sink.storage.ddl import DEFAULT_WAIT, LOCK_TIMEOUT


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink import logs  # noqa: PLC0415 - see main's docstring
    from rua_sink.app import open_store  # noqa: PLC0415

    logs.configure()  # on stderr: stdout is the command's JSON

    async def run() -> list[migrate.Migration]:
        async with (
            open_store(database_url=resolve_url(os.environ), apply_migrations=False) as store,
            store.pool.acquire() as conn,
        ):
            return await migrate.migrate(conn, lock_wait=args.lock_wait)

    done = asyncio.run(run())
    out.write(json.dumps({"applied": [m.name for m in done]}) + "\n")
    return 0


def parse_duration(text: str) -> timedelta:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink import logs  # noqa: PLC0415 - see main's docstring
    from rua_sink.app import open_store  # noqa: PLC0415

    logs.configure()  # on stderr: stdout is the command's JSON

    settings = Settings.from_env(os.environ)
    now = datetime.now(UTC)
    cutoff = now - args.older_than
    keep_failures = args.failure_older_than
    if keep_failures is None:
        keep_failures = settings.failure_retention
    failure_cutoff = now - keep_failures

    async def run() -> tuple[dict[str, int], datetime]:
        async with open_store(database_url=resolve_url(os.environ)) as store:
            counts = await store.prune(cutoff, failure_cutoff, lock_wait=args.lock_wait)
            # Recorded for serve's rua_sink_prune_last_success_timestamp_seconds: a CronJob
            # is not scraped, the database is what every replica reads.
            finished = await store.record_prune(cutoff, max(cutoff, failure_cutoff), counts)
            return counts, finished

    result, finished = asyncio.run(run())
    summary = {
        "cutoff": cutoff.isoformat(),
        "failure_cutoff": max(cutoff, failure_cutoff).isoformat(),
        **result,
    }
    out.write(json.dumps(summary) + "\n")
    _log_prune(summary, finished)
    return 0


def _log_prune(summary: dict[str, Any], finished: datetime) -> None:
    """The structured log line of a prune that succeeded, on stderr (the JSON summary on
    stdout stays the command's output)."""
    from rua_sink import logs  # noqa: PLC0415 - structlog, only for the commands that log

    logs.configure()
    logs.get("rua_sink").info("prune_succeeded", finished_at=finished.isoformat(), **summary)


def cmd_identify(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import (  # noqa: PLC0415 - see main's docstring
        load_services,
        open_identifier,
        open_ip_databases,
    )

    settings = Settings.from_env(os.environ)
    services = load_services(settings=settings)  # a broken file stops us here
    networks = open_ip_databases(settings=settings)  # and so does a bad IP database

    async def run() -> dict[str, int]:
        async with open_identifier(
            settings=settings,
            services=services,
            database_url=resolve_url(os.environ),
            networks=networks,
        ) as identifier:
            relabelled = await identifier.relabel()
            tally = await identifier.sweep(args.limit or sys.maxsize)
            return {**tally.as_json(), "relabelled": relabelled}

    try:
        result = asyncio.run(run())
    finally:
        if networks is not None:
            networks.close()
    if args.json:
        out.write(json.dumps(result) + "\n")
    else:
        enriched = (
            f"; {result['enriched']} given a country and network by the IP databases"
            if networks is not None
            else ""
        )
        out.write(
            f"{result['looked_up']} source addresses looked up: {result['named']} named "
            f"({result['confirmed']} forward-confirmed, {result['labelled']} with a service), "
            f"{result['unnamed']} without a name, {result['failed']} temporary DNS errors "
            f"(tried again later){enriched}; {result['relabelled']} labels changed by the "
            "mapping\n"
        )
    return 0


def cmd_db(args: argparse.Namespace, out: TextIO) -> int:
    server = embedded(os.environ)
    if args.action == "start":
        out.write(server.start() + "\n")
    elif args.action == "stop":
        out.write(("stopped" if server.stop() else "not running") + "\n")
    elif args.action == "bindir":
        # Its pg_dump and pg_restore match the server's version (docs/operations.md).
        out.write(f"{server.bindir}\n")
    else:
        out.write(f"{server.url}\n")
    return 0


def add_lock_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lock-wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help="how long a schema change may keep trying for its table locks while other "
        f"transactions hold them, a {LOCK_TIMEOUT} wait at a time (default: {DEFAULT_WAIT:g})",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    """--json, which every command that prints takes; here the output is JSON anyway."""
    p.add_argument(
        "--json", action="store_true", help="one JSON object (the output is JSON anyway)"
    )


def add_migrate(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending database migrations")
    add_lock_wait(p)
    add_json(p)
    p.set_defaults(func=cmd_migrate)


def add_identify(sub: Any) -> None:
    p = sub.add_parser(
        "identify",
        help="look up the PTR names and services of source addresses not looked up yet "
        "or due again (backfilled reports); with RUA_SINK_IP_DATABASES, their country and "
        "network too",
    )
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="at most N addresses (default: all)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_identify)


def add_prune(sub: Any) -> None:
    p = sub.add_parser(
        "prune", help="drop reports, record partitions and raw messages past retention"
    )
    p.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="e.g. 400d, 56w, 18m, 2y",
    )
    p.add_argument(
        "--failure-older-than",
        type=parse_duration,
        metavar="DURATION",
        help="failure reports and their messages (default: RUA_SINK_FAILURE_RETENTION, 30d)",
    )
    add_lock_wait(p)
    add_json(p)
    p.set_defaults(func=cmd_prune)


def add_db(sub: Any) -> None:
    p = sub.add_parser(
        "db",
        help="the embedded PostgreSQL: start, stop, print its URL or its programs' directory",
    )
    p.add_argument("action", choices=("start", "stop", "url", "bindir"))
    p.set_defaults(func=cmd_db)
