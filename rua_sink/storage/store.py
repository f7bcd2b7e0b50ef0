"""PostgreSQL storage: all SQL of rua-sink in one place (asyncpg).

Storage takes parsed values, never raw XML: reports, records in batches, and the raw
message as bytes beside them. One message is one transaction, so a reader sees a
message's reports complete or not at all; a report that fails half-way is rolled back
to its savepoint and the message is quarantined with the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import asyncpg
import asyncpg.pool

from rua_sink.core.arrival import DkimCheck, Envelope, MailAuth
from rua_sink.core.model import AggregateEnd, AggregateReport, FailureReport, Record, TlsReport
from rua_sink.core.version import PARSER_VERSION
from rua_sink.errors import MissingPartition
from rua_sink.outcomes import RawStatus
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


def partition_name(month: datetime) -> str:
    return f"aggregate_records_{month.year:04d}_{month.month:02d}"


#: The parser version (``core.version``) that read a raw message, as a number: messages
#: archived before the number existed carry the package version ("0.1.0"), version 1.
_VERSION_OF = "(CASE WHEN parser_version ~ '^[0-9]{1,9}$' THEN parser_version::integer ELSE 1 END)"


@dataclass(frozen=True, slots=True)
class Archived:
    """A raw message stored before: its id, what became of it, and whether an older
    parser version read it."""

    id: int
    status: RawStatus
    reason: str | None
    older: bool


_RAW_COLUMNS = (
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
_REPORT_COLUMNS = (
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
_RECORD_TYPES = {
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
assert tuple(_RECORD_TYPES) == RECORD_COLUMNS[4:]


def _params(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


_N_RAW, _N_REPORT = len(_RAW_COLUMNS), len(_REPORT_COLUMNS)
_INSERT_RAW = (
    f"INSERT INTO raw_messages ({', '.join(_RAW_COLUMNS)}, status) "  # noqa: S608 - constants
    f"VALUES ({_params(1, _N_RAW)}, 'stored') ON CONFLICT (sha256) DO NOTHING RETURNING id"
)
_INSERT_REPORT = (
    f"INSERT INTO aggregate_reports (raw_message_id, {', '.join(_REPORT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({_params(1, 1 + _N_REPORT)}) "
    "ON CONFLICT ON CONSTRAINT aggregate_reports_dedup DO NOTHING RETURNING id"
)
# One statement: data-modifying WITH queries all run, in the statement's transaction,
# and the foreign key from the report to its raw message is checked at its end. The
# records' month partition must exist (a CheckViolation otherwise).
_REPORT_AT = _N_RAW + 1  # the first of the report's parameters
_INSERT_MESSAGE_WITH_REPORT = f"""
WITH raw AS ({_INSERT_RAW}),
report AS (
    INSERT INTO aggregate_reports (raw_message_id, {", ".join(_REPORT_COLUMNS)})
    SELECT raw.id, {_params(_REPORT_AT, _N_REPORT)} FROM raw
    ON CONFLICT ON CONSTRAINT aggregate_reports_dedup DO NOTHING RETURNING id
),
records AS (
    INSERT INTO aggregate_records ({", ".join(RECORD_COLUMNS)})
    SELECT report.id, ${_REPORT_AT + 3}, ${_REPORT_AT + 2}, ${_REPORT_AT}, r.*
    FROM report, json_to_recordset(${_REPORT_AT + _N_REPORT}::json)
        AS r({", ".join(f"{name} {kind}" for name, kind in _RECORD_TYPES.items())})
)
SELECT (SELECT id FROM raw), (SELECT id FROM report)
"""  # noqa: S608 - built from the constants above


def _raw_values(raw: RawMessage, envelope: Envelope, received_at: datetime) -> tuple[Any, ...]:
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
        *_auth_values(envelope.auth),
    )


def _auth_values(auth: MailAuth | None) -> tuple[Any, ...]:
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


def _report_values(
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


def _record_json(r: Record) -> dict[str, Any]:
    """A record as json_to_recordset reads it into _RECORD_TYPES' columns."""
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


class Store:
    """Queries on one pool; the ingest transaction is driven by ``ingest.Ingester``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._partitions: set[datetime] = set()

    # -- partitions -------------------------------------------------------------------

    async def load_partitions(self) -> None:
        rows = await self.pool.fetch(
            """
            SELECT c.relname FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname = 'aggregate_records'
            """
        )
        for row in rows:
            name: str = row["relname"]
            year, month = name.rsplit("_", 2)[-2:]
            if year.isdigit() and month.isdigit():
                self._partitions.add(datetime(int(year), int(month), 1, tzinfo=UTC))

    def has_partition(self, month: datetime) -> bool:
        return month in self._partitions

    async def create_partition(self, month: datetime) -> None:
        """Create the month's partition on a connection of its own (its own transaction),
        under an advisory lock so that replicas do not race on it."""
        name = partition_name(month)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF aggregate_records "
                f"FOR VALUES FROM ('{month.isoformat()}') TO ('{next_month(month).isoformat()}')"
            )
        self._partitions.add(month)

    # -- one message ------------------------------------------------------------------

    @staticmethod
    async def insert_raw(
        conn: Conn, raw: RawMessage, envelope: Envelope, received_at: datetime
    ) -> int | None:
        """The raw message, once per digest; None if these exact bytes are stored already."""
        value: int | None = await conn.fetchval(
            _INSERT_RAW, *_raw_values(raw, envelope, received_at)
        )
        return value

    @staticmethod
    async def archived(conn: Conn, sha256: bytes) -> Archived | None:
        """The archived message with these bytes, locked until the transaction ends (a
        second copy arriving at the same time waits, then finds it read again)."""
        row = await conn.fetchrow(
            f"SELECT id, status, reason, {_VERSION_OF} < $2 AS older FROM raw_messages "  # noqa: S608
            "WHERE sha256 = $1 FOR UPDATE",
            sha256,
            PARSER_VERSION,
        )
        if row is None:
            return None
        return Archived(row["id"], RawStatus(row["status"]), row["reason"], row["older"])

    @staticmethod
    async def lock_raw(conn: Conn, raw_id: int) -> None:
        """Lock a raw message's row until the transaction ends."""
        await conn.execute("SELECT 1 FROM raw_messages WHERE id = $1 FOR UPDATE", raw_id)

    @staticmethod
    async def set_auth(conn: Conn, raw_id: int, auth: MailAuth) -> None:
        """The verdicts of a new copy's authentication, which its reports now carry."""
        await conn.execute(
            "UPDATE raw_messages SET auth_from_domain = $2, auth_spf = $3, auth_spf_domain = $4, "
            "auth_dkim_domains = $5, auth_dkim_selectors = $6, auth_dkim_results = $7, "
            "auth_dkim_aligned = $8, auth_spf_aligned = $9, auth_dmarc = $10 WHERE id = $1",
            raw_id,
            *_auth_values(auth),
        )

    @staticmethod
    async def redact_raw(conn: Conn, raw_id: int, content_gzip: bytes) -> None:
        """Replace the archived message with a copy that leaves out private content."""
        await conn.execute(
            "UPDATE raw_messages SET content_gzip = $2, redacted = true WHERE id = $1",
            raw_id,
            content_gzip,
        )

    @staticmethod
    async def set_status(
        conn: Conn, raw_id: int, status: RawStatus, reason: str | None, detail: str | None
    ) -> None:
        await conn.execute(
            """
            UPDATE raw_messages SET status = $2, reason = $3, detail = $4,
                   processed_at = now(), parser_version = $5
            WHERE id = $1
            """,
            raw_id,
            status,
            reason,
            detail,
            str(PARSER_VERSION),
        )

    @staticmethod
    async def insert_aggregate(
        conn: Conn,
        raw_id: int,
        head: AggregateReport,
        reporter: str,
        authorization: str | None = None,
        end: AggregateEnd | None = None,
        authenticated: bool | None = None,
    ) -> int | None:
        """The report's row, or None if the same report is stored already (RFC 9990 3.5.4:
        a duplicate is accepted and kept once)."""
        values = _report_values(head, reporter, authorization, end, authenticated)
        value: int | None = await conn.fetchval(_INSERT_REPORT, raw_id, *values)
        return value

    async def insert_message_with_report(
        self,
        raw: RawMessage,
        envelope: Envelope,
        received_at: datetime,
        head: AggregateReport,
        reporter: str,
        authorization: str | None,
        end: AggregateEnd,
        records: Sequence[Record],
    ) -> tuple[int | None, int | None]:
        """A message that holds one whole aggregate report, stored in one statement (its
        own transaction): the raw message, the report and its records. Returns their
        ids: (None, None) if these exact bytes are stored already, (id, None) if the
        report is."""
        values = _report_values(head, reporter, authorization, end, envelope.authenticated)
        rows = json.dumps([_record_json(r) for r in records], ensure_ascii=False)
        with self._routing(month_start(epoch(head.metadata.begin))):
            row = await self.pool.fetchrow(
                _INSERT_MESSAGE_WITH_REPORT,
                *_raw_values(raw, envelope, received_at),
                *values,
                rows,
            )
        assert row is not None
        return row[0], row[1]

    @staticmethod
    async def finish_aggregate(conn: Conn, report: int, end: AggregateEnd) -> None:
        await conn.execute(
            "UPDATE aggregate_reports SET record_count = $2, message_count = $3, repairs = $4 "
            "WHERE id = $1",
            report,
            end.record_count,
            end.message_count,
            list(end.repairs),
        )

    async def copy_lines(self, conn: Conn, lines: Sequence[str], month: datetime) -> None:
        """Bulk-load records given as COPY text lines (see ``copytext``)."""
        if not self.has_partition(month):
            raise MissingPartition(month)
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

        async def source() -> AsyncIterator[bytes]:
            # An iterator, not a file: asyncpg reads a file in a thread, two hand-overs
            # for each batch.
            yield data

        with self._routing(month):
            await conn.copy_to_table(
                "aggregate_records", source=source(), columns=RECORD_COLUMNS, format="text"
            )

    @contextlib.contextmanager
    def _routing(self, month: datetime) -> Iterator[None]:
        """Records of ``month`` written inside: its partition, believed to exist, was
        dropped (``rua-sink prune``) if PostgreSQL finds none for them."""
        try:
            yield
        except asyncpg.CheckViolationError as exc:  # "no partition of relation ... found"
            if exc.table_name != "aggregate_records":
                raise
            self._partitions.discard(month)
            raise MissingPartition(month) from exc

    @staticmethod
    async def insert_tls(
        conn: Conn,
        raw_id: int,
        report: TlsReport,
        authorization: str | None = None,
        authenticated: bool | None = None,
    ) -> bool:
        """Store a TLS report with its policies and failure details; False if a duplicate."""
        report_row: int | None = await conn.fetchval(
            """
            INSERT INTO tls_reports (raw_message_id, reporter, report_id, begin_at, end_at,
                                     org_name, contact_info, success_count, failure_count,
                                     part_filename, authz_verdict, authenticated)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            ON CONFLICT ON CONSTRAINT tls_reports_dedup DO NOTHING
            RETURNING id
            """,
            raw_id,
            reporter_key(report.org_name, report.contact_info),
            report.report_id,
            epoch(report.begin),
            epoch(report.end),
            report.org_name,
            report.contact_info,
            report.success_count,
            report.failure_count,
            report.part.filename,
            authorization,
            authenticated,
        )
        if report_row is None:
            return False
        for policy in report.policies:
            policy_row = await conn.fetchval(
                """
                INSERT INTO tls_policies (tls_report, policy_type, policy_strings, policy_domain,
                                          mx_hosts, success_count, failure_count)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
                """,
                report_row,
                policy.policy_type,
                list(policy.policy_strings),
                policy.policy_domain,
                list(policy.mx_hosts),
                policy.success_count,
                policy.failure_count,
            )
            if policy.failure_details:
                await conn.executemany(
                    """
                    INSERT INTO tls_failure_details (
                        tls_policy, result_type, sending_mta_ip, receiving_mx_hostname,
                        receiving_mx_helo, receiving_ip, failed_session_count,
                        additional_information, failure_reason_code)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                    """,
                    [
                        (
                            policy_row,
                            d.result_type,
                            _inet(d.sending_mta_ip),
                            d.receiving_mx_hostname,
                            d.receiving_mx_helo,
                            _inet(d.receiving_ip),
                            d.failed_session_count,
                            d.additional_information,
                            d.failure_reason_code,
                        )
                        for d in policy.failure_details
                    ],
                )
        return True

    @staticmethod
    async def insert_failure(
        conn: Conn,
        raw_id: int,
        report: FailureReport,
        authorization: str | None = None,
        authenticated: bool | None = None,
    ) -> bool:
        """Store a failure report; False if it was stored before: by this message (RFC 5965
        2: one a message), or by another copy of it (``failure_reports_key``, computed by
        the database from the fields and the reported header block: see migration 0005)."""
        value: int | None = await conn.fetchval(
            """
            INSERT INTO failure_reports (
                raw_message_id, feedback_type, version, user_agent, auth_failure,
                delivery_result, identity_alignment, reported_domains, source_ip, arrival_date,
                original_mail_from, original_rcpt_to, authentication_results, dkim_domain,
                dkim_selector, fields, original_headers, authz_verdict, authenticated,
                alignment_spec, alignment_failed, dkim_identity, spf_dns, original_envelope_id,
                reporting_mta, incidents, arrived_at, report_format)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)
            ON CONFLICT DO NOTHING
            RETURNING id
            """,
            raw_id,
            report.feedback_type,
            report.version,
            report.user_agent,
            report.auth_failure,
            report.delivery_result,
            report.identity_alignment,
            list(report.reported_domains),
            _inet(report.source_ip),
            report.arrival_date,
            report.original_mail_from,
            list(report.original_rcpt_to),
            list(report.authentication_results),
            report.dkim_domain,
            report.dkim_selector,
            json.dumps([list(f) for f in report.fields]),
            report.original_headers,
            authorization,
            authenticated,
            report.alignment_spec,
            None if report.alignment_failed is None else list(report.alignment_failed),
            report.dkim_identity,
            report.spf_dns,
            report.original_envelope_id,
            report.reporting_mta,
            report.incidents,
            None if report.arrived_at is None else epoch(report.arrived_at),
            report.report_format,
        )
        return value is not None

    # -- maintenance ------------------------------------------------------------------

    async def raw_messages(
        self,
        *,
        every: bool = False,
        any_version: bool = False,
        reasons: Sequence[str] = (),
    ) -> list[int]:
        """Raw messages to read again: those not stored as reports (``not_a_report``,
        ``quarantined``) by an older parser version, and those kept for one of
        ``reasons`` whatever the version; with ``any_version``, all of those not stored
        as reports; with ``every``, all."""
        rows = await self.pool.fetch(
            "SELECT id FROM raw_messages WHERE $1 OR (status <> 'stored' AND "  # noqa: S608
            f"($2 OR {_VERSION_OF} < $3 OR reason = ANY($4::text[]))) ORDER BY id",
            every,
            any_version,
            PARSER_VERSION,
            list(reasons),
        )
        return [r["id"] for r in rows]

    async def list_raw(self, statuses: Sequence[RawStatus], limit: int) -> list[asyncpg.Record]:
        """The newest raw messages with these statuses, each with the first 16 KiB of its
        gzip'd copy: enough for its header block."""
        return await self.pool.fetch(
            "SELECT id, received_at, status, reason, detail, size_bytes, source, "
            "host(peer_ip) AS peer_ip, mail_from, rcpt_to, "
            "substring(content_gzip FROM 1 FOR 16384) AS head_gzip FROM raw_messages "
            "WHERE status = ANY($1::text[]) ORDER BY id DESC LIMIT $2",
            list(statuses),
            limit,
        )

    async def raw_content(self, raw_id: int) -> tuple[bytes, Envelope, datetime]:
        row = await self.pool.fetchrow(
            "SELECT content_gzip, source, host(peer_ip) AS peer_ip, helo, mail_from, rcpt_to, "
            "received_at, auth_from_domain, auth_spf, auth_spf_domain, auth_dkim_domains, "
            "auth_dkim_selectors, auth_dkim_results, auth_dkim_aligned, auth_spf_aligned, "
            "auth_dmarc FROM raw_messages WHERE id = $1",
            raw_id,
        )
        if row is None:
            raise KeyError(raw_id)
        envelope = Envelope(
            source=row["source"],
            peer_ip=row["peer_ip"],
            helo=row["helo"],
            mail_from=row["mail_from"],
            rcpt_to=tuple(row["rcpt_to"]),
            auth=mail_auth_of(row),
        )
        return row["content_gzip"], envelope, row["received_at"]

    @staticmethod
    async def clear_reports(conn: Conn, raw_id: int) -> None:
        """Forget what a raw message produced, before it is parsed again."""
        ids = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM aggregate_reports WHERE raw_message_id = $1", raw_id
            )
        ]
        if ids:
            await conn.execute(
                "DELETE FROM aggregate_records WHERE report = ANY($1::bigint[])", ids
            )
            await conn.execute("DELETE FROM aggregate_reports WHERE id = ANY($1::bigint[])", ids)
        await conn.execute("DELETE FROM tls_reports WHERE raw_message_id = $1", raw_id)
        await conn.execute("DELETE FROM failure_reports WHERE raw_message_id = $1", raw_id)

    async def prune(
        self, cutoff: datetime, failure_cutoff: datetime | None = None
    ) -> dict[str, int]:
        """Drop record partitions that end before ``cutoff``, and older reports and raw
        messages; failure reports (which carry personal data, RFC 9991 7) and their raw
        messages go at ``failure_cutoff`` when that is sooner."""
        await self.load_partitions()
        dropped = 0
        for month in sorted(self._partitions):
            if next_month(month) <= cutoff:
                async with self.pool.acquire() as conn:
                    await conn.execute(f"DROP TABLE IF EXISTS {partition_name(month)}")
                self._partitions.discard(month)
                dropped += 1
        async with self.pool.acquire() as conn, conn.transaction():

            async def delete(table: str, where: str, before: datetime = cutoff) -> int:
                """Rows of ``table`` matching ``where`` (with ``$1`` the time before which
                they go): deleted, counted. The SQL is this module's own, never input."""
                sql = f"WITH d AS (DELETE FROM {table} WHERE {where} RETURNING 1) "  # noqa: S608
                return int(await conn.fetchval(sql + "SELECT count(*) FROM d", before))  # noqa: S608

            # A failure report's raw message takes the report with it (ON DELETE CASCADE).
            failure_before = max(cutoff, failure_cutoff or cutoff)
            failures = await delete(
                "raw_messages",
                "id IN (SELECT raw_message_id FROM failure_reports WHERE stored_at < $1)",
                failure_before,
            )
            # A copy of a failure report stored before has no report row, but its message,
            # redacted, still holds the reported header fields: it goes at the same time.
            copies = await delete("raw_messages", "redacted AND received_at < $1", failure_before)
            reports = await delete("aggregate_reports", "end_at < $1")
            await conn.execute("DELETE FROM aggregate_records WHERE begin_at < $1", cutoff)
            tls = await delete("tls_reports", "end_at < $1")
            raw = await delete("raw_messages", "received_at < $1")
            # Looked-up source addresses that no record names any more.
            hosts = await delete(
                "source_hosts s",
                "s.first_seen < $1 AND NOT EXISTS "
                "(SELECT 1 FROM aggregate_records r WHERE r.source_ip = s.ip)",
            )
        return {
            "partitions_dropped": dropped,
            "aggregate_reports": reports,
            "tls_reports": tls,
            "failure_reports": failures,
            "raw_messages": raw + failures + copies,
            "source_hosts": hosts,
        }


def _inet(text: str | None) -> str | None:
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
