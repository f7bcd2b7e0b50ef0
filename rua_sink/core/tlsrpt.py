"""SMTP TLS reports (RFC 8460 4): JSON, read whole under ``max_json_bytes``.

Quirks handled (SPEC.md I.66): date-times without a time zone are UTC (Microsoft);
``contact-info`` may be null; ``sending-mta-ip`` or ``receiving-mx-hostname`` may be
missing; ``mx-host`` is a string or an array (errata 6241); parsers disagree on key
names (``mx-host-pattern``, ``additional-info-uri``), so both spellings are read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from rua_sink.core.limits import Limits
from rua_sink.core.model import (
    PartInfo,
    TlsFailureDetail,
    TlsPolicy,
    TlsPolicyType,
    TlsReport,
    TlsResultType,
    enum_or_verbatim,
)
from rua_sink.core.names import domain, ip_address
from rua_sink.errors import InvalidJson, InvalidReport, JsonTooLarge


def parse_tlsrpt(chunks: Iterator[bytes], info: PartInfo, limits: Limits) -> TlsReport:
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > limits.max_json_bytes:
            raise JsonTooLarge(len(buf), limits.max_json_bytes)
    try:
        doc = json.loads(bytes(buf).decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"TLS report is not UTF-8 (RFC 8460 4.4, I-JSON): {exc}") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidJson(f"TLS report is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidReport("TLS report is not a JSON object")
    return report_from_json(doc, info)


def _str(obj: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value).strip()
            if text:
                return text
    return None


_MAX_COUNT = 2**63 - 1


def _count(obj: dict[str, Any], key: str) -> int:
    """A session count: a non-negative integer that fits in 64 bits."""
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReport(f"{key} is not an integer: {str(value)[:40]!r}")
    if not 0 <= value <= _MAX_COUNT:
        raise InvalidReport(f"{key} is out of range")
    return value


def _timestamp(value: Any, what: str) -> int:
    """RFC 3339 date-time (RFC 8460 4.4); no zone means UTC (SPEC.md I.66)."""
    if not isinstance(value, str):
        raise InvalidReport(f"{what} is missing")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidReport(f"{what} is not an RFC 3339 date-time: {value[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def report_from_json(doc: dict[str, Any], info: PartInfo) -> TlsReport:
    dates = _dict(doc.get("date-range"))
    report_id = _str(doc, "report-id")
    if report_id is None:
        raise InvalidReport("report-id is missing")
    policies = doc.get("policies", [])
    if not isinstance(policies, list):
        raise InvalidReport("policies is not an array (RFC 8460 4)")
    return TlsReport(
        part=info,
        org_name=_str(doc, "organization-name") or "",
        report_id=report_id,
        contact_info=_str(doc, "contact-info"),
        begin=_timestamp(dates.get("start-datetime"), "date-range/start-datetime"),
        end=_timestamp(dates.get("end-datetime"), "date-range/end-datetime"),
        policies=tuple(_policy(_dict(p)) for p in policies),
    )


def _policy(entry: dict[str, Any]) -> TlsPolicy:
    policy = _dict(entry.get("policy"))
    summary = _dict(entry.get("summary"))
    mx_hosts = [str(h).strip() for h in _list(policy.get("mx-host", policy.get("mx-host-pattern")))]
    return TlsPolicy(
        policy_type=enum_or_verbatim(TlsPolicyType, _str(policy, "policy-type") or ""),
        policy_strings=tuple(str(s) for s in _list(policy.get("policy-string"))),
        policy_domain=domain(_str(policy, "policy-domain")) or "",
        mx_hosts=tuple(h for h in mx_hosts if h),
        success_count=_count(summary, "total-successful-session-count"),
        failure_count=_count(summary, "total-failure-session-count"),
        failure_details=tuple(_detail(_dict(d)) for d in _list(entry.get("failure-details"))),
    )


def _detail(d: dict[str, Any]) -> TlsFailureDetail:
    sending = _str(d, "sending-mta-ip")
    receiving = _str(d, "receiving-ip")
    return TlsFailureDetail(
        result_type=enum_or_verbatim(TlsResultType, _str(d, "result-type") or ""),
        sending_mta_ip=ip_address(sending) if sending else None,
        receiving_mx_hostname=domain(_str(d, "receiving-mx-hostname")),
        receiving_mx_helo=_str(d, "receiving-mx-helo"),
        receiving_ip=ip_address(receiving) if receiving else None,
        failed_session_count=_count(d, "failed-session-count"),
        additional_information=_str(d, "additional-information", "additional-info-uri"),
        failure_reason_code=_str(d, "failure-reason-code"),
    )
