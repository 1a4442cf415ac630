"""Picking a test subject: a store's pseudonyms depend on its key, so a test picks by data."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from jumeau.model import DEATH_CODE


def living_subject_with(store, code: str, before: datetime) -> int:
    """The lowest pseudonym among subjects with a ``code`` event before ``before`` and no
    death recorded (a twin does not forecast the dead)."""
    died = store.scan().filter(pl.col("code") == DEATH_CODE).select("subject_id")
    measured = store.scan().filter((pl.col("code") == code) & (pl.col("time") < before))
    alive = measured.join(died, on="subject_id", how="anti")
    return int(alive.select("subject_id").collect()["subject_id"].min())
