"""The table and progress printing every listing command uses (rua_sink.cli.output)."""

from __future__ import annotations

import io
import json
import os
import pty

from rua_sink.cli.output import Column, Progress, emit, table

COLUMNS = (Column("name", "NAME"), Column("n", "COUNT", right=True), Column("note", "NOTE"))


def test_table_has_a_header_and_aligned_columns() -> None:
    rows = [{"name": "a.example", "n": 5, "note": None}, {"name": "b", "n": 12345, "note": "x"}]
    lines = table(COLUMNS, rows)
    assert lines == [
        "NAME       COUNT  NOTE",
        "a.example      5  -",
        "b          12345  x",
    ]


def test_table_cells_never_carry_control_characters() -> None:
    lines = table(COLUMNS, [{"name": "evil\x1b[31m", "n": 1, "note": ["a", "b\n"]}])
    assert "\x1b" not in lines[1] and "\n" not in lines[1]
    assert lines[1].endswith("a,b?")


def test_json_lines_carry_every_key_and_empty_says_so() -> None:
    out = io.StringIO()
    assert emit(out, COLUMNS, [{"name": "a", "n": 1, "extra": [1]}], as_json=True) == 1
    assert json.loads(out.getvalue()) == {"name": "a", "n": 1, "extra": [1]}
    out = io.StringIO()
    assert emit(out, COLUMNS, [], as_json=False, empty="no domains") == 0
    assert out.getvalue() == "no domains\n"
    out = io.StringIO()
    emit(out, COLUMNS, [], as_json=True, empty="no domains")
    assert out.getvalue() == ""


def test_progress_is_drawn_on_a_terminal_only() -> None:
    plain = io.StringIO()
    with Progress("ingest", stream=plain) as progress:
        progress.step(3, records=10)
    assert plain.getvalue() == "" and progress.done == 3
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        with Progress("export", stream=terminal) as progress:
            progress.step(records=7)
        terminal.flush()
        drawn = os.read(leader, 4096).decode()
    os.close(leader)
    assert "export: 1, 7 records" in drawn and drawn.endswith("\r")
