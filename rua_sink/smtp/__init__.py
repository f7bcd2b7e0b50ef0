"""SMTP: ``session`` (the aiosmtpd protocol), ``data`` (the DATA reader and its spool),
``policy`` (addresses, connection limits), ``handler`` (RCPT, the hand-over of each message
to ``ingest.delivery``), ``replies`` (every reply, one table); and ``client`` (rua-sink send)."""
