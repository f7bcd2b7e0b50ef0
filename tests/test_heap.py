"""The heap trim gives the pages of freed C heap memory back to the system."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Allocates 40 MiB of 20 KB buffers (under glibc's mmap threshold: they come from the heap),
# frees every other one, so that the free memory lies in holes between live buffers, which
# glibc does not give back by itself; then runs the trimmer's loop for a moment or not.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from rua_sink.heap import HeapTrimmer

    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmRSS:"))

    async def main(interval):
        trimmer = HeapTrimmer(interval)
        kept, freed = [], []
        for i in range(2000):
            (freed if i % 2 else kept).append(bytearray(b"x" * 20_000))
        del freed
        before = rss()
        if interval:
            task = asyncio.create_task(trimmer.run())
            await asyncio.sleep(interval * 3)
            task.cancel()
        else:
            await asyncio.sleep(0.15)
        print(json.dumps({"available": trimmer.available, "before": before, "after": rss()}))

    asyncio.run(main(float(sys.argv[1])))
    """
)


def _run(interval: float) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(interval)], check=True, capture_output=True, text=True
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


def test_freed_heap_pages_go_back_to_the_system() -> None:
    trimmed = _run(0.05)
    assert trimmed["available"]  # glibc, as on the supported platforms and in the image
    # About 20 MB were freed in holes: most of it leaves the resident set.
    assert trimmed["before"] - trimmed["after"] > 15 * 2**20


def test_without_the_trim_the_holes_stay_resident() -> None:
    untrimmed = _run(0)
    assert untrimmed["before"] - untrimmed["after"] < 2 * 2**20
