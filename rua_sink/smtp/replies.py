"""Every reply the SMTP server writes itself, and the one table from what became of a
message (``ingest.delivery.DeliveryStatus``) to its reply and ``ReplyReason``.

Reply codes follow SPEC.md's decision table (RFC 5321 4.2, RFC 3463 enhanced codes):

=====================================================  =========================
RCPT to an address that is not a report address        550 5.1.1 (never relays)
SIZE= or DATA over the limit                            552 5.3.4
a DATA line over max_line_bytes (bare LF ends a line)   500 5.5.2
a NUL or bytes that are not UTF-8 in HELO/EHLO          501 5.5.2
... in MAIL FROM, in RCPT TO                            501 5.1.7, 501 5.1.3
database unreachable, commit failed                     451 4.3.0
out of spool space                                      452 4.3.1
DNS temporary error during the authorization check      451 4.4.3
report for a domain that has not authorized us          550 5.7.1 (or stored, flagged)
mail failing DMARC, RUA_SINK_REQUIRE_AUTHENTICATED=reject 550 5.7.1 (451 4.4.3: DNS failed)
TLS report without a DKIM signature of its reporter     250, kept for review (RFC 8460 3)
no report-like part at all                              550 5.6.0
the same, to postmaster (RFC 5321 4.5.1)                250, kept as not_a_report
report-like part that fails to decompress or parse      250, quarantined
duplicate of a stored report                            250, stored once
internal error                                          451 4.3.0, no detail
=====================================================  =========================

A 250 is sent only after the message, its reports and their records are committed. No
reply says anything of an internal error.
"""

from __future__ import annotations

from rua_sink.ingest.delivery import Delivered
from rua_sink.outcomes import DeliveryStatus, ReplyReason

# After DATA: what became of the message
REPLY_STORED = "250 2.0.0 Report accepted"
REPLY_DUPLICATE = "250 2.0.0 Report already received, accepted"
REPLY_QUARANTINED = "250 2.0.0 Accepted; the report could not be parsed and is kept for review"
REPLY_PARTLY = "250 2.0.0 Accepted; a part could not be parsed and is kept for review"
REPLY_UNSIGNED = "250 2.0.0 Accepted; kept for review: not signed by its reporter"
REPLY_KEPT = "250 2.0.0 Already received; kept for review"
REPLY_REPROCESSED = "250 2.0.0 Report accepted; received before, now read again"
REPLY_NOT_A_REPORT = "550 5.6.0 No DMARC or TLS report found in this message"
REPLY_POSTMASTER = "250 2.0.0 Accepted for the postmaster"
REPLY_UNAUTHORIZED = "550 5.7.1 The report's domain has not authorized this destination"
REPLY_UNAUTHENTICATED = "550 5.7.1 The report's mail failed DMARC authentication"
REPLY_DNS = "451 4.4.3 Temporary DNS failure checking authorization, try again later"
REPLY_TEMPORARY = "451 4.3.0 Temporary failure, try again later"

# The DATA transfer
REPLY_START_DATA = "354 End data with <CR><LF>.<CR><LF>"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds the maximum"  # also to MAIL's SIZE=
REPLY_LINE_TOO_LONG = "500 5.5.2 Line too long"
REPLY_NO_STORAGE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_DATA_TIMEOUT = "451 4.4.2 Timeout waiting for the end of data"
REPLY_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
REPLY_DATA_SYNTAX = "501 5.5.4 Syntax: DATA"

# Commands: RFC 3463 3.6: X.5.2 syntax error; 3.2: X.1.7 bad sender's, X.1.3 bad
# destination mailbox address syntax
REPLY_RECIPIENT_OK = "250 2.1.5 Recipient OK"
REPLY_NO_SUCH_USER = "550 5.1.1 No such report address here"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_BAD_HELO = "501 5.5.2 Invalid characters in the host name"
REPLY_BAD_SENDER = "501 5.1.7 Invalid characters in the sender address"
REPLY_BAD_RECIPIENT = "501 5.1.3 Invalid characters in the recipient address"

#: The lines added to EHLO's reply. RFC 2034: the replies carry enhanced status codes.
#: RFC 2920: commands may come in groups (MAIL, RCPT and DATA in one packet, as large
#: senders send them); aiosmtpd reads them in turn from its buffer and answers each in
#: order.
EHLO_EXTENSIONS = ("250-ENHANCEDSTATUSCODES", "250-PIPELINING")

# The connection
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"
REPLY_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"

#: What became of a message -> the reply to its final dot, and the reason counted
REPLIES: dict[DeliveryStatus, tuple[str, ReplyReason]] = {
    DeliveryStatus.STORED: (REPLY_STORED, ReplyReason.STORED),
    DeliveryStatus.REPROCESSED: (REPLY_REPROCESSED, ReplyReason.REPROCESSED),
    DeliveryStatus.DUPLICATE: (REPLY_DUPLICATE, ReplyReason.DUPLICATE),
    DeliveryStatus.DUPLICATE_KEPT: (REPLY_KEPT, ReplyReason.DUPLICATE),
    DeliveryStatus.QUARANTINED: (REPLY_QUARANTINED, ReplyReason.QUARANTINED),
    DeliveryStatus.PARTLY_QUARANTINED: (REPLY_PARTLY, ReplyReason.QUARANTINED),
    DeliveryStatus.UNSIGNED: (REPLY_UNSIGNED, ReplyReason.UNSIGNED),
    DeliveryStatus.NOT_A_REPORT: (REPLY_NOT_A_REPORT, ReplyReason.NOT_A_REPORT),
    DeliveryStatus.POSTMASTER: (REPLY_POSTMASTER, ReplyReason.POSTMASTER),
    DeliveryStatus.UNAUTHENTICATED: (REPLY_UNAUTHENTICATED, ReplyReason.UNAUTHENTICATED),
    DeliveryStatus.AUTHENTICATION_TEMPERROR: (REPLY_DNS, ReplyReason.DNS_UNAVAILABLE),
    DeliveryStatus.UNAUTHORIZED: (REPLY_UNAUTHORIZED, ReplyReason.UNAUTHORIZED),
    DeliveryStatus.DNS_UNAVAILABLE: (REPLY_DNS, ReplyReason.DNS_UNAVAILABLE),
    DeliveryStatus.DATABASE_UNAVAILABLE: (REPLY_TEMPORARY, ReplyReason.DATABASE_UNAVAILABLE),
    DeliveryStatus.INTERNAL_ERROR: (REPLY_TEMPORARY, ReplyReason.INTERNAL_ERROR),
}


def reply_for(delivered: Delivered) -> tuple[str, ReplyReason]:
    """What the reply says happened to a message (docs/serve.md, the reply table)."""
    return REPLIES[delivered.status]
