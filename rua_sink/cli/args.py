"""Argument types shared by the commands: each turns bad input into argparse's one-line
usage error (exit status 2) before anything runs."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

from rua_sink.core.names import domain


def positive_int(text: str) -> int:
    """A count: 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number, 0 or more: {text!r}")
    return value


def day(text: str) -> datetime:
    """``YYYY-MM-DD`` (or a full ISO 8601 time) as a UTC time; the day's start."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def _valid(name: str | None) -> bool:
    return (
        bool(name)
        and len(name or "") <= 253
        and all(_LABEL.match(label) for label in (name or "").split("."))
    )


def domain_name(text: str) -> str:
    """A domain name, as its A-label (an IDN is taken in either form)."""
    name = domain(text)
    if name is None or not _valid(name):
        raise argparse.ArgumentTypeError(f"not a domain name: {text!r}")
    return name


def address(text: str) -> str:
    """An email address: local part, ``@``, domain."""
    local, at, host = text.strip().removeprefix("mailto:").rpartition("@")
    if not at or not local or not _valid(domain(host)):
        raise argparse.ArgumentTypeError(f"not an email address: {text!r}")
    return text
