"""The server pins glibc's mmap threshold, so that large buffers freed go back to the system."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Frees a 1 MiB block first, which raises glibc's threshold to 1 MiB unless it is pinned,
# then allocates 40 MB in 200 KB buffers (near asyncio's 256 KiB read buffers) and frees every
# other one: left in the heap, between live buffers, their pages stay resident.
CHILD = textwrap.dedent(
    """
    import json, sys
    from rua_sink.heap import fix_mmap_threshold

    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS:"))

    fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
    block = bytearray(b"x" * 2**20)
    del block
    kept, freed = [], []
    for i in range(200):
        (freed if i % 2 else kept).append(bytearray(b"x" * 200_000))
    before = rss()
    del freed
    print(json.dumps({"fixed": fixed, "released": before - rss()}))
    """
)


def _run(mode: str, **env: str) -> dict[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        check=True,
        capture_output=True,
        text=True,
        env={**environ, **env},
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


def test_large_buffers_freed_leave_the_resident_set() -> None:
    pinned = _run("fix")
    assert pinned["fixed"]  # glibc, as on the supported platforms and in the image
    assert pinned["released"] > 15 * 2**20  # of the 20 MB freed


def test_with_a_moving_threshold_they_stay_resident() -> None:
    assert _run("leave")["released"] < 2 * 2**20


def test_an_operators_setting_is_left_alone() -> None:
    result = _run("fix", MALLOC_MMAP_THRESHOLD_="1048576")
    assert not result["fixed"]
    assert result["released"] < 2 * 2**20
