"""Progress on long commands: drawn on standard error when it is a terminal (a pty here),
never when it is a pipe; standard output carries the result alone either way. And what
``ingest`` prints: every count, duplicates included, without --json."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pty
import re
import subprocess
from pathlib import Path

from .conftest import CORPUS
from .pg import fetch
from .procs import CLI, cli

FEEDBACK = CORPUS / "stalwartlabs__mail-auth" / "resources" / "dmarc-feedback"


def mbox(path: Path) -> Path:
    """The corpus's aggregate report emails, one mbox."""
    with path.open("wb") as out:
        for eml in sorted(FEEDBACK.glob("*.eml")):
            lines = eml.read_bytes().replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
            quoted = [b">" + x if x.lstrip(b">").startswith(b"From ") else x for x in lines]
            out.write(b"From reports@example.net Thu Jan  1 00:00:00 2026\n")
            out.write(b"\n".join(quoted) + b"\n\n")
    return path


def on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``rua-sink ARGS`` with standard error on a pty and standard output on a pipe: the
    status, what the terminal showed, and the output."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, **env},
    ) as proc:
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError as exc:  # EIO: the command closed its end
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            drawn += chunk
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        status = proc.wait(timeout=120)
    os.close(leader)
    return status, drawn.decode(), out


def test_ingest_of_an_mbox_draws_progress_on_a_terminal(db: str, tmp_path: Path) -> None:
    path = mbox(tmp_path / "reports.mbox")
    status, drawn, out = on_a_terminal("ingest", str(path), env={"RUA_SINK_DATABASE_URL": db})
    assert status == 0, drawn
    assert re.search(
        r"messages ingested: \d+, \d+ reports new, \d+ duplicate, 0 quarantined", drawn
    )
    assert drawn.endswith("\r")  # the line is cleared before the summary
    assert out.startswith("RESULT ")
    assert "\r" not in out and "messages ingested:" not in out
    messages = len(list(FEEDBACK.glob("*.eml")))
    assert re.search(rf"^messages read +{messages}$", out, re.M), out


def test_reprocess_draws_progress_with_its_total(db: str, tmp_path: Path) -> None:
    env = {"RUA_SINK_DATABASE_URL": db}
    assert cli("ingest", str(FEEDBACK), env=env).returncode == 0
    count = fetch(db, "SELECT count(*) AS n FROM raw_messages")[0]["n"]
    status, drawn, out = on_a_terminal("reprocess", "--all", "--json", env=env)
    assert status == 0, drawn
    assert f"messages read again: 1/{count}" in drawn
    assert json.loads(out)["messages"] == count


def test_nothing_but_the_result_when_standard_error_is_a_pipe(db: str, tmp_path: Path) -> None:
    env = {"RUA_SINK_DATABASE_URL": db}
    path = mbox(tmp_path / "reports.mbox")
    done = cli("ingest", str(path), str(FEEDBACK), env=env)
    assert (done.returncode, done.stderr) == (0, "")
    again = cli("reprocess", "--all", env=env)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout.startswith("RESULT ")


def test_the_ingest_summary_shows_duplicates_and_every_count(db: str, tmp_path: Path) -> None:
    env = {"RUA_SINK_DATABASE_URL": db}
    broken = tmp_path / "broken.xml.gz"
    broken.write_bytes(gzip.compress(b"<feedback>")[:-6])
    first = cli("ingest", str(FEEDBACK), str(broken), env=env)
    assert first.returncode == 0, first.stderr
    emails = len(list(FEEDBACK.glob("*.eml")))
    files = len([p for p in FEEDBACK.iterdir() if p.suffix in (".eml", ".xml")])

    def counts(out: str) -> dict[str, int]:
        table = out.split("\n\n", maxsplit=1)[0].splitlines()
        assert table[0].split() == ["RESULT", "COUNT"]
        pairs = [line.rsplit(None, 1) for line in table[1:]]
        return {name.strip(): int(count) for name, count in pairs}

    got = counts(first.stdout)
    assert got["messages read"] == files + 1
    assert got["quarantined"] == 1
    assert got["already stored (skipped)"] == 0
    assert got["reports stored"] + got["reports already stored (duplicates)"] == files
    assert re.search(
        rf"^QUARANTINED +REASON +DETAIL\n{re.escape(str(broken))} +truncated_archive ",
        first.stdout,
        re.M,
    )
    # Every message again: each is skipped as already stored, and the summary says so.
    again = cli("ingest", str(FEEDBACK), env=env)
    assert again.returncode == 0, again.stderr
    got = counts(again.stdout)
    assert got["messages read"] == got["already stored (skipped)"] == files
    assert got["reports stored"] == 0
    assert emails > 0


def test_ingest_honours_failure_keep_body(db: str, tmp_path: Path) -> None:
    arf = CORPUS / "stalwartlabs__mail-auth" / "resources" / "arf"
    whole, redacted = tmp_path / "whole", tmp_path / "redacted"
    whole.mkdir()
    redacted.mkdir()
    (whole / "003.eml").write_bytes((arf / "003.eml").read_bytes())
    (redacted / "004.eml").write_bytes((arf / "004.eml").read_bytes())
    env = {"RUA_SINK_DATABASE_URL": db}
    done = cli("ingest", str(whole), env={**env, "RUA_SINK_FAILURE_KEEP_BODY": "true"})
    assert done.returncode == 0, done.stderr
    done = cli("ingest", str(redacted), env=env)
    assert done.returncode == 0, done.stderr
    rows = fetch(
        db,
        "SELECT m.source, m.redacted, m.content_gzip FROM raw_messages m "
        "JOIN failure_reports f ON f.raw_message_id = m.id ORDER BY m.source",
    )
    assert sorted((Path(r["source"]).name, r["redacted"]) for r in rows) == [
        ("003.eml", False),
        ("004.eml", True),
    ]
    (kept,) = [r for r in rows if not r["redacted"]]
    assert gzip.decompress(kept["content_gzip"]) == (arf / "003.eml").read_bytes()
