"""DuckDB functions the tables' owners use, defined in the shared PostgreSQL database with DuckDB's
results, so each owner's SQL is written once for both backends.

- `md5_number(text)`: the MD5 digest read as one little-endian unsigned 128-bit number (DuckDB's
  UHUGEINT), as `numeric`. The held-out slice is `md5_number(key || prompt_hash) % 100`: the same
  prompts must be held out whichever backend a buffer lives on (tests/test_postgres_buffer.py checks
  the values against DuckDB's).
- `to_seconds(double precision)`: an interval of that many seconds.

Defined (CREATE OR REPLACE) every time a member migrates, under the migration lock."""

from __future__ import annotations

DUCKDB_FUNCTIONS = """
CREATE OR REPLACE FUNCTION md5_number(value text) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sum(get_byte(digest.bytes, i)::numeric * (256::numeric ^ i))
    FROM (SELECT decode(md5(value), 'hex') AS bytes) AS digest, generate_series(0, 15) AS i
$$;
CREATE OR REPLACE FUNCTION to_seconds(seconds double precision) RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT make_interval(secs => seconds)
$$;
"""
