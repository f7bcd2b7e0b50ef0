"""ARCHITECTURE.md's tree is the package's tree: every module it names exists, and every
module of the package is named there."""

from __future__ import annotations

import re

from .conftest import ROOT


def _documented() -> set[str]:
    """Module paths under rua_sink/ that the tree block of ARCHITECTURE.md names."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    tree = text.split("## The tree")[1].split("```")[1]
    found: set[str] = set()
    folder = ""
    for line in tree.splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if not words:
            continue
        if indent == 2 and words[0].endswith("/"):
            folder = words[0]
            continue
        if indent == 2:
            folder = ""
        # a line names modules in its first words: "x.py", or "a.py:" lists like
        # "metrics.py ...; logs.py: ...; heap.py: ..."
        for name in re.findall(r"\b([a-z_]+\.py)\b", line):
            found.add(folder + name)
    return found


def _actual() -> set[str]:
    package = ROOT / "rua_sink"
    return {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }


def test_the_tree_in_architecture_md_is_the_package() -> None:
    documented, actual = _documented(), _actual()
    assert not actual - documented, f"modules missing from ARCHITECTURE.md: {actual - documented}"
    assert not documented - actual, (
        f"ARCHITECTURE.md names modules that do not exist: {documented - actual}"
    )
