"""Storage commands: migrate, ingest (backfill), reprocess, messages, raw, prune, db."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import smtplib
import sys
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from rua_sink import config
from rua_sink.core.arrival import Envelope
from rua_sink.core.headers import header_text, leading_header_block, parse_fields
from rua_sink.core.limits import Limits
from rua_sink.errors import ConfigError, DatabaseError, Reason
from rua_sink.ingest import backfill
from rua_sink.ingest.ingester import Ingester, IngestResult
from rua_sink.ingest.parsepool import ParsePool
from rua_sink.outcomes import AuthPolicy, Outcome, RawStatus
from rua_sink.storage import migrate
from rua_sink.storage.database import embedded, ensure_database, resolve_url
from rua_sink.storage.rows import unpack_archived
from rua_sink.storage.store import Store


@asynccontextmanager
async def open_store(*, apply_migrations: bool = True) -> AsyncIterator[Store]:
    url = resolve_url(os.environ)
    await ensure_database(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        if apply_migrations:
            async with pool.acquire() as conn:
                await migrate.migrate(conn)
        store = Store(pool)
        await store.load_partitions()
        yield store
    finally:
        await pool.close()


@asynccontextmanager
async def parse_pool() -> AsyncIterator[ParsePool]:
    """Parse workers for large reports, as RUA_SINK_PARSE_WORKERS says; they start with
    the first large report and stop with the command."""
    setting = config.SETTINGS["parse_workers"]
    try:
        workers = setting.read()
    except ValueError as exc:
        raise ConfigError(f"{setting.env}: {exc}") from exc
    pool = ParsePool(workers)
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.close)


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    async def run() -> list[migrate.Migration]:
        async with open_store(apply_migrations=False) as store, store.pool.acquire() as conn:
            return await migrate.migrate(conn)

    done = asyncio.run(run())
    out.write(json.dumps({"applied": [m.name for m in done]}) + "\n")
    return 0


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

    def add(self, label: str, result: IngestResult) -> None:
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

    def write(self, out: TextIO, *, as_json: bool) -> None:
        out.write((json.dumps(self.__dict__) if as_json else self.line()) + "\n")

    def line(self) -> str:
        return (
            f"{self.messages} messages: {self.reports_new} reports new, "
            f"{self.reports_duplicate} duplicate, {self.quarantined} quarantined, "
            f"{self.not_a_report} not reports, {self.reprocessed} reprocessed; "
            f"{self.records} records"
        )


class Progress:
    """One status line on a terminal, rewritten at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def update(self, summary: Summary, label: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        text = f"\r\x1b[K{summary.line()}  {label[-60:]}"
        self.stream.write(text)
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def cmd_ingest(args: argparse.Namespace, out: TextIO) -> int:
    limits: Limits = args.limits
    summary = Summary()
    progress = Progress(sys.stderr)

    async def run() -> None:
        async with open_store() as store, parse_pool() as workers:
            ingester = Ingester(store, limits=limits, fanout=workers.fanout)
            for item in backfill.items(args.paths):
                try:
                    result = await ingester.ingest(item.file, Envelope(source=item.label))
                finally:
                    item.file.close()
                summary.add(item.label, result)
                progress.update(summary, item.label)

    asyncio.run(run())
    progress.done()
    summary.write(out, as_json=args.json)
    if not args.json:
        for q in summary.quarantine:
            out.write(f"quarantined: {q['source']}: {q['reason']}: {q['detail']}\n")
    return 0


def cmd_reprocess(args: argparse.Namespace, out: TextIO) -> int:
    summary = Summary()
    setting = config.SETTINGS["require_authenticated"]
    try:
        policy = AuthPolicy(setting.read())
    except ValueError:
        print(f"rua-sink: {setting.env}: off, flag or reject", file=sys.stderr)
        return 2
    # Under off, a TLS report needs no signature: those kept for the lack of one are due.
    reasons = [str(Reason.UNSIGNED_REPORT)] if policy is AuthPolicy.OFF else []
    missing: list[int] = []

    async def run() -> None:
        async with open_store() as store, parse_pool() as workers:
            ingester = Ingester(store, limits=args.limits, fanout=workers.fanout)
            ids = args.ids or await store.raw_messages(
                every=args.all, any_version=args.any_version, reasons=reasons
            )
            for raw_id in ids:
                try:
                    result = await ingester.reprocess(raw_id, auth_policy=policy)
                except KeyError:
                    missing.append(raw_id)
                    continue
                summary.add(f"raw_message {raw_id}", result)

    asyncio.run(run())
    summary.write(out, as_json=args.json)
    for raw_id in missing:
        print(f"rua-sink: no raw message {raw_id}", file=sys.stderr)
    return 1 if missing else 0


_STATUSES = tuple(RawStatus)
_HEAD_BYTES = 65536


def _printable(text: str) -> str:
    """Mail is written by strangers: no control characters reach the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def message_head(head_gzip: bytes) -> dict[str, str | None]:
    """From and Subject of an archived message, from the first bytes of its gzip'd copy
    (at most 64 KiB of it inflated)."""
    try:
        head = zlib.decompressobj(wbits=31).decompress(head_gzip, _HEAD_BYTES)
    except zlib.error:
        head = b""
    fields = parse_fields(leading_header_block(io.BytesIO(head), _HEAD_BYTES))
    texts = {name: header_text(fields, name) for name in ("from", "subject")}
    return {name: None if text is None else _printable(text) for name, text in texts.items()}


def cmd_messages(args: argparse.Namespace, out: TextIO) -> int:
    statuses = (
        [RawStatus(s) for s in args.status]
        if args.status
        else [RawStatus.QUARANTINED, RawStatus.NOT_A_REPORT]
    )

    async def run() -> list[asyncpg.Record]:
        async with open_store() as store:
            return await store.list_raw(statuses, args.limit)

    for row in asyncio.run(run()):
        item = {
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
        if args.json:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            continue
        sender = _printable(row["mail_from"] or row["source"] or "")
        out.write(
            f"{row['id']:>8}  {row['received_at']:%Y-%m-%d %H:%M:%S}  {row['status']:<12}  "
            f"{row['reason'] or '-':<22}  {row['size_bytes']:>9}  {sender or '<>'}  "
            f"{item['subject'] or ''}\n"
        )
    return 0


def cmd_raw(args: argparse.Namespace, out: TextIO) -> int:
    async def run() -> bytes:
        async with open_store() as store:
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


def parse_duration(text: str) -> timedelta:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _day(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.core.names import domain as a_label  # noqa: PLC0415
    from rua_sink.storage.summary import summarize  # noqa: PLC0415

    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(days=args.days)
    name = a_label(args.domain) or args.domain

    async def run() -> Any:
        async with open_store() as store, store.pool.acquire() as conn:
            return await summarize(conn, name, since, until, args.top)

    result = asyncio.run(run())
    out.write((json.dumps(result.as_json()) if args.json else result.text()) + "\n")
    return 0


def cmd_identify(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.config import Settings  # noqa: PLC0415
    from rua_sink.dns.authz import make_resolver  # noqa: PLC0415
    from rua_sink.dns.senders import ServiceMap  # noqa: PLC0415
    from rua_sink.errors import ConfigError  # noqa: PLC0415
    from rua_sink.ingest.identify import SenderIdentifier  # noqa: PLC0415

    try:
        settings = Settings.from_env(os.environ)
        services = ServiceMap.load(settings.services_file)
    except ConfigError as exc:
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict[str, int]:
        async with open_store() as store:
            identifier = SenderIdentifier(
                pool=store.pool,
                resolver=make_resolver(settings.dns_nameservers, settings.dns_timeout),
                services=services,
                concurrency=settings.identify_concurrency,
            )
            relabelled = await identifier.relabel()
            tally = await identifier.sweep(args.limit or sys.maxsize)
            return {**tally.as_json(), "relabelled": relabelled}

    result = asyncio.run(run())
    if args.json:
        out.write(json.dumps(result) + "\n")
    else:
        out.write(
            f"{result['looked_up']} source addresses looked up: {result['named']} named "
            f"({result['confirmed']} forward-confirmed, {result['labelled']} with a service), "
            f"{result['unnamed']} without a name, {result['failed']} temporary DNS errors "
            f"(tried again later); {result['relabelled']} labels changed by the mapping\n"
        )
    return 0


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    now = datetime.now(UTC)
    cutoff = now - args.older_than
    keep_failures = args.failure_older_than
    if keep_failures is None:
        setting = config.SETTINGS["failure_retention"]
        keep_failures = setting.read()
    failure_cutoff = now - keep_failures

    async def run() -> dict[str, int]:
        async with open_store() as store:
            return await store.prune(cutoff, failure_cutoff)

    result = asyncio.run(run())
    out.write(
        json.dumps(
            {
                "cutoff": cutoff.isoformat(),
                "failure_cutoff": max(cutoff, failure_cutoff).isoformat(),
                **result,
            }
        )
        + "\n"
    )
    return 0


def cmd_db(args: argparse.Namespace, out: TextIO) -> int:
    server = embedded(os.environ)
    if args.action == "start":
        out.write(server.start() + "\n")
    elif args.action == "stop":
        out.write(("stopped" if server.stop() else "not running") + "\n")
    else:
        out.write(f"{server.url}\n")
    return 0


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink import logs  # noqa: PLC0415
    from rua_sink.app import serve  # noqa: PLC0415 - the server's imports only when serving
    from rua_sink.config import Settings  # noqa: PLC0415
    from rua_sink.errors import ConfigError  # noqa: PLC0415

    logs.configure()
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2
    if not settings.addresses and not settings.failure_addresses:
        print("rua-sink: set RUA_SINK_ADDRESSES to the report addresses to accept", file=sys.stderr)
        return 2
    url = resolve_url(os.environ)
    # uvloop's transports and scheduling, in C, took a sixth less CPU a small message
    # than the standard loop's (bench/smtp.py).
    factory = None
    if settings.event_loop == "uvloop":
        import uvloop  # noqa: PLC0415

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings, url))
    except ConfigError as exc:  # found while starting: the services file
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.errors import SendError  # noqa: PLC0415
    from rua_sink.smtp.client import send  # noqa: PLC0415

    try:
        code, reply = send(
            Path(args.file),
            to=args.to,
            server=args.server,
            starttls=args.starttls,
            sender=args.sender,
        )
    except (SendError, OSError, smtplib.SMTPException) as exc:
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2
    out.write(f"{code} {reply}\n")
    return 0 if code == 250 else 1


def cmd_check_auth(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.config import Settings  # noqa: PLC0415
    from rua_sink.core.names import organizational_domain  # noqa: PLC0415
    from rua_sink.dns.authz import Authorizer, make_resolver  # noqa: PLC0415
    from rua_sink.errors import AuthorizationUnavailable  # noqa: PLC0415

    settings = Settings.from_env(os.environ)
    authorizer = Authorizer(
        resolver=make_resolver(settings.dns_nameservers, settings.dns_timeout),
        allow=settings.authorized_domains,
    )
    rcpt_domain = args.rua.rpartition("@")[2].lower()
    check = (
        authorizer.check_tls(args.domain, args.rua)
        if args.tls
        else authorizer.check_dmarc(args.domain, rcpt_domain)
    )
    report: dict[str, Any] = {
        "policy_domain": args.domain,
        "destination": args.rua,
        "organizational_domains": [
            organizational_domain(args.domain.lower()),
            organizational_domain(rcpt_domain),
        ],
    }
    try:
        result = asyncio.run(check)
    except AuthorizationUnavailable as exc:
        out.write(json.dumps({**report, "verdict": "temporary_error", "detail": str(exc)}) + "\n")
        return 1
    out.write(json.dumps({**report, "verdict": str(result.verdict), "query": result.query}) + "\n")
    return 0 if result.verdict.allowed else 1


def add_commands(sub: Any, limits_parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("send", help="wrap a report file in a report email and deliver it")
    p.add_argument(
        "file", metavar="FILE", help="a report file (.xml, .xml.gz, .zip, .json) or .eml"
    )
    p.add_argument("--to", required=True, metavar="ADDR", help="a report address of the server")
    p.add_argument("--server", default="127.0.0.1:2525", metavar="HOST:PORT")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="MAIL FROM and From:")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("check-auth", help="what the external-destination authorization check sees")
    p.add_argument("domain", metavar="POLICY_DOMAIN")
    p.add_argument("--rua", required=True, metavar="ADDR", help="the report address")
    p.add_argument("--tls", action="store_true", help="check as for an SMTP TLS report")
    p.set_defaults(func=cmd_check_auth)

    p = sub.add_parser("serve", help="run the SMTP receiver (configured from RUA_SINK_* variables)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.set_defaults(func=cmd_migrate)

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

    p = sub.add_parser("raw", help="write an archived message to stdout, as it was received")
    p.add_argument("id", type=int, metavar="RAW_MESSAGE_ID")
    p.set_defaults(func=cmd_raw)

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

    p = sub.add_parser(
        "identify",
        help="look up the PTR names and services of source addresses not looked up yet "
        "or due again (backfilled reports)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N addresses (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_identify)

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
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("db", help="the embedded PostgreSQL: start, stop, or print its URL")
    p.add_argument("action", choices=("start", "stop", "url"))
    p.set_defaults(func=cmd_db)


__all__ = ["DatabaseError", "add_commands"]
