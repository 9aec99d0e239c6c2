-- Secrets that belong to the data, not to one process: the held-out slice's hash key and the key that
-- seals the gateway's capture records. They live in the buffer so every process sharing it agrees,
-- and a producer, who never sees them, can neither choose held-out prompts nor forge a served answer.
CREATE TABLE buffer_keys (
    name        VARCHAR PRIMARY KEY,
    value       VARCHAR NOT NULL,                 -- hex, from Python's `secrets` (a CSPRNG)
    created_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- (No column changes: events.state gains the value 'duplicate', an event whose prompt was labeled
-- already through an earlier event; it is stored for drift and lineage, never labeled again.)
