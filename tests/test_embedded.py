"""The README's run command works with no database configured: an embedded PostgreSQL."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import procs
from .conftest import corpus


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = procs.traversable_tmpdir("rua-sink-embedded-")
    try:
        yield path
    finally:
        cli(path, "db", "stop")
        shutil.rmtree(path, ignore_errors=True)


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``rua-sink ARGS`` with no database configured (empty is unset) and its data in
    ``data``."""
    unset = {"RUA_SINK_DATABASE_URL": "", "RUA_SINK_DATABASE_URL_FILE": ""}
    return procs.cli(*args, env={**unset, "RUA_SINK_DATA_DIR": str(data)})


def test_ingest_with_no_database_configured(data_dir: Path) -> None:
    report = corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/103.eml")
    first = cli(data_dir, "ingest", str(report))
    assert first.returncode == 0, first.stderr
    assert f"using the embedded PostgreSQL in {data_dir / 'pgdata'}" in first.stderr
    assert first.stdout.startswith("RESULT ")
    assert re.search(r"^reports stored +1$", first.stdout, re.M), first.stdout
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    # The server is left running; the next command finds it and the data.
    second = cli(data_dir, "ingest", "--json", str(report))
    assert second.returncode == 0, second.stderr
    assert '"messages_duplicate": 1' in second.stdout
    stopped = cli(data_dir, "db", "stop")
    assert stopped.stdout.strip() == "stopped"
