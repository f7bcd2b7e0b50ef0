"""A real PostgreSQL for the tests: RUA_SINK_TEST_DATABASE_URL if set, else the server on
127.0.0.1:5432 if it answers, else an embedded one. Each test session creates its own
database and drops it at the end."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from rua_sink.storage import migrate
from rua_sink.storage.database import Embedded, find_bindir

from .procs import traversable_tmpdir

T = TypeVar("T")

TABLES = (
    "failure_reports",
    "tls_failure_details",
    "tls_policies",
    "tls_reports",
    "aggregate_records",
    "aggregate_reports",
    "raw_messages",
    "source_hosts",
    "prune_runs",
    "domain_sources",
    "report_totals",
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def admin(server_url: str, *statements: str) -> None:
    """Run statements on the server's maintenance connection (CREATE/DROP DATABASE, ...)."""

    async def go() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    run(go())


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query, on a connection of its own."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return run(go())


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[tuple[str, str]]:
    """A database of its own, created empty and dropped afterwards (even if a test made
    it refuse connections); yields its URL and its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name), name
    finally:
        admin(
            server_url,
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true',
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


def terminate_sessions(name: str) -> str:
    """SQL that ends every session on database ``name`` but the one running it."""
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 - test's own name
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    configured = os.environ.get("RUA_SINK_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _answers("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    data = traversable_tmpdir("rua-sink-test-pg-")
    server = Embedded(data, find_bindir())
    server.start()
    try:
        yield server.url.replace("/rua_sink?", "/postgres?")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "rua_sink_test") as (url, _):
        yield url


@pytest.fixture
def db(database_url: str) -> str:
    """The session's database, migrated, with every table empty."""

    async def reset() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate.migrate(conn)
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    run(reset())
    return database_url
