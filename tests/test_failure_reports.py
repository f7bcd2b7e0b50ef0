"""Failure reports (ARF) at their own addresses, through `rua-sink serve`: every corpus
ARF email stored with its fields, the reported message's body left out of the archive,
and a retention of their own."""

from __future__ import annotations

import email
import email.message
import email.policy
import gzip
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from rua_sink.core.failure import alignment_reading

from .conftest import corpus
from .procs import cli
from .smtpserver import RUA, Server, running_alone, send

RUF = "ruf@failures.example.net"

#: (file, feedback type, source IP, reported domain, arrival, DKIM domain, identity,
#:  selector), read off the files
ARF = [
    ("001.eml", "abuse", None, None, None, None, None, None),
    ("002.eml", "abuse", "192.0.2.1", "example.net", "2005-03-08T18:00:00+00:00", None, None, None),
    (
        "003.eml",
        "auth-failure",
        "192.0.2.1",
        "example.net",
        "2010-04-14T19:15:31+00:00",
        "example.net",
        None,
        None,
    ),
    ("004.eml", "auth-failure", "148.163.85.135", "interpublication.org", None, None, None, None),
    (
        "005.eml",
        "auth-failure",
        "192.0.2.1",
        "a.sender.example",
        "2011-10-08T20:15:58+00:00",
        "sender.example",
        "@sender.example",
        "testkey",
    ),
]
ARF_DIR = "stalwartlabs__mail-auth/resources/arf/"

ROW_SQL = """
SELECT f.*, m.id AS raw_id, m.content_gzip, m.redacted, m.rcpt_to FROM failure_reports f
JOIN raw_messages m ON m.id = f.raw_message_id WHERE m.sha256 = sha256($1::bytea)
"""


def arf(name: str) -> bytes:
    """A corpus ARF email with CRLF line ends, as SMTP carries it."""
    data = corpus(ARF_DIR + name).read_bytes()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def original_body_lines(data: bytes) -> list[str]:
    """Lines of the reported message's body (the ARF's third part), if it has one."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            assert isinstance(payload, list)
            (inner,) = payload
            assert isinstance(inner, email.message.Message)
            text = inner.get_payload(decode=False)
            if isinstance(text, str):
                # body text, not the header fields of a part nested in it
                return [
                    line
                    for line in text.splitlines()
                    if len(line.strip()) > 8 and not re.match(r"[\w-]+:|--|\s", line)
                ]
    return []


@contextmanager
def failure_sink(server_url: str, prefix: str) -> Iterator[Server]:
    """``rua-sink serve`` taking failure reports at RUF from every domain, on a database of
    its own: a failure report stored by another module's test (the corpus, backfilled)
    would make these copies duplicates, stored under other bytes."""
    with running_alone(
        server_url, prefix, RUA_SINK_FAILURE_ADDRESSES=RUF, RUA_SINK_AUTHORIZED_DOMAINS="*"
    ) as (srv, _):
        yield srv


def emptied(server: Server) -> Server:
    """The server, its database emptied of messages and failure reports."""
    server.fetch("TRUNCATE failure_reports, raw_messages RESTART IDENTITY CASCADE")
    return server


@pytest.fixture(scope="module")
def ruf_server(server_url: str) -> Iterator[Server]:
    with failure_sink(server_url, "rua_sink_failure") as srv:
        yield srv


@pytest.mark.parametrize(
    ("name", "kind", "ip", "domain", "arrived", "dkim_domain", "identity", "selector"), ARF
)
def test_every_corpus_arf_email_is_stored_with_its_fields(
    ruf_server: Server,
    name: str,
    kind: str,
    ip: str | None,
    domain: str | None,
    arrived: str | None,
    dkim_domain: str | None,
    identity: str | None,
    selector: str | None,
) -> None:
    data = arf(name)
    code, reply = send(ruf_server, data, rcpt=RUF)
    assert (code, reply.split()[0]) == (250, "2.0.0")
    (row,) = ruf_server.fetch(ROW_SQL, data)
    assert row["rcpt_to"] == [RUF]
    assert row["feedback_type"] == kind
    assert (str(row["source_ip"]) if row["source_ip"] else None) == ip
    assert (row["reported_domains"][:1] or [None])[0] == domain
    assert (row["arrived_at"].isoformat() if row["arrived_at"] else None) == arrived
    assert (row["dkim_domain"], row["dkim_identity"], row["dkim_selector"]) == (
        dkim_domain,
        identity,
        selector,
    )
    assert row["authz_verdict"] == ("allow_list" if domain else None)
    assert row["authenticated"] is False  # the corpus's senders publish nothing here
    assert row["original_headers"] and "From:" in row["original_headers"]
    fields = dict(json.loads(row["fields"]))
    assert fields["Feedback-Type"].lower() == kind
    # Privacy (RFC 9991 7): the archive keeps the headers, not the reported message's body.
    assert row["redacted"] is True
    archived = gzip.decompress(row["content_gzip"])
    for line in original_body_lines(data):
        assert line.encode() not in archived, line
    assert "DKIM-Canonicalized-Body" not in fields


def test_a_redacted_message_reprocesses_to_the_same_report(ruf_server: Server) -> None:
    data = arf("005.eml")
    send(ruf_server, data, rcpt=RUF)
    (before,) = ruf_server.fetch(ROW_SQL, data)
    env = {"RUA_SINK_DATABASE_URL": ruf_server.database_url}
    done = cli("reprocess", str(before["raw_id"]), "--json", env=env)
    assert done.returncode == 0, done.stderr
    (after,) = ruf_server.fetch(ROW_SQL, data)
    keys = ("feedback_type", "source_ip", "reported_domains", "arrived_at", "dkim_selector")
    assert [after[k] for k in keys] == [before[k] for k in keys]
    assert after["original_headers"].split() == before["original_headers"].split()
    assert after["id"] != before["id"]  # parsed again, from the archived copy


def test_failure_reports_kept_whole_when_configured(server_url: str) -> None:
    data = arf("003.eml")
    with running_alone(
        server_url,
        "rua_sink_failure_whole",
        RUA_SINK_FAILURE_ADDRESSES=RUF,
        RUA_SINK_AUTHORIZED_DOMAINS="*",
        RUA_SINK_FAILURE_KEEP_BODY="true",
    ) as (srv, _):
        assert send(srv, data, rcpt=RUF)[0] == 250
        (row,) = srv.fetch(ROW_SQL, data)
    assert row["redacted"] is False
    assert gzip.decompress(row["content_gzip"]) == data


def test_only_configured_addresses_take_failure_reports(ruf_server: Server) -> None:
    data = arf("002.eml")
    assert send(ruf_server, data, rcpt="ruf@elsewhere.example")[0] == 550
    assert send(ruf_server, data, rcpt="other@failures.example.net")[0] == 550
    assert send(ruf_server, data, rcpt=RUA)[0] == 250  # report addresses take them too


def test_failure_reports_have_a_retention_of_their_own(ruf_server: Server) -> None:
    data = arf("004.eml")
    send(ruf_server, data, rcpt=RUF)
    ruf_server.fetch(
        "UPDATE failure_reports SET stored_at = now() - interval '40 days' "
        "WHERE raw_message_id = (SELECT id FROM raw_messages WHERE sha256 = sha256($1::bytea))",
        data,
    )
    env = {"RUA_SINK_DATABASE_URL": ruf_server.database_url, "RUA_SINK_FAILURE_RETENTION": "30d"}
    aggregates = "SELECT count(*) AS n FROM aggregate_reports"
    kept = ruf_server.fetch(aggregates)[0]["n"]
    done = cli("prune", "--older-than", "100y", env=env)  # only failure reports are due
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["failure_reports"] >= 1
    cutoff = datetime.fromisoformat(summary["failure_cutoff"])
    assert 29 < (datetime.now(UTC) - cutoff).days <= 30
    assert ruf_server.fetch(ROW_SQL, data) == []
    assert (
        ruf_server.fetch("SELECT 1 FROM raw_messages WHERE sha256 = sha256($1::bytea)", data) == []
    )
    assert ruf_server.fetch(aggregates)[0]["n"] == kept  # other reports keep their retention


def test_identity_alignment_and_the_spec_it_follows(ruf_server: Server) -> None:
    # A DMARC failure report listing mechanisms can only be RFC 9991's reading.
    template = arf("004.eml")
    for value, spec, failed in (
        ("dkim, spf", "rfc9991", ["dkim", "spf"]),
        ("none", "rfc7489", ["dkim", "spf"]),
    ):
        data = template.replace(
            b"Auth-Failure: dmarc", f"Auth-Failure: dmarc\r\nIdentity-Alignment: {value}".encode()
        )
        assert data != template
        assert send(ruf_server, data, rcpt=RUF)[0] == 250
        (row,) = ruf_server.fetch(ROW_SQL, data)
        assert (row["identity_alignment"], row["alignment_spec"], row["alignment_failed"]) == (
            value,
            spec,
            failed,
        )


def test_alignment_reading() -> None:
    assert alignment_reading(None, "dmarc") == (None, None)
    assert alignment_reading("none", "dmarc") == ("rfc7489", ("dkim", "spf"))
    assert alignment_reading("dkim", "dmarc") == ("rfc9991", ("dkim",))
    assert alignment_reading("SPF", "dmarc") == ("rfc9991", ("spf",))
    assert alignment_reading("none", "bodyhash") == ("rfc7489", ("dkim", "spf"))
    assert alignment_reading("dkim", "bodyhash") == (None, None)  # fits both readings
