-- One row per `rua-sink prune` that finished: when, and with which cutoffs and counts.
-- Prune runs as a CronJob (or a compose service), which Prometheus does not scrape; `serve`
-- reads the latest finished_at from here into rua_sink_prune_last_success_timestamp_seconds,
-- so that an alert can say when retention has stopped running. Each prune deletes the rows
-- older than its own cutoff: the table holds a year or so of daily rows at most.
CREATE TABLE prune_runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    cutoff          timestamptz NOT NULL,
    failure_cutoff  timestamptz NOT NULL,
    counts          jsonb NOT NULL
);

-- The scrape asks for max(finished_at): one index lookup.
CREATE INDEX prune_runs_finished_at ON prune_runs (finished_at);
