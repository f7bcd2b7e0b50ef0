"""One benchmark, run on this tree and on other checkouts in turn, in one command.

The machine's speed drifts between minutes and between days (docs/benchmarks.md), so a
figure means something only beside a baseline measured in the same command. This runs
``bench/SCRIPT`` with ARGS in this tree, then in each BASELINE checkout (a ``git worktree``
of an older commit), round after round, and prints per figure the median of each tree and
the ratio of this tree's median to each baseline's.

    python bench/compare.py --baseline ../old-checkout [--rounds 3] SCRIPT [ARGS...]
    python bench/compare.py --baseline ../v1 smtp.py
    python bench/compare.py --baseline ../v1 ingest.py --runs 1

Each checkout runs its own ``bench/SCRIPT`` and its own ``rua_sink`` (first on PYTHONPATH)
with this interpreter and its installed dependencies. A figure is a number with a unit
(``messages/s``, ``records/s``, ``MiB``) on a line of the script's output; the text before
the line's first colon names it (without the measured numbers in it), so lines that a
baseline's script does not print are shown for the trees that print them.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

#: "<label>: ... 1,234 records/s" and the like: the label is the line up to its first
#: colon, the figure the last number followed by one of these units.
_MEASURED = re.compile(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+")
_FIGURE = re.compile(r"([\d,]+(?:\.\d+)?)\s*(messages/s|records/s|MiB)")


def figures(output: str) -> dict[str, float]:
    """Every figure of one run, by its label and unit."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        matches = _FIGURE.findall(line)
        if not matches:
            continue
        # the text before the first colon names the figure, without the measured numbers
        # in it (those with a decimal point or thousands separators: they vary by run)
        label = " ".join(_MEASURED.sub("", line.partition(":")[0]).split())
        for i, (number, unit) in enumerate(matches):
            key = f"{label} [{unit}]" + (f" #{i + 1}" if len(matches) > 1 else "")
            found[key] = float(number.replace(",", ""))
    return found


def run(tree: Path, script: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / script), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{tree}: bench/{script} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return figures(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", action="append", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("script", help="a script of bench/, e.g. smtp.py")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()
    trees = [HERE, *(b.resolve() for b in opts.baseline)]
    results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
    for n in range(opts.rounds):
        for tree in trees:
            results[tree].append(run(tree, opts.script, opts.args))
            print(f"round {n + 1}: {tree} done", file=sys.stderr, flush=True)
    labels = list(dict.fromkeys(k for t in trees for r in results[t] for k in r))
    names = ["this tree", *(str(b) for b in opts.baseline)]
    print(f"bench/{opts.script} {' '.join(opts.args)}: medians of {opts.rounds} rounds")
    for label in labels:
        medians = [
            statistics.median(v) if (v := [r[label] for r in results[t] if label in r]) else None
            for t in trees
        ]
        runs = [[r.get(label) for r in results[t]] for t in trees]
        print(label)
        for name, median, values in zip(names, medians, runs, strict=True):
            shown = ", ".join(f"{v:,.1f}" for v in values if v is not None)
            print(f"  {name}: {'-' if median is None else f'{median:,.1f}'}  (runs: {shown})")
        for name, median in zip(names[1:], medians[1:], strict=True):
            if medians[0] is not None and median:
                print(f"  this tree / {name}: {medians[0] / median:.3f}")


if __name__ == "__main__":
    main()
