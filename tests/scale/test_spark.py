"""Apache Spark reads the store's own files and sees the events the store shows."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import jumeau
from jumeau.model import CONNECTOR_SCHEMA, EVENT_COLUMNS
from jumeau.scale.spark import events
from jumeau.store import BatchWriter


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("jumeau-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(EVENT_COLUMNS).sort(["subject_id", "source", "record_key"])


def test_spark_reads_every_event_of_the_store_as_the_store_does(spark, eunomia_store):
    store, report = eunomia_store
    frame = events(spark, store.root)
    assert frame.columns == [*EVENT_COLUMNS, "batch"]
    assert frame.count() == report.events_written
    by_domain = {r["domain"]: r["count"] for r in frame.groupBy("domain").count().collect()}
    assert by_domain == store.stats()["events_by_domain"]
    subject = int(store.subjects()[42])
    rows = frame.filter(frame.subject_id == subject).drop("batch").collect()
    from_spark = pl.DataFrame([r.asDict() for r in rows], schema=store.scan().collect_schema())
    assert _sorted(from_spark).equals(_sorted(store.timeline(subject)))


def test_spark_reads_amended_records_in_their_new_version_and_the_past_as_it_was(spark, new_store):
    rng = np.random.default_rng(9)
    n = 500
    subjects = rng.integers(0, 2**63 - 1, n, dtype=np.int64)

    def batch(values: np.ndarray) -> pa.Table:
        return pa.table(
            {
                "subject_id": subjects,
                "time": pa.array(np.arange(n) * 10**9, pa.int64()).cast(pa.timestamp("us")),
                "code": ["LOINC/2160-0"] * n,
                "numeric_value": values,
                "text_value": pa.nulls(n, pa.string()),
                "unit": ["mg/dL"] * n,
                "end_time": pa.nulls(n, pa.timestamp("us")),
                "domain": ["measurement"] * n,
                "source": ["test/lab"] * n,
                "record_key": np.arange(n, dtype=np.int64),
            },
            schema=CONNECTOR_SCHEMA,
        )

    first = np.full(n, 1.0)
    with BatchWriter(new_store, "test", "lab") as w:
        w.add_events(batch(first))
        w.commit()
    committed = datetime.strptime(
        new_store.manifest.batches[0]["committed_at"], "%Y-%m-%dT%H:%M:%S%z"
    ).replace(tzinfo=None)
    time.sleep(1.1)  # commit times have a resolution of a second
    second = first.copy()
    second[:7] = 2.0
    with BatchWriter(new_store, "test", "lab") as w:
        w.add_events(batch(second))
        assert w.commit().events_amended == 7
    store = jumeau.open(new_store.root)
    now = events(spark, store)
    assert now.count() == n
    total = now.groupBy().sum("numeric_value").collect()[0][0]
    assert total == pytest.approx(float(second.sum()))
    assert total == pytest.approx(float(store.scan().collect()["numeric_value"].sum()))
    then = events(spark, store, known_at=committed)
    assert then.count() == n
    assert then.groupBy().sum("numeric_value").collect()[0][0] == pytest.approx(float(n))


def test_an_empty_store_is_a_clear_error(spark, new_store):
    with pytest.raises(ValueError, match="no committed batch"):
        events(spark, new_store)
