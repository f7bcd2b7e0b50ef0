"""Parse throughput and memory of the core, against parsedmarc on the same input.

Builds gzip'd report emails of 20,000 and 400,000 records (about 600 bytes of XML per
record, as large providers write them), parses each in a fresh process with
``rua_sink.core.pipeline.parse_message`` and prints records/s, decompressed MB/s and
the process's peak RSS. Then runs parsedmarc (installed into its own virtual
environment, ``.bench-venv/parsedmarc``, on first use) on the 20,000-record email and
prints the ratio of the two parse times.

    python bench/parse.py [--runs 3] [--sizes 20000,400000] [--no-parsedmarc]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import build_email, fmt_runs, run_child

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".bench-venv" / "parsedmarc"
PARSEDMARC = "parsedmarc==11.1.0"

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from rua_sink.core.model import AggregateEnd, PartFailed
    from rua_sink.core.pipeline import parse_message
    from rua_sink.core.unpack import file_chunks
    path = sys.argv[1]
    t0 = time.perf_counter()
    records = 0
    with open(path, "rb") as f:
        for ev in parse_message(file_chunks(f, 256 * 1024)):
            if isinstance(ev, AggregateEnd):
                records += ev.record_count
            elif isinstance(ev, PartFailed):
                raise SystemExit(f"part failed: {ev.error!r}")
    seconds = time.perf_counter() - t0
    # VmHWM: the peak of this process's own memory map (ru_maxrss would also count
    # what the process held between fork and exec)
    with open("/proc/self/status") as status:
        rss = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
    print(json.dumps({"records": records, "seconds": seconds, "rss": rss}))
    """
)

PARSEDMARC_CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    import parsedmarc
    from parsedmarc.config import ParserConfig
    logging.getLogger("parsedmarc").setLevel(logging.ERROR)
    data = open(sys.argv[1], "rb").read()
    # offline: no reverse DNS and no downloads (the bundled IP and PSL data are used)
    config = ParserConfig(offline=True, always_use_local_files=True)
    t0 = time.perf_counter()
    result = parsedmarc.parse_report_email(data, config=config)
    seconds = time.perf_counter() - t0
    print(json.dumps({"records": len(result["report"]["records"]), "seconds": seconds}))
    """
)


def ensure_parsedmarc() -> str:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PARSEDMARC], check=True)
    return str(python)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="20000,400000")
    ap.add_argument("--no-parsedmarc", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="rua-sink-bench-") as tmp:
        medians: dict[int, float] = {}
        for n in sizes:
            path = Path(tmp) / f"report-{n}.eml"
            xml_bytes = build_email(path, n)
            runs = [run_child(sys.executable, CHILD, str(path)) for _ in range(args.runs)]
            for r in runs:
                assert r["records"] == n, r
            secs = statistics.median(r["seconds"] for r in runs)
            rss = max(r["rss"] for r in runs)
            medians[n] = secs
            print(
                f"rua-sink  {n:>7} records  xml {xml_bytes / 1e6:7.1f} MB  "
                f"email {path.stat().st_size / 1e6:6.1f} MB  median {secs:6.2f} s  "
                f"{n / secs:9,.0f} records/s  {xml_bytes / 1e6 / secs:6.1f} MB/s  "
                f"peak RSS {rss / 2**20:6.1f} MiB  (runs: {fmt_runs(runs)})"
            )
        if args.no_parsedmarc or 20000 not in sizes:
            return
        python = ensure_parsedmarc()
        path = Path(tmp) / "report-20000.eml"
        build_email(path, 20000)
        runs = [run_child(python, PARSEDMARC_CHILD, str(path)) for _ in range(args.runs)]
        for r in runs:
            assert r["records"] == 20000, r
        secs = statistics.median(r["seconds"] for r in runs)
        print(
            f"parsedmarc  20000 records  median {secs:6.2f} s  {20000 / secs:9,.0f} records/s  "
            f"(runs: {fmt_runs(runs)})"
        )
        print(f"ratio rua-sink / parsedmarc (20,000 records): {secs / medians[20000]:.1f}x faster")


if __name__ == "__main__":
    main()
