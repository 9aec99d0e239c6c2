-- evolvd buffer, schema version 1.
-- Every row keeps its lineage: Kafka topic/partition/offset for what came in, and for what the
-- daemon derived, the event it came from plus the model and labeler versions that produced it.

-- Ingest ---------------------------------------------------------------------------------------

CREATE TABLE events (
    id              VARCHAR PRIMARY KEY,          -- producer-assigned message id (dedup key)
    topic           VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    prompt          VARCHAR,                      -- plain prompt, or NULL when `messages` is used
    messages        JSON,                         -- OpenAI chat list
    response        VARCHAR,                      -- what production answered, if given
    metadata        JSON,
    ts              TIMESTAMPTZ,                  -- producer's timestamp (message `ts`)
    kafka_ts        TIMESTAMPTZ,                  -- broker timestamp
    prompt_hash     VARCHAR NOT NULL,             -- sha256 of the prompt text / messages JSON
    state           VARCHAR NOT NULL DEFAULT 'pending',  -- pending | labeling | labeled | skipped (| duplicate, 0006)
    ingested_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- Feedback, from the message that carried the prompt or from a later message with the same id.
CREATE TABLE feedback (
    event_id        VARCHAR NOT NULL,
    value           DOUBLE  NOT NULL,             -- up = 1, down = -1, or the producer's score
    raw             VARCHAR NOT NULL,             -- the value as sent
    topic           VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);

-- The position of the buffer in each partition: written in the same transaction as the events,
-- so the buffer and its position can never disagree (exactly-once into the buffer).
CREATE TABLE kafka_offsets (
    topic           VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     BIGINT  NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (topic, kafka_partition)
);

CREATE SEQUENCE dead_letter_seq;
CREATE TABLE dead_letters (
    dead_letter_id  BIGINT PRIMARY KEY DEFAULT nextval('dead_letter_seq'),
    topic           VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL,
    reason          VARCHAR NOT NULL,             -- a short code: not_json, oversized, ...
    detail          VARCHAR NOT NULL,             -- the precise message
    raw             BLOB,                         -- the bytes as received (NULL for a tombstone)
    received_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- Self-labeling -----------------------------------------------------------------------------

CREATE SEQUENCE sample_seq;
CREATE TABLE samples (                            -- one sampled chain-of-thought answer
    sample_id       BIGINT PRIMARY KEY DEFAULT nextval('sample_seq'),
    event_id        VARCHAR NOT NULL,
    model_version   VARCHAR NOT NULL,             -- adapter name or base model id that answered
    labeler_version VARCHAR NOT NULL,
    params          JSON NOT NULL,                -- temperature, k, prompt template hash, ...
    text            VARCHAR NOT NULL,
    answer          VARCHAR,                      -- extracted final answer, NULL when none
    answer_kind     VARCHAR,                      -- number | option | yes_no | span | free_form
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE labels (                             -- the vote over an event's samples
    event_id        VARCHAR PRIMARY KEY,
    answer          VARCHAR,
    confidence      DOUBLE NOT NULL,              -- share of samples agreeing with the winner
    n_samples       INTEGER NOT NULL,
    votes           JSON NOT NULL,
    model_version   VARCHAR NOT NULL,
    labeler_version VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE critique_seq;
CREATE TABLE critiques (
    critique_id     BIGINT PRIMARY KEY DEFAULT nextval('critique_seq'),
    event_id        VARCHAR NOT NULL,
    sample_id       BIGINT,                       -- the answer critiqued (NULL for a refinement)
    refinement_id   BIGINT,
    text            VARCHAR NOT NULL,
    score           DOUBLE,                       -- NULL when the score could not be parsed
    score_status    VARCHAR NOT NULL,             -- ok | malformed | missing
    principles_hash VARCHAR,
    model_version   VARCHAR NOT NULL,
    labeler_version VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE refinement_seq;
CREATE TABLE refinements (
    refinement_id   BIGINT PRIMARY KEY DEFAULT nextval('refinement_seq'),
    event_id        VARCHAR NOT NULL,
    source_sample_id BIGINT NOT NULL,
    critique_id     BIGINT NOT NULL,
    text            VARCHAR NOT NULL,
    answer          VARCHAR,
    accepted        BOOLEAN NOT NULL,
    reason          VARCHAR NOT NULL,
    model_version   VARCHAR NOT NULL,
    labeler_version VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE pair_seq;
CREATE TABLE preference_pairs (
    pair_id         BIGINT PRIMARY KEY DEFAULT nextval('pair_seq'),
    event_id        VARCHAR NOT NULL,
    prompt          VARCHAR NOT NULL,
    chosen          VARCHAR NOT NULL,
    rejected        VARCHAR NOT NULL,
    chosen_score    DOUBLE,
    rejected_score  DOUBLE,
    margin          DOUBLE NOT NULL,
    model_version   VARCHAR NOT NULL,
    labeler_version VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE example_seq;
CREATE TABLE training_examples (
    example_id      BIGINT PRIMARY KEY DEFAULT nextval('example_seq'),
    event_id        VARCHAR NOT NULL,
    format          VARCHAR NOT NULL,             -- cot | direct | refined
    prompt          VARCHAR NOT NULL,
    completion      VARCHAR NOT NULL,
    confidence      DOUBLE NOT NULL,
    safety_outcome  VARCHAR,                      -- allow | redact | quarantine (NULL: not checked yet)
    model_version   VARCHAR NOT NULL,
    labeler_version VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- Training, evaluation, serving -------------------------------------------------------------

CREATE TABLE datasets (                           -- a frozen Parquet snapshot
    dataset_id      VARCHAR PRIMARY KEY,          -- its content hash
    path            VARCHAR NOT NULL,
    n_examples      INTEGER NOT NULL,
    n_pairs         INTEGER NOT NULL,
    source_query    VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE runs (
    run_id          VARCHAR PRIMARY KEY,
    dataset_id      VARCHAR NOT NULL,
    kind            VARCHAR NOT NULL,             -- sft | dpo | sft+dpo
    status          VARCHAR NOT NULL,             -- queued | running | succeeded | failed
    attempt         INTEGER NOT NULL DEFAULT 1,
    config          JSON NOT NULL,
    metrics         JSON,
    reason          VARCHAR,
    adapter_name    VARCHAR,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE adapters (
    name            VARCHAR PRIMARY KEY,          -- <base>-v<N>-<hash>
    version         INTEGER NOT NULL,
    run_id          VARCHAR,
    parent          VARCHAR,
    status          VARCHAR NOT NULL,             -- candidate | evaluating | canary | live | retired | rejected | rolled_back
    path            VARCHAR NOT NULL,
    manifest        JSON NOT NULL,
    reason          VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE evaluation_seq;
CREATE TABLE evaluations (
    evaluation_id   BIGINT PRIMARY KEY DEFAULT nextval('evaluation_seq'),
    adapter_name    VARCHAR NOT NULL,
    baseline_name   VARCHAR NOT NULL,
    suite           VARCHAR NOT NULL,             -- heldout | golden | safety | forgetting | output_drift
    score           DOUBLE,
    baseline_score  DOUBLE,
    p_value         DOUBLE,
    details         JSON NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE swap_seq;
CREATE TABLE swaps (
    swap_id         BIGINT PRIMARY KEY DEFAULT nextval('swap_seq'),
    from_adapter    VARCHAR,
    to_adapter      VARCHAR,
    action          VARCHAR NOT NULL,             -- promote | canary | rollback | reapply | restore
    outcome         VARCHAR NOT NULL,             -- ok | rejected | failed
    reason          VARCHAR,
    duration_ms     DOUBLE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- Policies ----------------------------------------------------------------------------------

CREATE SEQUENCE decision_seq;
CREATE TABLE policy_decisions (
    decision_id     BIGINT PRIMARY KEY DEFAULT nextval('decision_seq'),
    policy          VARCHAR NOT NULL,             -- safety | drift | training | promotion
    policy_hash     VARCHAR NOT NULL,             -- content hash of the policy file in force
    subject_kind    VARCHAR NOT NULL,             -- event | example | dataset | run | adapter
    subject_id      VARCHAR NOT NULL,
    outcome         VARCHAR NOT NULL,             -- allow | redact | quarantine | block | promote | reject | rollback
    reasons         JSON NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
