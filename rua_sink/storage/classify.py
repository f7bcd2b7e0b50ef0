"""Who sends as a domain, and is each sender legitimate: the sources of a domain over a
period, each with its class.

The rules live in the database, in the function ``dmarc_sources(domain, since, until)`` of
migration 0009, so that the command line, the dashboards and an operator's psql apply the
same ones; docs/classification.md explains them. This module holds the queries on it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rua_sink.storage.rows import Conn

#: The classes, in the order the documentation gives them.
CLASSES = ("authorized", "forwarded", "misconfigured", "suspicious")

_SOURCES = """
SELECT source, messages, passing, failing, ptr_name, ptr_confirmed, service, forwarder,
       country, asn, as_org, classification
FROM dmarc_sources($1, $2, $3)
WHERE ($4::boolean IS NOT TRUE OR failing > 0)
  AND ($5::text IS NULL OR classification = $5)
ORDER BY {order}, source
"""
_ORDERS = {"messages": "messages DESC", "failing": "failing DESC, messages DESC"}


def pass_rate(passing: int, messages: int) -> float | None:
    """Percent of messages passing DMARC, one decimal; None without messages."""
    return round(100.0 * passing / messages, 1) if messages else None


async def sources(
    conn: Conn,
    domain: str,
    since: datetime,
    until: datetime,
    *,
    failing: bool = False,
    classification: str | None = None,
) -> list[dict[str, Any]]:
    """Every source of ``domain`` whose reports' periods began in [since, until), most
    messages first (most failing first with ``failing``): its counts, what sender
    identification knows of it, and its class."""
    sql = _SOURCES.format(order=_ORDERS["failing" if failing else "messages"])
    rows = await conn.fetch(sql, domain, since, until, failing, classification)
    return [{**dict(r), "pass_rate": pass_rate(r["passing"], r["messages"])} for r in rows]
