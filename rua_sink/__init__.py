"""rua-sink: the MX for DMARC aggregate, SMTP TLS and DMARC failure reports."""

__version__ = "0.1.0"
