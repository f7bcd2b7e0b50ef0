"""The docs say what the code does: the limits table (rua_sink/core/limits.py), every
reason, and every link between the pages."""

from __future__ import annotations

import re

import pytest

from rua_sink.core.limits import Limits, parse_size
from rua_sink.errors import Reason

from .conftest import ROOT, docs_text, readme_table


def _rows() -> dict[str, tuple[str, str]]:
    table = readme_table("limits")
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `(\w+)` \| `(\w+)` \| ([^|]+) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).strip())
    return rows


def test_every_limit_is_documented_with_its_default() -> None:
    rows = _rows()
    defaults = Limits()
    assert sorted(rows) == sorted(Limits.names())
    for name, (env, default) in rows.items():
        assert env == "RUA_SINK_" + name.upper()
        assert parse_size(default.replace(" ", "")) == getattr(defaults, name), name


def test_every_reason_is_documented() -> None:
    text = docs_text()
    for reason in Reason:
        assert f"`{reason.value}`" in text


def test_size_syntax() -> None:
    assert parse_size("1000") == 1000
    assert parse_size("64MiB") == parse_size("64m") == 64 * 1024 * 1024
    assert parse_size("1 GiB") == 1 << 30


@pytest.mark.parametrize("bad", ["0", "-1", "ten", "5 parsecs", ""])
def test_bad_sizes(bad: str) -> None:
    with pytest.raises(ValueError, match=r"size|positive"):
        parse_size(bad)


def test_limits_from_env() -> None:
    limits = Limits.from_env({"RUA_SINK_MAX_RECORDS": "10", "RUA_SINK_OTHER": "x"})
    assert limits.max_records == 10
    assert limits.max_message_bytes == Limits().max_message_bytes


def test_every_link_between_pages_resolves() -> None:
    """Every relative link of the README and docs/ names a page that exists, and an anchor
    that is one of that page's headings (GitHub's anchors: lower case, spaces to dashes)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}")
                continue
            if anchor and dest.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.+)$", dest.read_text())
                slugs = {
                    re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings
                }
                if anchor not in slugs:
                    bad.append(f"{page.name}: {target}")
    assert not bad, bad
