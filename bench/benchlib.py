"""What the benchmarks share: a scratch database, a running server, memory readings."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

RUA = "dmarc@rua.example.net"


def add_database_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--database-url",
        default=os.environ.get(
            "RUA_SINK_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="the PostgreSQL server (RUA_SINK_BENCH_DATABASE_URL; default 127.0.0.1:5432)",
    )


def with_database(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def _admin(server_url: str, statement: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def serving(database_url: str, **extra: str) -> Iterator[Served]:
    """``rua-sink serve`` for RUA on a database, accepting every domain (no DNS)."""
    port, http = free_port(), free_port()
    env = {
        **os.environ,
        "RUA_SINK_DATABASE_URL": database_url,
        "RUA_SINK_SMTP_LISTEN": f"127.0.0.1:{port}",
        "RUA_SINK_HTTP_LISTEN": f"127.0.0.1:{http}",
        "RUA_SINK_ADDRESSES": RUA,
        "RUA_SINK_AUTHORIZED_DOMAINS": "*",
        **extra,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rua_sink.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield Served(port, process)
    finally:
        process.terminate()
        process.wait(timeout=60)


def proc_status(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in bytes (VmHWM: peak RSS, VmRSS: now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
