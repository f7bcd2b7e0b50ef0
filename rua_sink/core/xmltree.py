"""What every reader of aggregate XML shares: lxml parsers locked down, names and texts.

The readers of one record (``records``), of a report's head (``reporthead``), of a whole
document (``aggregate``) and of a segment in a worker (``fanout``) all match elements by
local name (SPEC.md C.20), read texts without stray quotes (SPEC.md I.65) and integers as
reporters write them (SPEC.md I.63), and parse with the same options: no DTD, no
entities, no network, never recover mode.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from rua_sink.errors import InvalidReport, XmlTooDeep

#: What ``text`` strips from both ends of an element's text.
QUOTES = "\"' \t\r\n"

_LOCAL: dict[str, str] = {}


def local_name(tag: Any) -> str:
    """Local name of a tag, ``{ns}name`` or ``name`` (SPEC.md C.20: match by local name)."""
    name = _LOCAL.get(tag)
    if name is not None:
        return name
    if not isinstance(tag, str):
        return ""  # entity or comment node
    name = tag.rpartition("}")[2]
    if len(_LOCAL) < 4096:
        _LOCAL[tag] = name
    return name


def text(el: Any) -> str | None:
    """Element text without stray whitespace and quotes (SPEC.md I.65); None if empty."""
    value = el.text
    if value is None:
        return None
    value = value.strip(QUOTES)
    return value or None


# Integers as reports write them: ASCII digits, a sign, and a fractional part that
# some reporters add to timestamps (SPEC.md I.63). 18 digits keep values in int64.
_INTEGER = re.compile(r"^[+-]?([0-9]{1,18})(?:\.[0-9]*)?$")


def integer(value: str | None, what: str) -> int:
    """The integer a report's text means; InvalidReport naming ``what`` if none."""
    if value is None:
        raise InvalidReport(f"{what} is missing")
    if value.isdigit() and len(value) <= 18 and value.isascii():  # the common case
        return int(value)
    m = _INTEGER.match(value)
    if m is None:
        raise InvalidReport(f"{what} is not an integer: {value[:40]!r}")
    number = int(m.group(1))
    return -number if value.startswith("-") else number


def serialize(el: Any) -> str:
    """An element kept raw (an extension), as XML text."""
    return str(etree.tostring(el, encoding="unicode", with_tail=False))


def check_depth(el: Any, depth: int, maximum: int) -> None:
    """Nesting of a subtree kept raw (extensions, unknown elements)."""
    if depth + sum(1 for _ in el.iter()) <= maximum:
        return  # fewer elements than levels left: not too deep, however they nest
    stack = [(el, depth)]
    while stack:
        node, d = stack.pop()
        if d > maximum:
            raise XmlTooDeep(d, maximum)
        stack.extend((child, d + 1) for child in node)


# --- parsers ---------------------------------------------------------------------------


class _NothingResolver(etree.Resolver):
    """Second lock behind xmlclean's refusal of DTDs: any external resource the parser
    might still ask for (a DTD, an entity) resolves to nothing, without touching a file
    or the network."""

    # lxml calls resolve(system_url, public_id, context); lxml-stubs leave out context.
    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:  # type: ignore[override]
        return self.resolve_string("", context)  # type: ignore[call-arg]


_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "remove_blank_text": True,  # indentation: about a third of a record's nodes
    "collect_ids": False,
}


def new_pull_parser(tags: list[str]) -> Any:
    """A pull parser reporting the "end" events of elements of the names ``tags`` only."""
    # lxml keeps the errors of a thread's parsers in one log, which an exception's
    # error_log copies: without this, the errors of a broken document read earlier in
    # this thread would be taken for this one's (see aggregate's _undeclared_prefix_only).
    etree.clear_error_log()
    parser = etree.XMLPullParser(events=("end",), tag=tags, **_PARSER_OPTIONS)
    parser.resolvers.add(_NothingResolver())
    return parser


def new_tree_parser() -> Any:
    """The same parser for a whole (small) document at once, without events."""
    etree.clear_error_log()
    parser = etree.XMLParser(**_PARSER_OPTIONS)
    parser.resolvers.add(_NothingResolver())
    return parser
