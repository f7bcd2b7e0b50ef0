"""Every command fails in one line, never a traceback, with the exit status of
docs/commands.md ("Exit status"): bad input, missing files, an unreachable server or
database, each through the real command."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import corpus
from .pg import fetch
from .procs import CLI, cli
from .smtpserver import free_port

AGGREGATE = (
    "georgestarcher__dmarcgo/testdata/fixtures/"
    "amazonses.com!georgestarcher.com!1518134400!1518220800.xml.gz"
)
PASSWORD = "hunter2-secret"


def down_url() -> str:
    """A database URL, with a password, of a port nothing listens on."""
    return f"postgresql://rua:{PASSWORD}@127.0.0.1:{free_port()}/rua"


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The one line on stderr of a command that ended with ``status``."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def truncated(tmp_path: Path) -> Path:
    data = corpus(AGGREGATE).read_bytes()
    path = tmp_path / "damaged.xml.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("messages",),
        ("raw", "1"),
        ("report", "example.com"),
        ("identify",),
        ("prune", "--older-than", "400d"),
        ("migrate",),
        ("reprocess",),
        ("ingest", "__corpus__"),
    ],
)
def test_a_database_that_is_down_is_named_without_its_password(args: tuple[str, ...]) -> None:
    url = down_url()
    args = tuple(str(corpus(AGGREGATE)) if a == "__corpus__" else a for a in args)
    done = cli(*args, env={"RUA_SINK_DATABASE_URL": url})
    line = one_line(done, 2)
    assert line.startswith(f"rua-sink: cannot use the database at {url.replace(PASSWORD, '***')}: ")
    assert "RUA_SINK_DATABASE_URL" in line
    assert PASSWORD not in done.stderr + done.stdout


def test_serve_with_the_database_down_says_so_too() -> None:
    env = {
        "RUA_SINK_DATABASE_URL": down_url(),
        "RUA_SINK_ADDRESSES": "dmarc@example.net",
        "RUA_SINK_SMTP_LISTEN": f"127.0.0.1:{free_port()}",
        "RUA_SINK_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
    }
    line = one_line(cli("serve", env=env, timeout=60), 2)
    assert line.startswith("rua-sink: cannot use the database at postgresql://rua:***@127.0.0.1:")


def test_serve_names_the_setting_of_a_port_it_cannot_listen_on(db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "RUA_SINK_DATABASE_URL": db,
            "RUA_SINK_ADDRESSES": "dmarc@example.net",
            "RUA_SINK_SMTP_LISTEN": f"127.0.0.1:{port}",
            "RUA_SINK_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
            "RUA_SINK_PARSE_WORKERS": "0",
        }
        done = cli("serve", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"rua-sink: RUA_SINK_SMTP_LISTEN: cannot listen on 127.0.0.1:{port}: "
    )


def test_send_names_the_address_it_tried_and_what_chooses_it() -> None:
    port = free_port()
    done = cli(
        "send",
        str(corpus(AGGREGATE)),
        "--to",
        "dmarc@example.net",
        env={"RUA_SINK_SMTP_LISTEN": f"0.0.0.0:{port}"},
    )
    line = one_line(done, 2)
    assert line.startswith(f"rua-sink: cannot deliver to 127.0.0.1:{port}: Connection refused")
    assert "--server HOST:PORT or RUA_SINK_SMTP_LISTEN" in line
    other = free_port()
    done = cli(
        "send", str(corpus(AGGREGATE)), "--to", "a@example.net", "--server", f"[::1]:{other}"
    )
    assert f"cannot deliver to [::1]:{other}: " in one_line(done, 2)
    helped = cli("send", "--help")
    assert "default: RUA_SINK_SMTP_LISTEN's address" in " ".join(helped.stdout.split())
    assert "127.0.0.1:2525" in helped.stdout


def test_send_refuses_a_damaged_or_missing_file_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    damaged = truncated(tmp_path)
    line = one_line(
        cli("send", str(damaged), "--to", "a@example.net", "--server", f"127.0.0.1:{port}"), 2
    )
    assert line == (
        f"rua-sink: {damaged}: truncated_archive: compressed stream ends before its end marker"
    )
    # parse says the same, as a JSON line.
    parsed = cli("parse", str(damaged))
    assert parsed.returncode == 1
    assert json.loads(parsed.stdout)["error"] == "truncated_archive"
    missing = tmp_path / "missing.xml"
    line = one_line(cli("send", str(missing), "--to", "a@example.net"), 2)
    assert line == f"rua-sink: {missing}: no such file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("messages", "--limit", "0"), "argument --limit: not a positive whole number: '0'"),
        (("report", "a..example"), "argument DOMAIN: not a domain name: 'a..example'"),
        (("report", "example.com", "--days", "-3"), "not a positive whole number: '-3'"),
        (("report", "example.com", "--since", "June"), "not a date (YYYY-MM-DD): 'June'"),
        (("identify", "--limit", "x"), "argument --limit: not a positive whole number: 'x'"),
        (("check-auth", "example.com", "--rua", "dmarc"), "not an email address: 'dmarc'"),
        (("send", "f.xml", "--to", "a@b.example", "--server", "here"), "not HOST:PORT: 'here'"),
        (("prune", "--older-than", "soon"), "not a duration (e.g. 400d, 12w, 18m, 2y): 'soon'"),
        (("raw", "one"), "argument RAW_MESSAGE_ID: invalid int value: 'one'"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    done = cli(*args, env={"RUA_SINK_DATABASE_URL": down_url()})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].endswith(message), done.stderr


def test_a_bad_limit_flag_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    path.write_text("<feedback/>")
    line = one_line(cli("parse", "--limit", "max_records", str(path)), 2)
    assert line == "rua-sink: --limit takes NAME=VALUE, not 'max_records'"
    line = one_line(cli("parse", "--limit", "max_records=many", str(path)), 2)
    assert line == "rua-sink: --limit: not a size or count: 'many'"
    line = one_line(cli("parse", str(path), env={"RUA_SINK_MAX_RECORDS": "many"}), 2)
    assert line == "rua-sink: RUA_SINK_MAX_RECORDS: not a size or count: 'many'"


def test_check_auth_without_dns_names_the_resolver_and_exits_2() -> None:
    port = free_port()  # nothing answers there: the lookups time out
    done = cli(
        "check-auth",
        "example.com",
        "--rua",
        "dmarc@rua.example.net",
        env={"RUA_SINK_DNS_NAMESERVERS": f"127.0.0.1:{port}", "RUA_SINK_DNS_TIMEOUT": "0.5"},
    )
    line = one_line(done, 2)
    assert line.startswith(
        f"rua-sink: DNS did not answer (127.0.0.1:{port}; RUA_SINK_DNS_NAMESERVERS"
    )
    assert json.loads(done.stdout)["verdict"] == "temporary_error"


def test_ingest_goes_on_past_a_path_it_cannot_read_and_exits_1(db: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.eml"
    done = cli("ingest", str(missing), str(corpus(AGGREGATE)), env={"RUA_SINK_DATABASE_URL": db})
    line = one_line(done, 1)
    assert line == f"rua-sink: cannot read {missing}: No such file or directory"
    assert re.search(r"^reports stored +1$", done.stdout, re.M), done.stdout
    assert re.search(rf"^NOT READ +WHY\n{re.escape(str(missing))} +No such file", done.stdout, re.M)
    assert fetch(db, "SELECT count(*) AS n FROM aggregate_reports")[0]["n"] == 1
    as_json = cli("ingest", "--json", str(missing), env={"RUA_SINK_DATABASE_URL": db})
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["unreadable"] == [
        {"source": str(missing), "detail": "No such file or directory"}
    ]


def test_unknown_raw_message_ids_exit_1(db: str) -> None:
    env = {"RUA_SINK_DATABASE_URL": db}
    assert one_line(cli("raw", "424242", env=env), 1) == "rua-sink: no raw message 424242"
    done = cli("reprocess", "424242", "--json", env=env)
    assert one_line(done, 1) == "rua-sink: no raw message 424242"
    assert json.loads(done.stdout)["messages"] == 0


def test_a_closed_pipe_ends_quietly(db: str) -> None:
    # `rua-sink config | head -1`: the reader goes away; no traceback about the pipe.
    with subprocess.Popen([*CLI, "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=30)
    assert "Traceback" not in err and "BrokenPipe" not in err
