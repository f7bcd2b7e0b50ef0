"""Ingest throughput: a report email file -> committed rows in PostgreSQL.

Builds the gzip'd report email of bench/parse.py (400,000 records by default), stores
each in a fresh database with ``rua_sink.ingest.Ingester`` in a process of its own, and
prints records/s (file read to commit), the child's peak RSS, and the time the same
process takes to parse the file without storing it, as the baseline.

    python bench/ingest.py [--runs 3] [--records 400000] [--database-url URL]

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
from benchlib import add_database_argument, build_email, fmt_runs, run_child, scratch_database

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import asyncpg
    from rua_sink import migrate
    from rua_sink.core.limits import Limits
    from rua_sink.core.model import AggregateEnd
    from rua_sink.core.pipeline import parse_stream
    from rua_sink.ingest import Ingester
    from rua_sink.store import Envelope, Store

    path, url = sys.argv[1], sys.argv[2]

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
        ingester = Ingester(s, limits=Limits())
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            result = await ingester.ingest(f, Envelope(source=path))
        seconds = time.perf_counter() - t0
        rows = await pool.fetchval("SELECT count(*) FROM aggregate_records")
        await pool.close()
        return result.records, rows, seconds

    records, rows, seconds = asyncio.run(store())
    # VmHWM: the peak of this process's own memory map (ru_maxrss would also count
    # what the process held between fork and exec)
    with open("/proc/self/status") as status:
        rss = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM:"))
    parsed, parse_seconds = parse_only()
    print(json.dumps({"records": records, "rows": rows, "seconds": seconds, "rss": rss,
                      "parse_seconds": parse_seconds, "parsed": parsed}))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=400_000)
    add_database_argument(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rua-sink-bench-") as tmp:
        path = Path(tmp) / f"report-{args.records}.eml"
        xml_bytes = build_email(path, args.records)
        runs = []
        for _ in range(args.runs):
            with scratch_database(args.database_url, "rua_sink_bench") as (url, _):
                run = run_child(sys.executable, CHILD, str(path), url)
            assert run["records"] == run["rows"] == run["parsed"] == args.records, run
            runs.append(run)
        secs = statistics.median(r["seconds"] for r in runs)
        parse = statistics.median(r["parse_seconds"] for r in runs)
        rss = max(r["rss"] for r in runs)
        n = args.records
        email_mb = path.stat().st_size / 1e6
        print(f"ingest  {n} records  xml {xml_bytes / 1e6:.1f} MB  email {email_mb:.1f} MB")
        print(
            f"  file -> committed rows: median {secs:.2f} s  {n / secs:,.0f} records/s  "
            f"(runs: {fmt_runs(runs)})"
        )
        print(f"  parse only, same process: median {parse:.2f} s  {n / parse:,.0f} records/s")
        print(f"  storing costs {secs / parse:.2f}x the parse alone")
        print(f"  peak RSS of the ingesting process: {rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
