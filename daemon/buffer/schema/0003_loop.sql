-- The loop issue: what each data set holds (lineage from an adapter back to Kafka offsets),
-- the scheduler's job history, and canary windows.

-- Which examples a snapshot froze; `replay` marks older examples mixed in against forgetting.
CREATE TABLE dataset_examples (
    dataset_id      VARCHAR NOT NULL,
    example_id      BIGINT  NOT NULL,
    replay          BOOLEAN NOT NULL,
    PRIMARY KEY (dataset_id, example_id)
);

-- Which preference pairs a snapshot froze for DPO.
CREATE TABLE dataset_pairs (
    dataset_id      VARCHAR NOT NULL,
    pair_id         BIGINT  NOT NULL,
    PRIMARY KEY (dataset_id, pair_id)
);

ALTER TABLE datasets ADD COLUMN n_replay INTEGER NOT NULL DEFAULT 0;
ALTER TABLE datasets ADD COLUMN pairs_path VARCHAR;

-- One row per run of a scheduled job (schedule or manual), with its outcome.
CREATE SEQUENCE job_run_seq;
CREATE TABLE job_runs (
    job_run_id      BIGINT PRIMARY KEY DEFAULT nextval('job_run_seq'),
    job             VARCHAR NOT NULL,             -- labeling | policies | training | evaluation | promotion | retention
    trigger         VARCHAR NOT NULL,             -- schedule | manual
    outcome         VARCHAR,                      -- ok | idle | skipped | failed (NULL while running)
    detail          VARCHAR,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    finished_at     TIMESTAMPTZ
);
CREATE INDEX job_runs_by_job ON job_runs (job, job_run_id);

-- A canary window: which adapter took which share of traffic against which live adapter, and how
-- it ended (promoted | rolled_back | stopped).
CREATE TABLE canaries (
    adapter_name    VARCHAR PRIMARY KEY,
    live_adapter    VARCHAR,
    share           DOUBLE NOT NULL,
    window_s        DOUBLE NOT NULL,
    min_requests    INTEGER NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    ended_at        TIMESTAMPTZ,
    outcome         VARCHAR,
    signals         JSON,
    reason          VARCHAR
);
