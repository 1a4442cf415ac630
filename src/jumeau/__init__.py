"""jumeau: patient digital twins from real multi-scale health data."""

from jumeau.store import Store, StoreError, init, open

__all__ = ["Store", "StoreError", "init", "open"]
__version__ = "0.1.0"
