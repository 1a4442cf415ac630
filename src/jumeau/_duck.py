"""DuckDB connections and Arrow results queries across its 1.x and 2.x Python APIs.

Results are read through relations (``con.sql``): DuckDB 2.0's DB-API path copies rows and, with
``preserve_insertion_order`` off, may stream an ``ORDER BY`` out of order.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb
import pyarrow as pa


def sql_string(text: object) -> str:
    """``text`` as a SQL string literal (paths may hold quotes)."""
    return "'" + str(text).replace("'", "''") + "'"


def _relation(con: duckdb.DuckDBPyConnection, query: str, params: Any = None):
    return con.sql(query, params=params) if params else con.sql(query)


def arrow_table(con: duckdb.DuckDBPyConnection, query: str, params: Any = None) -> pa.Table:
    """The whole result of ``query`` as an Arrow table."""
    rel = _relation(con, query, params)
    if hasattr(rel, "to_arrow_table"):
        return rel.to_arrow_table()
    return rel.fetch_arrow_table()


def arrow_reader(
    con: duckdb.DuckDBPyConnection, query: str, params: Any = None, batch_size: int = 131_072
) -> pa.RecordBatchReader:
    """The result of ``query`` as a stream of Arrow record batches, in the query's order."""
    rel = _relation(con, query, params)
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_size)
    return rel.fetch_arrow_reader(batch_size)


def run(con: duckdb.DuckDBPyConnection, query: str, params: Any = None) -> list[tuple]:
    """Execute a statement to completion and return its rows (DuckDB 2.0 refuses new work on a
    connection whose previous result was not fully read)."""
    return con.execute(query, params).fetchall() if params else con.execute(query).fetchall()


def scalar(con: duckdb.DuckDBPyConnection, query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query``'s result."""
    rows = run(con, query, params)
    return rows[0][0] if rows else None


def connect(temp_dir=None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection set up for ingest work: UTC, no progress bar, a memory
    limit (``JUMEAU_MEMORY_LIMIT``, default 4GB), spilling to ``temp_dir``, and the macro
    ``shown(x)``: a value quoted and cut to 40 characters, as reject reasons name it."""
    con = duckdb.connect()
    run(con, "CREATE MACRO shown(x) AS '''' || left(CAST(x AS VARCHAR), 40) || ''''")
    run(con, "SET enable_progress_bar = false")
    run(con, "SET TimeZone = 'UTC'")
    run(con, f"SET memory_limit = '{os.environ.get('JUMEAU_MEMORY_LIMIT', '4GB')}'")
    if temp_dir is not None:
        run(con, f"SET temp_directory = '{temp_dir}'")
    return con
