"""The embedded patient store: one directory of Parquet and Arrow files, read with DuckDB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jumeau.store.layout import StoreError
from jumeau.store.report import IngestReport, Progress

if TYPE_CHECKING:
    from jumeau.store.store import Store, init, open
    from jumeau.store.writer import BatchWriter

__all__ = ["BatchWriter", "IngestReport", "Progress", "Store", "StoreError", "init", "open"]
_LAZY = {"Store": "store", "init": "store", "open": "store", "BatchWriter": "writer"}


def __getattr__(name: str):
    """The store and its writer, imported on first use (they load DuckDB, Polars, Arrow)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jumeau.store' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"jumeau.store.{module}"), name)
