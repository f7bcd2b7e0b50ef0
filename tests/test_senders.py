"""Sender identification: PTR names, forward confirmation and service labels of the source
addresses, against a real PostgreSQL and a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from rua_sink.core.limits import Limits
from rua_sink.dns.authz import make_resolver
from rua_sink.dns.senders import Identity, ServiceMap, Unanswered
from rua_sink.errors import ServicesFileError
from rua_sink.ingest.identify import SenderIdentifier, Tally
from rua_sink.ingest.ingester import Ingester
from rua_sink.storage.store import Store

from .conftest import ROOT
from .dnsserver import Zone
from .pg import fetch, run
from .procs import cli
from .reports import gz, message, record_xml, report_xml
from .smtpserver import example_zone, running, send
from .storage import DOMAIN, ingest_bytes, with_store
from .test_dashboards import POSTGRES_DASHBOARD, load, substitute, targets

T = TypeVar("T")

GOOGLE = "Google Workspace / Gmail"

#: source address -> (messages, DMARC pass) of the test report
SOURCES = {
    "192.0.2.10": (5, True),  # mail-a.google.com, confirmed: Google
    "192.0.2.11": (3, False),  # claims mail.google.com, which points elsewhere
    "192.0.2.12": (2, False),  # no PTR record
    "2001:db8::25": (4, True),  # o1.ptr4711.sendgrid.net, confirmed over AAAA
    "198.51.100.7": (1, False),  # host.mx.example.org, confirmed, no service
    "198.51.100.8": (1, True),  # mx.notgoogle.com: not under google.com
    "203.0.113.5": (2, False),  # two names, the second one confirmed: Mailgun
}

#: what sender identification should find: ip -> (ptr_name, confirmed, org_domain, service)
EXPECTED = {
    "192.0.2.10": ("mail-a.google.com", True, "google.com", GOOGLE),
    "192.0.2.11": ("mail.google.com", False, "google.com", None),
    "192.0.2.12": (None, None, None, None),
    "2001:db8::25": ("o1.ptr4711.sendgrid.net", True, "sendgrid.net", "SendGrid"),
    "198.51.100.7": ("host.mx.example.org", True, "example.org", None),
    "198.51.100.8": ("mx.notgoogle.com", True, "notgoogle.com", None),
    "203.0.113.5": ("so-1.mailgun.net", True, "mailgun.net", "Mailgun"),
}


def senders_zone(zone: Zone) -> Zone:
    zone.add_ptr("192.0.2.10", "mail-a.google.com")
    zone.add("mail-a.google.com", "A", "192.0.2.10")
    zone.add_ptr("192.0.2.11", "mail.google.com")
    zone.add("mail.google.com", "A", "198.51.100.99")
    zone.add_ptr("2001:db8::25", "o1.ptr4711.sendgrid.net")
    zone.add("o1.ptr4711.sendgrid.net", "AAAA", "2001:db8:0:0::25")
    zone.add("o1.ptr4711.sendgrid.net", "A", "192.0.2.25")  # an IPv6 source: AAAA counts
    zone.add_ptr("198.51.100.7", "host.mx.example.org")
    zone.add("host.mx.example.org", "A", "198.51.100.1", "198.51.100.7")
    zone.add_ptr("198.51.100.8", "mx.notgoogle.com")
    zone.add("mx.notgoogle.com", "A", "198.51.100.8")
    zone.add_ptr("203.0.113.5", "so-1.mailgun.net")
    zone.add_ptr("203.0.113.5", "bogus.example.org")  # no A record: NXDOMAIN
    zone.add("so-1.mailgun.net", "A", "203.0.113.5")
    return zone


def record(ip: str, count: int, passing: bool) -> str:
    xml = record_xml(ip, count)
    return (
        xml
        if passing
        else xml.replace("<dkim>pass</dkim><spf>pass</spf>", "<dkim>fail</dkim><spf>fail</spf>", 1)
    )


def sources_report(
    sources: dict[str, tuple[int, bool]], report_id: str = "senders-1", domain: str = "example.com"
) -> bytes:
    body = "".join(record(ip, n, ok) for ip, (n, ok) in sources.items())
    xml = report_xml(body=body, report_id=report_id, domain=domain)
    return message((gz(xml), "application/gzip", f"r!{domain}!1!2.xml.gz"))


def store_reports(url: str, *messages: bytes) -> list[int]:
    """The messages stored as they arrive over SMTP; the ids of the new aggregate reports."""

    async def go(store: Store) -> list[int]:
        ingester = Ingester(store, limits=Limits())
        for data in messages:
            assert (await ingest_bytes(ingester, data)).reports_new == 1
        rows = await store.pool.fetch("SELECT id FROM aggregate_reports ORDER BY id")
        return [r["id"] for r in rows]

    return with_store(url, go)


def identified(url: str) -> dict[str, tuple[Any, ...]]:
    """ip -> (ptr_name, ptr_confirmed, org_domain, service) of the looked-up rows."""
    rows = fetch(
        url,
        "SELECT host(ip) AS ip, ptr_name, ptr_confirmed, org_domain, service "
        "FROM source_hosts WHERE looked_up_at IS NOT NULL",
    )
    return {
        r["ip"]: (r["ptr_name"], r["ptr_confirmed"], r["org_domain"], r["service"]) for r in rows
    }


def host_rows(url: str) -> dict[str, asyncpg.Record]:
    return {r["address"]: r for r in fetch(url, "SELECT host(ip) AS address, * FROM source_hosts")}


async def _with(
    url: str,
    dns: str,
    fn: Callable[[SenderIdentifier], Awaitable[T]],
    services: ServiceMap | None,
    kw: dict[str, Any],
) -> T:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        identifier = SenderIdentifier(
            pool=pool,
            resolver=make_resolver([dns], timeout=2.0),
            services=services or ServiceMap.load(),
            **kw,
        )
        return await fn(identifier)
    finally:
        await pool.close()


def with_identifier(
    url: str,
    dns: str,
    fn: Callable[[SenderIdentifier], Awaitable[T]],
    services: ServiceMap | None = None,
    **kw: Any,
) -> T:
    return run(_with(url, dns, fn, services, kw))


def sweep(url: str, dns: str, limit: int = 1000, **kw: Any) -> Tally:
    return with_identifier(url, dns, lambda i: i.sweep(limit), **kw)


def reverse_queries(zone: Zone) -> Counter[str]:
    return Counter(q for q in zone.queries if q.endswith((".in-addr.arpa", ".ip6.arpa")))


# -- the mapping ---------------------------------------------------------------------------


def test_shipped_mapping_matches_suffixes_on_label_boundaries() -> None:
    services = ServiceMap.load()
    assert len(services) >= 30
    assert services.lookup("mail-sor-f41.google.com") == GOOGLE
    assert services.lookup("Google.COM.") == GOOGLE
    assert services.lookup("mail-ej1-f54.googlemail.com") == GOOGLE
    assert services.lookup("ra-in-f26.1e100.net") == GOOGLE
    assert services.lookup("mail-db8eur05on2100.outbound.protection.outlook.com") == (
        "Microsoft 365 / Outlook.com"
    )
    assert services.lookup("a48-108.smtp-out.amazonses.com") == "Amazon SES"
    assert services.lookup("mail135-1.atl141.mcdlv.net") == "Mailchimp / Mandrill"
    assert services.lookup("out2-smtp.messagingengine.com") == "Fastmail"
    assert services.lookup("mail-4316.protonmail.ch") == "Proton Mail"
    assert services.lookup("notgoogle.com") is None
    assert services.lookup("google.com.example.net") is None
    assert services.lookup("com") is None
    assert services.lookup("") is None


def test_longest_suffix_wins() -> None:
    services = ServiceMap({"example.net": "Example", "relay.example.net": "Relay", "x.y": ""})
    assert services.lookup("a.relay.example.net") == "Relay"
    assert services.lookup("relay.example.net") == "Relay"
    assert services.lookup("arelay.example.net") == "Example"
    assert services.lookup("a.b.example.net") == "Example"
    assert services.lookup("a.x.y") is None
    assert len(services) == 2


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    user = tmp_path / "services.toml"
    user.write_text(
        "[suffixes]\n"
        '"sendgrid.net" = "Twilio SendGrid"\n'
        '"relay.example.org" = "Example Relay"\n'
        '".Bücher.example" = "Books"\n'
        '"1e100.net" = ""\n'
    )
    services = ServiceMap.load(user)
    shipped = ServiceMap.load()
    assert services.lookup("o1.ptr4711.sendgrid.net") == "Twilio SendGrid"
    assert services.lookup("a.relay.example.org") == "Example Relay"
    assert services.lookup("mx.xn--bcher-kva.example") == "Books"
    assert services.lookup("ra-in-f26.1e100.net") is None
    assert shipped.lookup("ra-in-f26.1e100.net") == GOOGLE
    assert services.lookup("mail-a.google.com") == GOOGLE  # the rest is kept
    assert len(services) == len(shipped) + 1  # two added, one removed


def test_the_readme_example_file(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "senders.md").read_text()
    user = tmp_path / "services.toml"
    user.write_text(text.split("```toml\n")[1].split("```")[0])
    services = ServiceMap.load(user)
    assert services.lookup("a.mx.example.net") == "Our own servers"
    assert services.lookup("o1.sendgrid.net") == "SendGrid (marketing)"
    assert services.lookup("10.mo1.mail-out.ovh.net") is None
    assert ServiceMap.load().lookup("10.mo1.mail-out.ovh.net") == "OVHcloud"


@pytest.mark.parametrize(
    "text",
    [
        "[suffixes]\n'google.com' = ",  # not TOML
        '[services]\n"google.com" = "G"\n',  # an unknown table
        'suffixes = "google.com"\n',  # not a table
        '[suffixes]\n"google.com" = 1\n',  # not a service name
        '[suffixes]\n"" = "Nothing"\n',  # no suffix
        '[suffixes]\n"a..b" = "Empty label"\n',
    ],
)
def test_bad_user_files_are_refused(tmp_path: Path, text: str) -> None:
    user = tmp_path / "services.toml"
    user.write_text(text)
    with pytest.raises(ServicesFileError, match=r"services\.toml"):
        ServiceMap.load(user)
    with pytest.raises(ServicesFileError, match="missing"):
        ServiceMap.load(tmp_path / "missing.toml")


# -- lookups ---------------------------------------------------------------------------------


def test_sources_get_names_and_services(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    tally = sweep(db, dns)
    assert identified(db) == EXPECTED
    assert tally == Tally(looked_up=7, named=6, confirmed=5, labelled=3, unnamed=1, failed=0)
    rows = host_rows(db)
    assert all(r["claimed_at"] is None and r["lookup_error"] is None for r in rows.values())
    # The forward lookups: A for IPv4, AAAA for IPv6; every name of 203.0.113.5 in turn.
    assert "mail.google.com" in zone.queries
    assert zone.queries.count("o1.ptr4711.sendgrid.net") == 1
    assert {"bogus.example.org", "so-1.mailgun.net"} <= set(zone.queries)
    # Done is done: a second sweep looks nothing up, and the DNS hears nothing more.
    asked = len(zone.queries)
    assert sweep(db, dns).looked_up == 0
    assert len(zone.queries) == asked


def test_a_name_that_does_not_lead_back_gets_no_service(
    db: str, dns_zone: tuple[Zone, str]
) -> None:
    zone, dns = dns_zone
    zone.add_ptr("192.0.2.66", "mail-sor-f41.google.com")  # claims Google
    zone.add("mail-sor-f41.google.com", "A", "209.85.220.41")
    zone.add_ptr("192.0.2.67", "mail-sor-f42.google.com")  # and has no A record at all
    zone.add("mail-sor-f42.google.com", "AAAA", "2001:db8::42")
    store_reports(db, sources_report({"192.0.2.66": (9, False), "192.0.2.67": (1, False)}))

    async def go(identifier: SenderIdentifier) -> tuple[Identity | Unanswered, ...]:
        await identifier.sweep(10)
        return (await identifier.resolve("192.0.2.66"), await identifier.resolve("192.0.2.67"))

    direct = with_identifier(db, dns, go)
    assert direct == (
        Identity("mail-sor-f41.google.com", False, "google.com", None),
        Identity("mail-sor-f42.google.com", False, "google.com", None),
    )
    assert identified(db) == {
        "192.0.2.66": ("mail-sor-f41.google.com", False, "google.com", None),
        "192.0.2.67": ("mail-sor-f42.google.com", False, "google.com", None),
    }


def test_servfail_leaves_the_address_for_a_retry(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    zone.servfail.add(ip_address("192.0.2.13").reverse_pointer)
    zone.add_ptr("192.0.2.14", "flaky.example.net")  # the PTR answers, its A does not
    zone.servfail.add("flaky.example.net")
    store_reports(db, sources_report({"192.0.2.13": (1, True), "192.0.2.14": (1, True)}))

    tally = sweep(db, dns)
    assert (tally.looked_up, tally.failed) == (2, 2)
    rows = host_rows(db)
    for ip, what in (("192.0.2.13", "PTR 192.0.2.13"), ("192.0.2.14", "A flaky.example.net")):
        row = rows[ip]
        assert row["lookup_error"].startswith(what), row["lookup_error"]
        assert "NoNameservers" in row["lookup_error"]
        assert row["looked_up_at"] is None and row["ptr_name"] is None
        assert row["claimed_at"] is not None
    # Not again at once: the claim holds for retry_after.
    assert sweep(db, dns).looked_up == 0

    zone.servfail.clear()
    zone.add_ptr("192.0.2.13", "mx1.example.net")
    zone.add("mx1.example.net", "A", "192.0.2.13")
    zone.add("flaky.example.net", "A", "192.0.2.14")
    fetch(db, "UPDATE source_hosts SET claimed_at = claimed_at - interval '11 minutes'")
    tally = sweep(db, dns)
    assert (tally.looked_up, tally.confirmed, tally.failed) == (2, 2, 0)
    assert identified(db) == {
        "192.0.2.13": ("mx1.example.net", True, "example.net", None),
        "192.0.2.14": ("flaky.example.net", True, "example.net", None),
    }
    assert all(r["lookup_error"] is None for r in host_rows(db).values())


def test_nxdomain_is_no_name_and_final(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    store_reports(db, sources_report({"192.0.2.12": (2, False)}))
    assert sweep(db, dns) == Tally(looked_up=1, unnamed=1)
    (row,) = host_rows(db).values()
    assert row["looked_up_at"] is not None and row["lookup_error"] is None
    assert (row["ptr_name"], row["ptr_confirmed"], row["service"]) == (None, None, None)
    assert reverse_queries(zone) == {ip_address("192.0.2.12").reverse_pointer: 1}


def test_stale_rows_are_looked_up_again_and_answers_cached(
    db: str, dns_zone: tuple[Zone, str]
) -> None:
    zone, dns = dns_zone
    zone.add_ptr("192.0.2.10", "mail-a.google.com")
    zone.add("mail-a.google.com", "A", "192.0.2.10")
    store_reports(db, sources_report({"192.0.2.10": (5, True)}))
    reverse = ip_address("192.0.2.10").reverse_pointer
    age = "UPDATE source_hosts SET looked_up_at = looked_up_at - interval '8 days'"

    async def go(first: SenderIdentifier) -> tuple[int, int, str | None, int, str | None]:
        await first.sweep(10)
        zone.other[(reverse, "PTR")] = ["mail-b.google.com"]
        zone.add("mail-b.google.com", "A", "192.0.2.10")
        not_yet = (await first.sweep(10)).looked_up
        await first.pool.execute(age)
        again = await first.sweep(10)  # due again, answered from the process's cache
        cached = await first.pool.fetchval("SELECT ptr_name FROM source_hosts")
        fresh = SenderIdentifier(pool=first.pool, resolver=first.resolver, services=first.services)
        await first.pool.execute(age)
        renewed = await fresh.sweep(10)
        name = await first.pool.fetchval("SELECT ptr_name FROM source_hosts")
        return not_yet, again.looked_up, cached, renewed.looked_up, name

    not_yet, again, cached, renewed, name = with_identifier(db, dns, go)
    assert not_yet == 0
    assert (again, cached) == (1, "mail-a.google.com")
    assert (renewed, name) == (1, "mail-b.google.com")
    assert reverse_queries(zone)[reverse] == 2  # the first lookup and the fresh one
    (row,) = host_rows(db).values()
    assert row["looked_up_at"] is not None and row["claimed_at"] is None


def test_two_identifiers_claim_each_address_once(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    sources = {f"198.51.100.{i}": (1, True) for i in range(100, 160)}
    for i, ip in enumerate(sources):
        zone.add_ptr(ip, f"h{i}.example.net")
        zone.add(f"h{i}.example.net", "A", ip)
    store_reports(db, sources_report(sources))

    async def race(a: SenderIdentifier) -> tuple[Tally, Tally]:
        pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
        try:
            b = SenderIdentifier(
                pool=pool, resolver=a.resolver, services=a.services, batch_size=5, concurrency=4
            )
            ta, tb = await asyncio.gather(a.sweep(1000), b.sweep(1000))
            return ta, tb
        finally:
            await pool.close()

    ta, tb = with_identifier(db, dns, race, batch_size=5, concurrency=4)
    assert ta.failed == tb.failed == 0
    assert ta.looked_up + tb.looked_up == 60
    assert ta.looked_up > 0 and tb.looked_up > 0  # both took part
    assert reverse_queries(zone) == {ip_address(ip).reverse_pointer: 1 for ip in sources}
    assert len(identified(db)) == 60


def test_notify_runs_in_the_background(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    first = dict(list(SOURCES.items())[:3])
    later = dict(list(SOURCES.items())[3:])
    store_reports(db, sources_report(first, "early"))

    async def go(identifier: SenderIdentifier) -> tuple[set[str], set[str], bool]:
        task = asyncio.create_task(identifier.run())
        try:
            early = await poll(identifier, len(first))  # the sweep at start
            store = Store(identifier.pool)
            await store.load_partitions()
            await ingest_bytes(Ingester(store, limits=Limits()), sources_report(later, "late"))
            new = await store.pool.fetchval(
                "SELECT id FROM aggregate_reports WHERE report_id = 'late'"
            )
            assert identifier.notify([new])
            both = await poll(identifier, len(SOURCES))  # long before the next sweep
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return early, both, task.cancelled()

    early, both, cancelled = with_identifier(db, dns, go, sweep_interval=3600.0, batch_size=2)
    assert early == set(first)
    assert both == set(SOURCES)
    assert cancelled
    assert identified(db) == EXPECTED


async def poll(identifier: SenderIdentifier, count: int, timeout: float = 30) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await identifier.pool.fetch(
            "SELECT host(ip) FROM source_hosts WHERE looked_up_at IS NOT NULL"
        )
        if len(rows) >= count or time.monotonic() > deadline:
            return {r[0] for r in rows}
        await asyncio.sleep(0.05)


def test_notify_never_waits_and_drops_when_full(db: str, dns_zone: tuple[Zone, str]) -> None:
    async def go(identifier: SenderIdentifier) -> tuple[list[bool], int]:
        return [identifier.notify(ids) for ids in ([1], [2], [], [3])], identifier.dropped

    assert with_identifier(db, dns_zone[1], go, queue_size=1) == ([True, False, True, False], 2)


# -- what shows the results --------------------------------------------------------------


def test_identify_and_report_commands(db: str, dns_zone: tuple[Zone, str], tmp_path: Path) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES))
    user = tmp_path / "services.toml"
    user.write_text(
        '[suffixes]\n"sendgrid.net" = "Twilio SendGrid"\n"example.org" = "Example Org"\n'
    )
    env = {"RUA_SINK_DATABASE_URL": db, "RUA_SINK_DNS_NAMESERVERS": dns}

    done = cli("identify", "--json", env={**env, "RUA_SINK_SERVICES_FILE": str(user)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "looked_up": 7,
        "named": 6,
        "confirmed": 5,
        "labelled": 4,  # Google, Twilio SendGrid, Example Org, Mailgun
        "unnamed": 1,
        "failed": 0,
        "relabelled": 0,
    }

    period = ("--since", "2023-11-01", "--until", "2023-12-01")
    done = cli("report", "example.com", *period, "--json", env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    top = {
        s["source"]: (s["ptr_name"], s["ptr_confirmed"], s["service"]) for s in got["top_sources"]
    }
    assert top == {
        "192.0.2.10": ("mail-a.google.com", True, GOOGLE),
        "192.0.2.11": ("mail.google.com", False, None),
        "192.0.2.12": (None, None, None),
        "2001:db8::25": ("o1.ptr4711.sendgrid.net", True, "Twilio SendGrid"),
        "198.51.100.7": ("host.mx.example.org", True, "Example Org"),
        "198.51.100.8": ("mx.notgoogle.com", True, None),
        "203.0.113.5": ("so-1.mailgun.net", True, "Mailgun"),
    }
    assert {s["source"]: s["messages"] for s in got["top_sources"]} == {
        ip: n for ip, (n, _) in SOURCES.items()
    }
    failing = {
        s["source"]: (s["failing"], s["ptr_name"], s["service"]) for s in got["top_failing_sources"]
    }
    assert failing == {
        "192.0.2.11": (3, "mail.google.com", None),
        "192.0.2.12": (2, None, None),
        "198.51.100.7": (1, "host.mx.example.org", "Example Org"),
        "203.0.113.5": (2, "so-1.mailgun.net", "Mailgun"),
    }

    done = cli("report", "example.com", *period, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    sources_at = lines.index("  top sources:")
    failing_at = lines.index("  top failing sources:")

    def line(ip: str, part: list[str]) -> str:
        (found,) = [x for x in part if x.split()[0] == ip]
        return found

    top_lines = lines[sources_at + 1 : failing_at]
    assert line("192.0.2.10", top_lines).endswith(f"  mail-a.google.com ({GOOGLE})")
    assert line("192.0.2.11", top_lines).endswith("  mail.google.com (not forward-confirmed)")
    # no name: the class ends the line (auth_results show a signature that verified)
    assert line("192.0.2.12", top_lines).endswith(" passing  [forwarded]")
    assert line("198.51.100.8", top_lines).endswith("  mx.notgoogle.com")
    assert line("203.0.113.5", lines[failing_at + 1 :]).endswith("  so-1.mailgun.net (Mailgun)")

    # Without the file, the shipped mapping comes back: two labels change, nothing is
    # looked up again.
    done = cli("identify", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 source addresses looked up: 0 named")
    assert done.stdout.rstrip().endswith("; 2 labels changed by the mapping")
    assert identified(db)["2001:db8::25"][3] == "SendGrid"
    assert identified(db)["198.51.100.7"][3] is None
    # identify's --limit (a number of addresses) is not parse's --limit NAME=VALUE.
    done = cli("identify", "--limit", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 source addresses looked up")

    bad = tmp_path / "bad.toml"
    bad.write_text("[suffixes]\nnot toml")
    done = cli("identify", env={**env, "RUA_SINK_SERVICES_FILE": str(bad)})
    assert done.returncode == 2 and "bad.toml" in done.stderr


def test_dashboard_panels_by_service(db: str, dns_zone: tuple[Zone, str]) -> None:
    zone, dns = dns_zone
    senders_zone(zone)
    store_reports(db, sources_report(SOURCES, domain=DOMAIN))
    sweep(db, dns)
    panels = {panel["title"]: t["rawSql"] for panel, t in targets(load(POSTGRES_DASHBOARD))}
    by_service = fetch(db, substitute(panels["Who sends as this domain"]))
    assert [
        (r["service"], r["messages"], float(r["DMARC pass %"]), r["sources"]) for r in by_service
    ] == [
        ("unknown", 7, 14.3, 4),  # .11, .12, 198.51.100.7 and .8
        (GOOGLE, 5, 100.0, 1),
        ("SendGrid", 4, 100.0, 1),
        ("Mailgun", 2, 0.0, 1),
    ]
    unknown = fetch(db, substitute(panels["Unknown senders failing DMARC"]))
    assert [(r["source_ip"], r["ptr_name"], r["ptr_confirmed"], r["failing"]) for r in unknown] == [
        ("192.0.2.11", "mail.google.com", False, 3),
        ("192.0.2.12", None, None, 2),
        ("198.51.100.7", "host.mx.example.org", True, 1),
    ]


@pytest.mark.parametrize(
    "interval",
    [
        "1",  # the periodic sweep finds the new sources
        "3600",  # no sweep after the one at start: the report's commit queues them
    ],
)
def test_serve_identifies_sources_in_the_background(db: str, interval: str) -> None:
    zone = senders_zone(example_zone())
    with running(db, zone, RUA_SINK_IDENTIFY_INTERVAL=interval) as server:
        code, reply = send(server, sources_report(SOURCES, "served"))
        assert code == 250, reply
        deadline = time.monotonic() + 30
        while len(identified(db)) < len(SOURCES) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert identified(db) == EXPECTED
    assert server.process.returncode == 0  # and it stopped cleanly
