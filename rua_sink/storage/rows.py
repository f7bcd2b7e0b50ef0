"""What the tables hold, in Python: the raw message as archived, the values of a row in
column order, and the helpers that compute its keys and times.

Every write of a row goes through a function here that lists its values in the order of
its columns (``*_COLUMNS``), so a column added to one is added to the other beside it.
``Conn`` is the connection type every statement of the package runs on.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import asyncpg
import asyncpg.pool

from rua_sink.core.arrival import DkimCheck, Envelope, MailAuth
from rua_sink.core.model import AggregateEnd, AggregateReport, Record
from rua_sink.core.version import PARSER_VERSION
from rua_sink.storage.copytext import is_inet

if TYPE_CHECKING:
    #: A connection, or one borrowed from a pool (the stubs make both generic).
    Conn: TypeAlias = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]
else:
    Conn = asyncpg.Connection

RECORD_COLUMNS = (
    "report",
    "begin_at",
    "policy_domain",
    "reporter",
    "source_ip",
    "source_ip_text",
    "message_count",
    "disposition",
    "dkim_aligned",
    "spf_aligned",
    "header_from",
    "envelope_from",
    "envelope_to",
    "reason_types",
    "reason_comments",
    "dkim_domains",
    "dkim_selectors",
    "dkim_results",
    "dkim_human_results",
    "spf_domains",
    "spf_scopes",
    "spf_results",
    "spf_human_results",
    "extensions",
)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """The message as received: digest, size and gzip'd bytes for the archive."""

    sha256: bytes
    size: int
    content_gzip: bytes

    @classmethod
    def read(cls, file: IO[bytes], chunk: int = 1 << 20) -> RawMessage:
        digest = hashlib.sha256()
        # Level 1: report mail is mostly base64 of compressed data, which level 6 packs
        # only 1.4% smaller (a 12 MB report email), in 1.4 times the time.
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip container
        parts: list[bytes] = []
        size = 0
        while data := file.read(chunk):
            size += len(data)
            digest.update(data)
            parts.append(packer.compress(data))
        parts.append(packer.flush())
        return cls(digest.digest(), size, b"".join(parts))


def unpack_archived(content_gzip: bytes, out: IO[bytes]) -> None:
    """An archived copy (``RawMessage.content_gzip``) into ``out``, a MiB at a time."""
    with gzip.GzipFile(fileobj=io.BytesIO(content_gzip)) as unpacked:
        shutil.copyfileobj(unpacked, out, 1 << 20)


def reporter_key(org_name: str, email: str | None) -> str:
    """The reporter part of the dedup key: org_name, trimmed, spaces collapsed, lower case;
    the contact address's domain when org_name is empty."""
    key = " ".join(org_name.split()).lower()
    if not key and email:
        key = email.rpartition("@")[2].strip().lower()
    return key


def epoch(seconds: int) -> datetime:
    # Dates before 1970 or far in the future are clamped to what PostgreSQL can hold.
    seconds = max(min(seconds, 253402300799), -62135596800)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(moment: datetime) -> datetime:
    first = month_start(moment)
    return (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )


#: The parser version (``core.version``) that read a raw message, as a number: messages
#: archived before the number existed carry the package version ("0.1.0"), version 1.
VERSION_OF = "(CASE WHEN parser_version ~ '^[0-9]{1,9}$' THEN parser_version::integer ELSE 1 END)"

RAW_COLUMNS = (
    "sha256",
    "size_bytes",
    "received_at",
    "peer_ip",
    "helo",
    "mail_from",
    "rcpt_to",
    "source",
    "content_gzip",
    "parser_version",
    "auth_from_domain",
    "auth_spf",
    "auth_spf_domain",
    "auth_dkim_domains",
    "auth_dkim_selectors",
    "auth_dkim_results",
    "auth_dkim_aligned",
    "auth_spf_aligned",
    "auth_dmarc",
)

#: aggregate_reports' columns after raw_message_id
REPORT_COLUMNS = (
    "reporter",
    "report_id",
    "policy_domain",
    "begin_at",
    "end_at",
    "org_name",
    "email",
    "extra_contact_info",
    "generator",
    "errors",
    "schema",
    "version",
    "adkim",
    "aspf",
    "p",
    "sp",
    "np",
    "pct",
    "fo",
    "testing",
    "discovery_method",
    "extensions",
    "record_count",
    "message_count",
    "part_filename",
    "part_layers",
    "authz_verdict",
    "repairs",
    "authenticated",
)

#: A record's own columns (those after the report's four in RECORD_COLUMNS), with their
#: types, for json_to_recordset.
RECORD_TYPES = {
    "source_ip": "inet",
    "source_ip_text": "text",
    "message_count": "integer",
    "disposition": "text",
    "dkim_aligned": "text",
    "spf_aligned": "text",
    "header_from": "text",
    "envelope_from": "text",
    "envelope_to": "text",
    "reason_types": "text[]",
    "reason_comments": "text[]",
    "dkim_domains": "text[]",
    "dkim_selectors": "text[]",
    "dkim_results": "text[]",
    "dkim_human_results": "text[]",
    "spf_domains": "text[]",
    "spf_scopes": "text[]",
    "spf_results": "text[]",
    "spf_human_results": "text[]",
    "extensions": "text[]",
}
assert tuple(RECORD_TYPES) == RECORD_COLUMNS[4:]


def raw_values(raw: RawMessage, envelope: Envelope, received_at: datetime) -> tuple[Any, ...]:
    return (
        raw.sha256,
        raw.size,
        received_at,
        envelope.peer_ip,
        envelope.helo,
        envelope.mail_from,
        list(envelope.rcpt_to),
        envelope.source,
        raw.content_gzip,
        str(PARSER_VERSION),
        *auth_values(envelope.auth),
    )


def auth_values(auth: MailAuth | None) -> tuple[Any, ...]:
    """The ``auth_*`` columns of ``raw_messages``, in order."""
    dkim = auth.dkim if auth else ()
    return (
        auth.from_domain if auth else None,
        auth.spf if auth else None,
        auth.spf_domain if auth else None,
        [c.domain for c in dkim],
        [c.selector for c in dkim],
        [c.result for c in dkim],
        auth.dkim_aligned if auth else None,
        auth.spf_aligned if auth else None,
        auth.dmarc if auth else None,
    )


def report_values(
    head: AggregateReport,
    reporter: str,
    authorization: str | None,
    end: AggregateEnd | None,
    authenticated: bool | None,
) -> tuple[Any, ...]:
    meta, pol = head.metadata, head.policy
    return (
        reporter,
        meta.report_id,
        pol.domain,
        epoch(meta.begin),
        epoch(meta.end),
        meta.org_name,
        meta.email,
        meta.extra_contact_info,
        meta.generator,
        list(meta.errors),
        str(head.schema),
        head.version,
        pol.adkim,
        pol.aspf,
        pol.p,
        pol.sp,
        pol.np,
        pol.pct,
        pol.fo,
        pol.testing,
        pol.discovery_method,
        list(head.extensions),
        end.record_count if end else 0,
        end.message_count if end else 0,
        head.part.filename,
        list(head.part.layers),
        authorization,
        list(end.repairs) if end else [],
        authenticated,
    )


def record_json(r: Record) -> dict[str, Any]:
    """A record as json_to_recordset reads it into RECORD_TYPES' columns."""
    ip = r.source_ip
    inet = is_inet(ip)
    return {
        "source_ip": ip if inet else None,
        "source_ip_text": None if inet else ip,
        "message_count": r.count,
        "disposition": r.disposition,
        "dkim_aligned": r.dkim,
        "spf_aligned": r.spf,
        "header_from": r.header_from,
        "envelope_from": r.envelope_from,
        "envelope_to": r.envelope_to,
        "reason_types": [x.type for x in r.reasons],
        "reason_comments": [x.comment for x in r.reasons],
        "dkim_domains": [x[0] for x in r.dkim_results],
        "dkim_selectors": [x[1] for x in r.dkim_results],
        "dkim_results": [x[2] for x in r.dkim_results],
        "dkim_human_results": [x[3] for x in r.dkim_results],
        "spf_domains": [x[0] for x in r.spf_results],
        "spf_scopes": [x[1] for x in r.spf_results],
        "spf_results": [x[2] for x in r.spf_results],
        "spf_human_results": [x[3] for x in r.spf_results],
        "extensions": list(r.extensions),
    }


def inet(text: str | None) -> str | None:
    return text if text is not None and is_inet(text) else None


def mail_auth_of(row: Any) -> MailAuth | None:
    """Back from the ``auth_*`` columns of ``raw_messages`` (None: not checked)."""
    if row["auth_dmarc"] is None:
        return None
    return MailAuth(
        from_domain=row["auth_from_domain"],
        spf=row["auth_spf"],
        spf_domain=row["auth_spf_domain"],
        dkim=tuple(
            DkimCheck(d, s, r)
            for d, s, r in zip(
                row["auth_dkim_domains"],
                row["auth_dkim_selectors"],
                row["auth_dkim_results"],
                strict=True,
            )
        ),
        dkim_aligned=row["auth_dkim_aligned"],
        spf_aligned=row["auth_spf_aligned"],
        dmarc=row["auth_dmarc"],
    )
