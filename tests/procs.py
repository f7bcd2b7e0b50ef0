"""rua-sink as a subprocess: the command line, and memory readings of a running process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

#: ``rua-sink``, as the installed entry point runs it, for Popen.
CLI = (sys.executable, "-m", "rua_sink.cli")


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``rua-sink ARGS`` to its end, output captured as text; ``env`` adds to ours."""
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def proc_status(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of /proc/PID/status in bytes (VmHWM: the peak RSS of the process's
    own memory map, VmRSS: now); 0 once the process has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def proc_pss(pid: int) -> int:
    """Proportional set size in bytes: the resident pages, shared ones counted by share;
    0 once the process has gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def traversable_tmpdir(prefix: str) -> Path:
    """A new directory under /tmp that every user may traverse: run as root, the embedded
    PostgreSQL runs as another user, which must reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path
