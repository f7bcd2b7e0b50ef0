"""Ingest throughput: a report email file -> committed rows in PostgreSQL.

Builds the gzip'd report email of bench/parse.py (400,000 records by default), stores
each in a fresh database with ``rua_sink.ingest.ingester.Ingester`` in a process of its own, and
prints records/s (file read to commit) with the report's records parsed by
``--workers`` worker processes (``RUA_SINK_PARSE_WORKERS``; 0: in the ingesting process),
the peak RSS of the ingesting process and of each worker, and, as the baseline, the time
the same process takes to parse the file alone, without workers and without storing it.

    python bench/ingest.py [--runs 3] [--records 400000] [--workers N] [--database-url URL]

The server is RUA_SINK_BENCH_DATABASE_URL (or --database-url), else 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    add_database_argument,
    build_email,
    fmt_runs,
    run_child,
    scratch_database,
)

from rua_sink.config import default_parse_workers as default_workers

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import asyncpg
    from rua_sink.storage import migrate
    from rua_sink.core.limits import Limits
    from rua_sink.core.model import AggregateEnd
    from rua_sink.core.pipeline import parse_stream
    from rua_sink.ingest.ingester import Ingester
    from rua_sink.ingest.parsepool import ParsePool
    from rua_sink.storage.store import Store
    from rua_sink.core.arrival import Envelope

    path, url, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def pss(pid):
        # Pss: the process's resident pages, those it shares counted by share (workers
        # share the code and modules they are forked with)
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(l.split()[1]) * 1024 for l in rollup if l.startswith("Pss:"))

    def peak(pid="self"):
        # VmHWM: the peak of a process's own memory map (ru_maxrss would also count
        # what the process held between fork and exec)
        with open(f"/proc/{pid}/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))

    def parse_only():
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            n = sum(e.record_count for e in parse_stream(f) if isinstance(e, AggregateEnd))
        return n, time.perf_counter() - t0

    async def store():
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            await migrate.migrate(conn)
        s = Store(pool)
        await s.load_partitions()
        parse_pool = ParsePool(workers)
        parse_pool.warm()  # as `serve` does when it starts
        ingester = Ingester(s, limits=Limits(), fanout=parse_pool.fanout)
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            result = await ingester.ingest(f, Envelope(source=path))
        seconds = time.perf_counter() - t0
        worker_rss = [peak(pid) for pid in parse_pool.pids()]
        worker_pss = [pss(pid) for pid in parse_pool.pids()]
        parse_pool.close()
        rows = await pool.fetchval("SELECT count(*) FROM aggregate_records")
        await pool.close()
        return result.records, rows, seconds, worker_rss, worker_pss

    records, rows, seconds, worker_rss, worker_pss = asyncio.run(store())
    rss = peak()
    parsed, parse_seconds = parse_only()
    print(json.dumps({"records": records, "rows": rows, "seconds": seconds, "rss": rss,
                      "worker_rss": max(worker_rss, default=0), "workers_pss": sum(worker_pss),
                      "parse_seconds": parse_seconds, "parsed": parsed}))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="parse workers (default: %(default)s)",
    )
    add_database_argument(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rua-sink-bench-") as tmp:
        path = Path(tmp) / f"report-{args.records}.eml"
        xml_bytes = build_email(path, args.records)
        runs = []
        for _ in range(args.runs):
            with scratch_database(args.database_url, "rua_sink_bench") as (url, _):
                run = run_child(sys.executable, CHILD, str(path), url, str(args.workers))
            assert run["records"] == run["rows"] == run["parsed"] == args.records, run
            runs.append(run)
        secs = statistics.median(r["seconds"] for r in runs)
        parse = statistics.median(r["parse_seconds"] for r in runs)
        rss = max(r["rss"] for r in runs)
        n = args.records
        email_mb = path.stat().st_size / 1e6
        print(f"ingest  {n} records  xml {xml_bytes / 1e6:.1f} MB  email {email_mb:.1f} MB")
        print(
            f"  file -> committed rows, {args.workers} parse workers: median {secs:.2f} s  "
            f"{n / secs:,.0f} records/s  (runs: {fmt_runs(runs)})"
        )
        print(
            f"  baseline, the same process parsing alone without workers: median {parse:.2f} s  "
            f"{n / parse:,.0f} records/s"
        )
        print(f"  ingest with workers / parse alone: {parse / secs:.2f}x the records/s")
        print(f"  peak RSS of the ingesting process: {rss / 2**20:.1f} MiB")
        if args.workers:
            worker = max(r["worker_rss"] for r in runs)
            workers = max(r["workers_pss"] for r in runs)
            print(
                f"  peak RSS of a parse worker: {worker / 2**20:.1f} MiB; all {args.workers} "
                f"at the end, shared pages counted once (PSS): {workers / 2**20:.1f} MiB"
            )


if __name__ == "__main__":
    main()
