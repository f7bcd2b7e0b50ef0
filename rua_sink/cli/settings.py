"""Settings that describe themselves: the list in ``rua-sink serve --help`` and the
``config`` command (every setting, its default, its value now and where that came from).

Both are drawn from the tables the program reads: ``config.SETTINGS``, the limits of
``core.limits`` and the database's variables (``storage.database.VARIABLES``), so that
neither can drift from what is read.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from rua_sink.cli.output import Column, emit
from rua_sink.config import SETTINGS, problems
from rua_sink.core.limits import HELP as LIMIT_HELP
from rua_sink.core.limits import GiB, KiB, Limits, MiB
from rua_sink.storage.database import VARIABLES as DATABASE_VARIABLES
from rua_sink.storage.database import redacted

PREFIX = "RUA_SINK_"
#: Variables whose value is never printed, only whether it is set.
_SECRET_SUFFIXES = ("_PASSWORD", "_SECRET", "_TOKEN")
#: Variables of the tests, the benchmarks and Grafana's provisioning (deploy/grafana), not
#: settings of the program.
_NOT_SETTINGS = ("RUA_SINK_TEST_", "RUA_SINK_BENCH_", "RUA_SINK_PG_")


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable rua-sink reads."""

    name: str
    default: str
    help: str
    group: str  # setting, limit or database


def _limit_default(name: str, value: int) -> str:
    if name.endswith("_bytes"):
        for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
            if value % size == 0:
                return f"{value // size}{unit}"
    return str(value)


def variables() -> list[Variable]:
    """Every variable, in the order of the tables: settings, limits, database."""
    defaults = Limits()
    return [
        *(Variable(s.env, s.default, s.help, "setting") for s in SETTINGS.values()),
        *(
            Variable(
                PREFIX + name.upper(),
                _limit_default(name, getattr(defaults, name)),
                LIMIT_HELP[name].replace("`", ""),
                "limit",
            )
            for name in Limits.names()
        ),
        *(
            Variable(name, default, meaning, "database")
            for name, default, meaning in DATABASE_VARIABLES
        ),
    ]


_TITLES = {
    "setting": "settings",
    "limit": "limits (sizes take a binary suffix: 16MiB, 1g; --limit NAME=VALUE where a "
    "command takes it)",
    "database": "database",
}


def help_text(width: int = 79) -> str:
    """The environment variables, for the end of ``rua-sink serve --help``."""
    lines = ["environment variables:"]
    group = ""
    for var in variables():
        if var.group != group:
            group = var.group
            lines += ["", f"  {_TITLES[group]}:"]
        lines.append(f"    {var.name}" + (f" (default: {var.default})" if var.default else ""))
        lines += textwrap.wrap(var.help, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines)


def _secret(name: str) -> bool:
    return name.endswith(_SECRET_SUFFIXES)


def _database_problem(name: str, text: str) -> str | None:
    if name == "RUA_SINK_DATABASE_URL":
        try:
            scheme = urlsplit(text).scheme
        except ValueError as exc:
            return f"not a URL: {exc}"
        if scheme not in ("postgresql", "postgres"):
            return "not a postgresql:// URL"
    elif name == "RUA_SINK_DATABASE_URL_FILE":
        try:
            with Path(text).open():
                pass
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
    return None


def _errors(env: Mapping[str, str]) -> dict[str, str]:
    """variable -> why its value is refused, for every variable whose value is."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        try:
            values[name] = setting.read(env)
        except ValueError as exc:
            errors[setting.env] = str(exc)
    for variable, reason in problems(values):
        errors.setdefault(variable, reason)
    for name in Limits.names():
        variable = PREFIX + name.upper()
        if variable in env:
            try:
                Limits().with_values({name: env[variable]})
            except ValueError as exc:
                errors[variable] = str(exc)
    for name, _, _ in DATABASE_VARIABLES:
        if env.get(name):
            problem = _database_problem(name, env[name])
            if problem is not None:
                errors[name] = problem
    return errors


def rows(env: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """One row a variable: its default, its value now, where that came from, and what is
    wrong with it if anything."""
    errors = _errors(env)
    for var in variables():
        source = "env" if var.name in env else "default"
        text = env.get(var.name, var.default)
        if _secret(var.name):
            shown: str | None = "set" if text else "unset"
        elif var.name == "RUA_SINK_DATABASE_URL" and text:
            shown = redacted(text)
        else:
            shown = text
        error = errors.get(var.name)
        yield {
            "variable": var.name,
            "group": var.group,
            "value": shown,
            "source": source,
            "default": var.default,
            "valid": error is None,
            "error": error,
            "help": var.help,
        }


def unknown(env: Mapping[str, str]) -> Iterator[tuple[str, str | None]]:
    """``RUA_SINK_*`` variables that are set but read by nothing (typing errors), each with
    the known name it is closest to, if any."""
    known = [var.name for var in variables()]
    for name in sorted(env):
        if name.startswith(PREFIX) and name not in known and not name.startswith(_NOT_SETTINGS):
            close = difflib.get_close_matches(name, known, n=1)
            yield name, close[0] if close else None


_COLUMNS = (
    Column("variable", "VARIABLE"),
    Column("value", "VALUE"),
    Column("source", "SOURCE"),
    Column("default", "DEFAULT"),
)


def cmd_config(args: argparse.Namespace, out: TextIO) -> int:
    table = list(rows(os.environ))
    bad = [row for row in table if not row["valid"]]
    columns: tuple[Column, ...] = _COLUMNS
    if bad and not args.json:
        columns = (*columns, Column("problem", "PROBLEM"))
        for row in bad:
            row["problem"] = f"invalid: {row['error']}"
    emit(out, columns, table, as_json=args.json)
    out.flush()
    for name, close in unknown(os.environ):
        hint = f" (did you mean {close}?)" if close else ""
        print(f"rua-sink: {name} is not a setting rua-sink reads{hint}", file=sys.stderr)
    if bad:
        names = ", ".join(row["variable"] for row in bad)
        print(f"rua-sink: invalid: {names}", file=sys.stderr)
        return 2
    return 0


def add_config(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="every setting: its value now (from the environment), its default, and "
        "whether it is valid",
        description="Every environment variable rua-sink reads, with its value now, where "
        "it came from (env or default) and its default; passwords are masked. Exits 2 if a "
        "value is invalid (each is marked with the reason). The meaning of each: "
        "rua-sink serve --help.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per variable")
    p.set_defaults(func=cmd_config)
