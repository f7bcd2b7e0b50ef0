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
import base64
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".bench-venv" / "parsedmarc"
PARSEDMARC = "parsedmarc==11.1.0"

HEAD = """<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <version>1.0</version>
  <report_metadata>
    <org_name>bench.example</org_name>
    <email>noreply-dmarc-support@bench.example</email>
    <extra_contact_info>https://support.bench.example/dmarc</extra_contact_info>
    <report_id>{report_id}</report_id>
    <date_range>
      <begin>1782172800</begin>
      <end>1782259199</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>reject</p>
    <sp>reject</sp>
    <pct>100</pct>
    <np>reject</np>
  </policy_published>
"""

RECORD = """  <record>
    <row>
      <source_ip>{ip}</source_ip>
      <count>{count}</count>
      <policy_evaluated>
        <disposition>{disposition}</disposition>
        <dkim>{dkim}</dkim>
        <spf>{spf}</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
      <envelope_from>{env}</envelope_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>{dkim_domain}</domain>
        <selector>s{sel}</selector>
        <result>{dkim}</result>
      </dkim>
      <spf>
        <domain>{env}</domain>
        <scope>mfrom</scope>
        <result>{spf_result}</result>
      </spf>
    </auth_results>
  </record>
"""


def build_email(path: Path, records: int, seed: int = 7) -> int:
    """Write a report email with ``records`` records; returns the XML size in bytes."""
    rng = random.Random(seed)
    raw = path.with_suffix(".xml.gz")
    xml_bytes = 0
    with gzip.open(raw, "wb", compresslevel=6) as gz:
        head = HEAD.format(report_id=f"bench-{records}").encode()
        gz.write(head)
        xml_bytes += len(head)
        batch: list[str] = []
        for i in range(records):
            ok = rng.random() < 0.8
            octets = (rng.randrange(1, 224), *rng.randbytes(2), rng.randrange(1, 255))
            ip = (
                f"2001:db8:{i % 65536:x}::{rng.randrange(1, 65535):x}"
                if i % 10 == 0
                else ".".join(map(str, octets))
            )
            batch.append(
                RECORD.format(
                    ip=ip,
                    count=rng.randrange(1, 500),
                    disposition="none" if ok else rng.choice(("reject", "quarantine")),
                    dkim="pass" if ok else "fail",
                    spf="pass" if ok or rng.random() < 0.3 else "fail",
                    spf_result="pass" if ok else rng.choice(("softfail", "fail", "neutral")),
                    env=rng.choice(("example.com", "bounce.example.com", f"m{i % 97}.example.net")),
                    dkim_domain=rng.choice(("example.com", "esp.example.org")),
                    sel=i % 13,
                )
            )
            if len(batch) == 1000:
                data = "".join(batch).encode()
                gz.write(data)
                xml_bytes += len(data)
                batch.clear()
        tail = ("".join(batch) + "</feedback>\n").encode()
        gz.write(tail)
        xml_bytes += len(tail)
    name = f"bench.example!example.com!1782172800!1782259199!{records}.xml.gz"
    with raw.open("rb") as src, path.open("wb") as out:
        out.write(
            (
                "From: noreply-dmarc-support@bench.example\r\n"
                "To: dmarc@rua.example.net\r\n"
                "Subject: Report domain: example.com Submitter: bench.example "
                f"Report-ID: bench-{records}\r\n"
                "Date: Tue, 23 Jun 2026 00:10:00 +0000\r\n"
                "Message-ID: <bench@bench.example>\r\n"
                "MIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                "--b1\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate report.\r\n"
                f'--b1\r\nContent-Type: application/gzip; name="{name}"\r\n'
                "Content-Transfer-Encoding: base64\r\n"
                f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
            ).encode()
        )
        while block := src.read(57 * 1024):
            encoded = base64.encodebytes(block).replace(b"\n", b"\r\n")
            out.write(encoded)
        out.write(b"--b1--\r\n")
    raw.unlink()
    return xml_bytes


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


def run_child(python: str, code: str, path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [python, "-c", code, str(path)], check=True, capture_output=True, text=True, env=env
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _fmt(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['seconds']:.2f}" for r in runs)


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
            runs = [run_child(sys.executable, CHILD, path) for _ in range(args.runs)]
            for r in runs:
                assert r["records"] == n, r
            secs = statistics.median(r["seconds"] for r in runs)
            rss = max(r["rss"] for r in runs)
            medians[n] = secs
            print(
                f"rua-sink  {n:>7} records  xml {xml_bytes / 1e6:7.1f} MB  "
                f"email {path.stat().st_size / 1e6:6.1f} MB  median {secs:6.2f} s  "
                f"{n / secs:9,.0f} records/s  {xml_bytes / 1e6 / secs:6.1f} MB/s  "
                f"peak RSS {rss / 2**20:6.1f} MiB  (runs: {_fmt(runs)})"
            )
        if args.no_parsedmarc or 20000 not in sizes:
            return
        python = ensure_parsedmarc()
        path = Path(tmp) / "report-20000.eml"
        build_email(path, 20000)
        runs = [run_child(python, PARSEDMARC_CHILD, path) for _ in range(args.runs)]
        for r in runs:
            assert r["records"] == 20000, r
        secs = statistics.median(r["seconds"] for r in runs)
        print(
            f"parsedmarc  20000 records  median {secs:6.2f} s  {20000 / secs:9,.0f} records/s  "
            f"(runs: {_fmt(runs)})"
        )
        print(f"ratio rua-sink / parsedmarc (20,000 records): {secs / medians[20000]:.1f}x faster")


if __name__ == "__main__":
    main()
