"""A store read by Apache Spark: the same batch files, the same current events.

The embedded store is a folder of Parquet batches named by one manifest; a Spark cluster reads
those files where they are (a shared file system or an object store mounted the same way) and
gets the events the store itself shows: every committed batch's, less the records a later batch
amends, with ``known_at`` the store as it was. Nothing is copied and nothing is computed outside
Spark, so a warehouse-sized store is scanned, grouped and joined with Spark's own planner.

Needs ``pyspark`` (``pip install 'jumeau[spark]'``) and a Java runtime.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jumeau.model import EVENT_COLUMNS
from jumeau.store.store import Store

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def events(
    spark: SparkSession, store: Store | str | Path, *, known_at: datetime | None = None
) -> DataFrame:
    """The store's current events as a Spark DataFrame (the canonical columns and ``batch``).

    Parameters
    ----------
    spark:
        The Spark session that reads the files.
    store:
        A :class:`~jumeau.store.Store` or its directory (no key is needed to read events).
    known_at:
        Read the store as it was then: only batches committed by ``known_at``, and only their
        amendments.
    """
    from pyspark.sql import functions as F

    store = store if isinstance(store, Store) else Store(store)
    batches = store.current_batch_files(known_at=known_at)
    if not batches:
        raise ValueError(f"{store.root}: the store has no committed batch to read")
    frames = []
    for path, amended in batches:
        frame = spark.read.parquet(str(path)).withColumn("batch", F.lit(path.parent.name))
        if amended:
            replaced = spark.read.parquet(*map(str, amended)).select("source", "record_key")
            frame = frame.join(replaced, on=["source", "record_key"], how="left_anti")
        frames.append(frame)
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out.select(*EVENT_COLUMNS, "batch")
