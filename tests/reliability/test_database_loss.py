"""PostgreSQL connections killed again and again, and the database unreachable for a while,
during 500 deliveries: every delivery ends in 250 or 4xx, the client retries the 4xx ones,
and afterwards each report is stored once and every 250 has its raw message."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

from ..pg import run, terminate_sessions
from ..reports import report_message
from ..smtpserver import Server, running_alone, send

DELIVERIES = 500


@pytest.fixture
def fragile(server_url: str) -> Iterator[tuple[Server, str]]:
    with running_alone(server_url, "rua_sink_loss") as alone:
        yield alone


async def chaos(server_url: str, name: str, kill: str, stop: threading.Event) -> None:
    """Kills the server's database sessions again and again, and now and then refuses new
    ones for half a second, until ``stop``."""
    conn = await asyncpg.connect(server_url)
    try:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            await conn.execute(kill)
            if rounds % 10 == 0:  # now and then, unreachable for a while
                await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await conn.execute(kill)
                await asyncio.sleep(0.5)
                await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await asyncio.sleep(0.05)
    finally:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await conn.close()


@pytest.mark.slow
def test_deliveries_survive_database_loss(fragile: tuple[Server, str], server_url: str) -> None:
    srv, name = fragile
    stop = threading.Event()
    kill = terminate_sessions(name)

    chaos_thread = threading.Thread(target=lambda: run(chaos(server_url, name, kill, stop)))
    chaos_thread.start()
    acknowledged: set[str] = set()
    temporary = 0
    lock = threading.Lock()

    def deliver(ids: list[str]) -> None:
        nonlocal temporary
        for rid in ids:
            for _ in range(60):  # the sender retries 4xx replies
                try:
                    code, reply = send(srv, report_message(rid))
                except OSError:
                    code, reply = 421, "connection lost"
                assert code == 250 or 400 <= code < 500, f"{rid}: {code} {reply}"
                if code == 250:
                    with lock:
                        acknowledged.add(rid)
                    break
                with lock:
                    temporary += 1
                time.sleep(0.05)

    ids = [f"loss-{i}" for i in range(DELIVERIES)]
    workers = [threading.Thread(target=deliver, args=(ids[i::5],)) for i in range(5)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=600)
    finally:
        stop.set()
        chaos_thread.join(timeout=30)
    assert acknowledged == set(ids)
    assert temporary > 0  # the chaos did bite
    rows = srv.fetch(
        "SELECT a.report_id, count(*) AS n, min(m.status) AS status, "
        "bool_and(m.content_gzip IS NOT NULL) AS raw FROM aggregate_reports a "
        "JOIN raw_messages m ON m.id = a.raw_message_id GROUP BY a.report_id"
    )
    assert len(rows) == DELIVERIES
    assert all(r["n"] == 1 and r["status"] == "stored" and r["raw"] for r in rows)
    records = srv.fetch("SELECT count(*) AS n FROM aggregate_records")
    assert records[0]["n"] == 2 * DELIVERIES
