"""MEDS in, as the MEDS ETLs write it: domains and units said by the codes, parent codes kept."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from jumeau.export.meds import export_meds
from jumeau.ingest.meds import ingest_meds
from jumeau.store.store import code_ancestors
from tests.ingest.meds_etl_style import (
    ADMISSION,
    ATRIAL_FIBRILLATION,
    CREATININE,
    HYPERTENSION,
    PARENTS,
    write_dataset,
)


def test_codes_say_the_domain_and_the_unit_when_the_dataset_does_not(tmp_path, new_store):
    ingest_meds(new_store, write_dataset(tmp_path / "mimic"))
    events = new_store.timeline(new_store.lookup("meds", "10001"))
    by_code = {r["code"]: r for r in events.to_dicts()}
    assert by_code[CREATININE]["domain"] == "measurement"
    assert by_code[CREATININE]["unit"] == "mg/dL"
    assert by_code["LAB//51221//%"]["unit"] == "%"
    assert by_code[HYPERTENSION]["domain"] == by_code[ATRIAL_FIBRILLATION]["domain"] == "condition"
    assert by_code[HYPERTENSION]["unit"] is None  # "I10" is no unit
    assert by_code[ADMISSION]["domain"] == "visit" and by_code[ADMISSION]["unit"] is None
    assert by_code["GENDER//M"]["domain"] == by_code["MEDS_BIRTH"]["domain"] == "demographic"
    other = new_store.timeline(new_store.lookup("meds", "10002"))
    assert other.filter(pl.col("code") == "MEDS_DEATH")["domain"].to_list() == ["death"]


def test_parent_codes_are_kept_and_exported_again(tmp_path, new_store):
    ingest_meds(new_store, write_dataset(tmp_path / "mimic"))
    parents = new_store.code_parents()
    assert {code: list(p) for code, p in parents.items()} == PARENTS
    export_meds(new_store, tmp_path / "out")
    codes = pl.read_parquet(tmp_path / "out" / "metadata" / "codes.parquet")
    exported = {r["code"]: r["parent_codes"] for r in codes.to_dicts() if r["parent_codes"]}
    assert exported == PARENTS
    # and the export read back gives the same parents (a second store, the same dataset)
    assert ingest_meds(new_store, tmp_path / "out", source_name="again").events_written > 0
    assert new_store.code_parents() == parents


def test_codes_of_batches_from_before_parent_codes_still_read(tmp_path, new_store):
    import pyarrow.parquet as pq

    from jumeau.store import layout

    ingest_meds(new_store, write_dataset(tmp_path / "mimic"))
    (codes_file,) = new_store.batch_files(layout.CODES_PARQUET)
    old = pq.read_table(codes_file).drop_columns(["parent_codes"])
    pq.write_table(old, codes_file)
    new_store.refresh()
    assert new_store.code_parents() == {}
    assert new_store.code_descriptions()[CREATININE] == "Lab"


def test_code_ancestors_follow_the_hierarchy_up_and_stop_at_a_cycle():
    parents = {"local/1": ("LOINC/2160-0",), "LOINC/2160-0": ("LP/1",), "a": ("b",), "b": ("a",)}
    ancestors = code_ancestors(parents)
    assert ancestors["local/1"] == ("LOINC/2160-0", "LP/1")
    assert ancestors["a"] == ("b",) and ancestors["b"] == ("a",)


def _shard(path, subjects, codes, values, days=None):
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    days = days or list(range(1, len(codes) + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array(subjects, pa.int64()),
                "time": pa.array([datetime(2020, 1, d) for d in days]),
                "code": pa.array(codes, pa.string()),
                "numeric_value": pa.array(values, pa.float32()),
            }
        ),
        path,
    )


def test_bad_rows_are_rejected_by_file_and_row_and_the_rest_ingests(tmp_path, new_store):
    _shard(
        tmp_path / "d" / "data" / "0.parquet", [1, 1], ["LOINC/8480-6", "LOINC/8462-4"], [120, 80]
    )
    _shard(
        tmp_path / "d" / "data" / "1.parquet",
        [2, None, 2],
        ["LOINC/8480-6", "LOINC/8480-6", ""],
        [130, 1, 2],
    )
    report = ingest_meds(new_store, tmp_path / "d")
    assert (report.tables["meds/data"].read, report.tables["meds/data"].rejected) == (5, 2)
    assert report.events_written == 3
    rejects = new_store.rejects().sort("record")
    assert rejects["file"].to_list() == [str(tmp_path / "d" / "data" / "1.parquet")] * 2
    assert rejects["record"].to_list() == ["row 2", "row 3"]  # rows of that file
    assert rejects["reason"].to_list() == [
        "subject_id is missing or not an integer",
        "code is missing",
    ]


def test_values_of_the_wrong_type_and_unreadable_shards_are_rejected_alone(tmp_path, new_store):
    """A shard written with text columns (a time that is not one, a value that is not a
    number) rejects those rows, naming the value; a shard that is not Parquet is rejected
    whole; the other rows of the dataset are imported."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d" / "data"
    _shard(data / "0.parquet", [1], ["LOINC/8480-6"], [120])
    pq.write_table(
        pa.table(
            {
                "subject_id": ["2", "2", "2"],
                "time": ["2020-01-01 08:00:00", "yesterday", "2020-01-03"],
                "code": ["LOINC/8480-6"] * 3,
                "numeric_value": ["131", "132", "12,5"],
            }
        ),
        data / "1.parquet",
    )
    (data / "2.parquet").write_bytes(b"PAR1 cut short")
    report = ingest_meds(new_store, tmp_path / "d")
    assert (report.tables["meds/data"].read, report.tables["meds/data"].rejected) == (5, 3)
    reasons = {
        (Path(r["file"]).name, r["record"]): r["reason"]
        for r in new_store.rejects().iter_rows(named=True)
    }
    assert reasons[("1.parquet", "row 2")] == "time 'yesterday' is not a time"
    assert reasons[("1.parquet", "row 3")] == "numeric_value '12,5' is not a number"
    assert reasons[("2.parquet", "whole file")].startswith("not a readable Parquet file")
    second = new_store.timeline(new_store.lookup("meds", "2"))
    assert second.select("time", "numeric_value").rows() == [(datetime(2020, 1, 1, 8), 131.0)]


@pytest.mark.parametrize("range_rows", [12_000_000, 1])
def test_the_same_dataset_sharded_and_ordered_otherwise_adds_nothing(
    tmp_path, new_store, monkeypatch, range_rows
):
    """Identical rows (a measurement recorded twice) stay two events, and a re-export of the
    same dataset in another order and sharding is recognised row for row; mapped in one pass or
    one range of subjects at a time."""
    from jumeau.ingest import meds

    monkeypatch.setattr(meds, "RANGE_ROWS", range_rows)
    rows = [  # subject, code, value, day: the first two are the same measurement twice
        (1, "LOINC/8480-6", 120, 5),
        (1, "LOINC/8480-6", 120, 5),
        (1, "LOINC/8462-4", 80, 5),
        (2, "LOINC/8480-6", 150, 9),
    ]

    def write(path, part):
        _shard(path, *map(list, zip(*part, strict=True)))

    write(tmp_path / "a" / "data" / "0.parquet", rows)
    assert ingest_meds(new_store, tmp_path / "a").events_written == 4
    # the same rows, reversed and split in two shards
    write(tmp_path / "b" / "data" / "x.parquet", rows[::-1][:2])
    write(tmp_path / "b" / "data" / "y.parquet", rows[::-1][2:])
    again = ingest_meds(new_store, tmp_path / "b")
    assert (again.events_written, again.events_already_present) == (0, 4)


def test_the_data_folder_named_alone_still_finds_the_codes_metadata(tmp_path, new_store):
    root = write_dataset(tmp_path / "mimic")
    ingest_meds(new_store, root / "data")
    assert {code: list(p) for code, p in new_store.code_parents().items()} == PARENTS


def test_meds_birth_and_death_keep_their_domains_whatever_table_they_came_from(tmp_path, new_store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d" / "data").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "subject_id": pa.array([3, 3], pa.int64()),
                "time": pa.array([datetime(1950, 1, 1), datetime(2020, 1, 1)]),
                "code": ["MEDS_BIRTH", "MEDS_DEATH"],
                "table": ["person", "person"],
            }
        ),
        tmp_path / "d" / "data" / "0.parquet",
    )
    ingest_meds(new_store, tmp_path / "d")
    events = new_store.timeline(new_store.lookup("meds", "3"))
    assert events["domain"].to_list() == ["demographic", "death"]


MEDS_SAMPLE = Path(__file__).parent.parent / "data" / "meds-sample"


def test_the_meds_reference_sample_imports_and_its_twins_read_its_local_codes(new_store):
    # MEDS's own sample dataset (meds-testing-helpers): shards by split, static HEIGHT and eye
    # colour, local HR and TEMP codes whose parents are LOINC, temperatures in °F with no unit
    report = ingest_meds(new_store, MEDS_SAMPLE)
    assert report.tables["meds/data"].accepted == report.tables["meds/data"].read == 62
    assert len(new_store.subjects()) == 6
    subject = new_store.lookup("meds", "239684")
    events = new_store.timeline(subject)
    static = events.filter(pl.col("time").is_null())
    assert sorted(static["code"]) == ["EYE_COLOR//BROWN", "HEIGHT"]
    twin = new_store.twin(subject, as_of=datetime(2010, 5, 12))
    assert twin.variables["heart_rate"].last_value == pytest.approx(112.6, abs=1e-4)
    temperature = twin.variables["temperature"]
    assert temperature.units_inferred == 4 and not temperature.flagged
    assert temperature.last_value == pytest.approx((95.5 - 32) * 5 / 9, abs=1e-4)


def test_parent_codes_written_as_one_string_are_one_parent(tmp_path, new_store):
    dataset = tmp_path / "meds"
    shutil.copytree(MEDS_SAMPLE, dataset)
    codes = pl.read_parquet(dataset / "metadata" / "codes.parquet")
    codes.with_columns(pl.col("parent_codes").list.first()).write_parquet(
        dataset / "metadata" / "codes.parquet"
    )
    ingest_meds(new_store, dataset)
    assert new_store.code_ancestors()["HR"] == ("LOINC/8867-4",)


def test_parent_codes_of_another_type_are_refused_naming_the_file(tmp_path, new_store):
    dataset = tmp_path / "meds"
    shutil.copytree(MEDS_SAMPLE, dataset)
    pl.DataFrame({"code": ["HR"], "parent_codes": [8867]}).write_parquet(
        dataset / "metadata" / "codes.parquet"
    )
    with pytest.raises(Exception, match=r"codes\.parquet: parent_codes is BIGINT"):
        ingest_meds(new_store, dataset)


def test_an_icu_stays_heart_rate_is_forecast_hours_ahead(new_store):
    ingest_meds(new_store, MEDS_SAMPLE)
    subject = new_store.lookup("meds", "1195293")  # six heart rates over 80 minutes
    twin = new_store.twin(subject, as_of=datetime(2010, 6, 20, 20, 45))
    (in_one_hour,) = twin.forecast("heart_rate", horizons=["1h"])
    assert in_one_hour["date"] == "2010-06-20T21:45"
    low, high = in_one_hour["interval_95"]
    assert low < in_one_hour["median"] < high and 60 < in_one_hour["median"] < 160
