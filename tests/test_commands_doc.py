"""docs/commands.md documents every command of ``build_parser()``, each with an example of
its output."""

from __future__ import annotations

import argparse
import re

from rua_sink.cli.main import build_parser

from .conftest import DOCS

PAGE = DOCS / "commands.md"


def commands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def examples(text: str) -> dict[str, list[str]]:
    """command -> the output lines that follow each ``$ rua-sink COMMAND ...`` line of the
    page's fenced blocks (``$ VAR=value rua-sink ...`` counts too)."""
    found: dict[str, list[str]] = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^\$ (?:[A-Z_]+=\S+ )*rua-sink ([a-z-]+)", line)
            if m is not None:
                output = []
                for after in lines[i + 1 :]:
                    if after.startswith("$ "):
                        break
                    output.append(after)
                found.setdefault(m.group(1), []).extend(x for x in output if x.strip())
    return found


def test_every_command_is_documented_with_an_example_of_its_output() -> None:
    text = PAGE.read_text()
    shown = examples(text)
    for name in commands():
        heading = re.search(rf"^#+ `rua-sink {re.escape(name)}\b[^`]*`", text, re.M)
        row = re.search(rf"^\| `rua-sink {re.escape(name)}\b", text, re.M)
        assert heading or row, (
            f"docs/commands.md does not document `rua-sink {name}`: give it a heading "
            f"(## `rua-sink {name}`) or a row in the table of commands"
        )
        assert shown.get(name), (
            f"docs/commands.md has no example output of `rua-sink {name}`: add a fenced "
            f"block with the line `$ rua-sink {name} ...` and the real output under it"
        )


def test_the_examples_are_found_where_they_are_and_only_there() -> None:
    page = "```\n$ rua-sink db url\npostgresql://x\n$ rua-sink migrate\n```\n"
    assert examples(page) == {"db": ["postgresql://x"], "migrate": []}
    assert examples("$ rua-sink db url\npostgresql://x\n") == {}  # not in a block
