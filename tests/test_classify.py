"""Who sends as a domain, and is each sender legitimate: the classes of dmarc_sources
(docs/classification.md), through the real `rua-sink sources` and `rua-sink report`, on the
stored corpus and on reports built for the cases the corpus lacks."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from rua_sink.dns.senders import ServiceMap

from .dnsserver import Zone
from .pg import fetch
from .procs import cli
from .reports import gz, message, report_xml
from .storage import DOMAIN, PERIOD, parsed_records, store_corpus
from .test_senders import store_reports

SINCE = ("--since", PERIOD[0].date().isoformat(), "--until", PERIOD[1].date().isoformat())

# The corpus's sources of stalw.art in 2022, and what their records say.
TOPICBOX = ("173.228.157.66", "64.147.108.117", "64.147.108.173")  # trusted_forwarder
IETF = "50.223.129.194"  # ietf.org's list: DKIM passes for ietf.org, fails for stalw.art
AMAZON = "207.171.188.200"  # SPF passes for amazon.nl, no DKIM: fails both
SES = "54.240.8.13"  # DKIM aligned: passes
GOOGLE_V6 = "2a01:4f9:c011:b43c::1"  # passes both


def sources(db: str, *args: str, domain: str = DOMAIN) -> list[dict[str, Any]]:
    done = cli("sources", domain, *args, "--json", env={"RUA_SINK_DATABASE_URL": db})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def classes(db: str, *args: str, domain: str = DOMAIN) -> dict[str, str]:
    return {s["source"]: s["classification"] for s in sources(db, *args, domain=domain)}


def host(db: str, ip: str, **columns: Any) -> None:
    """A source_hosts row for ``ip``, as sender identification (or the IP databases)
    would leave it."""
    names = ", ".join(columns)
    values = ", ".join(f"${i + 2}" for i in range(len(columns)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    fetch(
        db,
        f"INSERT INTO source_hosts (ip, {names}) VALUES ($1::inet, {values}) "  # noqa: S608
        f"ON CONFLICT (ip) DO UPDATE SET {updates}",
        ip,
        *columns.values(),
    )


def test_the_corpus_sources_and_their_classes(db: str) -> None:
    store_corpus(db)
    got = sources(db, *SINCE)
    # The counts agree with the parser's.
    per_source: Counter[str] = Counter()
    passing: Counter[str] = Counter()
    for _, rec, _ in parsed_records():
        per_source[rec.source_ip] += rec.count
        passing[rec.source_ip] += rec.count if "pass" in (rec.dkim, rec.spf) else 0
    assert {s["source"]: (s["messages"], s["passing"], s["failing"]) for s in got} == {
        ip: (n, passing[ip], n - passing[ip]) for ip, n in per_source.items()
    }
    assert [s["messages"] for s in got] == sorted((s["messages"] for s in got), reverse=True)
    assert {s["source"]: s["pass_rate"] for s in got}[SES] == 100.0
    # Nothing looked up yet: the records alone decide.
    assert {s["source"]: s["classification"] for s in got} == {
        **dict.fromkeys(TOPICBOX, "forwarded"),  # the receiver said trusted_forwarder
        IETF: "forwarded",  # failing, but signed (by ietf.org)
        AMAZON: "suspicious",  # fails both, no DKIM, unknown
        SES: "authorized",
        GOOGLE_V6: "authorized",
    }


def test_what_identification_knows_changes_the_class(db: str) -> None:
    store_corpus(db)
    # A known service failing alignment: the fix is in its settings.
    host(db, AMAZON, ptr_name="smtp-fw.amazon.com", ptr_confirmed=True, service="Amazon")
    # A known service beats a foreign signature, not the receiver's forwarding override.
    host(db, IETF, ptr_name="mail.example-esp.net", ptr_confirmed=True, service="Some ESP")
    host(db, TOPICBOX[0], ptr_name="out.example-esp.net", ptr_confirmed=True, service="Some ESP")
    # A known forwarder is forwarded, even when its messages pass.
    host(db, SES, ptr_name="a.pobox.com", ptr_confirmed=True, service="Pobox", forwarder=True)
    host(db, GOOGLE_V6, country="FI", asn=24940, as_org="Hetzner Online GmbH")
    got = {s["source"]: s for s in sources(db, *SINCE)}
    assert {ip: s["classification"] for ip, s in got.items()} == {
        **dict.fromkeys(TOPICBOX, "forwarded"),
        IETF: "misconfigured",
        AMAZON: "misconfigured",
        SES: "forwarded",
        GOOGLE_V6: "authorized",
    }
    assert (got[AMAZON]["ptr_name"], got[AMAZON]["service"]) == ("smtp-fw.amazon.com", "Amazon")
    assert got[SES]["forwarder"] is True
    six = got[GOOGLE_V6]
    assert (six["country"], six["asn"], six["as_org"]) == ("FI", 24940, "Hetzner Online GmbH")

    # The table: a header, one line a source, the IP database's columns filled.
    done = cli("sources", DOMAIN, *SINCE, env={"RUA_SINK_DATABASE_URL": db})
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == [
        *("IP", "PTR", "NAME", "SERVICE", "COUNTRY", "ASN", "AS", "ORG"),
        *("MESSAGES", "PASSING", "FAILING", "PASS", "%", "CLASS"),
    ]
    assert len(lines) == len(got)
    (six_line,) = [line for line in lines if line.startswith(GOOGLE_V6)]
    assert "FI" in six_line and "24940" in six_line and "Hetzner Online GmbH" in six_line
    assert six_line.split()[-1] == "authorized"
    (amazon_line,) = [line for line in lines if line.startswith(AMAZON)]
    assert amazon_line.split()[-1] == "misconfigured" and "smtp-fw.amazon.com" in amazon_line


def test_failing_and_classification_filters(db: str) -> None:
    store_corpus(db)
    failing = sources(db, *SINCE, "--failing")
    assert {s["source"] for s in failing} == {*TOPICBOX, IETF, AMAZON}
    assert [s["failing"] for s in failing] == sorted((s["failing"] for s in failing), reverse=True)
    assert all(s["failing"] > 0 for s in failing)
    assert set(classes(db, *SINCE, "--classification", "authorized")) == {SES, GOOGLE_V6}
    assert set(classes(db, *SINCE, "--failing", "--classification", "suspicious")) == {AMAZON}
    # Another period: nothing; an empty table says so.
    done = cli(
        "sources", DOMAIN, "--since", "2010-01-01", "--until", "2011-01-01",
        env={"RUA_SINK_DATABASE_URL": db},
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, f"no sources for {DOMAIN}\n")
    bad = cli("sources", DOMAIN, "--classification", "evil", env={"RUA_SINK_DATABASE_URL": db})
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("sources", DOMAIN, "--since", "yesterday", env={"RUA_SINK_DATABASE_URL": db})
    assert bad.returncode == 2 and "not a date" in bad.stderr
    bad = cli("sources", DOMAIN, "--days", "0", env={"RUA_SINK_DATABASE_URL": db})
    assert bad.returncode == 2 and "not a positive whole number: '0'" in bad.stderr


def test_report_shows_the_class_of_each_source(db: str) -> None:
    store_corpus(db)
    host(db, AMAZON, ptr_name="smtp-fw.amazon.com", ptr_confirmed=True, service="Amazon")
    env = {"RUA_SINK_DATABASE_URL": db}
    done = cli("report", DOMAIN, *SINCE, "--top", "100", "--json", env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = classes(db, *SINCE)
    assert {s["source"]: s["classification"] for s in got["top_sources"]} == expected
    assert {s["source"]: s["classification"] for s in got["top_failing_sources"]} == {
        ip: c for ip, c in expected.items() if ip in {*TOPICBOX, IETF, AMAZON}
    }
    text = cli("report", DOMAIN, *SINCE, env=env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    failing = lines[next(i for i, x in enumerate(lines) if x.startswith("FAILING SOURCE")) :]
    (line,) = [x for x in failing if x.startswith(AMAZON)]
    assert " misconfigured " in line and line.endswith("  smtp-fw.amazon.com (Amazon)")


# -- cases the corpus lacks ----------------------------------------------------------------


def record(
    ip: str,
    count: int,
    *,
    dkim: str = "fail",
    spf: str = "fail",
    signatures: tuple[tuple[str, str], ...] = (),
    spf_result: tuple[str, str] = ("example.com", "fail"),
    reason: str | None = None,
) -> str:
    """A <record> as receivers write them: policy_evaluated, an optional override reason,
    and the DKIM signatures (domain, result) and SPF result of auth_results."""
    why = f"<reason><type>{reason}</type></reason>" if reason else ""
    sigs = "".join(
        f"<dkim><domain>{d}</domain><selector>s1</selector><result>{r}</result></dkim>"
        for d, r in signatures
    )
    return (
        f"<record><row><source_ip>{ip}</source_ip><count>{count}</count>"
        f"<policy_evaluated><disposition>none</disposition><dkim>{dkim}</dkim><spf>{spf}</spf>"
        f"{why}</policy_evaluated></row>"
        "<identifiers><header_from>example.com</header_from></identifiers>"
        f"<auth_results>{sigs}<spf><domain>{spf_result[0]}</domain><scope>mfrom</scope>"
        f"<result>{spf_result[1]}</result></spf></auth_results></record>"
    )


def aligned(ip: str, count: int) -> str:
    """A record of messages that pass DMARC: DKIM signed by, and aligned with, example.com."""
    return record(ip, count, dkim="pass", signatures=(("example.com", "pass"),))


def report(
    report_id: str,
    *records: str,
    org: str = "receiver.example",
    begin: datetime | None = None,
    domain: str = "example.com",
) -> bytes:
    """A report about ``domain`` of ``records``, in a message; of the day that starts at
    ``begin`` (by default, report_xml's day of November 2023)."""
    xml = report_xml(body="".join(records), report_id=report_id, org=org, domain=domain)
    if begin is not None:
        start = int(begin.timestamp())
        xml = xml.replace(b"1700000000", str(start).encode())
        xml = xml.replace(b"1700086399", str(start + 86399).encode())
    return message((gz(xml), "application/gzip", f"{org}!{domain}!1!2.xml.gz"))


ALL_TIME = ("--since", "2023-01-01", "--until", "2024-01-01")  # report_xml's Nov 2023


def test_mixed_results_go_by_the_majority_of_messages(db: str) -> None:
    store_reports(
        db,
        report(
            "mixed-1",
            # 3 of 5 pass: authorized, its 2 failures counted as failing
            aligned("192.0.2.1", 3),
            record("192.0.2.1", 2),
            # 2 of 4 pass: no majority, the failures decide (unknown, unsigned: suspicious)
            aligned("192.0.2.2", 2),
            record("192.0.2.2", 2),
            # a mailing list the receiver vouches for, on 3 of its 4 failing messages
            record("192.0.2.3", 3, reason="mailing_list"),
            record("192.0.2.3", 1),
            # the same, on 1 of 3: not enough
            record("192.0.2.4", 1, reason="forwarded"),
            record("192.0.2.4", 2),
            # signed by another domain (a list that re-signs), SPF failing
            record("192.0.2.5", 4, signatures=(("lists.example.org", "pass"),)),
            # the spoofer: nothing verifies
            record("192.0.2.6", 7, signatures=(("example.com", "fail"),)),
        ),
    )
    got = {s["source"]: s for s in sources(db, *ALL_TIME, domain="example.com")}
    assert {ip: s["classification"] for ip, s in got.items()} == {
        "192.0.2.1": "authorized",
        "192.0.2.2": "suspicious",
        "192.0.2.3": "forwarded",
        "192.0.2.4": "suspicious",
        "192.0.2.5": "forwarded",
        "192.0.2.6": "suspicious",
    }
    assert (got["192.0.2.1"]["passing"], got["192.0.2.1"]["failing"]) == (3, 2)
    assert got["192.0.2.2"]["pass_rate"] == 50.0
    # A known service at the tie: misconfigured, the fix is at the sender.
    host(db, "192.0.2.2", ptr_name="o1.sendgrid.net", ptr_confirmed=True, service="SendGrid")
    # Its name does not lead back: no service, so still suspicious.
    host(db, "192.0.2.6", ptr_name="mail.google.com", ptr_confirmed=False)
    after = classes(db, *ALL_TIME, domain="example.com")
    assert (after["192.0.2.2"], after["192.0.2.6"]) == ("misconfigured", "suspicious")
    failing = sources(db, *ALL_TIME, "--failing", domain="example.com")
    assert failing[0]["source"] == "192.0.2.6"  # most failing first


# -- the forwarders of the service map -----------------------------------------------------


def test_forwarders_in_the_map_and_a_user_file(tmp_path: Path) -> None:
    shipped = ServiceMap.load()
    assert shipped.forwarder("mail.ietf.org") and shipped.lookup("mail.ietf.org")
    assert shipped.forwarder("pb-smtp1.pobox.com")
    assert not shipped.forwarder("mail-sor-f41.google.com")
    assert not shipped.forwarder("unknown.example")
    user = tmp_path / "services.toml"
    user.write_text(
        '[suffixes]\n"ietf.org" = "IETF"\n'  # a forwarder made a plain service
        '[forwarders]\n"lists.example.org" = "Our lists"\n"pobox.com" = ""\n'
    )
    services = ServiceMap.load(user)
    assert services.lookup("mail.ietf.org") == "IETF" and not services.forwarder("mail.ietf.org")
    assert services.forwarder("a.lists.example.org")
    assert services.lookup("a.lists.example.org") == "Our lists"
    assert not services.forwarder("example.org")
    assert services.lookup("pb-smtp1.pobox.com") is None
    assert not services.forwarder("pb-smtp1.pobox.com")  # removed


def test_identify_marks_forwarders_and_sources_shows_them(
    db: str, dns_zone: tuple[Zone, str], tmp_path: Path
) -> None:
    zone, dns = dns_zone
    zone.add_ptr("192.0.2.30", "mail.ietf.org")
    zone.add("mail.ietf.org", "A", "192.0.2.30")
    zone.add_ptr("192.0.2.31", "lists.example.net")
    zone.add("lists.example.net", "A", "192.0.2.31")
    store_reports(
        db,
        report(
            "fwd-1",
            record("192.0.2.30", 2, signatures=(("example.com", "fail"),)),
            record("192.0.2.31", 1, dkim="pass", signatures=(("example.com", "pass"),)),
        ),
    )
    env = {"RUA_SINK_DATABASE_URL": db, "RUA_SINK_DNS_NAMESERVERS": dns}
    done = cli("identify", "--json", env=env)
    assert done.returncode == 0, done.stderr
    got = {s["source"]: s for s in sources(db, *ALL_TIME, domain="example.com")}
    assert (got["192.0.2.30"]["service"], got["192.0.2.30"]["forwarder"]) == (
        "IETF mailing lists",
        True,
    )
    assert got["192.0.2.30"]["classification"] == "forwarded"
    assert got["192.0.2.31"]["classification"] == "authorized"

    # A user file makes lists.example.net a forwarder: identify relabels the stored name.
    user = tmp_path / "services.toml"
    user.write_text('[forwarders]\n"lists.example.net" = "Our lists"\n')
    done = cli("identify", "--json", env={**env, "RUA_SINK_SERVICES_FILE": str(user)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["relabelled"] == 1
    after = {s["source"]: s for s in sources(db, *ALL_TIME, domain="example.com")}
    assert (after["192.0.2.31"]["service"], after["192.0.2.31"]["classification"]) == (
        "Our lists",
        "forwarded",
    )
