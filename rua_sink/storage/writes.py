"""The ingest's writes: one message's raw copy, its reports and their records.

Storage takes parsed values, never raw XML: reports, records in batches, and the raw
message as bytes beside them. The ingest (``ingest.Ingester``) drives the transaction:
one message is one transaction, so a reader sees a message's reports complete or not at
all; a report that fails half-way is rolled back to its savepoint and the message is
quarantined with the reason. A message of one small aggregate report is stored in one
statement instead (``insert_message_with_report``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from rua_sink.core.arrival import Envelope, MailAuth
from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    FailureReport,
    Record,
    TlsPolicy,
    TlsReport,
)
from rua_sink.core.version import PARSER_VERSION
from rua_sink.errors import MissingPartition
from rua_sink.outcomes import RawStatus
from rua_sink.storage.partitions import Partitions
from rua_sink.storage.rows import (
    RAW_COLUMNS,
    RECORD_COLUMNS,
    RECORD_TYPES,
    REPORT_COLUMNS,
    VERSION_OF,
    Conn,
    RawMessage,
    auth_values,
    epoch,
    inet,
    month_start,
    raw_values,
    record_json,
    report_values,
    reporter_key,
)


@dataclass(frozen=True, slots=True)
class Archived:
    """A raw message stored before: its id, what became of it, and whether an older
    parser version read it."""

    id: int
    status: RawStatus
    reason: str | None
    older: bool


def _params(first: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


_N_RAW, _N_REPORT = len(RAW_COLUMNS), len(REPORT_COLUMNS)
_INSERT_RAW = (
    f"INSERT INTO raw_messages ({', '.join(RAW_COLUMNS)}, status) "  # noqa: S608 - constants
    f"VALUES ({_params(1, _N_RAW)}, 'stored') ON CONFLICT (sha256) DO NOTHING RETURNING id"
)
_INSERT_REPORT = (
    f"INSERT INTO aggregate_reports (raw_message_id, {', '.join(REPORT_COLUMNS)}) "  # noqa: S608
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
    INSERT INTO aggregate_reports (raw_message_id, {", ".join(REPORT_COLUMNS)})
    SELECT raw.id, {_params(_REPORT_AT, _N_REPORT)} FROM raw
    ON CONFLICT ON CONSTRAINT aggregate_reports_dedup DO NOTHING RETURNING id
),
records AS (
    INSERT INTO aggregate_records ({", ".join(RECORD_COLUMNS)})
    SELECT report.id, ${_REPORT_AT + 3}, ${_REPORT_AT + 2}, ${_REPORT_AT}, r.*
    FROM report, json_to_recordset(${_REPORT_AT + _N_REPORT}::json)
        AS r({", ".join(f"{name} {kind}" for name, kind in RECORD_TYPES.items())})
)
SELECT (SELECT id FROM raw), (SELECT id FROM report)
"""  # noqa: S608 - built from the constants above


class Writes(Partitions):
    """The statements of one message's transaction (most take its connection)."""

    @staticmethod
    async def insert_raw(
        conn: Conn, raw: RawMessage, envelope: Envelope, received_at: datetime
    ) -> int | None:
        """The raw message, once per digest; None if these exact bytes are stored already."""
        value: int | None = await conn.fetchval(
            _INSERT_RAW, *raw_values(raw, envelope, received_at)
        )
        return value

    @staticmethod
    async def archived(conn: Conn, sha256: bytes) -> Archived | None:
        """The archived message with these bytes, locked until the transaction ends (a
        second copy arriving at the same time waits, then finds it read again)."""
        row = await conn.fetchrow(
            f"SELECT id, status, reason, {VERSION_OF} < $2 AS older FROM raw_messages "  # noqa: S608
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
            *auth_values(auth),
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
        values = report_values(head, reporter, authorization, end, authenticated)
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
        values = report_values(head, reporter, authorization, end, envelope.authenticated)
        rows = json.dumps([record_json(r) for r in records], ensure_ascii=False)
        with self._routing(month_start(epoch(head.metadata.begin))):
            row = await self.pool.fetchrow(
                _INSERT_MESSAGE_WITH_REPORT,
                *raw_values(raw, envelope, received_at),
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
            await _insert_tls_policy(conn, report_row, policy)
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
            inet(report.source_ip),
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


async def _insert_tls_policy(conn: Conn, report_row: int, policy: TlsPolicy) -> None:
    """A TLS report's policy, with its failure details."""
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
                    inet(d.sending_mta_ip),
                    d.receiving_mx_hostname,
                    d.receiving_mx_helo,
                    inet(d.receiving_ip),
                    d.failed_session_count,
                    d.additional_information,
                    d.failure_reason_code,
                )
                for d in policy.failure_details
            ],
        )
