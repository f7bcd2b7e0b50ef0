"""One frozen, typed Settings for ``rua-sink serve``, read from the environment once.

Every field is documented here and in docs/configuration.md's table, which
tests/test_config.py checks against this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from rua_sink.core.limits import Limits, parse_size
from rua_sink.errors import ConfigError


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"not host:port: {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        return host, int(port)
    except ValueError as exc:
        raise ConfigError(f"not a port: {text!r}") from exc


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _addresses(text: str) -> tuple[str, ...]:
    return tuple(a.lower() for a in _list(text))


def _networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    return tuple(ip_network(n, strict=False) for n in _list(text))


_DURATION = re.compile(r"^(\d+)\s*(d|w|m|y)$")
_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}


def parse_duration(text: str) -> timedelta:
    """``400d``, ``12w``, ``18m`` (30 days each), ``2y``."""
    m = _DURATION.match(text.strip().lower())
    if m is None:
        raise ValueError(f"not a duration (e.g. 400d, 12w, 18m, 2y): {text!r}")
    return timedelta(days=int(m.group(1)) * _DAYS[m.group(2)])


def _word(text: str) -> str:
    return text.strip().lower()


def _bool(text: str) -> bool:
    word = _word(text)
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not true or false: {text!r}")


def default_parse_workers() -> int:
    """Parse workers by default: one per CPU this process may run on, and one more, so
    that the cores stay busy while a worker waits for its next segment."""
    return len(os.sched_getaffinity(0)) + 1


def _workers(text: str) -> int:
    if _word(text) == "auto":
        return default_parse_workers()
    try:
        workers = int(text)
    except ValueError as exc:
        raise ValueError(f"not a number or auto: {text!r}") from exc
    if not 0 <= workers <= 256:
        raise ValueError(f"not between 0 and 256: {text!r}")
    return workers


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    default: str
    help: str
    #: The text (from the environment, or the default) to the value; ValueError if bad.
    parse: Callable[[str], Any] = str.strip

    def read(self, env: Mapping[str, str] = os.environ) -> Any:
        """The value ``env`` sets, else the default's; ValueError if bad."""
        text = env.get(self.env, self.default)
        if self.parse in (float, int):  # their own messages name neither the rule nor us
            try:
                return self.parse(text)
            except ValueError as exc:
                raise ValueError(f"not a number: {text!r}") from exc
        return self.parse(text)

    def value(self, env: Mapping[str, str] = os.environ) -> Any:
        """As ``read``, but a ConfigError whose message starts with the variable's name."""
        try:
            return self.read(env)
        except ValueError as exc:
            raise ConfigError(f"{self.env}: {exc}") from exc


#: name -> (environment variable, default as text, meaning, parser); the docs' table
#: mirrors it, and ``Settings`` has one field of each name.
SETTINGS: dict[str, Setting] = {
    "smtp_listen": Setting(
        "RUA_SINK_SMTP_LISTEN", "0.0.0.0:2525", "SMTP listen address, host:port", _hostport
    ),
    "http_listen": Setting(
        "RUA_SINK_HTTP_LISTEN",
        "0.0.0.0:9102",
        "HTTP listen address (health, readiness)",
        _hostport,
    ),
    "hostname": Setting("RUA_SINK_HOSTNAME", "", "name in the SMTP greeting (default: the host's)"),
    "addresses": Setting(
        "RUA_SINK_ADDRESSES",
        "",
        "report addresses, comma-separated: dmarc@rua.example.net, *@reports.example.net",
        _addresses,
    ),
    "dns_nameservers": Setting(
        "RUA_SINK_DNS_NAMESERVERS",
        "",
        "host[:port] list for DNS (default: the system resolver)",
        _list,
    ),
    "dns_timeout": Setting("RUA_SINK_DNS_TIMEOUT", "5", "seconds a DNS lookup may take", float),
    "authorized_domains": Setting(
        "RUA_SINK_AUTHORIZED_DOMAINS", "", "policy domains accepted without a DNS check", _list
    ),
    "unauthorized": Setting(
        "RUA_SINK_UNAUTHORIZED",
        "reject",
        "reject (550 5.7.1) or flag (store, marked) unauthorized reports",
        _word,
    ),
    "require_authenticated": Setting(
        "RUA_SINK_REQUIRE_AUTHENTICATED",
        "flag",
        "SPF, DKIM and DMARC of report mail: off (not checked), flag (checked and stored; "
        "unsigned TLS reports quarantined) or reject (also 550 5.7.1 unless DMARC passes)",
        _word,
    ),
    "auth_max_bytes": Setting(
        "RUA_SINK_AUTH_MAX_BYTES",
        "16m",
        "messages up to this size have their DKIM signatures checked (in memory)",
        parse_size,
    ),
    "failure_addresses": Setting(
        "RUA_SINK_FAILURE_ADDRESSES",
        "",
        "failure report (ruf) addresses, comma-separated, as RUA_SINK_ADDRESSES",
        _addresses,
    ),
    "failure_keep_body": Setting(
        "RUA_SINK_FAILURE_KEEP_BODY",
        "false",
        "archive failure reports whole; by default the reported message's body is dropped",
        _bool,
    ),
    "failure_retention": Setting(
        "RUA_SINK_FAILURE_RETENTION",
        "30d",
        "rua-sink prune drops failure reports and their messages older than this",
        parse_duration,
    ),
    "tls_cert": Setting("RUA_SINK_TLS_CERT", "", "PEM certificate chain: enables STARTTLS"),
    "tls_key": Setting("RUA_SINK_TLS_KEY", "", "PEM private key of that certificate"),
    "tls_reload_interval": Setting(
        "RUA_SINK_TLS_RELOAD_INTERVAL",
        "30",
        "seconds between checks of the certificate and key files; a changed pair that "
        "loads is served to new sessions",
        float,
    ),
    "proxy_protocol_from": Setting(
        "RUA_SINK_PROXY_PROTOCOL_FROM",
        "",
        "CIDRs of load balancers whose PROXY protocol v1/v2 header is read (others: refused)",
        _networks,
    ),
    "metrics_max_domains": Setting(
        "RUA_SINK_METRICS_MAX_DOMAINS",
        "50",
        "policy_domain label values in DMARC metrics (then other)",
        parse_size,
    ),
    "metrics_max_reporters": Setting(
        "RUA_SINK_METRICS_MAX_REPORTERS",
        "20",
        "reporter label values in DMARC metrics (then other)",
        parse_size,
    ),
    "max_sessions": Setting("RUA_SINK_MAX_SESSIONS", "500", "concurrent SMTP sessions", parse_size),
    "max_sessions_per_ip": Setting(
        "RUA_SINK_MAX_SESSIONS_PER_IP",
        "20",
        "concurrent SMTP sessions from one client address",
        parse_size,
    ),
    "max_recipients": Setting(
        "RUA_SINK_MAX_RECIPIENTS", "20", "recipients of one message", parse_size
    ),
    "idle_timeout": Setting(
        "RUA_SINK_IDLE_TIMEOUT", "300", "seconds a session may wait for a command", float
    ),
    "data_timeout": Setting(
        "RUA_SINK_DATA_TIMEOUT", "600", "seconds the whole DATA may take", float
    ),
    "shutdown_grace": Setting(
        "RUA_SINK_SHUTDOWN_GRACE",
        "25",
        "seconds sessions in flight may finish after SIGTERM",
        float,
    ),
    "services_file": Setting(
        "RUA_SINK_SERVICES_FILE",
        "",
        "TOML file of sender services by host name suffix, over the shipped mapping",
    ),
    "ip_databases": Setting(
        "RUA_SINK_IP_DATABASES",
        "",
        "MaxMind-format (.mmdb) files, comma-separated: country and network (AS) of source "
        "addresses (GeoLite2/GeoIP2 Country, City, ASN, ISP; DB-IP Lite; IPinfo Lite)",
        _list,
    ),
    "identify_concurrency": Setting(
        "RUA_SINK_IDENTIFY_CONCURRENCY",
        "8",
        "source addresses looked up at once (PTR and forward confirmation)",
        parse_size,
    ),
    "parse_workers": Setting(
        "RUA_SINK_PARSE_WORKERS",
        "auto",
        "worker processes that parse the records of large aggregate reports "
        "(auto: one per CPU, and one more; 0: parse in the receiving process)",
        _workers,
    ),
    "event_loop": Setting(
        "RUA_SINK_EVENT_LOOP",
        "uvloop",
        "the event loop: uvloop (libuv, the faster) or asyncio (the standard library's)",
    ),
    "identify_interval": Setting(
        "RUA_SINK_IDENTIFY_INTERVAL",
        "300",
        "seconds between sweeps for source addresses not looked up yet or due again",
        float,
    ),
    "changes_interval": Setting(
        "RUA_SINK_CHANGES_INTERVAL",
        "60",
        "seconds between sweeps of change detection: new sources and services, pass ratios",
        float,
    ),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``SETTINGS`` describes, parsed; defaults come from there (``from_env({})``)."""

    smtp_listen: tuple[str, int]
    http_listen: tuple[str, int]
    hostname: str
    addresses: tuple[str, ...]
    dns_nameservers: tuple[str, ...]
    dns_timeout: float
    authorized_domains: tuple[str, ...]
    unauthorized: str
    require_authenticated: str
    auth_max_bytes: int
    failure_addresses: tuple[str, ...]
    failure_keep_body: bool
    failure_retention: timedelta
    tls_cert: str
    tls_key: str
    tls_reload_interval: float
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...]
    metrics_max_domains: int
    metrics_max_reporters: int
    max_sessions: int
    max_sessions_per_ip: int
    max_recipients: int
    idle_timeout: float
    data_timeout: float
    shutdown_grace: float
    services_file: str
    ip_databases: tuple[str, ...]
    identify_concurrency: int
    parse_workers: int
    event_loop: str
    identify_interval: float
    changes_interval: float
    limits: Limits

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, Any] = {name: s.value(env) for name, s in SETTINGS.items()}
        try:
            values["limits"] = Limits.from_env(env)
        except ValueError as exc:  # it names the variable
            raise ConfigError(str(exc)) from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for variable, reason in problems({f.name: getattr(self, f.name) for f in fields(self)}):
            raise ConfigError(f"{variable}: {reason}")


_POSITIVE = (
    "dns_timeout",
    "idle_timeout",
    "data_timeout",
    "identify_interval",
    "changes_interval",
    "tls_reload_interval",
)


def problems(values: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(variable, reason) for each parsed value ``Settings`` refuses; values missing from
    ``values`` (those that did not parse) are not judged."""
    choices = {
        "unauthorized": ("reject", "flag"),
        "require_authenticated": ("off", "flag", "reject"),
        "event_loop": ("uvloop", "asyncio"),
    }
    for name, allowed in choices.items():
        if name in values and values[name] not in allowed:
            words = ", ".join(allowed[:-1]) + " or " + allowed[-1]
            yield SETTINGS[name].env, f"must be {words}, not {values[name]!r}"
    cert, key = values.get("tls_cert"), values.get("tls_key")
    if cert is not None and key is not None and bool(cert) != bool(key):
        lone, other = ("tls_cert", "tls_key") if cert else ("tls_key", "tls_cert")
        yield SETTINGS[lone].env, f"set without {SETTINGS[other].env}: they go together"
    for name in ("addresses", "failure_addresses"):
        for address in values.get(name, ()):
            local, at, dom = address.rpartition("@")
            if not at or not local or not dom:
                yield SETTINGS[name].env, f"not an address or *@domain: {address!r}"
                break
    for name in _POSITIVE:
        if name in values and values[name] <= 0:
            yield SETTINGS[name].env, f"must be positive, not {values[name]:g}"


def names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Settings) if f.name != "limits")
