"""The command line: the parser, ``main``, and the ``parse`` command.

The other commands live one module per group: ``serve`` (serve, send, check-auth),
``ingest`` (ingest, reprocess), ``browse`` (messages, raw, report), ``sources`` (sources,
changes), ``listings`` (domains, tls-reports, failure-reports), ``export``, ``settings``
(config) and ``maintenance`` (migrate, prune, identify, db). Each command that needs
settings reads one ``Settings`` from the environment and has ``rua_sink.app`` build its
parts. The commands import ``rua_sink.app`` when they run: its servers, resolvers and
logging cost a tenth of a second at every start, which ``parse`` and ``--help`` need not
pay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from rua_sink import __version__
from rua_sink.cli import (
    browse,
    export,
    ingest,
    jsonout,
    listings,
    maintenance,
    serve,
    settings,
    sources,
)
from rua_sink.core.limits import Limits
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    FailureReport,
    PartFailed,
    Record,
    TlsReport,
)
from rua_sink.core.pipeline import parse_file
from rua_sink.errors import ConfigError, DatabaseError, MessageError
from rua_sink.ingest.backfill import REPORT_SUFFIXES


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def iter_inputs(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(REPORT_SUFFIXES):
                        yield Path(dirpath) / name
        else:
            yield path


class _Printer:
    """Writes one JSON line per report, streaming records inside it when asked."""

    def __init__(self, out: TextIO, source: str, *, records: bool) -> None:
        self.out = out
        self.source = source
        self.records = records
        self.reports = 0
        self.failures: list[PartFailed] = []
        self._head: dict[str, Any] | None = None
        self._open_part: AggregateReport | None = None
        self._first_record = True

    def _line(self, obj: dict[str, Any]) -> None:
        self.out.write(_dumps({"source": self.source, **obj}) + "\n")

    def event(self, ev: object) -> None:
        if isinstance(ev, AggregateReport):
            self._head = jsonout.aggregate_head(ev)
            self._open_part = ev
            if self.records:
                head = _dumps({"source": self.source, **self._head})
                self.out.write(head[:-1] + ',"records":[')
                self._first_record = True
        elif isinstance(ev, Record):
            if self.records:
                self.out.write(("" if self._first_record else ",") + _dumps(jsonout.record(ev)))
                self._first_record = False
        elif isinstance(ev, AggregateEnd):
            tail = jsonout.aggregate_tail(ev)
            if self.records:
                self.out.write("]," + _dumps(tail)[1:] + "\n")
            else:
                self._line({**(self._head or {}), **tail})
            self._head = self._open_part = None
            self.reports += 1
        elif isinstance(ev, TlsReport):
            self._line(jsonout.tls_report(ev, with_policies=self.records))
            self.reports += 1
        elif isinstance(ev, FailureReport):
            self._line(jsonout.failure_report(ev, with_fields=self.records))
            self.reports += 1
        elif isinstance(ev, PartFailed):
            self.abort_open_report(ev.error)
            self.failures.append(ev)

    def abort_open_report(self, error: MessageError) -> None:
        """A report whose document broke after some records: its line says so."""
        if self._open_part is None:
            return
        if self.records:
            fields = {"error": str(error.reason), "detail": error.detail}
            self.out.write("]," + _dumps(fields)[1:] + "\n")
        self._head = self._open_part = None

    def error(self, error: MessageError, part: dict[str, Any] | None = None) -> None:
        obj: dict[str, Any] = {"error": str(error.reason), "detail": error.detail}
        if part is not None:
            obj["part"] = part
        self._line(obj)


def limits_from(args: argparse.Namespace) -> Limits:
    """Limits from the environment (RUA_SINK_MAX_...), then from ``--limit NAME=VALUE``."""
    pairs = {}
    for item in args.limit_pairs or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--limit takes NAME=VALUE, not {item!r}")
        pairs[name.strip().replace("-", "_")] = value
    try:
        limits = Limits.from_env(os.environ)
    except ValueError as exc:  # it names the variable
        raise ConfigError(str(exc)) from exc
    try:
        return limits.with_values(pairs)
    except ValueError as exc:
        raise ConfigError(f"--limit: {exc}") from exc


def cmd_parse(args: argparse.Namespace, out: TextIO) -> int:
    limits: Limits = args.limits
    status = 0
    for path in iter_inputs(args.paths):
        printer = _Printer(out, str(path), records=args.records)
        try:
            for ev in parse_file(path, limits):
                printer.event(ev)
        except MessageError as exc:
            printer.abort_open_report(exc)
            printer.error(exc)
            if printer.reports == 0:
                status = 1
            continue
        except OSError as exc:
            out.write(_dumps({"source": str(path), "error": "unreadable", "detail": str(exc)}))
            out.write("\n")
            status = 1
            continue
        for failed in printer.failures:
            printer.error(failed.error, jsonout.part(failed.part))
        if printer.reports == 0:
            status = 1
    out.flush()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rua-sink", description="Receive and store DMARC and SMTP TLS reports."
    )
    parser.add_argument("--version", action="version", version=f"rua-sink {__version__}")
    limits_parent = argparse.ArgumentParser(add_help=False)
    limits_parent.add_argument(
        "--limit",
        action="append",
        dest="limit_pairs",
        metavar="NAME=VALUE",
        help="override a limit, e.g. max_records=1000 or max_message_bytes=16MiB (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "parse",
        parents=[limits_parent],
        help="parse report files and messages; print one JSON line per report",
        description="Parse .eml messages and bare report files (.xml, .xml.gz, .zip, .zlib, "
        ".json); directories are searched recursively. Prints one JSON line per report; "
        "exits 1 if any input yielded no report.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--records", action="store_true", help="include every record (streamed)")
    p.set_defaults(func=cmd_parse)
    # In the order of ``rua-sink --help``.
    serve.add_send(sub)
    serve.add_check_auth(sub)
    serve.add_serve(sub)
    settings.add_config(sub)
    maintenance.add_migrate(sub)
    ingest.add_ingest(sub, limits_parent)
    ingest.add_reprocess(sub, limits_parent)
    browse.add_messages(sub)
    browse.add_raw(sub)
    browse.add_report(sub)
    listings.add_domains(sub)
    sources.add_sources(sub)
    sources.add_changes(sub)
    listings.add_tls_reports(sub)
    listings.add_failure_reports(sub)
    export.add_export(sub)
    maintenance.add_identify(sub)
    maintenance.add_prune(sub)
    maintenance.add_db(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Expected failures are one line on stderr, never a traceback. The
    exit status is the same for every command (docs/commands.md, "Exit status"): 0 done,
    1 done but nothing found or some input failed, 2 not done (usage, a setting, a server or
    database that cannot be reached); argparse's usage errors are 2 too."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "limit_pairs"):
            args.limits = limits_from(args)
        return int(args.func(args, sys.stdout))
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nowhere to say it.
        # stdout goes to /dev/null, so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("rua-sink: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, DatabaseError) as exc:  # a setting, a file it names, the database
        print(f"rua-sink: {exc}", file=sys.stderr)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The database went away or refused a statement after we reached it.
        print(f"rua-sink: database error: {exc}", file=sys.stderr)
    except OSError as exc:  # a file named on the command line, a lost connection
        print(f"rua-sink: {str(exc) or type(exc).__name__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
