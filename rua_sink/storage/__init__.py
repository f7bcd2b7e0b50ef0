"""PostgreSQL (asyncpg): every SQL statement of rua-sink, the schema's migrations, the
embedded server.

``store.Store`` is the one object over the pool; its statements live by concern:
``writes`` (one message's transaction: raw copy, reports, records), ``queries`` (raw
messages listed, read again, pruned), ``partitions`` (the monthly record partitions),
``sources`` (the source addresses sender identification looks up), ``summary`` (``rua-sink
report``), all over ``rows`` (a row's values in column order, the raw message archived)
and ``copytext`` (records as COPY text). ``migrate`` applies ``migrations/``;
``database`` finds or starts the server. Nothing here imports the ingest or DNS.
"""
