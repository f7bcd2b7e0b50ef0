"""SMTP throughput against a real ``rua-sink serve`` on a fresh database.

(a) 2,000 small report messages over 20 concurrent sessions: messages/s, from the first
    connection to the last 250 (each 250 is sent after its commit). Measured twice with
    smtplib, one command at a time: on the server just started ("cold": its first
    messages also pay for the pool's first connections, prepared statements, DNS answers
    not yet cached and the sender lookups of the first source addresses), then on 2,000
    more ("warm"), as a long-running MX sees it. Then on 2,000 more sent as large senders
    send them, with PIPELINING (RFC 2920): MAIL, RCPT and DATA in one packet, from an
    asyncio client ("pipelined");
(b) one 400,000-record gzip'd report: records/s from the start of DATA to the 250, and the
    server's peak RSS (VmHWM of its process) over the whole run, and that of its parse
    workers (RUA_SINK_PARSE_WORKERS), with the PSS of the whole process tree at the end.

    python bench/smtp.py [--messages 2000] [--sessions 20] [--records 400000]

The PostgreSQL server is RUA_SINK_BENCH_DATABASE_URL (or --database-url), else
127.0.0.1:5432. Authorization needs no DNS (RUA_SINK_AUTHORIZED_DOMAINS=*); the checks of the mail
(SPF, DKIM, DMARC) and sender identification run as by default, against the test DNS
server.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    RUA,
    add_database_argument,
    build_email,
    descendants,
    proc_pss,
    proc_status,
    serving,
    small_message,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--records", type=int, default=400_000)
    add_database_argument(ap)
    args = ap.parse_args()
    with serving(
        args.database_url, "rua_sink_bench", RUA_SINK_MAX_SESSIONS_PER_IP=str(args.sessions + 5)
    ) as server:
        run(args, server.smtp_port)
        # VmHWM is the kernel's own high-water mark of the process's RSS: read once, at
        # the end, it is the peak over the whole run.
        pid = server.process.pid
        peak = proc_status(pid, "VmHWM")
        print(f"server peak RSS over the run: {peak / 2**20:.1f} MiB")
        helpers = descendants(pid)  # the fork server and the parse workers
        if helpers:
            worst = max(proc_status(p, "VmHWM") for p in helpers)
            tree = sum(proc_pss(p) for p in [pid, *helpers])
            print(
                f"  {len(helpers)} helper processes (fork server, parse workers): peak RSS "
                f"{worst / 2**20:.1f} MiB at most; the whole tree's PSS at the end: "
                f"{tree / 2**20:.1f} MiB"
            )


def run(args: argparse.Namespace, port: int) -> None:
    for label, first in (("cold", 0), ("warm", args.messages)):
        small(args, port, label, first)
    pipelined(args, port, 2 * args.messages)
    big(args, port)


def small(args: argparse.Namespace, port: int, label: str, first: int) -> None:
    messages = [small_message(i) for i in range(first, first + args.messages)]
    per_session = [messages[i :: args.sessions] for i in range(args.sessions)]
    delivered: list[int] = []  # one entry a message; sendmail raises on anything but 250

    def deliver(batch: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            smtp.ehlo("bench.example")
            for data in batch:
                smtp.sendmail("noreply@bench.example", [RUA], data)
                delivered.append(1)

    started = time.perf_counter()
    threads = [threading.Thread(target=deliver, args=(b,)) for b in per_session]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    small_seconds = time.perf_counter() - started
    assert len(delivered) == args.messages, len(delivered)
    print(
        f"(a) {args.messages} messages over {args.sessions} sessions, {label}: "
        f"{small_seconds:.2f} s, {args.messages / small_seconds:,.0f} messages/s"
    )


def pipelined(args: argparse.Namespace, port: int, first: int) -> None:
    # As smtplib.SMTP.data puts a message on the wire: CRLF line ends, dot-stuffed, the dot.
    messages = []
    for i in range(first, first + args.messages):
        text = smtplib.quotedata(small_message(i).decode("ascii"))
        messages.append((text if text.endswith("\r\n") else text + "\r\n").encode() + b".\r\n")
    per_session = [messages[i :: args.sessions] for i in range(args.sessions)]

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while (line := await reader.readline())[3:4] == b"-":
            pass
        return line[:3]

    async def session(batch: list[bytes]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reply(reader) == b"220"
        writer.write(b"EHLO bench.example\r\n")
        assert await reply(reader) == b"250"
        envelope = f"MAIL FROM:<noreply@bench.example>\r\nRCPT TO:<{RUA}>\r\nDATA\r\n".encode()
        for data in batch:
            writer.write(envelope)
            assert [await reply(reader) for _ in range(3)] == [b"250", b"250", b"354"]
            writer.write(data)
            assert await reply(reader) == b"250"
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()
        return len(batch)

    async def deliver() -> int:
        return sum(await asyncio.gather(*(session(b) for b in per_session)))

    started = time.perf_counter()
    delivered = asyncio.run(deliver())
    seconds = time.perf_counter() - started
    assert delivered == args.messages, delivered
    print(
        f"(a) {args.messages} messages over {args.sessions} sessions, pipelined: "
        f"{seconds:.2f} s, {args.messages / seconds:,.0f} messages/s"
    )


def big(args: argparse.Namespace, port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rua-sink-bench-") as tmp:
        path = Path(tmp) / "big.eml"
        xml_bytes = build_email(path, args.records)
        data = path.read_bytes()
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as smtp:
            smtp.ehlo("bench.example")
            smtp.mail("noreply@bench.example", options=[f"SIZE={len(data)}"])
            smtp.rcpt(RUA)
            started = time.perf_counter()
            code, _ = smtp.data(data)
            big_seconds = time.perf_counter() - started
        assert code == 250, code
        print(
            f"(b) one report of {args.records} records ({xml_bytes / 1e6:.0f} MB of XML, "
            f"{len(data) / 1e6:.1f} MB email): {big_seconds:.2f} s, "
            f"{args.records / big_seconds:,.0f} records/s"
        )


if __name__ == "__main__":
    main()
