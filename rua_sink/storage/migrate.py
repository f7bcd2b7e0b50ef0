"""Versioned SQL migrations, applied under a PostgreSQL advisory lock.

Files ``rua_sink/storage/migrations/NNNN_name.sql`` are applied in order, each in its own
transaction, and recorded in ``schema_migrations``. The advisory lock makes ten replicas
starting at once safe: one applies, the others wait and then find nothing to do.

Each migration runs through ``ddl``: under a short lock_timeout, tried again while the
tables it changes are busy, so that it never queues deliveries behind it. Replicas of the
previous version keep serving on the new schema during a rolling upgrade, so a migration
only expands (see docs/deployment.md, Upgrades: expand, then contract a release later).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from rua_sink.storage.ddl import DEFAULT_WAIT, ddl
from rua_sink.storage.rows import Conn

# pg_advisory_lock key: "rua-sink" as an integer, so that other users of the database
# are unlikely to collide with it.
MIGRATION_LOCK = 0x7275612D73696E6B

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def available() -> tuple[Migration, ...]:
    """The migrations this version ships, in order (read from the package once: the
    readiness probe asks for them every few seconds)."""
    found = []
    for entry in resources.files("rua_sink.storage.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return tuple(found)


async def applied(conn: Conn) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def pending(conn: Conn) -> list[Migration]:
    done = await applied(conn)
    return [m for m in available() if m.version not in done]


async def migrate(conn: Conn, *, lock_wait: float = DEFAULT_WAIT) -> list[Migration]:
    """Apply what is pending, each migration waiting for its table locks up to
    ``lock_wait`` seconds (``LockTimeout`` then); returns the migrations this call applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = []
        for mig in await pending(conn):

            async def apply(conn: Conn, mig: Migration = mig) -> None:
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )

            await ddl(conn, apply, what=f"migration {mig.name}", wait=lock_wait)
            done.append(mig)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
