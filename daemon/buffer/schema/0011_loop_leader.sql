-- The loop's leadership on a shared buffer: one row, whose token grows by one with every election
-- (evolvd.buffer.leadership). A promotion decision carries the token of the term it was made in, and
-- is refused when a newer term began: a leader cut off from the others cannot promote.
-- A single daemon on one DuckDB file is its loop's only member and leaves the token at 0.
CREATE TABLE loop_leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token       BIGINT NOT NULL,
    holder      VARCHAR,
    elected_at  TIMESTAMPTZ
);
INSERT INTO loop_leader (id, token) VALUES (1, 0);
ALTER TABLE policy_decisions ADD COLUMN fencing_token BIGINT;
