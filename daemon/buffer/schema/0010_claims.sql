-- Labelers on a shared buffer claim the events they work on: a claim names the labeler and lasts
-- until its lease runs out, so the events of a labeler killed mid-batch are claimed again later.
-- A single daemon on one DuckDB file never claims (it is its buffer's only labeler).
ALTER TABLE events ADD COLUMN claimed_by VARCHAR;
ALTER TABLE events ADD COLUMN claimed_until TIMESTAMPTZ;
