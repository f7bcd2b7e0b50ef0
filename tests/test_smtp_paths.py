"""MAIL and RCPT paths: the server reads plain ones itself and gives every other one to
aiosmtpd's parser; either way a path means what that parser makes of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from rua_sink.smtp.policy import plain_path

from .reports import report_message
from .smtpserver import RUA, Server, send, stored

ATEXT = "abcXYZ09!#$%&'*+/=?^_`{|}~-"
# Pieces that make paths plain, nearly plain, and not plain at all.
piece = st.sampled_from(
    [*ATEXT, ".", "..", "@", '"', "\\", " ", "\t", "(", ")", "[", "]", "<", ">", ",", ";", "é"]
)
text = st.lists(piece, max_size=12).map("".join)
path = st.one_of(
    st.builds(
        lambda lead, local, domain, tail: f"{lead}<{local}@{domain}>{tail}",
        st.sampled_from(["", " ", "\t", "  "]),
        text,
        text,
        st.one_of(text, st.sampled_from([" SIZE=1410", "  BODY=8BITMIME ", " (c) SIZE=1"])),
    ),
    text,
)


def aiosmtpd_reads(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    return SMTP._getaddr(SimpleNamespace(local_part_limit=local_part_limit), arg)  # type: ignore[arg-type]


@pytest.mark.slow
@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(arg=path, limit=st.sampled_from([0, 3, 64]))
def test_plain_paths_read_as_aiosmtpd_reads_them(arg: str, limit: int) -> None:
    plain = plain_path(arg, limit)
    if plain is not None:
        assert plain == aiosmtpd_reads(arg, limit)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<noreply-dmarc-support@google.com>", ("noreply-dmarc-support@google.com", "")),
        ("<dmarc@rua.example.net> SIZE=1410", ("dmarc@rua.example.net", "SIZE=1410")),
        (
            " <a.b+tag@mail.example.co.uk>  BODY=8BITMIME",
            ("a.b+tag@mail.example.co.uk", "BODY=8BITMIME"),
        ),
    ],
)
def test_what_senders_write_is_read_without_the_header_parser(
    arg: str, expected: tuple[str, str]
) -> None:
    assert plain_path(arg) == expected == aiosmtpd_reads(arg)


@pytest.mark.parametrize(
    "arg", ["<>", '<"a b"@example.com>', "<a@[192.0.2.1]>", "<a@b.c> (c) SIZE=1", "<a..b@c>"]
)
def test_other_paths_are_left_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None


def test_unusual_sender_paths_deliver(server: Server) -> None:
    for i, sender in enumerate(['"a b"@example.com', "x@[192.0.2.1]", ""]):
        code, _ = send(server, report_message(f"paths-{i}"), sender=sender)
        assert code == 250
        assert len(stored(server, f"paths-{i}")) == 1
    rcpt = RUA.upper()
    code, _ = send(server, report_message("paths-upper"), rcpt=rcpt)
    assert code == 250
