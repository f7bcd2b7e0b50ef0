"""The closed vocabulary of rua-sink: every set of words that travels between the parts.

Each is a ``StrEnum`` whose values are what the database, the logs, the metric labels and
the JSON output hold, so a value is written in one place and a new one is a new member.
The core's own vocabulary (``Reason`` of a failed part, and the report model's enums, among
them the DMARC result ``core.model.Verdict``, pass or fail) is in ``rua_sink.errors`` and
``rua_sink.core.model``: the core imports nothing from here.
"""

from __future__ import annotations

from enum import StrEnum


class RawStatus(StrEnum):
    """What an archived message (``raw_messages.status``) was stored as."""

    STORED = "stored"  # its reports were stored
    QUARANTINED = "quarantined"  # a report-like part failed: kept with the reason
    NOT_A_REPORT = "not_a_report"  # nothing report-like in it


class Outcome(StrEnum):
    """What became of one message: the ingest's answer, which the SMTP reply, the log line
    and the summary of ``rua-sink ingest`` are made from."""

    STORED = "stored"  # at least one new report, nothing failed
    DUPLICATE = "duplicate"  # every report (or the very same message) was stored before
    QUARANTINED = "quarantined"  # a report-like part failed: raw message kept with the reason
    NOT_A_REPORT = "not_a_report"  # nothing report-like in the message


class DeliveryStatus(StrEnum):
    """What became of one message delivered by SMTP; each member is one reply (the table
    of ``smtp.replies``)."""

    STORED = "stored"  # new reports stored
    REPROCESSED = "reprocessed"  # stored before, not as reports, by an older parser
    DUPLICATE = "duplicate"  # every report was stored before
    DUPLICATE_KEPT = "duplicate_kept"  # the very bytes again, kept for review the first time
    QUARANTINED = "quarantined"  # no report could be parsed: kept for review
    PARTLY_QUARANTINED = "partly_quarantined"  # reports stored, a part kept for review
    UNSIGNED = "unsigned"  # a TLS report not signed by its reporter: kept for review
    NOT_A_REPORT = "not_a_report"  # nothing report-like, nothing kept
    POSTMASTER = "postmaster"  # nothing report-like, to the postmaster: kept
    # Refused: nothing stored.
    UNAUTHENTICATED = "unauthenticated"  # fails DMARC, AuthPolicy.REJECT
    AUTHENTICATION_TEMPERROR = "authentication_temperror"  # the same, DNS failed
    UNAUTHORIZED = "unauthorized"  # a policy domain has not authorized us
    DNS_UNAVAILABLE = "dns_unavailable"  # authorization or DKIM key lookup failed
    DATABASE_UNAVAILABLE = "database_unavailable"
    INTERNAL_ERROR = "internal_error"  # a bug: ``Delivered.error`` holds it


class Verdict(StrEnum):
    """The external-destination check of one report (RFC 9990 4), stored with it
    (``authz_verdict``)."""

    AUTHORIZED = "authorized"  # the destination's DNS says so
    SAME_ORGANIZATION = "same_organization"  # no check needed (RFC 7489 7.1)
    ALLOW_LIST = "allow_list"  # configured: RUA_SINK_AUTHORIZED_DOMAINS
    NOT_AUTHORIZED = "not_authorized"

    @property
    def allowed(self) -> bool:
        return self is not Verdict.NOT_AUTHORIZED


class ReplyReason(StrEnum):
    """Why a reply to a message (or to RCPT) was what it was."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    UNSIGNED = "unsigned_report"  # a TLS report kept for review: not signed by its reporter
    REPROCESSED = "reprocessed"  # stored before, not as reports, by an older parser
    NOT_A_REPORT = "not_a_report"
    POSTMASTER = "postmaster"
    UNAUTHORIZED = "unauthorized"
    UNAUTHENTICATED = "unauthenticated"
    DNS_UNAVAILABLE = "dns_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    NO_STORAGE = "no_storage"
    INTERNAL_ERROR = "internal_error"
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    BAD_SYNTAX = "bad_syntax"
    DATA_TIMEOUT = "data_timeout"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    TOO_MANY_CONNECTIONS = "too_many_connections"


class AuthPolicy(StrEnum):
    """What the checks of report mail decide (``RUA_SINK_REQUIRE_AUTHENTICATED``)."""

    OFF = "off"  # nothing checked or recorded; TLS reports need no signature
    FLAG = "flag"  # checked and recorded; unsigned TLS reports quarantined
    REJECT = "reject"  # as flag, and mail that fails DMARC is refused (550 5.7.1)
