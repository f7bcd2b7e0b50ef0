"""The Grafana dashboards in deploy/grafana: well-formed; their PromQL parses and uses only
metrics, labels and label values a live `rua-sink serve` exports; their SQL runs on the real
schema and agrees with the parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rua_sink.core.limits import Limits
from rua_sink.core.model import Record
from rua_sink.ingest.ingester import Ingester
from rua_sink.storage.store import Store

from .conftest import ROOT, readme_table
from .procs import cli
from .reports import gz, message, report_message, report_xml, tls_message
from .smtpserver import Server, scrape, send
from .storage import DOMAIN, ingest_bytes, parsed_records, store_corpus, with_store

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROMETHEUS_DASHBOARDS = ("rua-sink-service.json", "rua-sink-dmarc.json")
POSTGRES_DASHBOARD = "rua-sink-reports.json"
SOURCES_DASHBOARD = "rua-sink-sources.json"
POSTGRES_DASHBOARDS = (POSTGRES_DASHBOARD, SOURCES_DASHBOARD)
PROMETHEUS = "prometheus"
POSTGRES = "grafana-postgresql-datasource"

# Grafana's own interval variables, as promtool is given them.
BUILTIN_DURATIONS = {"__rate_interval": "5m", "__range": "1d", "__interval": "1m"}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel, target


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def datasource_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    (var,) = [v for v in variables(dashboard).values() if v["type"] == "datasource"]
    return var


def query_text(var: dict[str, Any]) -> str:
    query = var["query"]
    return str(query["query"] if isinstance(query, dict) else query)


# -- structure --------------------------------------------------------------------------


def test_the_dashboards_are_well_formed() -> None:
    names = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert names == sorted((*PROMETHEUS_DASHBOARDS, *POSTGRES_DASHBOARDS))
    uids = []
    for name in names:
        dashboard = load(name)
        uids.append(dashboard["uid"])
        assert dashboard["uid"] == name.removesuffix(".json")
        assert dashboard["title"].strip()
        assert dashboard["schemaVersion"] == 39
        assert "rua-sink" in dashboard["tags"]

        ds_var = datasource_variable(dashboard)
        plugin = ds_var["query"]
        assert plugin == (POSTGRES if name in POSTGRES_DASHBOARDS else PROMETHEUS)
        ref = {"type": plugin, "uid": "${" + ds_var["name"] + "}"}

        panels = dashboard["panels"]
        assert 6 <= len(panels) <= 12, name
        ids = [p["id"] for p in panels]
        assert all(isinstance(i, int) for i in ids), name
        assert len(set(ids)) == len(ids), name
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            where = f"{name}: {panel.get('title')}"
            assert isinstance(panel["type"], str) and panel["type"], where
            assert panel["title"].strip(), where
            assert panel["datasource"] == ref, where
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) for k in "xywh"), where
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
            assert grid["x"] + grid["w"] <= 24, where
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{where} overlaps {cells[x, y]}"
                    cells[x, y] = where
            assert panel["targets"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs), where
            for target in panel["targets"]:
                assert target["datasource"] == ref, where
                if plugin == PROMETHEUS:
                    assert target["expr"].strip(), where
                else:
                    assert target["rawSql"].strip(), where
                    assert target["format"] in ("table", "time_series"), where

        # Every variable a query uses is defined (Grafana's own, $__..., excepted).
        defined = set(variables(dashboard))
        texts = [t.get("expr") or t["rawSql"] for _, t in targets(dashboard)]
        texts += [query_text(v) for v in variables(dashboard).values() if v["type"] == "query"]
        for text in texts:
            used = set(re.findall(r"\$\{?(\w+)", text))
            assert {u for u in used if not u.startswith("__")} <= defined, (name, text)
    assert len(set(uids)) == len(uids)


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of each data source in the provisioning file (a flat list of maps)."""
    text = (GRAFANA / "provisioning" / "datasources" / "rua-sink.yaml").read_text()
    out = {}
    for block in re.split(r"^  - ", text, flags=re.M)[1:]:
        uid = re.search(r"^\s*uid: (\S+)$", block, re.M)
        kind = re.search(r"^\s*type: (\S+)$", block, re.M)
        assert uid and kind, block
        out[uid[1]] = kind[1]
    return out


def test_provisioning_matches_the_dashboards() -> None:
    provisioned = provisioned_datasources()
    assert set(provisioned.values()) == {PROMETHEUS, POSTGRES}
    for name in (*PROMETHEUS_DASHBOARDS, *POSTGRES_DASHBOARDS):
        var = datasource_variable(load(name))
        assert provisioned.get(var["current"]["value"]) == var["query"], name
    pg = (GRAFANA / "provisioning" / "datasources" / "rua-sink.yaml").read_text()
    for env in ("HOST", "USER", "DATABASE", "PASSWORD"):
        assert "${RUA_SINK_PG_" + env + "}" in pg
    provider = (GRAFANA / "provisioning" / "dashboards" / "rua-sink.yaml").read_text()
    assert re.search(r"^\s*type: file$", provider, re.M)
    assert re.search(r"^\s*path: /var/lib/grafana/dashboards/rua-sink$", provider, re.M)


# -- PromQL -----------------------------------------------------------------------------


def prometheus_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, where, expression, legend) of every target and query variable."""
    out = []
    for name in PROMETHEUS_DASHBOARDS:
        dashboard = load(name)
        for panel, t in targets(dashboard):
            where = f"{panel['title']} {t['refId']}"
            out.append((name, where, t["expr"], t.get("legendFormat", "")))
        for var in variables(dashboard).values():
            if var["type"] == "query":
                out.append((name, f"variable {var['name']}", query_text(var), ""))
    return out


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}
PROMQL_WORDS |= {"and", "or", "unless", "bool"}


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are neither functions,
    keywords, label names, strings, nor durations."""
    grafana = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)  # a variable's query
    if grafana:
        expr = grafana[1]
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
    return {n for n in names if n not in PROMQL_WORDS}


def documented_values() -> dict[str, set[str]]:
    """Per metric, every word in backquotes on its row of the metrics table of docs/metrics.md."""
    table = readme_table("metrics")
    out = {}
    for row in re.findall(r"^\| `(rua_sink_\w+)` \|(.*)$", table, re.M):
        out[row[0]] = set(re.findall(r"`([^`]+)`", row[1]))
    return out


def test_dashboards_use_only_rua_sink_series_and_up() -> None:
    for name, where, expr, _ in prometheus_queries():
        names = series_names(expr)
        assert names, (name, where)
        for series in names:
            assert series.startswith("rua_sink_") or series == "up", (name, where, series)
        if "up" in names:
            assert 'up{job="rua-sink"}' in expr, (name, where)


def test_promql_parses(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: ./dev test installs it (Debian package prometheus)")
    rules = []
    for i, (_, _, expr, _) in enumerate(prometheus_queries()):
        if expr.startswith("label_values("):  # Grafana's, not PromQL
            continue
        promql = expr
        for var, duration in BUILTIN_DURATIONS.items():
            promql = promql.replace("$" + var, duration)
        promql = re.sub(r"\$\{?\w+\}?", ".*", promql)  # the dashboards' variables: label regexes
        rules.append({"record": f"dashboard:expr_{i}", "expr": promql})
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, timeout=120, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found".encode() in checked.stdout


def family_of(metric: str) -> str:
    """A histogram's family from one of its series; any other name as it is."""
    return re.sub(r"_(bucket|count|sum)$", "", metric)


def test_promql_uses_what_the_live_exposition_has(server: Server) -> None:
    tag = uuid.uuid4().hex[:12]  # the database is shared: reports new to it, so they count
    assert send(server, report_message(f"dash-{tag}-1", 3))[0] == 250
    assert send(server, report_message(f"dash-{tag}-2"))[0] == 250
    assert send(server, tls_message(f"tls-dash-{tag}"))[0] == 250
    samples = scrape(server)
    labels: defaultdict[str, defaultdict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for sample_name, pairs in samples:
        series = labels[sample_name]  # a series without labels is there too
        for label, value in pairs:
            series[label].add(value)
    documented = documented_values()

    checked = set()
    for name, where, expr, legend in prometheus_queries():
        used = set(re.findall(r"\b(rua_sink_\w+)", expr))
        available = {"__name__"}
        for metric in used:
            assert metric in labels, (name, where, metric)
            family = family_of(metric)
            if family != metric:  # a histogram's series: the family is a histogram
                assert f"{family}_bucket" in labels and f"{family}_count" in labels, metric
            available |= set(labels[metric])
            checked.add(family)
        # label matchers: names the metric has, literal values it takes or documents
        for metric, matchers in re.findall(r"\b(rua_sink_\w+)\{([^}]*)\}", expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert label in labels[metric], (name, where, metric, label)
                if op == "=" and "$" not in value:
                    allowed = labels[metric][label] | documented[family_of(metric)]
                    assert value in allowed, (name, where, metric, label, value)
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in re.findall(r"\w+", grouping):
                assert label in available, (name, where, label)
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in available, (name, where, legend)
    # every family of the exposition that the dashboards are about is shown somewhere
    assert {
        "rua_sink_messages_total",
        "rua_sink_reports_total",
        "rua_sink_records_total",
        "rua_sink_smtp_replies_total",
        "rua_sink_stage_duration_seconds",
        "rua_sink_database_errors_total",
        "rua_sink_authorization_lookups_total",
        "rua_sink_smtp_sessions",
        "rua_sink_smtp_connections_total",
        "rua_sink_dmarc_messages_total",
        "rua_sink_tls_sessions_total",
        "rua_sink_last_report_timestamp_seconds",
    } <= checked


# -- SQL --------------------------------------------------------------------------------

MACROS = (
    (r"\$__timeFilter\(([\w.]+)\)", r"\1 BETWEEN '2000-01-01' AND '2100-01-01'"),
    (r"\$__timeGroupAlias\(([\w.]+),\s*'?1d'?\)", r"date_trunc('day', \1) AS " '"time"'),
    (r"\$__timeGroup\(([\w.]+),\s*'?1d'?\)", r"date_trunc('day', \1)"),
    (r"\$__timeFrom\(\)", "'2000-01-01T00:00:00Z'"),
    (r"\$__timeTo\(\)", "'2100-01-01T00:00:00Z'"),
    (r"'?\$(?:\{domain\}|domain\b)'?", f"'{DOMAIN}'"),
)


def substitute(sql: str) -> str:
    """Grafana's macros and variables as Grafana would expand them, over all time."""
    for pattern, replacement in MACROS:
        sql = re.sub(pattern, replacement, sql)
    assert "$" not in sql, sql
    return sql


ALL_TIME = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@dataclass
class Expected:
    """What the SQL panels must say, counted from the parser's records."""

    failing: Counter[str] = field(default_factory=Counter)
    reporters: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    last: dict[str, datetime] = field(default_factory=dict)
    by_reporter: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_by_reporter: dict[tuple[str, str], datetime] = field(default_factory=dict)
    per_day: defaultdict[datetime, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    dispositions: Counter[str] = field(default_factory=Counter)


def expected(records: list[tuple[str, Record, datetime]]) -> Expected:
    e = Expected()
    for reporter, rec, begin in records:
        ok = rec.dkim == "pass" or rec.spf == "pass"
        day = begin.replace(hour=0, minute=0, second=0)
        e.per_day[day][0 if ok else 1] += rec.count
        e.dispositions[str(rec.disposition) if rec.disposition else "unknown"] += rec.count
        if ok:
            continue
        ip = rec.source_ip
        e.failing[ip] += rec.count
        e.reporters[ip].add(reporter)
        e.last[ip] = max(begin, e.last.get(ip, begin))
        e.by_reporter[reporter, ip] += rec.count
        e.last_by_reporter[reporter, ip] = max(begin, e.last_by_reporter.get((reporter, ip), begin))
    return e


def panel_rows(
    db: str, domain_query: str, panels: dict[str, Any]
) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """The domain variable's values and every panel's rows, on the stored corpus plus one
    broken report (for the quarantine panel: the corpus has none)."""

    async def go(store: Store) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
        cut = gz(report_xml(100, report_id="cut"))[:-50]
        ingester = Ingester(store, limits=Limits())
        await ingest_bytes(ingester, message((cut, "application/gzip", "c.xml.gz")))
        domains = [r[0] for r in await store.pool.fetch(substitute(domain_query))]
        rows = {
            title: [dict(r) for r in await store.pool.fetch(substitute(t["rawSql"]))]
            for title, t in panels.items()
        }
        return domains, rows

    return with_store(db, go)


def check_time_series(panels: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Time series panels have rows, with ``time`` first and in order."""
    for title, target in panels.items():
        if target["format"] == "time_series":
            assert rows[title], title
            assert all(next(iter(r)) == "time" for r in rows[title]), title
            times = [r["time"] for r in rows[title]]
            assert times == sorted(times), title


def test_sql_panels_run_and_agree_with_the_parser(db: str) -> None:
    dashboard = load(POSTGRES_DASHBOARD)
    panels = {panel["title"]: target for panel, target in targets(dashboard)}
    assert len(panels) == len(dashboard["panels"])  # one query a panel, titles unique
    domain_query = query_text(variables(dashboard)["domain"])
    assert domain_query == "SELECT DISTINCT policy_domain FROM aggregate_reports ORDER BY 1"

    store_corpus(db)

    domains, rows = panel_rows(db, domain_query, panels)
    assert DOMAIN in domains and domains == sorted(set(domains))
    check_time_series(panels, rows)

    records = parsed_records(ALL_TIME)
    assert records

    e = expected(records)
    assert e.failing  # the corpus has failing sources for this domain

    def limit(title: str) -> int:
        found = re.search(r"\bLIMIT (\d+)\s*$", panels[title]["rawSql"])
        assert found, title
        return int(found[1])

    top = rows["Top failing source IPs"]
    assert len(e.failing) <= limit("Top failing source IPs")  # nothing cut off
    assert {(r["source_ip"], r["failing"], r["reporters"], r["last_seen"]) for r in top} == {
        (ip, n, len(e.reporters[ip]), e.last[ip]) for ip, n in e.failing.items()
    }
    assert len(top) == len(e.failing)
    assert [r["failing"] for r in top] == sorted((r["failing"] for r in top), reverse=True)

    split = rows["Failing sources by reporter"]
    assert len(e.by_reporter) <= limit("Failing sources by reporter")
    assert {(r["reporter"], r["source_ip"], r["failing"], r["last_seen"]) for r in split} == {
        (rep, ip, n, e.last_by_reporter[rep, ip]) for (rep, ip), n in e.by_reporter.items()
    }
    assert len(split) == len(e.by_reporter)
    assert len({r["reporter"] for r in split}) >= 2  # several e.reporters, so the split matters

    assert {(r["time"], r["passing"], r["failing"]) for r in rows["Messages per day"]} == {
        (day, p, f) for day, (p, f) in e.per_day.items()
    }
    assert {(r["time"], float(r["DMARC pass %"])) for r in rows["DMARC pass rate per day"]} == {
        (day, round(100.0 * p / (p + f), 1)) for day, (p, f) in e.per_day.items()
    }
    total = sum(p + f for p, f in e.per_day.values())
    passing = sum(p for p, _ in e.per_day.values())
    (summary,) = rows["Summary"]
    assert summary["messages"] == total
    assert float(summary["DMARC pass %"]) == round(100.0 * passing / total, 1)
    assert summary["reporters"] == len({rep for rep, _, _ in records})
    assert summary["sources"] == len({rec.source_ip for _, rec, _ in records})
    assert {(r["disposition"], r["messages"]) for r in rows["Dispositions"]} == set(
        e.dispositions.items()
    )
    latest = rows["Latest reports"]
    assert sum(r["messages"] for r in latest) == total
    assert sum(r["failing"] for r in latest) == sum(e.failing.values())
    assert {r["reporter"] for r in latest} == {rep for rep, _, _ in records}
    begins = [r["begin_at"] for r in latest]
    assert begins == sorted(begins, reverse=True)
    # No source looked up yet (tests/test_senders.py fills source_hosts): all unknown.
    (everyone,) = rows["Who sends as this domain"]
    assert (everyone["service"], everyone["messages"]) == ("unknown", total)
    assert everyone["sources"] == summary["sources"]
    unknown = rows["Unknown senders failing DMARC"]
    assert {(r["source_ip"], r["failing"], r["ptr_name"]) for r in unknown} == {
        (ip, n, None) for ip, n in e.failing.items()
    }
    (kept,) = rows["Quarantined and refused messages (all domains)"]
    assert (kept["status"], kept["reason"], kept["source"]) == (
        "quarantined",
        "truncated_archive",
        "smtp",
    )


def test_sources_panels_agree_with_the_sources_command(db: str) -> None:
    from .test_classify import AMAZON, IETF, host, record, report
    from .test_senders import store_reports

    dashboard = load(SOURCES_DASHBOARD)
    panels = {panel["title"]: target for panel, target in targets(dashboard)}
    assert len(panels) == len(dashboard["panels"])  # one query a panel, titles unique
    domain_query = query_text(variables(dashboard)["domain"])
    assert domain_query == "SELECT DISTINCT policy_domain FROM aggregate_reports ORDER BY 1"

    store_corpus(db)
    # What identification and the IP databases would have left for two sources.
    host(db, AMAZON, ptr_name="smtp-fw.amazon.com", ptr_confirmed=True, service="Amazon")
    host(db, AMAZON, asn=16509, as_org="Amazon.com, Inc.", country="US")
    host(db, IETF, ptr_name="mail.ietf.org", ptr_confirmed=True, asn=11581, as_org="IETF")
    # A source new to the domain: yesterday's report, taken by change detection's sweep.
    yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday -= timedelta(days=1)
    store_reports(db, report("new-1", record("192.0.2.99", 3), begin=yesterday, domain=DOMAIN))
    env = {"RUA_SINK_DATABASE_URL": db}
    assert cli("changes", env=env).returncode == 0  # sweeps

    domains, rows = panel_rows(db, domain_query, panels)
    assert DOMAIN in domains
    check_time_series(panels, rows)
    done = cli(
        "sources", DOMAIN, "--since", "2000-01-01", "--until", "2100-01-01", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    expected = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"authorized", "forwarded", "misconfigured", "suspicious"} == {
        s["classification"] for s in expected
    }

    def of(cls: str) -> list[dict[str, Any]]:
        return [s for s in expected if s["classification"] == cls]

    assert {
        (r["classification"], r["sources"], r["messages"], r["failing"])
        for r in rows["Sources by class"]
    } == {
        (c, len(of(c)), sum(s["messages"] for s in of(c)), sum(s["failing"] for s in of(c)))
        for c in {s["classification"] for s in expected}
    }
    assert {(r["classification"], r["messages"]) for r in rows["Messages by class"]} == {
        (c, sum(s["messages"] for s in of(c))) for c in {s["classification"] for s in expected}
    }
    (amazon,) = of("misconfigured")
    assert [dict(r) for r in rows["Misconfigured services"]] == [
        {"service": "Amazon", "sources": 1, "messages": 1, "failing": 1}
    ]
    assert amazon["source"] == AMAZON
    top = rows["Top failing sources"]
    keys = ("ptr_name", "service", "asn", "as_org", "country", "failing", "classification")
    assert {(r["source_ip"], *(r[k] for k in keys)) for r in top} == {
        (s["source"], *(s[k] for k in keys)) for s in expected if s["failing"]
    }
    assert [r["failing"] for r in top] == sorted((r["failing"] for r in top), reverse=True)
    assert any(r["as_org"] == "Amazon.com, Inc." and r["asn"] == 16509 for r in top)
    assert (
        {r["source_ip"] for r in rows["Suspicious sources"]}
        == {s["source"] for s in of("suspicious")}
        == {"192.0.2.99"}
    )
    assert {r["source_ip"] for r in rows["Forwarders"]} == {s["source"] for s in of("forwarded")}
    assert IETF in {r["source_ip"] for r in rows["Forwarders"]}
    # The corpus's sources are not news (their reports are years old); yesterday's is.
    (new,) = rows["New sources"]
    assert (new["source_ip"], new["first_seen"]) == ("192.0.2.99", yesterday)
    (per_day,) = rows["New sources per day"]
    assert per_day["new sources"] == 1
