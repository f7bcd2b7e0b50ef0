"""Service metrics (prometheus-client), on a registry of their own.

Label values come only from fixed enums (reply reasons, report types, outcomes, verdicts),
never from what a sender wrote, so a flood of junk cannot explode cardinality. Names
follow Prometheus conventions: ``rua_sink_`` prefix, ``_total`` counters, base units
(``_seconds``, ``_bytes``).
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__


class ReplyReason(StrEnum):
    """Why a reply to a message (or to RCPT) was what it was."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    NOT_A_REPORT = "not_a_report"
    UNAUTHORIZED = "unauthorized"
    DNS_UNAVAILABLE = "dns_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    INTERNAL_ERROR = "internal_error"
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    DATA_TIMEOUT = "data_timeout"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    TOO_MANY_CONNECTIONS = "too_many_connections"


_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 256e6)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
            "Reports by type (aggregate, tlsrpt, failure) and outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.records = Counter(
            "rua_sink_records_total", "Aggregate report records stored", registry=r
        )
        self.stage = Histogram(
            "rua_sink_stage_duration_seconds",
            "Time per stage of a message: receive (DATA), store (parse and commit)",
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

    def reply(self, status: str, reason: ReplyReason) -> None:
        self.replies.labels(f"{status[:1]}xx", str(reason)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
