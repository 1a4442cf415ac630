"""MEDS out and back in: valid, readable by meds_reader, lossless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import jumeau
from jumeau.export.meds import export_meds, meds_data_schema, meds_schemas
from jumeau.ingest.meds import MedsError, ingest_meds

KEY = ["subject_id", "time", "code", "numeric_value", "text_value", "unit", "end_time", "domain"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthea_store, eunomia_store):
    """A MEDS export of a store holding both Eunomia and Synthea data."""
    store, _ = eunomia_store
    out = tmp_path_factory.mktemp("meds") / "dataset"
    return store, out, export_meds(store, out, subjects_per_shard=1000)


def test_export_is_valid_meds(exported):
    store, out, counts = exported
    assert counts["subjects"] == 2694 and counts["shards"] == 3
    for shard in sorted((out / "data").glob("*.parquet")):
        schema = pq.read_schema(shard)
        assert schema.equals(meds_data_schema(), check_metadata=False)
        frame = pl.read_parquet(shard)
        assert frame.select(["subject_id", "time"]).equals(
            frame.select(["subject_id", "time"]).sort(["subject_id", "time"], nulls_last=False)
        )
    assert pq.read_schema(out / "metadata/codes.parquet").equals(
        meds_schemas()[1], check_metadata=False
    )
    splits = pl.read_parquet(out / "metadata/subject_splits.parquet")
    assert splits.height == 2694 and set(splits["split"]) == {"train", "tuning", "held_out"}
    codes = pl.read_parquet(out / "metadata/codes.parquet")
    described = dict(zip(codes["code"], codes["description"], strict=True))
    assert described["SNOMED/74474003"] == "Gastrointestinal hemorrhage"  # GiBleed's own outcome


def test_meds_reader_reads_the_export(exported, tmp_path):
    store, out, counts = exported
    converted = tmp_path / "reader"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "meds_reader_convert"),
            str(out),
            str(converted),
            "--num_threads",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    import meds_reader

    subject = int(store.subjects()[5])
    with meds_reader.SubjectDatabase(str(converted)) as db:
        assert len(db) == counts["subjects"]
        events = db[subject].events
        assert len(events) == store.timeline(subject).height
        assert sorted(e.code for e in events) == sorted(store.timeline(subject)["code"].to_list())


def test_meds_round_trip_is_lossless(exported, tmp_path):
    _, out, _ = exported
    store = jumeau.init(tmp_path / "store")
    report = ingest_meds(store, out)
    assert report.tables["meds/data"].read == report.events_written
    again = export_meds(store, tmp_path / "again")
    original = pl.read_parquet(out / "data/*.parquet")
    back = pl.read_parquet(tmp_path / "again" / "data/*.parquet")
    mapping = {sid: store.lookup("meds", str(sid)) for sid in original["subject_id"].unique()}
    original = original.with_columns(pl.col("subject_id").replace_strict(mapping))
    assert again["events"] == original.height
    assert original.sort(KEY, nulls_last=True).equals(back.sort(KEY, nulls_last=True))
    assert ingest_meds(store, out).events_written == 0


def test_meds_without_a_code_column_is_refused(tmp_path, new_store):
    (tmp_path / "bad" / "data").mkdir(parents=True)
    pl.DataFrame({"subject_id": [1], "time": [None]}).write_parquet(tmp_path / "bad/data/0.parquet")
    with pytest.raises(MedsError, match="lacks required column"):
        ingest_meds(new_store, tmp_path / "bad")
    assert new_store.stats()["events"] == 0


def test_a_meds_dataset_from_before_0_3_imports_by_its_old_column_names(tmp_path, new_store):
    """MEDS 0.2 (and meds_etl then) called the subject ``patient_id`` and the time ``timestamp``."""
    from datetime import datetime

    (tmp_path / "data" / "train").mkdir(parents=True)
    pl.DataFrame(
        {
            "patient_id": [11, 11],
            "timestamp": [datetime(1980, 1, 1), datetime(2020, 2, 3, 4, 5)],
            "code": ["MEDS_BIRTH", "LOINC/8480-6"],
            "numeric_value": [None, 131.0],
        }
    ).write_parquet(tmp_path / "data" / "train" / "0.parquet")
    report = ingest_meds(new_store, tmp_path)
    assert report.tables["meds/data"].accepted == 2
    events = new_store.timeline(new_store.lookup("meds", "11"))
    assert events["code"].to_list() == ["MEDS_BIRTH", "LOINC/8480-6"]
    assert events["time"][1] == datetime(2020, 2, 3, 4, 5) and events["numeric_value"][1] == 131.0
    # the same ids from another site's dataset are another patient
    assert ingest_meds(new_store, tmp_path, source_name="site-b").events_written == 2
    assert new_store.lookup("site-b", "11") != new_store.lookup("meds", "11")
    assert ingest_meds(new_store, tmp_path, source_name="site-b").events_written == 0


def test_meds_etl_omop_output_keeps_end_times_and_gets_domains_from_its_tables(tmp_path, new_store):
    """meds_etl's OMOP conversion names the end time ``end`` and the source table ``table``
    (``condition``, ``drug_exposure``, ``person``...): the end times are kept and the tables
    give the events their domains."""
    from datetime import datetime

    import pyarrow as pa

    (tmp_path / "data").mkdir()
    when, until = datetime(2019, 3, 1), datetime(2019, 3, 15)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([7, 7, 7, 7, 7], pa.int64()),
                "time": pa.array([datetime(1970, 5, 1), when, when, when, when]),
                "code": ["MEDS_BIRTH", "SNOMED/40055000", "RxNorm/1049221", "LOINC/8480-6", "X/1"],
                "numeric_value": pa.array([None, None, 1.0, 128.0, None], pa.float32()),
                "end": pa.array([None, until, until, None, None], pa.timestamp("us")),
                "table": ["person", "condition", "drug_exposure", "measurement", "custom"],
                "visit_id": pa.array([None, 3, 3, 3, None], pa.int64()),
            }
        ),
        tmp_path / "data" / "data_0.parquet",
    )
    ingest_meds(new_store, tmp_path)
    events = new_store.timeline(new_store.lookup("meds", "7"))
    by_code = {r["code"]: r for r in events.to_dicts()}
    assert [by_code[c]["domain"] for c in ("MEDS_BIRTH", "SNOMED/40055000", "RxNorm/1049221")] == [
        "demographic",
        "condition",
        "drug",
    ]
    assert by_code["LOINC/8480-6"]["domain"] == "measurement"
    assert by_code["X/1"]["domain"] == "other"  # not an OMOP table
    assert by_code["SNOMED/40055000"]["end_time"] == until
