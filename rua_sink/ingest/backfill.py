"""Backfill sources: what users export from the mailbox they collect reports in today.

Messages (.eml), bare report files, mbox files and Maildir folders, each message
handed over as a seekable file; an mbox is split as it is read, never loaded whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: What a directory is searched for; an explicit file is read whatever its name.
REPORT_SUFFIXES = (".eml", ".msg", ".xml", ".gz", ".zip", ".json", ".zlib")
_SPOOL_MEMORY = 1 << 20


@dataclass(slots=True)
class Item:
    label: str  # the path, and "#n" for the n-th message of an mbox
    file: IO[bytes]


def is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


def is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From "


def items(paths: list[str]) -> Iterator[Item]:
    for raw in paths:
        path = Path(raw)
        if is_maildir(path):
            for sub in ("cur", "new"):
                for name in sorted(os.listdir(path / sub)):
                    yield from _file(path / sub / name)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                here = Path(dirpath)
                for name in sorted(filenames):
                    if name.lower().endswith((*REPORT_SUFFIXES, ".mbox")):
                        yield from items([str(here / name)])
                for d in list(dirnames):  # a Maildir is read as one, not walked into
                    if is_maildir(here / d):
                        yield from items([str(here / d)])
                        dirnames.remove(d)
        elif is_mbox(path):
            yield from mbox_messages(path)
        else:
            yield from _file(path)


def _file(path: Path) -> Iterator[Item]:
    with path.open("rb") as f:
        yield Item(str(path), f)


def mbox_messages(path: Path) -> Iterator[Item]:
    """Split an mbox (mboxo or mboxrd) at its "From " lines, unquoting ">From "."""
    with path.open("rb") as src:
        count = 0
        out: IO[bytes] | None = None
        previous_blank = True
        for line in src:
            if line.startswith(b"From ") and previous_blank:
                if out is not None:
                    count += 1
                    yield _finished(path, count, out)
                out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)  # noqa: SIM115
                previous_blank = False
                continue
            if out is None:
                continue
            # mboxrd quoting: ">From " and ">>From " lose one ">" (mboxo's, the only one).
            quoted = line.startswith(b">") and line.lstrip(b">").startswith(b"From ")
            out.write(line[1:] if quoted else line)
            previous_blank = line in (b"\n", b"\r\n")
        if out is not None:
            count += 1
            yield _finished(path, count, out)


def _finished(path: Path, count: int, out: IO[bytes]) -> Item:
    out.seek(0)
    return Item(f"{path}#{count}", out)
