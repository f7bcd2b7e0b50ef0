"""What an older parser misfiled is recovered: the same bytes arriving again, over SMTP or
from a backfill, are read again; `rua-sink reprocess` finds them by parser version and
judges stored verdicts by today's authentication policy; each reply says what happened."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rua_sink.core.version import PARSER_VERSION

from .pg import fetch, scratch_database
from .procs import cli
from .reports import gz, message, report_message, report_xml, tls_message
from .smtpserver import Server, deltas, example_zone, running, scrape, send

#: What rua-sink wrote in raw_messages.parser_version before the parser had a number.
OLD_VERSION = "0.1.0"
CURRENT = str(PARSER_VERSION)


def archive(
    url: str,
    data: bytes,
    status: str,
    reason: str | None,
    *,
    version: str = OLD_VERSION,
    source: str = "smtp",
) -> int:
    """A raw message as an older rua-sink left it: archived, not stored as reports."""
    (row,) = fetch(
        url,
        "INSERT INTO raw_messages (sha256, size_bytes, source, content_gzip, status, reason, "
        "detail, parser_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        hashlib.sha256(data).digest(),
        len(data),
        source,
        gzip.compress(data),
        status,
        reason,
        None if reason is None else f"as version {version} read it",
        version,
    )
    return int(row["id"])


def raw_row(url: str, raw_id: int) -> dict[str, Any]:
    (row,) = fetch(
        url,
        "SELECT status, reason, parser_version, processed_at FROM raw_messages WHERE id = $1",
        raw_id,
    )
    return dict(row)


def reports_of(url: str, raw_id: int) -> list[tuple[str, int]]:
    rows = fetch(
        url,
        "SELECT report_id, record_count FROM aggregate_reports WHERE raw_message_id = $1 "
        "ORDER BY report_id",
        raw_id,
    )
    return [(r["report_id"], r["record_count"]) for r in rows]


def run_cli(url: str, *args: str, **env: str) -> dict[str, Any]:
    proc = cli(*args, "--json", env={"RUA_SINK_DATABASE_URL": url, **env})
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


@pytest.fixture
def empty(server_url: str) -> Iterator[str]:
    """A database of the test's own: `reprocess` looks at every raw message in it."""
    with scratch_database(server_url, "rua_sink_recovery") as (url, _):
        migrated = cli("migrate", env={"RUA_SINK_DATABASE_URL": url})
        assert migrated.returncode == 0, migrated.stderr
        yield url


@pytest.fixture(scope="module")
def flag_server(server_url: str) -> Iterator[Server]:
    """`rua-sink serve` under RUA_SINK_REQUIRE_AUTHENTICATED=flag (the default), with TLS
    reports for example.com authorized."""
    zone = example_zone()
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    with (
        scratch_database(server_url, "rua_sink_recovery_smtp") as (url, _),
        running(url, zone) as srv,
    ):
        yield srv


def test_a_message_misfiled_by_an_older_parser_is_read_again_over_smtp(
    flag_server: Server,
) -> None:
    url = flag_server.database_url
    data = report_message("again-smtp", records=3)
    raw_id = archive(url, data, "not_a_report", "not_a_report")
    before = scrape(flag_server)
    assert send(flag_server, data) == (
        250,
        "2.0.0 Report accepted; received before, now read again",
    )
    row = raw_row(url, raw_id)
    assert (row["status"], row["reason"], row["parser_version"]) == ("stored", None, CURRENT)
    assert reports_of(url, raw_id) == [("again-smtp", 3)]
    delta = deltas(before, scrape(flag_server))
    assert delta("rua_sink_smtp_replies_total", reason="reprocessed") == 1
    assert delta("rua_sink_reports_total", type="aggregate", outcome="stored") == 1
    # Read by this version now: the same bytes once more are a duplicate.
    assert send(flag_server, data) == (250, "2.0.0 Report already received, accepted")
    assert reports_of(url, raw_id) == [("again-smtp", 3)]
    sha = hashlib.sha256(data).digest()
    assert fetch(url, "SELECT count(*) AS n FROM raw_messages WHERE sha256 = $1", sha)[0]["n"] == 1


def test_a_message_kept_for_review_by_this_version_stays_kept(flag_server: Server) -> None:
    url = flag_server.database_url
    data = message((gz(report_xml(100, report_id="kept-cut"))[:-50], "application/gzip", "c.gz"))
    code, reply = send(flag_server, data)
    assert (code, reply) == (
        250,
        "2.0.0 Accepted; the report could not be parsed and is kept for review",
    )
    (first,) = fetch(
        url,
        "SELECT id, processed_at FROM raw_messages WHERE sha256 = $1",
        hashlib.sha256(data).digest(),
    )
    assert send(flag_server, data) == (250, "2.0.0 Already received; kept for review")
    after = raw_row(url, first["id"])
    assert (after["status"], after["reason"]) == ("quarantined", "truncated_archive")
    assert after["processed_at"] == first["processed_at"]  # not read again


def test_replies_say_what_happened_to_each_part(flag_server: Server) -> None:
    code, reply = send(flag_server, tls_message("tls-unsigned-reply", sign=False))
    assert (code, reply) == (250, "2.0.0 Accepted; kept for review: not signed by its reporter")
    both = message(
        (gz(report_xml(2, report_id="part-ok")), "application/gzip", "a.xml.gz"),
        (gz(report_xml(100, report_id="part-cut"))[:-50], "application/gzip", "b.xml.gz"),
    )
    code, reply = send(flag_server, both)
    assert (code, reply) == (
        250,
        "2.0.0 Accepted; a part could not be parsed and is kept for review",
    )
    rows = fetch(
        flag_server.database_url,
        "SELECT report_id FROM aggregate_reports WHERE report_id LIKE 'part-%'",
    )
    assert [r["report_id"] for r in rows] == ["part-ok"]


def test_an_unsigned_tls_report_is_stored_by_reprocess_under_off(server_url: str) -> None:
    zone = example_zone()
    zone.txt["_smtp._tls.example.com"] = ["v=TLSRPTv1; rua=mailto:dmarc@rua.example.net"]
    with scratch_database(server_url, "rua_sink_unsigned") as (url, _):
        with running(url, zone) as srv:  # RUA_SINK_REQUIRE_AUTHENTICATED=flag
            code, reply = send(srv, tls_message("tls-kept", sign=False))
            assert (code, reply) == (
                250,
                "2.0.0 Accepted; kept for review: not signed by its reporter",
            )
        (raw,) = fetch(url, "SELECT id, status, reason, auth_dmarc FROM raw_messages")
        assert (raw["status"], raw["reason"]) == ("quarantined", "unsigned_report")
        # Under flag, read by this version: nothing is due.
        assert run_cli(url, "reprocess")["messages"] == 0
        # Operators turn the check off: what was kept for the want of a signature is due,
        # and stored.
        done = run_cli(url, "reprocess", RUA_SINK_REQUIRE_AUTHENTICATED="off")
        assert (done["messages"], done["reprocessed"], done["reports_new"]) == (1, 1, 1)
        assert done["quarantined"] == 0
        row = raw_row(url, raw["id"])
        assert (row["status"], row["reason"]) == ("stored", None)
        (tls,) = fetch(url, "SELECT report_id, authenticated FROM tls_reports")
        # The stored verdict stays with the report: the mail did not pass DMARC.
        assert (tls["report_id"], tls["authenticated"]) == ("tls-kept", raw["auth_dmarc"] == "pass")


def test_reprocess_reads_again_what_older_parsers_did_not_store(empty: str) -> None:
    url = empty
    misfiled = archive(url, report_message("old-not", records=2), "not_a_report", "not_a_report")
    quarantined = archive(
        url, report_message("old-q", records=4), "quarantined", "xml_syntax", source="/b/q.eml"
    )
    broken = message((gz(report_xml(100, report_id="now-cut"))[:-50], "application/gzip", "c.gz"))
    current = archive(url, broken, "quarantined", "truncated_archive", version=CURRENT)
    stored = archive(url, report_message("old-stored"), "stored", None)
    untouched = {i: raw_row(url, i) for i in (current, stored)}

    done = run_cli(url, "reprocess")
    assert (done["messages"], done["reprocessed"], done["reports_new"]) == (2, 2, 2)
    for raw_id, report in ((misfiled, ("old-not", 2)), (quarantined, ("old-q", 4))):
        row = raw_row(url, raw_id)
        assert (row["status"], row["parser_version"]) == ("stored", CURRENT)
        assert reports_of(url, raw_id) == [report]
    assert {i: raw_row(url, i) for i in (current, stored)} == untouched
    assert run_cli(url, "reprocess")["messages"] == 0  # nothing left to read again

    # Wider: every message not stored as reports, whatever version read it.
    wider = run_cli(url, "reprocess", "--any-version")
    assert (wider["messages"], wider["quarantined"]) == (1, 1)
    assert raw_row(url, current)["processed_at"] > untouched[current]["processed_at"]
    assert raw_row(url, stored) == untouched[stored]
    assert run_cli(url, "reprocess", "--all")["messages"] == 4


def test_backfilling_the_same_file_again_reads_it_again(empty: str, tmp_path: Path) -> None:
    url = empty
    path = tmp_path / "r.xml.gz"
    path.write_bytes(gz(report_xml(5, report_id="backfill-again")))
    raw_id = archive(url, path.read_bytes(), "not_a_report", "not_a_report", source=str(path))
    first = run_cli(url, "ingest", str(path))
    assert (first["reprocessed"], first["reports_new"], first["records"]) == (1, 1, 5)
    assert (first["messages_duplicate"], first["not_a_report"]) == (0, 0)
    assert raw_row(url, raw_id)["status"] == "stored"
    assert reports_of(url, raw_id) == [("backfill-again", 5)]
    again = run_cli(url, "ingest", str(path))
    assert (again["messages_duplicate"], again["reprocessed"], again["reports_new"]) == (1, 0, 0)
