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
