"""The DuckDB buffer: everything evolvd ingests and derives, with lineage, behind one interface."""

from evolvd.buffer.duckdb_buffer import BufferLockedError, DuckDBBuffer, rows_as_dicts, transaction
from evolvd.buffer.migrations import SchemaTooNewError

__all__ = ["BufferLockedError", "DuckDBBuffer", "SchemaTooNewError", "rows_as_dicts", "transaction"]
