"""What the benchmarks share. They run in the development environment (``./dev`` sets it up)
and take their parts from the test harness: a scratch database, ``rua-sink serve`` as a
subprocess, the report builders, memory readings."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rua_sink.core.limits import Limits
from tests.pg import scratch_database
from tests.procs import descendants, proc_pss, proc_status
from tests.reports import LARGE_HEAD, LARGE_RECORD, build_email, gz, message
from tests.smtpserver import RUA, Server, running

__all__ = [
    "RUA",
    "Server",
    "add_database_argument",
    "build_email",
    "descendants",
    "fmt_runs",
    "proc_pss",
    "proc_status",
    "run_child",
    "scratch_database",
    "serving",
    "small_message",
]


def add_database_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--database-url",
        default=os.environ.get(
            "RUA_SINK_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="the PostgreSQL server (RUA_SINK_BENCH_DATABASE_URL; default 127.0.0.1:5432)",
    )


@contextmanager
def serving(server_url: str, prefix: str, **extra: str) -> Iterator[Server]:
    """``rua-sink serve`` for RUA on a fresh database of the PostgreSQL server (named after
    ``prefix``, dropped at the end), with the default message size cap, accepting every
    domain without a DNS lookup."""
    with (
        scratch_database(server_url, prefix) as (url, _),
        running(
            url,
            None,
            RUA_SINK_AUTHORIZED_DOMAINS="*",
            RUA_SINK_MAX_MESSAGE_BYTES=str(Limits().max_message_bytes),
            **extra,
        ) as server,
    ):
        yield server


def small_message(i: int) -> bytes:
    """A report of five records, as a small reporter sends it daily."""
    records = "".join(
        LARGE_RECORD.format(
            ip=f"192.0.2.{(i + k) % 250 + 1}",
            count=k + 1,
            disposition="none",
            dkim="pass",
            spf="pass",
            spf_result="pass",
            env="example.com",
            dkim_domain="example.com",
            sel=k,
        )
        for k in range(5)
    )
    xml = (LARGE_HEAD.format(report_id=f"small-{i}") + records + "</feedback>\n").encode()
    return message((gz(xml), "application/gzip", "r.xml.gz"))


def run_child(python: str, code: str, *args: str) -> dict[str, float]:
    """``python -c code args...`` in a process of its own; the JSON of its last line."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [python, "-c", code, *args], check=True, capture_output=True, text=True, env=env
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def fmt_runs(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['seconds']:.2f}" for r in runs)
