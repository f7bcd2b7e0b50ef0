"""Who is behind a source address, as IP databases tell: its country and its network.

The operator names MaxMind-format (``.mmdb``) files in RUA_SINK_IP_DATABASES. Each is
recognised by the ``database_type`` of its metadata (``KNOWN``), which says the shape of
its records:

- country: ``country.iso_code`` (else ``registered_country.iso_code``), as MaxMind's
  GeoLite2/GeoIP2 Country and City databases and DB-IP's Lite country and city ones have
  them;
- network: ``autonomous_system_number`` and ``autonomous_system_organization``, as
  GeoLite2-ASN, GeoIP2-ISP and DB-IP's ASN Lite have them;
- both: IPinfo's files (``ipinfo ...``), whose flat records have ``country_code`` (the
  older country+ASN file: ``country``), ``asn`` as text (``"AS15169"``) and ``as_name``.

``IpDatabases.lookup`` merges what the files say of one address: the country from the first
file in the list that gives one, the AS number and organisation (together) from the first
that gives a number. An address no file knows is all None.

Off the SMTP path. Nothing here is called while a message is received: sender
identification (``rua_sink.ingest.identify``) calls ``lookup`` in its background task, for
addresses it has claimed, and ``refresh`` once per sweep. The files are opened with
maxminddb's C extension, memory-mapped: a lookup is a walk of a few dozen tree nodes in
pages the kernel shares between processes, microseconds, done on the loop between the
task's database statements (no thread, so a reload never closes a file under a reader).

Reloads. ``refresh`` compares each file's identity (device, inode, size, mtime) with the
one loaded; a changed file is opened anew and, if it is a known type, replaces the old one,
whose map is closed. A file that does not load keeps the old one serving; the failure is
logged and counted once per change of the file. Replace files by renaming a complete new
file over the old (as geoipupdate does, and as Kubernetes swaps a mounted volume's
files): a file rewritten in place under a live map can be read half old, half new.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import maxminddb

from rua_sink import logs
from rua_sink.errors import IpDatabaseError

log = logs.get("rua_sink.senders")

#: The setting that names the files, for messages.
SETTING = "RUA_SINK_IP_DATABASES"

#: Text stored of an AS organisation at most (a hostile file could hold megabytes).
MAX_ORG = 200

_COUNTRY_CODE = re.compile(r"[A-Z]{2}")
_AS_TEXT = re.compile(r"(?:AS)?(\d{1,10})", re.IGNORECASE)


class Shape(Enum):
    """What a database's records hold."""

    COUNTRY = "country"  # nested: country.iso_code
    NETWORK = "network"  # autonomous_system_number, autonomous_system_organization
    BOTH = "both"  # IPinfo's flat records: country_code, asn ("AS15169"), as_name


#: database_type (metadata) -> the shape of its records; every ``ipinfo ...`` type is
#: IPinfo's flat shape.
KNOWN: dict[str, Shape] = {
    "GeoLite2-Country": Shape.COUNTRY,
    "GeoLite2-City": Shape.COUNTRY,
    "GeoIP2-Country": Shape.COUNTRY,
    "GeoIP2-City": Shape.COUNTRY,
    "DBIP-Country-Lite": Shape.COUNTRY,
    "DBIP-City-Lite": Shape.COUNTRY,
    "GeoLite2-ASN": Shape.NETWORK,
    "GeoIP2-ISP": Shape.NETWORK,
    "DBIP-ASN-Lite": Shape.NETWORK,
    "DBIP-ASN-Lite (compat=GeoLite2-ASN)": Shape.NETWORK,
}
IPINFO = "ipinfo"


def recognise(database_type: str) -> tuple[str, Shape] | None:
    """The known name (for logs) and shape of a database type, or None."""
    shape = KNOWN.get(database_type)
    if shape is not None:
        return database_type, shape
    if database_type.lower().startswith(IPINFO + " "):
        return IPINFO, Shape.BOTH
    return None


@dataclass(frozen=True, slots=True)
class Network:
    """What the databases say of one address; None where none knows."""

    country: str | None = None  # ISO 3166-1 alpha-2
    asn: int | None = None
    as_org: str | None = None


UNKNOWN = Network()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _country(value: Any) -> str | None:
    code = _text(value)
    if code is None:
        return None
    code = code.strip().upper()
    return code if _COUNTRY_CODE.fullmatch(code) else None


def _asn(value: Any) -> int | None:
    if isinstance(value, str):
        m = _AS_TEXT.fullmatch(value.strip())
        value = int(m.group(1)) if m else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**32:
        return value
    return None


def _org(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = " ".join(text.split())[:MAX_ORG]
    return text or None


def _nested(record: Mapping[str, Any], key: str) -> Any:
    inner = record.get(key)
    return inner.get("iso_code") if isinstance(inner, Mapping) else None


def read_record(shape: Shape, record: Any) -> Network:
    """What one record of a database of ``shape`` says; fields of the wrong type or form
    are None (the files come from outside)."""
    if not isinstance(record, Mapping):
        return UNKNOWN
    if shape is Shape.COUNTRY:
        country = _country(_nested(record, "country")) or _country(
            _nested(record, "registered_country")
        )
        return Network(country=country)
    if shape is Shape.NETWORK:
        asn = _asn(record.get("autonomous_system_number"))
        org = _org(record.get("autonomous_system_organization"))
        return Network(asn=asn, as_org=org if asn is not None else None)
    # IPinfo Lite: country_code, and country is the name; its older file: country.
    country = _country(record.get("country_code")) or _country(record.get("country"))
    asn = _asn(record.get("asn"))
    org = _org(record.get("as_name"))
    return Network(country=country, asn=asn, as_org=org if asn is not None else None)


#: What identifies a file's version on disk: device, inode, size, mtime (ns).
FileId = tuple[int, int, int, int]


def _identity(path: str) -> tuple[FileId, float]:
    """The file's identity and its mtime (seconds); OSError if it cannot be read."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), st.st_mtime


@dataclass(slots=True)
class Loaded:
    """One file, opened."""

    path: str
    name: str  # the known name of its type (KNOWN's key, or "ipinfo")
    shape: Shape
    reader: maxminddb.Reader
    identity: FileId
    build_epoch: int
    #: When this version of the file came to be: its build or its mtime, the later.
    stamp: float

    def lookup(self, ip: str) -> Network:
        try:
            record = self.reader.get(ip)
        except (ValueError, maxminddb.InvalidDatabaseError):
            # An IPv6 address in an IPv4-only file, or a record the file cannot decode.
            return UNKNOWN
        return read_record(self.shape, record)


class Unsettled(Exception):
    """The file changed while it was opened: a swap in progress, look again later."""


def open_file(path: str) -> Loaded:
    """``path`` opened and recognised. OSError or maxminddb.InvalidDatabaseError (also
    ValueError) if it does not open, IpDatabaseError if its type is unknown, Unsettled if
    it changed meanwhile."""
    before, mtime = _identity(path)
    reader = maxminddb.open_database(path)
    try:
        meta = reader.metadata()
        known = recognise(str(meta.database_type))
        if known is None:
            raise IpDatabaseError(
                f"{SETTING}: {path}: unknown database type {meta.database_type!r} "
                f"(known: {', '.join(KNOWN)}, ipinfo ...)"
            )
        if _identity(path)[0] != before:
            raise Unsettled
    except BaseException:
        reader.close()
        raise
    build = int(meta.build_epoch)
    # Never later than now: a stamp in the future would make every row due at every sweep.
    stamp = min(max(float(build), mtime), time.time())
    return Loaded(path, known[0], known[1], reader, before, build, stamp)


#: What a file that does not open raises.
LOAD_ERRORS = (OSError, ValueError, maxminddb.InvalidDatabaseError, IpDatabaseError)


def _reason(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


class IpDatabases:
    """The files of RUA_SINK_IP_DATABASES, opened, merged and kept current; see the
    module's text."""

    def __init__(
        self,
        files: Sequence[Loaded],
        *,
        on_loaded: Callable[[float], None] = lambda oldest_build: None,
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.files = list(files)
        self.on_loaded = on_loaded
        self.on_failure = on_failure
        #: path -> the identity of a version that failed to load (reported once).
        self._failed: dict[str, FileId | None] = {}
        self.on_loaded(self.oldest_build)

    @classmethod
    def open(
        cls,
        paths: Sequence[str],
        *,
        on_loaded: Callable[[float], None] = lambda oldest_build: None,
        on_failure: Callable[[], None] = lambda: None,
        attempts: int = 5,
    ) -> IpDatabases:
        """Every file opened; IpDatabaseError (a ConfigError) naming the file and the
        setting if one does not open or is of an unknown type."""
        files: list[Loaded] = []
        try:
            for path in paths:
                files.append(_open_at_start(path, attempts))
        except BaseException:
            for f in files:
                f.reader.close()
            raise
        return cls(files, on_loaded=on_loaded, on_failure=on_failure)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def oldest_build(self) -> float:
        """The build_epoch of the oldest file (0 without files)."""
        return float(min((f.build_epoch for f in self.files), default=0))

    @property
    def version(self) -> datetime:
        """The latest build or mtime of the files served: a row enriched before it is
        due again."""
        return datetime.fromtimestamp(max((f.stamp for f in self.files), default=0.0), UTC)

    def lookup(self, ip: str) -> Network:
        """The country, AS number and AS organisation of ``ip``: each from the first file
        that knows it (the number and organisation go together)."""
        country: str | None = None
        asn: int | None = None
        org: str | None = None
        for f in self.files:
            if f.shape is Shape.NETWORK and asn is not None:
                continue
            if f.shape is Shape.COUNTRY and country is not None:
                continue
            found = f.lookup(ip)
            country = country or found.country
            if asn is None and found.asn is not None:
                asn, org = found.asn, found.as_org
            if country is not None and asn is not None:
                break
        return Network(country, asn, org)

    def refresh(self) -> int:
        """Opens again each file whose identity changed; returns how many were replaced.
        A file that does not open leaves the old one serving (logged and counted once per
        change)."""
        replaced = 0
        for i, old in enumerate(self.files):
            try:
                if _identity(old.path)[0] == old.identity:
                    continue
                new = open_file(old.path)
            except Unsettled:
                continue  # mid-swap: the next sweep sees the file settled
            except LOAD_ERRORS as exc:
                self._fail(old, exc)
                continue
            self.files[i] = new
            old.reader.close()
            self._failed.pop(old.path, None)
            self.on_loaded(self.oldest_build)
            log.info(
                "ip_database_loaded", path=new.path, database_type=new.name, build=new.build_epoch
            )
            replaced += 1
        return replaced

    def _fail(self, old: Loaded, exc: BaseException) -> None:
        try:
            identity: FileId | None = _identity(old.path)[0]
        except OSError:
            identity = None  # a missing file counts as one change, until it returns
        if old.path in self._failed and self._failed[old.path] == identity:
            return
        self._failed[old.path] = identity
        self.on_failure()
        log.error(
            "ip_database_reload_failed",
            path=old.path,
            error=_reason(exc),
            serving_build=old.build_epoch,
        )

    def close(self) -> None:
        for f in self.files:
            f.reader.close()


def _open_at_start(path: str, attempts: int) -> Loaded:
    for _ in range(attempts):
        try:
            return open_file(path)
        except Unsettled:
            continue
        except IpDatabaseError:
            raise
        except LOAD_ERRORS as exc:
            raise IpDatabaseError(f"{SETTING}: {path}: does not open: {_reason(exc)}") from exc
    raise IpDatabaseError(f"{SETTING}: {path}: kept changing while being opened")
