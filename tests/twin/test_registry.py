"""Twins evolve with the store: incremental updates equal a full rebuild, and say what changed."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pyarrow as pa

import jumeau
from jumeau.model import EVENT_SCHEMA
from jumeau.store import BatchWriter
from jumeau.twin import build_twin
from jumeau.twin.registry import TwinRegistry

AS_OF = datetime(2021, 1, 1)


def _add(store, frame: pl.DataFrame, codes: dict) -> None:
    with BatchWriter(store, "test", "copy") as writer:
        writer.add_events(frame.select(EVENT_SCHEMA.names).to_arrow())
        writer.add_codes(pa.table({"code": list(codes), "description": list(codes.values())}))
        writer.commit()


def test_incremental_update_equals_a_full_rebuild(tmp_path, synthea_store):
    source, _ = synthea_store
    codes = source.code_descriptions()
    events = source.scan().collect()
    subjects = sorted(events["subject_id"].unique().to_list())
    active_at_as_of = (
        (pl.col("domain") == "condition")
        & (pl.col("time") <= AS_OF)
        & (pl.col("end_time").is_null() | (pl.col("end_time") > AS_OF))
    )  # the late subject must have problems still active then, for the diff to name them
    counts = events.filter(active_at_as_of).group_by("subject_id").len()
    late_subject = int(counts.sort(["len", "subject_id"], descending=True)["subject_id"][0])
    late = (pl.col("subject_id") == late_subject) & (
        pl.col("domain").is_in(["measurement", "condition"])
    )
    store = jumeau.init(tmp_path / "store")
    _add(store, events.filter(~late), codes)
    registry = TwinRegistry(store, AS_OF)
    first = registry.update()
    assert first["rebuilt"] == len(subjects) and first["to_version"] == 1
    before = registry.snapshot(late_subject)

    _add(store, events.filter(late), codes)  # new data arrives for one subject
    second = registry.update()
    assert second["rebuilt"] == 1 and second["from_version"] == 1 and second["to_version"] == 2
    (change,) = second["diffs"]
    assert change["subject_id"] == late_subject and change["new_problems"]
    assert registry.snapshot(late_subject) != before

    assert registry.snapshot(late_subject)["version"] == 2
    assert registry.versions(late_subject) == [1, 2]
    assert registry.snapshot(late_subject, version=1) == before
    fresh = jumeau.open(store.root)
    for subject in subjects:
        rebuilt = json.loads(json.dumps(build_twin(fresh, subject, AS_OF).to_dict(), default=str))
        kept = registry.snapshot(subject)
        (
            rebuilt.pop("version"),
            kept.pop("version"),
        )  # untouched twins keep the version they were built at
        assert kept == rebuilt, subject
    assert registry.update()["rebuilt"] == 0
