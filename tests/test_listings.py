"""`rua-sink domains`, `tls-reports` and `failure-reports`, run as subprocesses on a
database holding the corpus, checked against what the parser reads from the same files."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from rua_sink.core.names import domain as a_label
from rua_sink.storage import migrate
from rua_sink.storage.rows import reporter_key

from .listed import HOSTILE, HOSTILE_FIELD, Parsed, parsed, store_all
from .pg import run, scratch_database
from .procs import cli


@pytest.fixture(scope="module")
def stored(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Parsed]]:
    """A database of its own with the corpus and the hostile reports; the commands only
    read it, so the module's tests share it."""
    tmp = tmp_path_factory.mktemp("listed")
    with scratch_database(server_url, "rua_sink_listings") as (url, _):

        async def migrated() -> None:
            conn = await asyncpg.connect(url)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()

        run(migrated())
        store_all(url, tmp)
        yield url, parsed(tmp)


def rua(url: str, *args: str) -> str:
    """``rua-sink ARGS``'s standard output; it must succeed and print nothing on stderr."""
    done = cli(*args, env={"RUA_SINK_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_clean_table(text: str, header: str) -> list[str]:
    """A table: its header first, no control character anywhere (the line ends aside)."""
    lines = text.splitlines()
    assert lines[0].split() == header.split(), lines[0]
    for line in lines:
        assert line.isprintable(), repr(line)
    return lines


# --- domains -------------------------------------------------------------------------


def expected_domains(ref: Parsed) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(Counter)
    reporters: dict[str, set[str]] = defaultdict(set)
    for head, records in ref.aggregates:
        name = a_label(head.policy.domain) or head.policy.domain
        row = out[name]
        row["reports"] += 1
        row["messages"] += sum(r.count for r in records)
        row["passing"] += sum(r.count for r in records if "pass" in (r.dkim, r.spf))
        reporters[name].add(reporter_key(head.metadata.org_name, head.metadata.email))
    for name, row in out.items():
        row["reporters"] = len(reporters[name])
    return out


def test_domains_agree_with_the_parser(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    got = json_lines(rua(url, "domains", "--all", "--json"))
    expected = expected_domains(ref)
    assert {row["domain"] for row in got} == set(expected)
    for row in got:
        want = expected[row["domain"]]
        assert {k: row[k] for k in ("reports", "messages", "passing", "reporters")} == want
        assert row["pass_rate"] == round(100 * want["passing"] / want["messages"], 1)
    messages = [row["messages"] for row in got]
    assert messages == sorted(messages, reverse=True)
    # the last report ends the latest period of the domain's reports
    last = max(
        datetime.fromtimestamp(head.metadata.end, UTC)
        for head, _ in ref.aggregates
        if head.policy.domain == "stalw.art"
    )
    (stalwart,) = [row for row in got if row["domain"] == "stalw.art"]
    assert stalwart["last_report"] == last.isoformat()


def test_domains_table_and_window(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    lines = assert_clean_table(
        rua(url, "domains", "--all"),
        "DOMAIN REPORTS MESSAGES PASSING PASS % REPORTERS LAST REPORT",
    )
    assert len(lines) == 1 + len(expected_domains(ref))
    # numbers are right-aligned under their header
    end = lines[0].index("MESSAGES") + len("MESSAGES")
    assert all(line[end - 1].isdigit() for line in lines[1:])
    # a window: the reports of 2022 only
    in_2022 = json_lines(
        rua(url, "domains", "--since", "2022-01-01", "--until", "2023-01-01", "--json")
    )
    begins = {
        a_label(head.policy.domain)
        for head, _ in ref.aggregates
        if datetime(2022, 1, 1, tzinfo=UTC).timestamp()
        <= head.metadata.begin
        < datetime(2023, 1, 1, tzinfo=UTC).timestamp()
    }
    assert {row["domain"] for row in in_2022} == begins
    assert "stalw.art" in begins and "example.com" not in begins
    # the default window is the last 30 days, and the corpus is older
    assert rua(url, "domains") == "no aggregate reports in the last 30 days (--all for every one)\n"
    assert rua(url, "domains", "--json") == ""


def test_a_window_backwards_is_one_line(stored: tuple[str, Parsed]) -> None:
    url, _ = stored
    for args, words in (
        (("domains", "--since", "2023-01-01", "--until", "2022-01-01"), "must come before"),
        (("tls-reports", "--days", "0"), "not a positive whole number"),
        (("failure-reports", "--since", "yesterday"), "not a date"),
        (("failure-reports", "--limit", "-1"), "not a whole number"),
        (("export", "--format", "csv", "--since", "2024-01-01", "--until", "2020-01-01"), "must"),
        (("export", "--format", "csv", "--domain", "."), "not a domain name"),
    ):
        done = cli(*args, env={"RUA_SINK_DATABASE_URL": url})
        assert done.returncode != 0, args
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        # one line says what is wrong (argparse prints its usage above it)
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("rua-sink") and words in last, done.stderr


# --- tls-reports ---------------------------------------------------------------------


def tls_policies(ref: Parsed) -> Counter[tuple[str, str, str, int, int]]:
    return Counter(
        (
            report.report_id,
            policy.policy_domain,
            str(policy.policy_type),
            policy.success_count,
            policy.failure_count,
        )
        for report in ref.tls
        for policy in report.policies
    )


def test_tls_reports_agree_with_the_parser(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    got = json_lines(rua(url, "tls-reports", "--all", "--json"))
    assert Counter(
        (
            r["report_id"],
            r["policy_domain"],
            r["policy_type"],
            r["success_count"],
            r["failure_count"],
        )
        for r in got
    ) == tls_policies(ref)
    # newest first
    begins = [r["begin"] for r in got]
    assert begins == sorted(begins, reverse=True)
    # each policy's failure details, as the report gave them
    details = {
        (report.report_id, policy.policy_domain): sorted(
            (str(d.result_type), d.failed_session_count, d.receiving_mx_hostname, d.sending_mta_ip)
            for d in policy.failure_details
        )
        for report in ref.tls
        for policy in report.policies
    }
    for row in got:
        assert (
            sorted(
                (
                    d["result_type"],
                    d["failed_session_count"],
                    d["receiving_mx_hostname"],
                    d["sending_mta_ip"],
                )
                for d in row["failure_details"]
            )
            == details[(row["report_id"], row["policy_domain"])]
        )
        # the raw message shows the report
        assert row["raw_message_id"] is not None


def test_tls_reports_filters(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    everything = json_lines(rua(url, "tls-reports", "--all", "--json"))
    failing = json_lines(rua(url, "tls-reports", "--all", "--result", "failure", "--json"))
    clean = json_lines(rua(url, "tls-reports", "--all", "--result", "success", "--json"))
    assert failing and clean
    assert all(r["failure_count"] > 0 for r in failing)
    assert all(r["failure_count"] == 0 for r in clean)
    assert len(failing) + len(clean) == len(everything)
    # one domain, given as a user types it
    only = json_lines(rua(url, "tls-reports", "--all", "--domain", "Company-Y.Example.", "--json"))
    assert only and {r["policy_domain"] for r in only} == {"company-y.example"}
    assert len(only) == sum(
        1 for r in ref.tls for p in r.policies if p.policy_domain == "company-y.example"
    )
    # a window: the reports that began in 2016
    in_2016 = json_lines(
        rua(url, "tls-reports", "--since", "2016-01-01", "--until", "2017-01-01", "--json")
    )
    assert {r["report_id"] for r in in_2016} == {
        r.report_id for r in ref.tls if datetime.fromtimestamp(r.begin, UTC).year == 2016
    }
    assert rua(url, "tls-reports", "--all", "--limit", "1", "--json").count("\n") == 1


def test_tls_reports_tables_hold_no_control_characters(stored: tuple[str, Parsed]) -> None:
    url, _ = stored
    table = assert_clean_table(
        rua(url, "tls-reports", "--all"),
        "BEGIN REPORTER REPORT ID POLICY DOMAIN TYPE SUCCESS FAILURE RAW",
    )
    (hostile,) = [line for line in table if "hostile.example" in line]
    assert "Evil?[31m?Org?X" in hostile
    details = assert_clean_table(
        rua(url, "tls-reports", "--all", "--details", "--result", "failure"),
        "BEGIN REPORTER POLICY DOMAIN RESULT SESSIONS RECEIVING MX RECEIVING IP SENDING MTA IP RAW",
    )
    assert any("mx?[2j.hostile.example" in line for line in details)
    assert any("starttls-not-supported" in line for line in details)
    # JSON keeps the text as the reporter wrote it
    (row,) = [
        r
        for r in json_lines(rua(url, "tls-reports", "--all", "--json"))
        if r["policy_domain"] == "hostile.example"
    ]
    assert row["reporter"] == HOSTILE


# --- failure-reports -----------------------------------------------------------------


def test_failure_reports_agree_with_the_parser(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    got = json_lines(rua(url, "failure-reports", "--all", "--json"))
    assert Counter((r["source_ip"], r["auth_failure"], r["user_agent"]) for r in got) == Counter(
        (f.source_ip, f.auth_failure, f.user_agent) for f in ref.failures
    )
    for row in got:
        report = next(
            f
            for f in ref.failures
            if f.user_agent == row["user_agent"]
            and f.source_ip == row["source_ip"]
            and list(f.reported_domains) == row["reported_domains"]
        )
        assert row["original_mail_from"] == report.original_mail_from
        assert row["original_rcpt_to"] == list(report.original_rcpt_to)
        if report.arrived_at is not None:
            assert row["arrived_at"] == datetime.fromtimestamp(report.arrived_at, UTC).isoformat()
            assert not row["arrival_unknown"]
        else:
            assert row["arrival_unknown"]
    arrived = [r["arrived_at"] for r in got]
    assert arrived == sorted(arrived, reverse=True)


def test_failure_reports_raw_id_shows_the_message(stored: tuple[str, Parsed]) -> None:
    url, _ = stored
    (row,) = json_lines(
        rua(url, "failure-reports", "--all", "--domain", "hostile.example", "--json")
    )
    done = cli("raw", str(row["raw_message_id"]), env={"RUA_SINK_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert "Reported-Domain: hostile.example" in done.stdout
    assert HOSTILE_FIELD in done.stdout


def test_failure_reports_filters_and_table(stored: tuple[str, Parsed]) -> None:
    url, ref = stored
    example = json_lines(rua(url, "failure-reports", "--all", "--domain", "example.net", "--json"))
    assert {r["arrival_date"][:16] for r in example} == {"Thu, 8 Mar 2005 ", "Wed, 14 Apr 2010"}
    assert all("example.net" in r["reported_domains"] for r in example)
    in_2010 = json_lines(
        rua(url, "failure-reports", "--since", "2010-01-01", "--until", "2011-01-01", "--json")
    )
    assert [r["arrived_at"][:10] for r in in_2010] == ["2010-04-14", "2010-04-14"]  # 003, hostile
    lines = assert_clean_table(
        rua(url, "failure-reports", "--all"),
        "ID RAW ARRIVED (UTC) DOMAIN SOURCE IP AUTH FAILURE DELIVERY MAIL FROM RCPT TO REPORTER",
    )
    (hostile,) = [line for line in lines if "hostile.example" in line]
    assert "<evil?]0;owned?@example.net>" in hostile
    assert hostile.rstrip().endswith("Evil?[31m?Filter")
    # a report that does not say when the message arrived: when it was stored, marked; and
    # so it is in the default window of the last 30 days, where the others are not
    unknown = sum(1 for f in ref.failures if f.arrived_at is None)
    assert unknown and sum(1 for line in lines[1:] if "*  " in line) == unknown
    recent = json_lines(rua(url, "failure-reports", "--json"))
    assert len(recent) == unknown and all(r["arrival_unknown"] for r in recent)


def test_listing_an_empty_database(db: str) -> None:
    assert rua(db, "domains", "--all") == "no aggregate reports\n"
    assert rua(db, "tls-reports", "--all") == "no TLS reports\n"
    assert rua(db, "failure-reports", "--all", "--json") == ""
