"""Soak: a fixed delivery rate for a long while, watching the server's memory.

Runs ``rua-sink serve`` on a fresh database and delivers small reports at a fixed rate
(default 50 a second, each in a session of its own), sampling the server's RSS every
second: by default 15 minutes of warm-up (45,000 messages, while the heap reaches its
working size), then ten minutes measured. Prints the RSS slope after the warm-up (least
squares, MiB per hour; flat is the target), the RSS at the start of each minute, and the
p50/p99 delivery latency (connect to 250).

    python bench/soak.py [--seconds 1500] [--rate 50] [--warmup 900]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    RUA,
    Server,
    add_database_argument,
    proc_status,
    serving,
    small_message,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1500)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--warmup", type=float, default=900)
    add_database_argument(ap)
    args = ap.parse_args()
    # every delivery comes from one address, each in a session of its own: the
    # per-address session limit (20 by default) is for strangers, not for the soak
    with serving(args.database_url, "rua_sink_soak", RUA_SINK_MAX_SESSIONS_PER_IP="200") as server:
        soak(args, server)


def soak(args: argparse.Namespace, server: Server) -> None:
    port = server.smtp_port
    samples: list[tuple[float, float]] = []
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Event()
    try:
        start = time.monotonic()

        def sample() -> None:
            while not done.is_set():
                rss = proc_status(server.process.pid, "VmRSS") / 2**20
                samples.append((time.monotonic() - start, rss))
                time.sleep(1)

        def deliver(i: int) -> None:
            t0 = time.monotonic()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                    smtp.sendmail("noreply@bench.example", [RUA], small_message(i))
                why = ""
            except smtplib.SMTPResponseException as exc:  # refused: by its reply code
                why = f"{type(exc).__name__} {exc.smtp_code}"
            except (smtplib.SMTPException, OSError) as exc:  # reset, timed out
                why = type(exc).__name__
            with lock:
                if not why:
                    latencies.append(time.monotonic() - t0)
                else:
                    failures[why] += 1

        threading.Thread(target=sample, daemon=True).start()
        i = 0
        senders: list[threading.Thread] = []
        while (now := time.monotonic() - start) < args.seconds:
            due = i / args.rate
            if now < due:
                time.sleep(due - now)
            t = threading.Thread(target=deliver, args=(i,))
            t.start()
            senders.append(t)
            i += 1
        for t in senders:
            t.join(timeout=120)
        done.set()
        summarize(args, i, samples, latencies, failures)
    finally:
        done.set()


def summarize(
    args: argparse.Namespace,
    deliveries: int,
    samples: list[tuple[float, float]],
    latencies: list[float],
    failures: Counter[str],
) -> None:
    """Prints the RSS slope after warm-up, its shape minute by minute, and the latency."""
    i = deliveries
    steady = [(t, rss) for t, rss in samples if t >= args.warmup]
    if len(steady) < 3:
        raise SystemExit("too few samples after the warm-up: make --seconds longer")
    times, sizes = zip(*steady, strict=True)
    per_hour = statistics.linear_regression(times, sizes).slope * 3600
    lat = sorted(latencies)
    print(
        f"{i} deliveries at {args.rate:g}/s for {args.seconds:g} s, "
        f"{sum(failures.values())} failed{f' {dict(failures)}' if failures else ''}; "
        f"server RSS after warm-up: {steady[0][1]:.1f} -> {steady[-1][1]:.1f} MiB, "
        f"slope {per_hour:+.1f} MiB/hour"
    )
    # The shape of the curve: a heap still warming up flattens, a leak keeps its slope.
    minutes: dict[int, float] = {}
    for at, rss in steady:  # the first sample of each minute
        minutes.setdefault(int(at - args.warmup) // 60, rss)
    each = " ".join(f"{rss:.1f}" for rss in minutes.values())
    print(f"server RSS at the start of each minute after warm-up, MiB: {each}")
    print(
        f"delivery latency: p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
