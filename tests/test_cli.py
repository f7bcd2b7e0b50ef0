"""``rua-sink parse`` and ``--version``, run as a real subprocess."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import rua_sink

from .conftest import CORPUS, INVALID_CASING_SPF_RESULTS, ROOT, corpus
from .procs import cli
from .reports import gz, report_xml


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    """``rua-sink ARGS``: its exit status, its JSON lines and its stderr."""
    proc = cli(*args, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, lines, proc.stderr


def test_whole_corpus_directory() -> None:
    status, lines, _ = run("parse", str(CORPUS))
    assert status == 0
    assert all("error" not in line for line in lines)
    types = [line["type"] for line in lines]
    assert (types.count("aggregate"), types.count("tlsrpt"), types.count("failure")) == (28, 9, 5)
    by_source = {Path(line["source"]).name: line for line in lines}
    google = by_source["100.eml"]
    assert google["org_name"] == "google.com"
    assert google["report_id"] == "5264580628977113351"
    assert (google["policy_domain"], google["record_count"], google["message_count"]) == (
        "stalw.art",
        1,
        1,
    )
    assert google["repaired"] is False
    assert isinstance(google["begin"], int) and google["begin"] < google["end"]
    tls = by_source["rfc-example.json"]
    assert (tls["policy_count"], tls["success_count"], tls["failure_count"]) == (1, 5326, 303)


def test_records_are_streamed_inside_the_report_line() -> None:
    path = corpus("cry-inc__dmarc-report-viewer/testdata/dmarc-reports/invalid_casing.xml")
    status, (line,), _ = run("parse", "--records", str(path))
    assert status == 0
    (record,) = line["records"]
    assert [s["result"] for s in record["spf_results"]] == INVALID_CASING_SPF_RESULTS
    assert line["record_count"] == 1


def test_inputs_without_reports_exit_1_with_a_reason(tmp_path: Path) -> None:
    junk = tmp_path / "note.eml"
    junk.write_bytes(b"From: a@example.org\r\nSubject: hello\r\n\r\nJust text.\r\n")
    broken = tmp_path / "cut.xml.gz"
    broken.write_bytes(gz(report_xml(200))[:-40])
    good = tmp_path / "good.xml"
    good.write_bytes(report_xml(2))
    status, lines, _ = run("parse", str(junk), str(broken), str(good))
    assert status == 1
    assert lines[0] == {
        "source": str(junk),
        "error": "not_a_report",
        "detail": "the message has no report-like part",
    }
    assert lines[1]["source"] == str(broken)
    assert lines[1]["error"] == "truncated_archive"
    assert lines[2]["source"] == str(good)
    assert lines[2]["record_count"] == 2


def test_limits_from_flags_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    path.write_bytes(report_xml(3))
    status, lines, _ = run("parse", "--limit", "max_records=2", str(path))
    assert status == 1
    assert lines[-1]["error"] == "too_many_records"
    status, lines, _ = run("parse", str(path), env={"RUA_SINK_MAX_RECORDS": "2"})
    assert status == 1
    assert lines[-1]["detail"] == "max_records exceeded: 3 > 2"
    status, lines, _ = run("parse", str(path), env={"RUA_SINK_MAX_MESSAGE_BYTES": "1KiB"})
    assert status == 1
    assert lines[0]["error"] == "message_too_large"
    status, lines, stderr = run("parse", "--limit", "no_such_limit=1", str(path))
    assert status != 0
    assert "unknown limit" in stderr


def test_the_version_is_written_once_and_the_package_is_typed() -> None:
    # rua_sink/__init__.py holds the version; the build reads it there (hatch).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "rua_sink/__init__.py"
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"rua-sink {rua_sink.__version__}\n"
    # PEP 561: the annotations are for the users' type checkers too (the wheel takes
    # every file of the package).
    assert resources.files("rua_sink").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ("prune", "--older-than", "400d"),
            {"RUA_SINK_FAILURE_RETENTION": "soon"},
            "RUA_SINK_FAILURE_RETENTION: not a duration (e.g. 400d, 12w, 18m, 2y): 'soon'",
        ),
        (
            ("check-auth", "example.com", "--rua", "dmarc@rua.example.net"),
            {"RUA_SINK_DNS_TIMEOUT": "0"},
            "RUA_SINK_DNS_TIMEOUT: must be positive, not 0",
        ),
        (
            ("ingest", "missing.eml"),
            {"RUA_SINK_PARSE_WORKERS": "999"},
            "RUA_SINK_PARSE_WORKERS: not between 0 and 256: '999'",
        ),
        (
            ("reprocess",),
            {"RUA_SINK_REQUIRE_AUTHENTICATED": "maybe"},
            "RUA_SINK_REQUIRE_AUTHENTICATED: must be off, flag or reject, not 'maybe'",
        ),
    ],
)
def test_a_bad_setting_stops_a_command_with_one_line(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    # Read before the database is touched: no URL is needed to be told.
    proc = cli(*args, env={**env, "RUA_SINK_DATABASE_URL": "postgresql://127.0.0.1:1/none"})
    assert (proc.returncode, proc.stderr) == (2, f"rua-sink: {message}\n")
