"""What the archive keeps of a failure report's message: by default, not the reported
message's body (RFC 9991 7), only its header fields."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from rua_sink.core.failure import exim_text
from rua_sink.core.model import FailureReport

#: Feedback fields that carry the reported message's body (RFC 6591 3.1)
_BODY_FIELDS = frozenset(("dkim-canonicalized-body",))


def without_body(report: FailureReport) -> FailureReport:
    """The report without the fields that quote the reported message's body."""
    fields = tuple(f for f in report.fields if f[0].lower() not in _BODY_FIELDS)
    return report if len(fields) == len(report.fields) else replace(report, fields=fields)


_MIME_FIELDS = (b"content-type:", b"content-transfer-encoding:", b"mime-version:")


def redacted_copy(headers: list[bytes], report: FailureReport) -> bytes:
    """What the archive keeps of a failure report's message (RFC 9991 7, RFC 6590): its
    own header fields and an ARF body with the feedback fields and the reported
    message's header fields (Exim's text, for its reports), but not that message's
    body. It parses to the same report."""
    kept: list[bytes] = []
    skipping = False
    for line in headers:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(_MIME_FIELDS)
        if not skipping:
            kept.append(line)
    fields = "\r\n".join(f"{k}: {v}" for k, v in report.fields)
    original = (report.original_headers or "").replace("\r\n", "\n").replace("\n", "\r\n")
    boundary = "rua-sink-redacted-" + hashlib.sha256(fields.encode()).hexdigest()[:16]
    if report.report_format == "exim":
        # Exim's report is its text part alone, written again from what was read of it.
        body = (
            f'MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{exim_text(report)}--{boundary}--\r\n"
        )
    else:
        body = (
            f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; "
            f'boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "The reported message's body was removed on receipt; its header fields are kept.\r\n"
            f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n{fields}\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{original.rstrip()}\r\n"
            f"--{boundary}--\r\n"
        )
    return b"\r\n".join(kept) + b"\r\n" + body.encode("utf-8", "surrogateescape")
