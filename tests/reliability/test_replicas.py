"""Two `rua-sink serve` replicas on one database, receiving the same reports at once:
each report is stored once, and every message that got a 250 has its raw message."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ..reports import report_message
from ..smtpserver import RUA, Server, running, send

REPORTS = 200


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Server, Server]]:
    with running(database_url) as first, running(database_url) as second:
        yield first, second


def test_the_same_reports_to_two_replicas_are_stored_once(
    replicas: tuple[Server, Server],
) -> None:
    first, second = replicas
    ids = [f"race-{i}" for i in range(REPORTS)]
    replies: dict[str, list[int]] = {rid: [] for rid in ids}
    lock = threading.Lock()

    def deliver(server: Server, part: list[str]) -> None:
        for rid in part:
            code, _ = send(server, report_message(rid))
            with lock:
                replies[rid].append(code)

    # Each replica gets every report, from two sessions each, in opposite orders.
    jobs = [
        (first, ids[: REPORTS // 2]),
        (first, ids[REPORTS // 2 :]),
        (second, ids[REPORTS // 2 :][::-1]),
        (second, ids[: REPORTS // 2][::-1]),
    ]
    threads = [threading.Thread(target=deliver, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(codes == [250, 250] for codes in replies.values()), {
        k: v for k, v in replies.items() if v != [250, 250]
    }
    rows = first.fetch(
        "SELECT report_id, count(*) AS n, sum(record_count) AS records FROM aggregate_reports "
        "WHERE report_id LIKE 'race-%' GROUP BY report_id"
    )
    assert len(rows) == REPORTS
    assert all(r["n"] == 1 and r["records"] == 2 for r in rows)
    records = first.fetch(
        "SELECT count(*) AS n FROM aggregate_records r JOIN aggregate_reports a ON a.id = r.report "
        "WHERE a.report_id LIKE 'race-%'"
    )
    assert records[0]["n"] == 2 * REPORTS
    # The second copy of each message is the same bytes: one raw message each.
    raws = first.fetch(
        "SELECT count(*) AS n FROM raw_messages m JOIN aggregate_reports a "
        "ON a.raw_message_id = m.id WHERE a.report_id LIKE 'race-%' AND m.status = 'stored'"
    )
    assert raws[0]["n"] == REPORTS
    rcpts = first.fetch(
        "SELECT DISTINCT m.rcpt_to FROM raw_messages m JOIN aggregate_reports a "
        "ON a.raw_message_id = m.id WHERE a.report_id LIKE 'race-%'"
    )
    assert [r["rcpt_to"] for r in rcpts] == [[RUA]]
