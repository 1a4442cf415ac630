"""jumeau: patient digital twins from real multi-scale health data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jumeau.store.layout import StoreError

if TYPE_CHECKING:
    from jumeau.store.store import Store, init, open

__all__ = ["Store", "StoreError", "init", "open"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The store's API, imported on first use: ``jumeau --help`` need not load the data stack."""
    if name in ("Store", "init", "open"):
        from jumeau.store import store

        return getattr(store, name)
    raise AttributeError(f"module 'jumeau' has no attribute {name!r}")
