"""Settings that describe themselves: ``rua-sink serve --help`` lists every variable from the
tables the program reads, and ``rua-sink config`` shows each one's value now, run as the real
command."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from rua_sink.config import SETTINGS
from rua_sink.core.limits import HELP, Limits
from rua_sink.storage.database import VARIABLES

from .conftest import readme_table
from .procs import CLI

#: Every variable rua-sink reads: the settings, the limits, the database's.
EVERY = (
    [s.env for s in SETTINGS.values()]
    + ["RUA_SINK_" + name.upper() for name in Limits.names()]
    + [name for name, _, _ in VARIABLES]
)


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``rua-sink ARGS`` with no RUA_SINK_* variable but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUA_SINK_")}
    return subprocess.run(
        [*CLI, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(stdout: str) -> dict[str, dict[str, object]]:
    return {row["variable"]: row for row in map(json.loads, stdout.splitlines())}


def test_serve_help_lists_every_variable_with_its_default_and_meaning() -> None:
    done = run("serve", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse keeps our lines; compare without wraps
    for setting in SETTINGS.values():
        head = setting.env + (f" (default: {setting.default})" if setting.default else "")
        assert head in text, head
        assert " ".join(setting.help.split()) in text, setting.env
    assert "RUA_SINK_MAX_MESSAGE_BYTES (default: 64MiB) raw message size" in text
    assert "RUA_SINK_MAX_RECORDS (default: 5000000) records of one aggregate report" in text
    for name, _, meaning in VARIABLES:
        assert f"{name} {meaning}" in text, name
    for variable in EVERY:
        assert re.search(rf"^    {variable}\b", done.stdout, re.M), variable


def test_limit_meanings_are_the_docs_words() -> None:
    table = readme_table("limits")
    documented = dict(
        re.findall(r"^\| `(\w+)` \| `RUA_SINK_\w+` \| [^|]+ \| (.+) \|$", table, re.M)
    )
    assert documented == HELP
    assert set(HELP) == set(Limits.names())


def test_config_shows_values_sources_and_defaults() -> None:
    done = run(
        "config",
        "--json",
        RUA_SINK_DNS_TIMEOUT="2.5",
        RUA_SINK_MAX_RECORDS="1000",
        RUA_SINK_DATABASE_URL="postgresql://rua:s3cret-pw@db.example:5432/rua?sslmode=require",
    )
    assert done.returncode == 0, done.stderr
    got = rows(done.stdout)
    assert list(got) == EVERY
    assert got["RUA_SINK_DNS_TIMEOUT"] | {"help": None} == {
        "variable": "RUA_SINK_DNS_TIMEOUT",
        "group": "setting",
        "value": "2.5",
        "source": "env",
        "default": "5",
        "valid": True,
        "error": None,
        "help": None,
    }
    assert (got["RUA_SINK_SMTP_LISTEN"]["value"], got["RUA_SINK_SMTP_LISTEN"]["source"]) == (
        "0.0.0.0:2525",
        "default",
    )
    assert got["RUA_SINK_MAX_RECORDS"]["value"] == "1000"
    assert got["RUA_SINK_MAX_MESSAGE_BYTES"]["default"] == "64MiB"
    assert got["RUA_SINK_DATABASE_URL"]["value"] == (
        "postgresql://rua:***@db.example:5432/rua?sslmode=require"
    )
    assert "s3cret-pw" not in done.stdout + done.stderr

    text = run("config", RUA_SINK_DATABASE_URL="postgresql://rua:s3cret-pw@db/rua")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["VARIABLE", "VALUE", "SOURCE", "DEFAULT"]
    assert "PROBLEM" not in lines[0]
    assert "s3cret-pw" not in text.stdout
    (url,) = [line for line in lines if line.startswith("RUA_SINK_DATABASE_URL ")]
    assert url.split() == ["RUA_SINK_DATABASE_URL", "postgresql://rua:***@db/rua", "env", "-"]
    # Aligned: every row's value starts where the header's VALUE does.
    at = lines[0].index("VALUE")
    assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines[1:])


def test_config_marks_invalid_values_with_the_reason_and_exits_2(tmp_path: object) -> None:
    done = run(
        "config",
        RUA_SINK_DNS_TIMEOUT="abc",
        RUA_SINK_UNAUTHORIZED="maybe",
        RUA_SINK_TLS_CERT="/etc/cert.pem",
        RUA_SINK_MAX_RECORDS="0",
        RUA_SINK_DATABASE_URL_FILE="/nonexistent/url",
        RUA_SINK_ADRESSES="dmarc@example.net",
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert lines["VARIABLE"].split()[-1] == "PROBLEM"
    assert lines["RUA_SINK_DNS_TIMEOUT"].endswith("invalid: not a number: 'abc'")
    assert lines["RUA_SINK_UNAUTHORIZED"].endswith("invalid: must be reject or flag, not 'maybe'")
    assert lines["RUA_SINK_TLS_CERT"].endswith(
        "invalid: set without RUA_SINK_TLS_KEY: they go together"
    )
    assert lines["RUA_SINK_MAX_RECORDS"].endswith("invalid: must be positive: '0'")
    assert "invalid: cannot read it" in lines["RUA_SINK_DATABASE_URL_FILE"]
    assert lines["RUA_SINK_SMTP_LISTEN"].endswith("-")  # valid rows have no problem
    assert done.stderr.splitlines() == [
        "rua-sink: RUA_SINK_ADRESSES is not a setting rua-sink reads "
        "(did you mean RUA_SINK_ADDRESSES?)",
        "rua-sink: invalid: RUA_SINK_DNS_TIMEOUT, RUA_SINK_UNAUTHORIZED, RUA_SINK_TLS_CERT, "
        "RUA_SINK_MAX_RECORDS, RUA_SINK_DATABASE_URL_FILE",
    ]
    as_json = run("config", "--json", RUA_SINK_DNS_TIMEOUT="abc")
    assert as_json.returncode == 2
    bad = rows(as_json.stdout)["RUA_SINK_DNS_TIMEOUT"]
    assert (bad["valid"], bad["error"]) == (False, "not a number: 'abc'")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RUA_SINK_DNS_TIMEOUT", "abc", "RUA_SINK_DNS_TIMEOUT: not a number: 'abc'"),
        ("RUA_SINK_MAX_SESSIONS", "lots", "RUA_SINK_MAX_SESSIONS: not a size or count: 'lots'"),
        ("RUA_SINK_SMTP_LISTEN", "2525", "RUA_SINK_SMTP_LISTEN: not host:port: '2525'"),
        ("RUA_SINK_PARSE_WORKERS", "many", "RUA_SINK_PARSE_WORKERS: not a number or auto: 'many'"),
        ("RUA_SINK_MAX_RECORDS", "-1", "RUA_SINK_MAX_RECORDS: not a size or count: '-1'"),
        (
            "RUA_SINK_ADDRESSES",
            "dmarc",
            "RUA_SINK_ADDRESSES: not an address or *@domain: 'dmarc'",
        ),
    ],
)
def test_a_bad_setting_names_its_variable(variable: str, value: str, message: str) -> None:
    # check-auth reads every setting before it does anything.
    done = run("check-auth", "example.com", "--rua", "dmarc@example.net", **{variable: value})
    assert (done.returncode, done.stderr, done.stdout) == (2, f"rua-sink: {message}\n", "")
