"""A 400,000-record report ingests completely in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from .pg import fetch
from .procs import CLI, proc_status
from .reports import build_email

RECORDS = 400_000
RSS_LIMIT = 150 * 2**20


@pytest.mark.slow
def test_400k_record_report_ingests_under_150_mb(db: str, tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    xml_bytes = build_email(path, RECORDS)
    assert xml_bytes > 250e6  # about 270 MB of XML, in a 12 MB email
    proc = subprocess.Popen(
        [*CLI, "ingest", "--json", str(path)],
        env={**os.environ, "RUA_SINK_DATABASE_URL": db},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # The peak is VmHWM of the child's own memory map, read while it runs: getrusage's
    # ru_maxrss would include the pages the child had between fork and exec, which are
    # this test process's.
    peak = 0
    while proc.poll() is None:
        peak = proc_status(proc.pid) or peak  # VmHWM only grows; 0 once the child has gone
        time.sleep(0.05)
    with proc.stdout, proc.stderr:
        out = proc.stdout.read()
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["records"] == RECORDS and summary["reports_new"] == 1
    assert fetch(db, "SELECT count(*) AS n FROM aggregate_records")[0]["n"] == RECORDS
    assert 0 < peak <= RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
