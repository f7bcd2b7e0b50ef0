"""STARTTLS sessions per second against a real ``rua-sink serve``.

N sessions over C concurrent clients, each: connect, EHLO, STARTTLS (a full handshake, no
session resumption), EHLO again, QUIT. What the server spends per session is what the
figure shows: the TLS context it uses, its handshake, the SMTP dialogue. Also the same
sessions without STARTTLS, for the cost of a session without TLS.

    python bench/starttls.py [--sessions 500] [--concurrency 8]

The certificate is an ECDSA one from a local test CA (trustme). The PostgreSQL server is
RUA_SINK_BENCH_DATABASE_URL (or --database-url), else 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import smtplib
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Server, add_database_argument, serving


def sessions(server: Server, count: int, concurrency: int, context: ssl.SSLContext | None) -> float:
    """``count`` sessions over ``concurrency`` threads: sessions per second."""
    left = iter(range(count))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            try:
                with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
                    smtp.ehlo("bench.example")
                    if context is not None:
                        code, _ = smtp.starttls(context=context)
                        assert code == 220, code
                        smtp.ehlo("bench.example")
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                errors.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} sessions failed: {errors[0]!r}")
    return count / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    add_database_argument(ap)
    args = ap.parse_args()
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.rua.example.net", "127.0.0.1")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        with serving(
            args.database_url,
            "rua_sink_bench_tls",
            RUA_SINK_TLS_CERT=str(cert),
            RUA_SINK_TLS_KEY=str(key),
            RUA_SINK_MAX_SESSIONS_PER_IP=str(args.concurrency + 5),
        ) as server:
            sessions(server, 50, args.concurrency, context)  # warm-up
            tls = sessions(server, args.sessions, args.concurrency, context)
            plain = sessions(server, args.sessions, args.concurrency, None)
    print(f"starttls sessions/s: {tls:.1f}")
    print(f"plain sessions/s: {plain:.1f}")


if __name__ == "__main__":
    main()
