"""``Store``: the one object over the pool that the ingest and the commands hold.

Its statements live by concern: ``writes`` (one message's transaction), ``queries``
(listing, reading again, pruning), ``partitions`` (the monthly record partitions), on
the rows of ``rows``.
"""

from __future__ import annotations

from rua_sink.storage.queries import Queries
from rua_sink.storage.writes import Writes


class Store(Writes, Queries):
    """Queries on one pool; the ingest transaction is driven by ``ingest.Ingester``."""
