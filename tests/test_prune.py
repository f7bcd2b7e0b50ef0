"""Retention on a schedule: `rua-sink prune` records each success in the database, and a
running `rua-sink serve` exports the latest as a gauge, for the alert that says when prune
has stopped running (the CronJob and the compose service themselves: test_helm.py,
test_deploy.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from .pg import fetch
from .procs import cli
from .smtpserver import running, scrape

GAUGE = ("rua_sink_prune_last_success_timestamp_seconds", ())


def prune(database_url: str, *args: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    """``rua-sink prune ARGS``: its JSON summary (stdout) and its log lines (stderr)."""
    done = cli("prune", *args, env={"RUA_SINK_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return json.loads(done.stdout), logged


def test_prune_records_its_success_and_logs_it(db: str) -> None:
    assert fetch(db, "SELECT * FROM prune_runs") == []
    summary, logged = prune(db, "--older-than", "400d", "--failure-older-than", "14d")

    (run,) = fetch(db, "SELECT * FROM prune_runs")
    assert run["cutoff"] == datetime.fromisoformat(str(summary["cutoff"]))
    assert run["failure_cutoff"] == datetime.fromisoformat(str(summary["failure_cutoff"]))
    assert run["failure_cutoff"] - run["cutoff"] == timedelta(days=400 - 14)
    counts = json.loads(run["counts"])
    assert counts == {k: v for k, v in summary.items() if k not in {"cutoff", "failure_cutoff"}}
    assert set(counts) >= {"partitions_dropped", "aggregate_reports", "failure_reports"}

    (line,) = [entry for entry in logged if entry["event"] == "prune_succeeded"]
    assert line["level"] == "info"
    assert datetime.fromisoformat(str(line["finished_at"])) == run["finished_at"]
    assert line["cutoff"] == summary["cutoff"]
    assert line["failure_reports"] == summary["failure_reports"]

    # The record is pruned like the rest: a run's cutoff takes the runs before it.
    prune(db, "--older-than", "400d")
    assert len(fetch(db, "SELECT * FROM prune_runs")) == 2
    prune(db, "--older-than", "0d")
    (latest,) = fetch(db, "SELECT * FROM prune_runs")
    assert latest["finished_at"] > run["finished_at"]


def test_serve_exports_when_prune_last_succeeded(db: str) -> None:
    with running(db) as srv:
        assert scrape(srv)[GAUGE] == 0  # never
        prune(db, "--older-than", "400d")
        (first,) = fetch(db, "SELECT max(finished_at) AS at FROM prune_runs")
        assert scrape(srv)[GAUGE] == first["at"].timestamp()
        prune(db, "--older-than", "400d")
        (second,) = fetch(db, "SELECT max(finished_at) AS at FROM prune_runs")
        assert second["at"] > first["at"]
        assert scrape(srv)[GAUGE] == second["at"].timestamp()
