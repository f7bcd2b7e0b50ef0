"""Export throughput and memory: stored records -> CSV, by the real ``rua-sink export``.

For each record count (40,000 and 400,000 by default) it builds the gzip'd report email of
bench/ingest.py, stores it in a fresh database with ``rua-sink ingest``, then runs
``rua-sink export --format csv`` as a subprocess ``--runs`` times to a file and ``--runs``
times to /dev/null, and prints the medians: records/s (start of the process to its exit) and
the export process's peak RSS (its ``ru_maxrss``, from ``wait4``). Memory that does not grow
with the record count is the point: the rows stream from a server-side cursor.

    python bench/export.py [--runs 3] [--records 40000 400000] [--database-url URL]

The server is RUA_SINK_BENCH_DATABASE_URL (or --database-url), else 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_database_argument, build_email, scratch_database

CLI = (sys.executable, "-m", "rua_sink.cli")


def store(url: str, path: Path) -> None:
    """The report stored as a backfill stores it, by ``rua-sink ingest``."""
    subprocess.run(
        [*CLI, "ingest", str(path)],
        check=True,
        capture_output=True,
        env={**os.environ, "RUA_SINK_DATABASE_URL": url},
    )


def export_once(url: str, output: Path | None) -> tuple[float, int, int]:
    """One ``rua-sink export --format csv``: seconds, peak RSS in bytes, bytes written."""
    args = [*CLI, "export", "--format", "csv"]
    if output is not None:
        args += ["--output", str(output)]
    env = {**os.environ, "RUA_SINK_DATABASE_URL": url}
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(args, stdout=devnull, stderr=subprocess.PIPE, env=env)
        # wait4: this child's own resource use (getrusage of the children would mix in
        # the ingest that came before)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"export failed: {err}")
    written = output.stat().st_size if output is not None else 0
    return seconds, usage.ru_maxrss * 1024, written


def bench(url: str, records: int, runs: int, tmp: Path) -> None:
    email = tmp / f"report-{records}.eml"
    build_email(email, records)
    t0 = time.perf_counter()
    store(url, email)
    stored = time.perf_counter() - t0
    email.unlink()
    print(f"export  {records:,} records (stored in {stored:.1f} s)")
    target = tmp / "records.csv"
    for label, output in (("to a file", target), ("to /dev/null", None)):
        results = [export_once(url, output) for _ in range(runs)]
        secs = statistics.median(r[0] for r in results)
        rss = statistics.median(r[1] for r in results)
        size = f"  CSV {results[0][2] / 1e6:.0f} MB" if output is not None else ""
        print(
            f"  {label:<13} median {secs:6.2f} s  {records / secs:9,.0f} records/s  "
            f"peak RSS {rss / 2**20:6.1f} MiB{size}  "
            f"(runs: {', '.join(f'{r[0]:.2f}' for r in results)})"
        )
    target.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, nargs="+", default=[40_000, 400_000])
    add_database_argument(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rua-sink-bench-") as tmp:
        for records in args.records:
            with scratch_database(args.database_url, "rua_sink_bench") as (url, _):
                bench(url, records, args.runs, Path(tmp))


if __name__ == "__main__":
    main()
