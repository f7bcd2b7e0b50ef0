"""Where the server's memory levels off: deliveries counted, not timed.

Runs ``rua-sink serve`` on a fresh database and delivers small reports as fast as
``--sessions`` concurrent clients can (each client opens a new session every 50
messages), in steps of ``--step`` messages, printing the server's RSS after each step.
A leak grows by the same amount every step; a heap reaching its working size grows by
less and less, then not at all.

    python bench/plateau.py [--messages 48000] [--step 8000] [--sessions 4]
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    RUA,
    add_database_argument,
    proc_status,
    serving,
    small_message,
)

PER_SESSION = 50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=48_000)
    ap.add_argument("--step", type=int, default=8_000)
    ap.add_argument("--sessions", type=int, default=4)
    add_database_argument(ap)
    args = ap.parse_args()
    with serving(args.database_url, "rua_sink_plateau") as server:
        failures = 0

        def client(first: int, count: int) -> None:
            nonlocal failures
            for start in range(first, first + count, PER_SESSION):
                try:
                    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as smtp:
                        smtp.ehlo("reporter.example")
                        for i in range(start, min(start + PER_SESSION, first + count)):
                            # each a new report, as distinct messages are
                            smtp.sendmail("noreply@bench.example", [RUA], small_message(i))
                except (smtplib.SMTPException, OSError):
                    failures += 1

        def rss() -> float:
            return proc_status(server.process.pid, "VmRSS") / 2**20

        print(f"start: server RSS {rss():.1f} MiB")
        share = args.step // args.sessions
        previous = rss()
        for k in range(args.messages // args.step):
            started = time.monotonic()
            clients = [
                threading.Thread(target=client, args=(k * args.step + j * share, share))
                for j in range(args.sessions)
            ]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            now = rss()
            print(
                f"after {(k + 1) * args.step:>7,} messages: server RSS {now:.1f} MiB "
                f"({now - previous:+.1f}), {args.step / (time.monotonic() - started):.0f} msgs/s"
            )
            previous = now
        print(f"sessions failed: {failures}")


if __name__ == "__main__":
    main()
