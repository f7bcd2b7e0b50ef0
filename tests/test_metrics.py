"""DMARC metric labels stay bounded whatever the reports say."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rua_sink.metrics import Metrics


def samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = m.exposition().decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_domains_and_reporters_are_capped() -> None:
    m = Metrics(max_domains=2, max_reporters=1)
    messages: dict[tuple[str | None, str, str, str, str], int] = {
        (f"d{i}.example", f"r{i}", "none", "pass", "fail"): 10 for i in range(5)
    }
    messages[(None, "r0", "reject", "fail", "fail")] = 3  # an unauthorized domain
    m.dmarc(messages, {("d0.example", "r0"): 1700000000}, {})
    got = samples(m, "rua_sink_dmarc_messages_total")
    domains = {dict(k)["policy_domain"] for k in got}
    reporters = {dict(k)["reporter"] for k in got}
    assert domains == {"d0.example", "d1.example", "other"}
    assert reporters == {"r0", "other"}
    assert sum(got.values()) == 53
    assert all(dict(k)["dmarc"] == "pass" for k, v in got.items() if dict(k)["dkim"] == "pass")


def test_values_outside_the_enums_are_other() -> None:
    m = Metrics()
    m.dmarc({("example.com", "r", "Discard!", "maybe", "pass"): 4}, {}, {})
    (labels,) = samples(m, "rua_sink_dmarc_messages_total")
    got = dict(labels)
    assert (got["disposition"], got["dkim"], got["spf"], got["dmarc"]) == (
        "other",
        "other",
        "pass",
        "pass",
    )


def test_last_report_keeps_the_latest() -> None:
    m = Metrics()
    m.dmarc({}, {("example.com", "google.com"): 200}, {})
    m.dmarc({}, {("example.com", "google.com"): 100}, {})  # a late, older report
    (value,) = samples(m, "rua_sink_last_report_timestamp_seconds").values()
    assert value == 200


def test_change_gauges_are_capped_and_replaced() -> None:
    m = Metrics(max_domains=2)
    m.dmarc({("a.example", "r", "none", "pass", "pass"): 1}, {}, {})  # a.example admitted first
    m.changes(
        {"a.example": 1, "b.example": 2, "c.example": 3},
        {"c.example": 1},
        [
            ("a.example", "1d", 10, 5),
            ("b.example", "1d", 10, 10),
            ("c.example", "1d", 30, 0),
            ("c.example", "14d", 0, 0),
        ],
    )
    new = {dict(k)["policy_domain"]: v for k, v in samples(m, "rua_sink_new_sources").items()}
    assert new == {"a.example": 1, "b.example": 2, "other": 3}
    services = samples(m, "rua_sink_new_services")
    assert {dict(k)["policy_domain"]: v for k, v in services.items()} == {
        "a.example": 0,
        "b.example": 0,
        "other": 1,
    }
    ratios = {
        (dict(k)["policy_domain"], dict(k)["window"]): v
        for k, v in samples(m, "rua_sink_dmarc_pass_ratio").items()
    }
    assert ratios == {("a.example", "1d"): 0.5, ("b.example", "1d"): 1.0, ("other", "1d"): 0.0}
    # The next refresh replaces the gauges: a domain with nothing to say is gone.
    m.changes({"b.example": 0}, {}, [])
    assert samples(m, "rua_sink_new_sources") == {(("policy_domain", "b.example"),): 0}
    assert samples(m, "rua_sink_dmarc_pass_ratio") == {}
