"""Country and network of source addresses from IP databases, stored by sender
identification in the background and shown by rua-sink report: against a real PostgreSQL,
a real DNS server on loopback, .mmdb files made on the fly, and the real serve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rua_sink.dns.ipdata import IpDatabases
from rua_sink.ingest.identify import SenderIdentifier, Tally

from .conftest import corpus
from .dnsserver import Zone
from .mmdb import asn_record, city_record, country_record, ipinfo_lite_record, write_mmdb
from .pg import fetch
from .procs import cli
from .smtpserver import RUA, Server, example_zone, running, scrape
from .test_senders import (
    EXPECTED,
    SOURCES,
    identified,
    senders_zone,
    sources_report,
    store_reports,
)
from .test_senders import with_identifier as _with_identifier

#: what the test databases say: ip -> (country, asn, as_org)
NETWORKS = {
    "192.0.2.10": ("FR", 64500, "Example Net"),
    "192.0.2.11": ("FR", 64500, "Example Net"),
    "192.0.2.12": ("FR", 64500, "Example Net"),
    "2001:db8::25": ("DE", 64501, "Six Net"),
    "198.51.100.7": ("US", None, None),  # no network in the ASN file
    "198.51.100.8": ("US", None, None),
    "203.0.113.5": (None, 64502, "Doc Net"),  # no country in the City file
}
NOTHING = dict.fromkeys(NETWORKS, (None, None, None))


def databases(folder: Path, *, asn_org: str = "Example Net") -> list[Path]:
    """A City file and an ASN file (DB-IP's, in GeoLite2-ASN's shape)."""
    city = write_mmdb(
        folder / "city.mmdb",
        "GeoLite2-City",
        {
            "192.0.2.0/24": city_record("FR"),
            "198.51.100.0/24": city_record("US"),
            "2001:db8::/32": city_record("DE"),
        },
        build_epoch=1_760_000_000,
    )
    asn = write_mmdb(
        folder / "asn.mmdb",
        "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
        {
            "192.0.2.0/24": asn_record(64500, asn_org),
            "2001:db8::/32": asn_record(64501, "Six Net"),
            "203.0.113.0/24": asn_record(64502, "Doc Net"),
        },
        build_epoch=1_770_000_000,
    )
    return [city, asn]


def networks(url: str) -> dict[str, tuple[Any, ...]]:
    rows = fetch(url, "SELECT host(ip) AS ip, country, asn, as_org FROM source_hosts")
    return {r["ip"]: (r["country"], r["asn"], r["as_org"]) for r in rows}


def enriched_at(url: str) -> dict[str, Any]:
    return {
        r["ip"]: r["enriched_at"]
        for r in fetch(url, "SELECT host(ip) AS ip, enriched_at FROM source_hosts")
    }


def with_identifier(url: str, dns: str, paths: list[Path], fn: Any, **kw: Any) -> Any:
    dbs = IpDatabases.open([str(p) for p in paths])
    try:
        return _with_identifier(url, dns, fn, networks=dbs, **kw)
    finally:
        dbs.close()


def test_the_addresses_looked_up_get_country_and_network(
    db: str, dns_zone: tuple[Zone, str], tmp_path: Path
) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    (report,) = store_reports(db, sources_report(SOURCES))

    async def go(identifier: SenderIdentifier) -> tuple[Tally, Tally]:
        # The path of a report just stored (notify), then a sweep that finds nothing due.
        first = await identifier.identify_reports([report])
        return first, await identifier.sweep(1000)

    first, again = with_identifier(db, dns, databases(tmp_path), go, batch_size=3)
    assert (first.looked_up, first.enriched) == (7, 7)
    assert again == Tally()
    assert networks(db) == NETWORKS
    assert identified(db) == EXPECTED  # the PTR side as before
    assert all(at is not None for at in enriched_at(db).values())


def test_without_databases_the_columns_stay_null(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    tally = _with_identifier(db, dns, lambda i: i.sweep(1000))
    assert (tally.looked_up, tally.enriched) == (7, 0)
    assert networks(db) == NOTHING
    assert set(enriched_at(db).values()) == {None}


def test_rows_are_enriched_again_when_a_file_changes(
    db: str, dns_zone: tuple[Zone, str], tmp_path: Path
) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    # Looked up before any database was configured: the first sweep with them fills in.
    assert _with_identifier(db, dns, lambda i: i.sweep(1000)).looked_up == 7
    paths = databases(tmp_path)

    async def go(identifier: SenderIdentifier) -> list[Tally]:
        tallies = [await identifier.sweep(1000), await identifier.sweep(1000)]
        before = await identifier.pool.fetchval("SELECT max(enriched_at) FROM source_hosts")
        # A new release of both files, renamed into place.
        while time.time() <= before.timestamp():
            time.sleep(0.01)
        databases(tmp_path, asn_org="Example Net, renamed")
        tallies.append(await identifier.sweep(1000))  # reloads, then re-enriches
        tallies.append(await identifier.sweep(1000))
        return tallies

    filled, idle, renewed, done = with_identifier(db, dns, paths, go, batch_size=2)
    assert (filled.looked_up, filled.enriched) == (0, 7)
    assert idle.enriched == 0
    assert (renewed.looked_up, renewed.enriched) == (0, 7)  # every row: a pass, 2 at a time
    assert done.enriched == 0
    renamed = {
        ip: (c, n, "Example Net, renamed" if o == "Example Net" else o)
        for ip, (c, n, o) in NETWORKS.items()
    }
    assert networks(db) == renamed


def test_a_limited_sweep_enriches_at_most_its_limit(
    db: str, dns_zone: tuple[Zone, str], tmp_path: Path
) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    _with_identifier(db, dns, lambda i: i.sweep(1000))

    forget = "UPDATE source_hosts SET enriched_at = NULL, country = NULL WHERE ip = '192.0.2.10'"

    async def go(identifier: SenderIdentifier) -> list[int]:
        counts = [(await identifier.sweep(3)).enriched]
        # A row before where the pass stopped is due again: not until the pass has ended
        # (each sweep goes on from where the last one stopped).
        await identifier.pool.execute(forget)
        counts += [(await identifier.sweep(3)).enriched for _ in range(4)]
        return counts

    assert with_identifier(db, dns, databases(tmp_path), go, batch_size=2) == [3, 3, 1, 1, 0]
    assert networks(db) == NETWORKS


def test_identify_and_report_commands(db: str, dns_zone: tuple[Zone, str], tmp_path: Path) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    paths = databases(tmp_path)
    env = {
        "RUA_SINK_DATABASE_URL": db,
        "RUA_SINK_DNS_NAMESERVERS": dns,
        "RUA_SINK_IP_DATABASES": ",".join(map(str, paths)),
    }
    done = cli("identify", "--json", env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["looked_up"], got["enriched"]) == (7, 7)
    assert networks(db) == NETWORKS
    done = cli("identify", env=env)
    assert done.returncode == 0, done.stderr
    assert "; 0 given a country and network by the IP databases;" in done.stdout

    period = ("--since", "2023-11-01", "--until", "2023-12-01")
    done = cli("report", "example.com", *period, "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("top_sources", "top_failing_sources"):
        shown = {s["source"]: (s["country"], s["asn"], s["as_org"]) for s in report[key]}
        assert shown == {ip: NETWORKS[ip] for ip in shown}, key
    assert len(report["top_sources"]) == 7 and len(report["top_failing_sources"]) == 4

    done = cli("report", "example.com", *period, env=env)
    assert done.returncode == 0, done.stderr
    # The NETWORK and SENDER columns, white space squeezed.
    lines = {
        line.split()[0]: " ".join(line.split())
        for line in done.stdout.splitlines()[4:]
        if line.strip()
    }
    assert lines["192.0.2.10"].endswith(
        " FR, AS64500 Example Net mail-a.google.com (Google Workspace / Gmail)"
    )
    assert lines["198.51.100.8"].endswith(" US mx.notgoogle.com")
    assert lines["203.0.113.5"].endswith(" AS64502 Doc Net so-1.mailgun.net (Mailgun)")


def test_commands_refuse_a_bad_file_in_one_line(db: str, tmp_path: Path) -> None:
    unknown = write_mmdb(tmp_path / "anon.mmdb", "GeoIP2-Anonymous-IP", {"192.0.2.0/24": {}})
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 1000)
    good = databases(tmp_path)[0]
    for bad, says in ((unknown, "unknown database type"), (garbage, "does not open")):
        env = {
            "RUA_SINK_DATABASE_URL": db,
            "RUA_SINK_ADDRESSES": RUA,
            "RUA_SINK_SMTP_LISTEN": "127.0.0.1:0",
            "RUA_SINK_HTTP_LISTEN": "127.0.0.1:0",
            "RUA_SINK_IP_DATABASES": f"{good}, {bad}",
        }
        for command in ("identify", "serve"):
            done = cli(command, env=env, timeout=60)
            assert done.returncode == 2, (command, done.stderr)
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith(f"rua-sink: RUA_SINK_IP_DATABASES: {bad}: {says}"), line


# -- the real serve --------------------------------------------------------------------------

#: The corpus's RFC 9990 report: example.test, two sources, June 2026.
CORPUS_REPORT = "georgestarcher__dmarcgo/testdata/fixtures/rfc9990-modern-synthetic.xml.gz"
CORPUS_SOURCES = {"198.51.100.25", "203.0.113.10"}
CORPUS_PERIOD = ("--since", "2026-06-01", "--until", "2026-07-01")


def served_databases(folder: Path, *, org: str = "Documentation AS") -> list[Path]:
    """A Country file, and IPinfo Lite's combined file, which gives the networks."""
    country = write_mmdb(
        folder / "country.mmdb",
        "GeoLite2-Country",
        {"198.51.100.0/24": country_record("US"), "203.0.113.0/24": country_record("NL")},
        build_epoch=1_760_000_000,
    )
    combined = write_mmdb(
        folder / "ipinfo_lite.mmdb",
        "ipinfo bundle_location_lite.mmdb",
        {
            "198.51.100.0/24": ipinfo_lite_record("CA", 64496, "Example Transit"),
            "203.0.113.0/24": ipinfo_lite_record("NL", 64511, org),
        },
        build_epoch=1_770_000_000,
    )
    return [country, combined]


def send_corpus_report(server: Server) -> None:
    server.zone.txt["example.test._report._dmarc.rua.example.net"] = ["v=DMARC1"]
    done = cli(
        "send", str(corpus(CORPUS_REPORT)), "--to", RUA, "--server", f"127.0.0.1:{server.smtp_port}"
    )
    assert done.stdout.startswith("250 2.0.0"), done.stdout + done.stderr


def wait_for(server: Server, condition: str, count: int, timeout: float = 30) -> None:
    """Until ``count`` rows of source_hosts meet ``condition`` (the test's own SQL)."""
    query = f"SELECT count(*) FROM source_hosts WHERE {condition}"  # noqa: S608
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.fetch(query)[0][0] >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"no {count} source_hosts rows with {condition} within {timeout} s")


def shown_networks(db: str) -> dict[str, tuple[Any, ...]]:
    done = cli(
        "report", "example.test", *CORPUS_PERIOD, "--json", env={"RUA_SINK_DATABASE_URL": db}
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return {s["source"]: (s["country"], s["asn"], s["as_org"]) for s in report["top_sources"]}


@pytest.mark.slow
def test_serve_enriches_in_the_background_and_reloads(db: str, tmp_path: Path) -> None:
    paths = served_databases(tmp_path)
    with running(
        db,
        example_zone(),
        RUA_SINK_IP_DATABASES=",".join(map(str, paths)),
        RUA_SINK_IDENTIFY_INTERVAL="1",
    ) as server:
        metric = ("rua_sink_ip_database_oldest_build_timestamp_seconds", ())
        failures = ("rua_sink_ip_database_reload_failures_total", ())
        assert scrape(server)[metric] == 1_760_000_000
        send_corpus_report(server)
        wait_for(server, "enriched_at IS NOT NULL", len(CORPUS_SOURCES))
        # The country from the Country file (listed first), the network from IPinfo's.
        assert shown_networks(db) == {
            "198.51.100.25": ("US", 64496, "Example Transit"),
            "203.0.113.10": ("NL", 64511, "Documentation AS"),
        }
        first = max(enriched_at(db).values())

        # A new IPinfo file, renamed into place: the next sweep reloads it and applies it.
        while time.time() <= first.timestamp():
            time.sleep(0.01)
        served_databases(tmp_path, org="Documentation AS, renamed")
        wait_for(server, "as_org = 'Documentation AS, renamed'", 1)
        assert shown_networks(db)["203.0.113.10"] == ("NL", 64511, "Documentation AS, renamed")

        # A file that does not load: counted once, the one loaded before stays in use.
        broken = paths[1].with_name("broken")
        broken.write_bytes(b"not a database" * 100)
        broken.replace(paths[1])
        deadline = time.monotonic() + 30
        while scrape(server).get(failures) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scrape(server)[failures] == 1
        time.sleep(1.5)  # a sweep or more later: still one failure
        assert scrape(server)[failures] == 1
        assert shown_networks(db)["203.0.113.10"] == ("NL", 64511, "Documentation AS, renamed")
    assert server.process.returncode == 0


def test_serve_without_databases_shows_nulls(db: str) -> None:
    with running(db, example_zone(), RUA_SINK_IDENTIFY_INTERVAL="3600") as server:
        assert scrape(server)[("rua_sink_ip_database_oldest_build_timestamp_seconds", ())] == 0
        send_corpus_report(server)
        wait_for(server, "looked_up_at IS NOT NULL", len(CORPUS_SOURCES))
        assert shown_networks(db) == dict.fromkeys(CORPUS_SOURCES, (None, None, None))
        assert set(enriched_at(db).values()) == {None}
    assert server.process.returncode == 0
