-- The state machines' statuses as CHECK constraints, so a bug or a hand edit cannot leave a row in
-- a state the code does not know (the StrEnums: training/runs.py RunStatus, serving/registry.py
-- AdapterStatus, serving/canaries.py CanaryOutcome, job_history.py JobOutcome). DuckDB cannot add a
-- CHECK to an existing table, so each table is rebuilt with it; its rows are copied unchanged.

CREATE TABLE runs_checked (
    run_id          VARCHAR PRIMARY KEY,
    dataset_id      VARCHAR NOT NULL,
    kind            VARCHAR NOT NULL,             -- sft | sft+dpo
    status          VARCHAR NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    attempt         INTEGER NOT NULL DEFAULT 1,
    config          JSON NOT NULL,
    metrics         JSON,
    reason          VARCHAR,
    adapter_name    VARCHAR,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
INSERT INTO runs_checked
    SELECT run_id, dataset_id, kind, status, attempt, config, metrics, reason, adapter_name, started_at,
           finished_at, created_at
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_checked RENAME TO runs;

CREATE TABLE adapters_checked (
    name            VARCHAR PRIMARY KEY,          -- <base>-v<N>-<hash>
    version         INTEGER NOT NULL,
    run_id          VARCHAR,
    parent          VARCHAR,
    status          VARCHAR NOT NULL CHECK (status IN
                        ('candidate', 'evaluating', 'canary', 'live', 'retired', 'rejected', 'rolled_back')),
    path            VARCHAR NOT NULL,
    manifest        JSON NOT NULL,
    reason          VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    gated           BOOLEAN NOT NULL DEFAULT false
);
INSERT INTO adapters_checked
    SELECT name, version, run_id, parent, status, path, manifest, reason, created_at, updated_at, gated
    FROM adapters;
DROP TABLE adapters;
ALTER TABLE adapters_checked RENAME TO adapters;

CREATE TABLE canaries_checked (
    adapter_name    VARCHAR PRIMARY KEY,
    live_adapter    VARCHAR,
    share           DOUBLE NOT NULL,
    window_s        DOUBLE NOT NULL,
    min_requests    INTEGER NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    ended_at        TIMESTAMPTZ,
    outcome         VARCHAR CHECK (outcome IS NULL OR outcome IN ('promoted', 'rolled_back', 'stopped')),
    signals         JSON,
    reason          VARCHAR
);
INSERT INTO canaries_checked
    SELECT adapter_name, live_adapter, share, window_s, min_requests, started_at, ended_at, outcome, signals,
           reason
    FROM canaries;
DROP TABLE canaries;
ALTER TABLE canaries_checked RENAME TO canaries;

CREATE TABLE job_runs_checked (
    job_run_id      BIGINT PRIMARY KEY DEFAULT nextval('job_run_seq'),
    job             VARCHAR NOT NULL,
    trigger         VARCHAR NOT NULL,             -- schedule | manual
    outcome         VARCHAR CHECK (outcome IS NULL OR outcome IN ('ok', 'idle', 'skipped', 'failed')),
    detail          VARCHAR,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    finished_at     TIMESTAMPTZ
);
INSERT INTO job_runs_checked
    SELECT job_run_id, job, trigger, outcome, detail, started_at, finished_at FROM job_runs;
DROP TABLE job_runs;
ALTER TABLE job_runs_checked RENAME TO job_runs;
CREATE INDEX job_runs_by_job ON job_runs (job, job_run_id);
