"""The reply table: every delivery status has its reply, and no reply leaks detail."""

from __future__ import annotations

import re

from rua_sink.outcomes import DeliveryStatus, ReplyReason
from rua_sink.smtp import replies


def test_every_delivery_status_has_a_reply() -> None:
    assert set(replies.REPLIES) == set(DeliveryStatus)


def test_replies_carry_a_code_and_an_enhanced_code() -> None:
    texts = [v for k, v in vars(replies).items() if k.startswith("REPLY_")]
    assert len(texts) >= 25
    for text in texts:
        code = text[:3]
        assert re.fullmatch(r"[2-5]\d\d", code), text
        if code != "354":  # RFC 3463 3: no enhanced code on an intermediate reply
            assert text[4:5] == code[0] and re.match(r"\d\.\d{1,3}\.\d{1,3} ", text[4:]), text


def test_the_reason_counted_matches_the_reply_class() -> None:
    for status, (text, reason) in replies.REPLIES.items():
        refused = text[0] != "2"
        stored = reason in {
            ReplyReason.STORED,
            ReplyReason.DUPLICATE,
            ReplyReason.QUARANTINED,
            ReplyReason.UNSIGNED,
            ReplyReason.REPROCESSED,
            ReplyReason.POSTMASTER,
        }
        assert refused != stored, status
