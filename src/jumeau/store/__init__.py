"""The embedded patient store: one directory of Parquet and Arrow files, read with DuckDB."""

from jumeau.store.layout import StoreError
from jumeau.store.report import IngestReport, Progress
from jumeau.store.store import Store, init, open
from jumeau.store.writer import BatchWriter

__all__ = ["BatchWriter", "IngestReport", "Progress", "Store", "StoreError", "init", "open"]
