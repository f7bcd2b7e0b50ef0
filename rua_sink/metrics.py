"""Service metrics (prometheus-client), on a registry of their own.

Label values come only from fixed enums (reply reasons, report types, outcomes, verdicts),
never from what a sender wrote, so a flood of junk cannot explode cardinality. Names
follow Prometheus conventions: ``rua_sink_`` prefix, ``_total`` counters, base units
(``_seconds``, ``_bytes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rua_sink import __version__
from rua_sink.outcomes import ReplyReason

OTHER = "other"
_DISPOSITIONS = frozenset(("none", "pass", "quarantine", "reject"))
_VERDICTS = frozenset(("pass", "fail"))


class LabelCap:
    """Admits the first ``limit`` distinct values of a label; any later one is "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return OTHER
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 256e6)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_domains: int = 50,
        max_reporters: int = 20,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # DMARC labels: policy domains only once authorized, reporters as they come,
        # each capped, so that a flood of junk cannot explode the series count.
        self.domain_label = LabelCap(max_domains)
        self.reporter_label = LabelCap(max_reporters)
        self.dmarc_messages = Counter(
            "rua_sink_dmarc_messages_total",
            "Messages reported in aggregate reports, by policy domain, reporter, disposition, "
            "DKIM and SPF alignment, and DMARC result",
            ["policy_domain", "reporter", "disposition", "dkim", "spf", "dmarc"],
            registry=r,
        )
        self.tls_sessions = Counter(
            "rua_sink_tls_sessions_total",
            "Sessions reported in SMTP TLS reports, by policy domain and result",
            ["policy_domain", "result"],
            registry=r,
        )
        self._latest: dict[tuple[str, str], int] = {}
        self.last_report = Gauge(
            "rua_sink_last_report_timestamp_seconds",
            "End of the period of the latest aggregate report, by policy domain and reporter",
            ["policy_domain", "reporter"],
            registry=r,
        )
        self.build_info = Gauge(
            "rua_sink_build_info", "rua-sink's version, as a label", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.connections = Counter(
            "rua_sink_smtp_connections_total",
            "SMTP connections, accepted or refused at the session limits",
            ["result"],
            registry=r,
        )
        self.starttls = Counter(
            "rua_sink_smtp_starttls_total", "SMTP sessions that switched to TLS", registry=r
        )
        self.sessions_ended = Counter(
            "rua_sink_smtp_sessions_ended_total",
            "SMTP sessions ended, by whether they used TLS",
            ["tls"],
            registry=r,
        )
        self.sessions = Gauge("rua_sink_smtp_sessions", "SMTP sessions open", registry=r)
        self.replies = Counter(
            "rua_sink_smtp_replies_total",
            "Replies to messages and recipients, by class (2xx, 4xx, 5xx) and reason",
            ["code_class", "reason"],
            registry=r,
        )
        self.messages = Counter(
            "rua_sink_messages_total", "Messages received in full (DATA ended)", registry=r
        )
        self.message_size = Histogram(
            "rua_sink_message_size_bytes",
            "Size of messages received",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.reports = Counter(
            "rua_sink_reports_total",
            "Reports by type (aggregate, tlsrpt, failure), outcome, and whether their mail "
            "passed DMARC (yes, no, unchecked)",
            ["type", "outcome", "authenticated"],
            registry=r,
        )
        self.records = Counter(
            "rua_sink_records_total", "Aggregate report records stored", registry=r
        )
        self.decompressed_bytes = Counter(
            "rua_sink_decompressed_bytes_total",
            "Bytes of aggregate report XML read, after decompression",
            registry=r,
        )
        self.stage = Histogram(
            "rua_sink_stage_duration_seconds",
            "Time per stage of a message: receive (DATA), store (parse to commit), parse (CPU "
            "time of the core), commit",
            ["stage"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.database_errors = Counter(
            "rua_sink_database_errors_total",
            "Messages not stored because the database failed (answered 451)",
            registry=r,
        )
        self.authorization = Counter(
            "rua_sink_authorization_lookups_total",
            "External-destination checks by result",
            ["result"],
            registry=r,
        )
        # Read from the database (prune runs as a job of its own, which is not scraped).
        self.prune_last_success = Gauge(
            "rua_sink_prune_last_success_timestamp_seconds",
            "When the latest successful rua-sink prune finished, as recorded in the database "
            "(0: never)",
            registry=r,
        )
        # The STARTTLS certificate (smtp.tls): always exported, 0 while none is served, so
        # that the alert on its expiry needs no "absent" case.
        self.tls_expiry = Gauge(
            "rua_sink_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate STARTTLS serves (0: none configured)",
            registry=r,
        )
        # Change detection (storage.changes), read from the database by serve's sweep.
        self.new_sources = Gauge(
            "rua_sink_new_sources",
            "Source addresses seen for the first time for a policy domain in the last 24 hours",
            ["policy_domain"],
            registry=r,
        )
        self.new_services = Gauge(
            "rua_sink_new_services",
            "Sender services seen for the first time for a policy domain in the last 24 hours",
            ["policy_domain"],
            registry=r,
        )
        self.pass_ratio = Gauge(
            "rua_sink_dmarc_pass_ratio",
            "Share of the messages reported for a policy domain that passed DMARC, in the "
            "reports received in the last day (1d) and in the 14 days before it (14d)",
            ["policy_domain", "window"],
            registry=r,
        )
        self.tls_reload_failures = Counter(
            "rua_sink_tls_reload_failures_total",
            "Changes of the certificate or key file that did not load (the last good pair "
            "is still served)",
            registry=r,
        )
        # The IP databases (dns.ipdata): the oldest file's build, one series however many
        # files, always exported (0 without any), so that an alert on staleness needs no
        # "absent" case.
        self.ip_database_oldest_build = Gauge(
            "rua_sink_ip_database_oldest_build_timestamp_seconds",
            "build_epoch of the oldest IP database file in use (0: none configured)",
            registry=r,
        )
        self.ip_database_reload_failures = Counter(
            "rua_sink_ip_database_reload_failures_total",
            "Changes of an IP database file that did not load (the file loaded before is "
            "still used)",
            registry=r,
        )

    def changes(
        self,
        new_sources: Mapping[str, int],
        new_services: Mapping[str, int],
        ratios: Iterable[tuple[str, str, int, int]],
    ) -> None:
        """Replace the change-detection gauges with what the database says now:
        domain -> new sources, domain -> new services (both 0 for a domain that had
        reports but nothing new), and (domain, window, messages, passing) of the pass
        ratios. Domains past the label cap add up under "other"."""
        counts: dict[str, list[int]] = {}
        for domain, n in new_sources.items():
            counts.setdefault(self.domain_label(domain), [0, 0])[0] += n
        for domain, n in new_services.items():
            counts.setdefault(self.domain_label(domain), [0, 0])[1] += n
        totals: dict[tuple[str, str], list[int]] = {}
        for domain, window, messages, passing in ratios:
            label = self.domain_label(domain)
            counts.setdefault(label, [0, 0])
            pair = totals.setdefault((label, window), [0, 0])
            pair[0] += messages
            pair[1] += passing
        # No await between clear and set: a scrape never sees the gauges half written.
        for gauge in (self.new_sources, self.new_services, self.pass_ratio):
            gauge.clear()
        for label, (sources, services) in counts.items():
            self.new_sources.labels(label).set(sources)
            self.new_services.labels(label).set(services)
        for (label, window), (messages, passing) in totals.items():
            if messages:
                self.pass_ratio.labels(label, window).set(passing / messages)

    def dmarc(
        self,
        messages: Mapping[tuple[str | None, str, str, str, str], int],
        last_report: Mapping[tuple[str, str], int],
        tls_sessions: Mapping[tuple[str | None, str], int],
    ) -> None:
        """Add what one message's new reports said."""
        for (domain, reporter, disposition, dkim, spf), n in messages.items():
            dkim_l = dkim if dkim in _VERDICTS else OTHER
            spf_l = spf if spf in _VERDICTS else OTHER
            self.dmarc_messages.labels(
                self.domain_label(domain),
                self.reporter_label(reporter),
                disposition if disposition in _DISPOSITIONS else OTHER,
                dkim_l,
                spf_l,
                "pass" if "pass" in (dkim_l, spf_l) else "fail",
            ).inc(n)
        for (domain, reporter), end in last_report.items():
            labels = (self.domain_label(domain), self.reporter_label(reporter))
            latest = max(end, self._latest.get(labels, 0))  # a late report is not newer
            self._latest[labels] = latest
            self.last_report.labels(*labels).set(latest)
        for (domain, result), n in tls_sessions.items():
            self.tls_sessions.labels(self.domain_label(domain), result).inc(n)

    def reply(self, status: str, reason: ReplyReason) -> None:
        self.replies.labels(f"{status[:1]}xx", str(reason)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
