"""The buffer: everything evolvd ingests and derives, with lineage, behind one interface (`Buffer`), in
an embedded DuckDB file or a shared PostgreSQL database."""

from evolvd.buffer.duckdb_buffer import BufferLockedError, DuckDBBuffer, rows_as_dicts, transaction
from evolvd.buffer.migrations import SchemaTooNewError
from evolvd.buffer.sql import Buffer, Sql

__all__ = [
    "Buffer",
    "BufferLockedError",
    "DuckDBBuffer",
    "SchemaTooNewError",
    "Sql",
    "rows_as_dicts",
    "transaction",
]
