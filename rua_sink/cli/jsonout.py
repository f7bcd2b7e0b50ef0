"""JSON shapes of the model, as printed by ``rua-sink parse`` (documented in docs/commands.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from rua_sink.core.model import (
    AggregateEnd,
    AggregateReport,
    FailureReport,
    PartInfo,
    Record,
    TlsReport,
)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # StrEnum members print as their value
    return value


def part(info: PartInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"index": info.index}
    if info.content_type:
        out["content_type"] = info.content_type
    if info.filename:
        out["filename"] = info.filename
    if info.layers:
        out["layers"] = list(info.layers)
    return out


def aggregate_head(report: AggregateReport) -> dict[str, Any]:
    meta = report.metadata
    return {
        "type": "aggregate",
        "org_name": meta.org_name,
        "report_id": meta.report_id,
        "policy_domain": report.policy.domain,
        "begin": meta.begin,
        "end": meta.end,
        "schema": str(report.schema),
        "version": report.version,
        "email": meta.email,
        "extra_contact_info": meta.extra_contact_info,
        "generator": meta.generator,
        "errors": list(meta.errors),
        "policy": _plain(report.policy),
        "extensions": list(report.extensions),
        "part": part(report.part),
    }


def aggregate_tail(end: AggregateEnd) -> dict[str, Any]:
    return {
        "record_count": end.record_count,
        "message_count": end.message_count,
        "repaired": end.repaired,
        "repairs": list(end.repairs),
    }


def record(rec: Record) -> dict[str, Any]:
    out: dict[str, Any] = _plain(rec)
    return out  # field order as in the model


def tls_report(report: TlsReport, *, with_policies: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "tlsrpt",
        "org_name": report.org_name,
        "report_id": report.report_id,
        "begin": report.begin,
        "end": report.end,
        "contact_info": report.contact_info,
        "policy_count": len(report.policies),
        "success_count": report.success_count,
        "failure_count": report.failure_count,
        "policy_domains": sorted({p.policy_domain for p in report.policies}),
        "part": part(report.part),
    }
    if with_policies:
        out["policies"] = _plain(report.policies)
    return out


def failure_report(report: FailureReport, *, with_fields: bool) -> dict[str, Any]:
    out: dict[str, Any] = _plain(report)
    out.pop("part")
    if not with_fields:
        out.pop("fields")
        out.pop("original_headers")
    return {"type": "failure", **out, "part": part(report.part)}
