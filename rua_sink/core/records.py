"""One <record> of an aggregate report (RFC 7489 App. C, RFC 9990 App. A) as a ``Record``.

This is the hot path of the aggregate parser: one call per record, in the sequential
parser (``aggregate``) and in the workers of ``fanout``. A record is read in one pre-order
walk of its finished subtree, with one dict lookup per element; enumerated values are
case-normalized and unknown ones kept verbatim (SPEC.md I.61); unknown children of the
record are kept raw as extensions (RFC 9990 3.2).
"""

from __future__ import annotations

from typing import Any

from rua_sink.core.model import (
    AuthResult,
    Disposition,
    DkimAuth,
    OverrideReason,
    OverrideType,
    Record,
    SpfAuth,
    SpfScope,
    Verdict,
)
from rua_sink.core.names import domain, ip_address
from rua_sink.core.xmltree import QUOTES, check_depth, integer, local_name, serialize
from rua_sink.errors import InvalidReport

# Hot path: plain dict lookups instead of Enum constructor calls.
_DISPOSITION = {m.value: m for m in Disposition}
_VERDICT = {m.value: m for m in Verdict}
_AUTH = {m.value: m for m in AuthResult}
_SCOPE = {m.value: m for m in SpfScope}
_OVERRIDE = {m.value: m for m in OverrideType}


def _enum(table: dict[str, Any], text: str | None) -> Any:
    if text is None:
        return None
    return table.get(text) or table.get(text.lower()) or text


# Codes of the names inside a <record>, so the walk below does one dict lookup per
# element (keyed by the full tag, namespace included) instead of name comparisons.
_SECTION = 0
(
    _SOURCE_IP,
    _COUNT,
    _DISPOSITION_,
    _DKIM,
    _SPF,
    _REASON,
    _TYPE,
    _COMMENT,
    _HEADER_FROM,
    _ENVELOPE_FROM,
    _ENVELOPE_TO,
    _DOMAIN,
    _SELECTOR,
    _RESULT,
    _HUMAN_RESULT,
) = range(1, 16)
_AUTH_SECTION = -1
_RECORD_CODES = {
    "row": _SECTION,
    "policy_evaluated": _SECTION,
    "identifiers": _SECTION,
    "identities": _SECTION,
    "auth_results": _AUTH_SECTION,
    "source_ip": _SOURCE_IP,
    "count": _COUNT,
    "disposition": _DISPOSITION_,
    "dkim": _DKIM,
    "spf": _SPF,
    "reason": _REASON,
    "type": _TYPE,
    "comment": _COMMENT,
    "header_from": _HEADER_FROM,
    "envelope_from": _ENVELOPE_FROM,
    "envelope_to": _ENVELOPE_TO,
    "domain": _DOMAIN,
    "selector": _SELECTOR,
    "scope": _SELECTOR,
    "result": _RESULT,
    "human_result": _HUMAN_RESULT,
}
#: The local names of the elements inside a record that the reader knows.
RECORD_NAMES = frozenset(_RECORD_CODES)


_TAG_CODES: dict[Any, int | None] = {}


def _code(tag: Any) -> int | None:
    """The code of a tag not seen before, learned (up to a cap: tags come from the
    sender)."""
    code = _RECORD_CODES.get(local_name(tag))
    if isinstance(tag, str) and len(_TAG_CODES) < 4096:
        _TAG_CODES[tag] = code
    return code


# Where each field of a dkim/spf result under auth_results goes in its list
# [code, domain, selector or scope, result, human_result, ignored]: by field code, and
# the last slot for the fields that a result does not have.
_IGNORED = 5
_RESULT_SLOT = tuple(
    {_DOMAIN: 1, _SELECTOR: 2, _RESULT: 3, _HUMAN_RESULT: 4}.get(code, _IGNORED)
    for code in range(16)
)


def record_of(el: Any, max_depth: int) -> Record:
    """One <record>, read in a single pre-order walk of its subtree.

    This is the hot path (one call per record), so instead of a nested loop per level
    it walks ``el.iter()`` once and tracks which container it is in: containers come
    before their children in document order. Each ``dkim``/``spf`` under
    ``auth_results`` opens a result whose fields follow it, each ``reason`` an override
    reason whose ``type`` and ``comment`` follow it.
    """
    codes = _TAG_CODES
    # The last text of each field outside auth_results, by code; read after the walk.
    fields: list[Any] = [None] * 16
    reasons: list[list[Any]] = []  # [type, comment]
    results: list[list[Any]] = []  # see _RESULT_SLOT
    extensions: list[str] = []
    # The result the fields under auth_results go to; before any, a list never read.
    nowhere: list[Any] = [None] * 6
    current = nowhere
    reason: list[Any] | None = None
    in_auth = False
    walk = el.iter()
    next(walk)  # the record itself
    seen = 0
    for seen, c in enumerate(walk, 1):  # noqa: B007 - seen is read after the loop
        try:
            code = codes[c.tag]  # a plain dict's subscript: the fastest lookup there is
        except KeyError:
            code = _code(c.tag)
        if code is None:
            _unknown(c, el, walk, max_depth, extensions)
            continue
        if code <= 0:
            in_auth = code == _AUTH_SECTION
            current, reason = nowhere, None
            continue
        t = c.text
        if t is not None:
            t = t.strip(QUOTES) or None
        if in_auth:
            if code == _DKIM or code == _SPF:
                current = [code, None, None, None, None, None]
                results.append(current)
            else:
                current[_RESULT_SLOT[code]] = t
        elif code == _REASON:
            reason = [None, None]
            reasons.append(reason)
        elif reason is not None and (code == _TYPE or code == _COMMENT):
            reason[code - _TYPE] = t
        else:
            fields[code] = t  # and the type or comment of no reason, never read
    if seen + 2 > max_depth:
        # Only a record with at least as many elements as the depth cap can be too deep.
        check_depth(el, 2, max_depth)
    return _record(fields, reasons, results, extensions)


def _unknown(node: Any, record: Any, walk: Any, max_depth: int, extensions: list[str]) -> None:
    """An element of no known name: a child of the record is kept raw (RFC 9990 3.2:
    <any>), and the walk skips its subtree; one deeper is ignored."""
    if node.getparent() is not record or not isinstance(node.tag, str):
        return
    check_depth(node, 3, max_depth)
    extensions.append(serialize(node))
    for _ in node.iterdescendants():
        next(walk)


def _record(
    fields: list[Any], reasons: list[list[Any]], results: list[list[Any]], extensions: list[str]
) -> Record:
    """The record of the texts its walk collected."""
    source_ip = fields[_SOURCE_IP]
    if source_ip is None:
        raise InvalidReport("record/row/source_ip is missing")
    disposition = fields[_DISPOSITION_]
    dkim = fields[_DKIM]
    spf = fields[_SPF]
    return Record(
        source_ip=ip_address(source_ip),
        count=integer(fields[_COUNT], "record/row/count"),
        disposition=None
        if disposition is None
        else _DISPOSITION.get(disposition) or _enum(_DISPOSITION, disposition),
        dkim=None if dkim is None else _VERDICT.get(dkim) or _enum(_VERDICT, dkim),
        spf=None if spf is None else _VERDICT.get(spf) or _enum(_VERDICT, spf),
        reasons=tuple([OverrideReason(_enum(_OVERRIDE, r[0]), r[1]) for r in reasons])
        if reasons
        else (),
        header_from=domain(fields[_HEADER_FROM]),
        envelope_from=domain(fields[_ENVELOPE_FROM]),
        envelope_to=domain(fields[_ENVELOPE_TO]),
        # list comprehensions: cheaper than generators for the one or two items of each
        dkim_results=tuple(
            [
                DkimAuth(domain(r[1]), r[2], _AUTH.get(r[3]) or _enum(_AUTH, r[3]), r[4])
                for r in results
                if r[0] == _DKIM
            ]
        ),
        spf_results=tuple(
            [
                SpfAuth(
                    domain(r[1]), _enum(_SCOPE, r[2]), _AUTH.get(r[3]) or _enum(_AUTH, r[3]), r[4]
                )
                for r in results
                if r[0] == _SPF
            ]
        ),
        extensions=tuple(extensions),
    )
