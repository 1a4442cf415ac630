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
        twin = build_twin(fresh, subject, AS_OF, population=registry.population)
        rebuilt = json.loads(json.dumps(twin.to_dict(), default=str))
        kept = registry.snapshot(subject)
        (
            rebuilt.pop("version"),
            kept.pop("version"),
        )  # untouched twins keep the version they were built at
        assert kept == rebuilt, subject
    assert registry.update()["rebuilt"] == 0


def test_the_registry_builds_its_twins_on_the_population_jumeau_twin_learns(tmp_path, synthea_dir):
    """A registry snapshot and ``jumeau twin`` agree on the same store; the registry keeps its
    population for its incremental updates."""
    from jumeau.ingest.fhir import ingest_fhir
    from jumeau.twin import PopulationModel

    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, synthea_dir)
    registry = TwinRegistry(store, AS_OF)
    registry.update()
    population = PopulationModel.fit_cached(store, AS_OF)
    assert registry.population.to_dict() == population.to_dict()
    assert (registry.dir / "population.json").exists()
    subject = int(store.subjects()[0])
    twin = build_twin(store, subject, AS_OF, population=population)
    assert registry.snapshot(subject) == json.loads(json.dumps(twin.to_dict(), default=str))
    # opened again (as after an ingest), the registry reads its population back
    assert TwinRegistry(store, AS_OF).population.to_dict() == population.to_dict()


def test_a_registry_built_by_other_twin_code_is_rebuilt_whole_on_a_refitted_population(
    tmp_path, synthea_full_store
):
    """After an upgrade of jumeau's twin code, the next update rebuilds every twin (not only
    those new data touched) on a population fitted again; the same code keeps both. (The
    3 bundled patients fit no blood-pressure population: it needs the 20 shared ones.)"""
    source, _ = synthea_full_store
    store = jumeau.init(tmp_path / "store")
    _add(store, source.scan().collect(), source.code_descriptions())
    registry = TwinRegistry(store, AS_OF)
    subjects = registry.update()["rebuilt"]
    pinned = registry.dir / "population.json"
    tampered = json.loads(pinned.read_text())
    tampered["sbp"]["prior_mean"] = 999.0
    pinned.write_text(json.dumps(tampered))

    same_code = TwinRegistry(store, AS_OF)
    assert same_code.population.noise["sbp"].prior_mean == 999.0  # pinned: read back as kept
    assert same_code.update()["rebuilt"] == 0

    state = json.loads(registry.state_file.read_text())
    registry.state_file.write_text(json.dumps({**state, "code": "written-by-another-version"}))
    upgraded = TwinRegistry(store, AS_OF)
    assert upgraded.built_by_other_code and upgraded.version == 0
    assert upgraded.population.noise["sbp"].prior_mean != 999.0  # fitted again
    result = upgraded.update()
    assert result["rebuilt"] == subjects and len(result["diffs"]) == subjects
    assert not TwinRegistry(store, AS_OF).built_by_other_code
    assert TwinRegistry(store, AS_OF).update()["rebuilt"] == 0
    subject = int(store.subjects()[0])
    assert registry.versions(subject) == [1, 1]  # the twin built by the old code is kept in history
    latest = registry.dir / f"{subject}.json"
    latest.write_text(json.dumps({**json.loads(latest.read_text()), "built": "second"}))
    state = json.loads(registry.state_file.read_text())
    registry.state_file.write_text(json.dumps({**state, "code": "yet another version"}))
    TwinRegistry(store, AS_OF).update()  # built a third time at the same store version
    assert registry.versions(subject) == [1, 1, 1]
    history = registry.dir / "history"
    first, second = (
        json.loads((history / f"{subject}-{n}.json").read_text()) for n in ("v1", "v1.1")
    )
    assert "built" not in first and second["built"] == "second"  # neither written over
    assert "built" not in registry.snapshot(subject, version=1)  # the latest built at version 1
