"""Settings from the environment, and the table of them in docs/configuration.md."""

from __future__ import annotations

import re

import pytest

from rua_sink.config import SETTINGS, Settings, names
from rua_sink.errors import ConfigError

from .conftest import readme_table


def test_readme_table_matches_the_settings() -> None:
    table = readme_table("settings")
    rows = re.findall(r"^\| `(RUA_SINK_\w+)` \| (`[^`]*`)? ?\| (.+) \|$", table, re.M)
    documented = {env: (default.strip("`"), meaning) for env, default, meaning in rows}
    assert documented == {s.env: (s.default, s.help) for s in SETTINGS.values()}
    assert set(SETTINGS) == set(names())


def test_defaults_and_parsing() -> None:
    s = Settings.from_env({})
    assert s.smtp_listen == ("0.0.0.0", 2525) and s.http_listen == ("0.0.0.0", 9102)
    assert s.unauthorized == "reject" and s.addresses == ()
    s = Settings.from_env(
        {
            "RUA_SINK_SMTP_LISTEN": "[::1]:25",
            "RUA_SINK_ADDRESSES": "DMARC@rua.example.net, *@reports.example.net",
            "RUA_SINK_MAX_MESSAGE_BYTES": "16MiB",
            "RUA_SINK_UNAUTHORIZED": "flag",
        }
    )
    assert s.smtp_listen == ("::1", 25)
    assert s.addresses == ("dmarc@rua.example.net", "*@reports.example.net")
    assert s.limits.max_message_bytes == 16 * 2**20
    assert s.unauthorized == "flag"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUA_SINK_UNAUTHORIZED", "maybe"),
        ("RUA_SINK_SMTP_LISTEN", "2525"),
        ("RUA_SINK_ADDRESSES", "not-an-address"),
        ("RUA_SINK_TLS_CERT", "/etc/cert.pem"),
        ("RUA_SINK_DNS_TIMEOUT", "0"),
        ("RUA_SINK_MAX_SESSIONS", "lots"),
    ],
)
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({name: value})
