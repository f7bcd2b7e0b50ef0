"""Commands about mail: ``serve`` (the SMTP receiver), ``send`` (a report file delivered
as a report email) and ``check-auth`` (what the external-destination authorization check
sees for a policy domain and a report address)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import smtplib
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from rua_sink.cli import settings
from rua_sink.cli.args import address, domain_name
from rua_sink.config import SETTINGS, Settings
from rua_sink.core.names import organizational_domain
from rua_sink.errors import AuthorizationUnavailable, SendError
from rua_sink.storage.database import resolve_url


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink import logs  # noqa: PLC0415 - the server's imports, only when serving
    from rua_sink.app import serve  # noqa: PLC0415

    logs.configure()
    settings = Settings.from_env(os.environ)
    if not settings.addresses and not settings.failure_addresses:
        print("rua-sink: set RUA_SINK_ADDRESSES to the report addresses to accept", file=sys.stderr)
        return 2
    url = resolve_url(os.environ)
    # uvloop's transports and scheduling, in C, took a sixth less CPU a small message
    # than the standard loop's (bench/smtp.py).
    factory = None
    if settings.event_loop == "uvloop":
        import uvloop  # noqa: PLC0415 - only when serving

        factory = uvloop.new_event_loop
    # A ConfigError found while starting (the services file) reaches main, which says so.
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, url))
    return 0


def server_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:25`` for IPv6) as send takes it."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def default_server(env: Mapping[str, str]) -> tuple[str, int]:
    """Where ``send`` delivers without ``--server``: the address ``serve`` listens on
    (RUA_SINK_SMTP_LISTEN), its wildcard host taken as this host."""
    host, port = SETTINGS["smtp_listen"].value(env)
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - read, not bound
    return wildcard.get(host, host), port


def _shown(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.smtp.client import send  # noqa: PLC0415 - only when sending

    server = args.server or default_server(os.environ)
    path = Path(args.file)
    if not path.is_file():
        print(f"rua-sink: {path}: no such file", file=sys.stderr)
        return 2
    try:
        code, reply = send(
            path, to=args.to, server=server, starttls=args.starttls, sender=args.sender
        )
    except SendError as exc:
        print(f"rua-sink: {exc}", file=sys.stderr)
        return 2
    except (OSError, smtplib.SMTPException) as exc:
        where = (
            "--server HOST:PORT" if args.server else "--server HOST:PORT or RUA_SINK_SMTP_LISTEN"
        )
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(
            f"rua-sink: cannot deliver to {_shown(server)}: {reason or type(exc).__name__} "
            f"(is rua-sink serve running there? {where} chooses the address)",
            file=sys.stderr,
        )
        return 2
    out.write(f"{code} {reply}\n")
    return 0 if code == 250 else 1


def cmd_check_auth(args: argparse.Namespace, out: TextIO) -> int:
    from rua_sink.app import new_authorizer  # noqa: PLC0415 - see main's docstring

    settings = Settings.from_env(os.environ)
    authorizer = new_authorizer(settings=settings)
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
        servers = ", ".join(settings.dns_nameservers) or "the system resolver"
        print(
            f"rua-sink: DNS did not answer ({servers}; RUA_SINK_DNS_NAMESERVERS and "
            f"RUA_SINK_DNS_TIMEOUT choose them): {exc}",
            file=sys.stderr,
        )
        return 2
    out.write(json.dumps({**report, "verdict": str(result.verdict), "query": result.query}) + "\n")
    return 0 if result.verdict.allowed else 1


def add_send(sub: Any) -> None:
    p = sub.add_parser("send", help="wrap a report file in a report email and deliver it")
    p.add_argument(
        "file", metavar="FILE", help="a report file (.xml, .xml.gz, .zip, .json) or .eml"
    )
    p.add_argument(
        "--to", required=True, type=address, metavar="ADDR", help="a report address of the server"
    )
    p.add_argument(
        "--server",
        type=server_address,
        metavar="HOST:PORT",
        help="the SMTP server (default: RUA_SINK_SMTP_LISTEN's address, with 127.0.0.1 for "
        "0.0.0.0: 127.0.0.1:2525 unless it is set)",
    )
    p.add_argument("--starttls", action="store_true", help="STARTTLS before sending")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="MAIL FROM and From:")
    p.set_defaults(func=cmd_send)


def add_check_auth(sub: Any) -> None:
    p = sub.add_parser("check-auth", help="what the external-destination authorization check sees")
    p.add_argument("domain", type=domain_name, metavar="POLICY_DOMAIN")
    p.add_argument("--rua", required=True, type=address, metavar="ADDR", help="the report address")
    p.add_argument("--tls", action="store_true", help="check as for an SMTP TLS report")
    p.add_argument(
        "--json", action="store_true", help="one JSON object (the output is JSON anyway)"
    )
    p.set_defaults(func=cmd_check_auth)


def add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the SMTP receiver (configured from RUA_SINK_* variables)",
        description=textwrap.fill(
            "Run the SMTP receiver: report mail on RUA_SINK_SMTP_LISTEN, health, readiness "
            "and metrics on RUA_SINK_HTTP_LISTEN. Every setting is an environment variable, "
            "listed below; rua-sink config shows their values now.",
            79,
        ),
        epilog=settings.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_serve)
