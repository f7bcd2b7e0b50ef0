"""The STARTTLS certificate: loaded once into an SSLContext every session reuses, and
reloaded when its files change.

Kubernetes updates a mounted Secret by writing a new timestamped directory and renaming a
``..data`` symlink over the old one; cert-manager renews a certificate that way, and a
person may edit the Secret by hand. So the files are read again every
RUA_SINK_TLS_RELOAD_INTERVAL seconds and compared by content (a digest of both files,
through whatever symlinks they are): a changed pair is loaded into a new context, which new
sessions get; a session keeps the context it was created with (RFC 3207 4.2: its TLS
state is its own until it ends).

A pair that does not load (a certificate with another key, a half-written file) is never
served: the last good context stays, and the failure is logged and counted once per change
of the files. Without any good pair at start, ``serve`` stops with one line naming the
settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rua_sink import logs
from rua_sink.errors import ConfigError

log = logs.get("rua_sink.smtp")

#: Attempts at the first load when the files change while they are read.
_START_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Served:
    """A pair that loaded: its context, and what the metrics and logs say about it."""

    context: ssl.SSLContext
    not_after: float  # the leaf certificate's notAfter, POSIX seconds
    serial: int


class Unsettled(Exception):
    """The files changed while they were read: a swap in progress, read again later."""


def _digest(cert: Path, key: Path) -> bytes:
    h = hashlib.sha256()
    for path in (cert, key):
        data = path.read_bytes()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def load(cert: Path, key: Path) -> tuple[bytes, Served]:
    """The pair's digest and its context; OSError, ssl.SSLError or ValueError if it does not
    load, Unsettled if the files changed meanwhile."""
    before = _digest(cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # OpenSSL checks here that the key is the certificate's (SSL_CTX_check_private_key).
    context.load_cert_chain(cert, key)
    # Imported here, not at the top: a server without STARTTLS does not pay for it (about
    # 8 MiB of RSS).
    from cryptography import x509  # noqa: PLC0415

    # The leaf is the first certificate of the chain file, as OpenSSL takes it.
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    if _digest(cert, key) != before:
        raise Unsettled
    served = Served(context, leaf.not_valid_after_utc.timestamp(), leaf.serial_number)
    return before, served


def _reason(exc: BaseException) -> str:
    """One line: OpenSSL's reason, or the file error."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class Certificate:
    """The context STARTTLS serves, kept current with RUA_SINK_TLS_CERT and RUA_SINK_TLS_KEY."""

    def __init__(
        self,
        cert: str,
        key: str,
        *,
        on_loaded: Callable[[float], None] = lambda not_after: None,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.on_loaded = on_loaded
        self.on_failure = on_failure
        #: The digest of the files last looked at, good or bad: a bad pair is reported once.
        self._seen: bytes | None = None
        self.served: Served | None = None

    @property
    def context(self) -> ssl.SSLContext | None:
        return self.served.context if self.served is not None else None

    def start(self) -> None:
        """The first load; ConfigError naming the settings if the pair does not load."""
        for _ in range(_START_ATTEMPTS):
            try:
                self._take(*load(self.cert, self.key))
            except Unsettled:
                continue
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"RUA_SINK_TLS_CERT={self.cert} and RUA_SINK_TLS_KEY={self.key} "
                    f"do not load: {_reason(exc)}"
                ) from exc
            return
        raise ConfigError(
            f"RUA_SINK_TLS_CERT={self.cert} and RUA_SINK_TLS_KEY={self.key} "
            "kept changing while being read"
        )

    def check(self) -> bool:
        """Loads the files if they changed since last looked at; True if a new pair is
        now served."""
        try:
            if _digest(self.cert, self.key) == self._seen:
                return False
            digest, served = load(self.cert, self.key)
        except Unsettled:
            return False  # mid-swap: the next check sees the files settled
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed(exc)
            return False
        self._take(digest, served)
        return True

    def _failed(self, exc: BaseException) -> None:
        try:
            digest: bytes | None = _digest(self.cert, self.key)
        except OSError:
            digest = b"unreadable"  # a missing file counts as one change, until it returns
        if digest == self._seen:
            return
        self._seen = digest
        self.on_failure()
        log.error(
            "tls_reload_failed",
            cert=str(self.cert),
            key=str(self.key),
            error=_reason(exc),
            serving_serial=f"{self.served.serial:x}" if self.served else None,
        )

    def _take(self, digest: bytes, served: Served) -> None:
        self._seen = digest
        self.served = served
        self.on_loaded(served.not_after)
        log.info("tls_certificate_loaded", serial=f"{served.serial:x}", not_after=served.not_after)

    async def watch(self, interval: float) -> None:
        """Checks the files every ``interval`` seconds, until cancelled. The files are small
        and local: read on the loop."""
        while True:
            await asyncio.sleep(interval)
            self.check()
