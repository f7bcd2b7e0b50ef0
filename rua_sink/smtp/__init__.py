"""SMTP: the aiosmtpd session, the DATA reader, the replies; and the sending client."""
