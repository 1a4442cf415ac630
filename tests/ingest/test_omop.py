"""OMOP CDM ingest, specified on the real Eunomia GiBleed database."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pytest

import jumeau
from jumeau.ingest.omop import SPECS, ingest_omop
from jumeau.ingest.omop_sources import OmopSourceError

EVENT_TABLES = [t for t in SPECS]


def source_counts(eunomia: Path) -> dict[str, int]:
    """Rows of each CDM table the Eunomia file holds (it has no v5.4 ``episode`` table)."""
    con = duckdb.connect(str(eunomia), read_only=True)
    present = {r[0].lower() for r in con.execute("SHOW TABLES").fetchall()}
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in ["person", *EVENT_TABLES]
        if t in present
    }
    con.close()
    return counts


def test_every_table_reconciles_with_the_source(eunomia_store, eunomia):
    store, report = eunomia_store
    expected = source_counts(eunomia)
    by_source = store.stats()["events_by_source"]
    rejects = store.rejects().group_by("source").len()
    rejected = dict(zip(rejects["source"], rejects["len"], strict=True))
    assert set(expected) >= {"person", "condition_occurrence", "payer_plan_period"}
    assert {t.removeprefix("omop/") for t in report.tables} == set(expected)
    for table, n in expected.items():
        counts = report.tables[f"omop/{table}"]
        assert counts.read == n, table
        assert counts.accepted + counts.rejected == n, table
        assert rejected.get(f"omop/{table}", 0) == counts.rejected, table
        if table != "person":
            assert by_source.get(f"omop/{table}", 0) == counts.accepted, table
    assert report.tables["omop/condition_occurrence"].accepted == 65332
    assert report.tables["omop/drug_exposure"].accepted == 67707
    assert report.tables["omop/measurement"].accepted == 44053


def test_person_gives_birth_and_demographics(eunomia_store, eunomia):
    store, _ = eunomia_store
    events = store.scan().filter(pl.col("source") == "omop/person").collect()
    assert (events["code"] == "MEDS_BIRTH").sum() == 2694
    genders = events.filter(pl.col("code").str.starts_with("Gender/"))
    assert genders.height == 2694 and set(genders["code"]) == {"Gender/F", "Gender/M"}
    assert genders["time"].is_null().all()


def test_eunomia_header_rows_loaded_as_data_are_rejected_as_no_record(eunomia_store):
    """Eunomia's DuckDB file holds its empty tables as one row of column names (header-only
    CSV files read without their header): that row is rejected as what it is, and the table is
    read, empty, under those names."""
    store, report = eunomia_store
    rejects = store.rejects()
    tables = ("visit_detail", "device_exposure", "death", "specimen", "note", "payer_plan_period")
    for table in tables:
        counts = report.tables[f"omop/{table}"]
        assert (counts.read, counts.rejected, counts.events) == (1, 1, 0)
        (reject,) = rejects.filter(pl.col("source") == f"omop/{table}").iter_rows(named=True)
        assert reject["record"] == "row 1"
        assert "column names" in reject["reason"] and "header" in reject["reason"]
    (warning,) = [w for w in report.warnings if "header loaded as data" in w]
    assert warning.startswith(", ".join(f"omop/{t}" for t in sorted(tables)) + ":")
    assert not store.scan().filter(pl.col("domain") == "death").collect().height


def test_a_table_loaded_with_its_header_as_a_row_is_read_under_that_header(tmp_path, eunomia):
    """A table loaded from a CSV file without telling its header (DuckDB's sniffer on text
    columns names them column0...) keeps its records: read under the names in its first row."""
    source = tmp_path / "cdm.duckdb"
    shutil.copy(eunomia, source)
    csv = tmp_path / "death.csv"
    csv.write_text(
        "PERSON_ID,DEATH_DATE,DEATH_TYPE_CONCEPT_ID\n6,2019-03-04,32817\n7,not a date,32817\n"
    )
    con = duckdb.connect(str(source))
    con.execute("DROP TABLE death")
    con.execute(f"CREATE TABLE death AS SELECT * FROM read_csv('{csv}', header=false)")
    assert con.execute("SELECT count(*) FROM death").fetchall() == [(3,)]
    con.close()
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, source)
    counts = report.tables["omop/death"]
    assert (counts.read, counts.accepted, counts.rejected, counts.events) == (3, 1, 2, 1)
    rejects = store.rejects().filter(pl.col("source") == "omop/death").sort("record")
    assert rejects["record"].to_list() == ["row 1", "row 3"]
    assert "column names" in rejects["reason"][0] and "death_date" in rejects["reason"][1]
    (death,) = (
        store.timeline(store.lookup("omop", "6"))
        .filter(pl.col("domain") == "death")
        .iter_rows(named=True)
    )
    assert death["time"] == dt.datetime(2019, 3, 4)


def test_orphan_observation_periods_are_rejected_not_dropped(eunomia_store, eunomia):
    store, report = eunomia_store
    con = duckdb.connect(str(eunomia), read_only=True)
    orphans = con.execute(
        "SELECT count(*) FROM observation_period WHERE person_id NOT IN (SELECT person_id FROM person)"
    ).fetchall()[0][0]
    assert orphans > 0
    assert report.tables["omop/observation_period"].rejected == orphans
    reasons = store.rejects().filter(pl.col("source") == "omop/observation_period")["reason"]
    assert set(reasons) == {"person_id not found in the person table"}


def test_rows_sharing_an_id_are_kept_and_reported(eunomia_store, eunomia):
    _, report = eunomia_store
    con = duckdb.connect(str(eunomia), read_only=True)
    for table, id_col in (("drug_exposure", "drug_exposure_id"), ("measurement", "measurement_id")):
        sharing = con.execute(
            f"SELECT count(*) FROM {table} WHERE {id_col} IN "
            f"(SELECT {id_col} FROM {table} GROUP BY 1 HAVING count(*) > 1)"
        ).fetchall()[0][0]
        exact_copies = con.execute(
            f"SELECT count(*) - count(DISTINCT {table}) FROM {table} WHERE {id_col} IN "
            f"(SELECT {id_col} FROM {table} GROUP BY 1 HAVING count(*) > 1)"
        ).fetchall()[0][0]
        assert sharing > 0
        (warning,) = [w for w in report.warnings if f"omop/{table}:" in w]
        assert warning.startswith(
            f"omop/{table}: {sharing - exact_copies} rows share their {id_col}"
        )
        counts = report.tables[f"omop/{table}"]
        assert counts.events == counts.read - counts.rejected


def test_shared_ids_are_found_alike_in_memory_and_by_duckdb(
    eunomia_store, eunomia, tmp_path, monkeypatch
):
    from jumeau.ingest import omop

    _, in_memory = eunomia_store
    monkeypatch.setattr(omop, "_SORTED_IDS_LIMIT", 0)  # every table grouped by DuckDB
    grouped = ingest_omop(jumeau.init(tmp_path / "store"), eunomia)
    assert sorted(grouped.warnings) == sorted(in_memory.warnings)
    assert grouped.events_written == in_memory.events_written


@pytest.mark.parametrize("person_id", [6, 123, 2790])
def test_a_patient_timeline_matches_the_source_rows(eunomia_store, eunomia, person_id):
    store, _ = eunomia_store
    subject = store.lookup("omop", str(person_id))
    timeline = store.timeline(subject)
    con = duckdb.connect(str(eunomia), read_only=True)
    queries = {
        "omop/condition_occurrence": "SELECT condition_start_date, condition_concept_id, condition_end_date FROM condition_occurrence",
        "omop/drug_exposure": "SELECT drug_exposure_start_date, drug_concept_id, drug_exposure_end_date FROM drug_exposure",
        "omop/procedure_occurrence": "SELECT procedure_date, procedure_concept_id, NULL FROM procedure_occurrence",
        "omop/measurement": "SELECT measurement_date, measurement_concept_id, NULL FROM measurement",
        "omop/visit_occurrence": "SELECT visit_start_date, visit_concept_id, visit_end_date FROM visit_occurrence",
    }
    concept = dict(
        (cid, f"{vocab}/{code}")
        for cid, vocab, code in con.execute(
            "SELECT concept_id, vocabulary_id, concept_code FROM concept"
        ).fetchall()
    )
    concept.update({9201: "Visit/IP", 9202: "Visit/OP", 9203: "Visit/ER"})
    total = 0
    for source, query in queries.items():
        rows = con.execute(query.replace(" FROM ", ", person_id FROM ")).fetchall()
        expected = sorted(
            (
                dt.datetime.combine(start, dt.time()),
                concept.get(cid, f"OMOP/{cid}"),
                dt.datetime.combine(end, dt.time()) if end else None,
            )
            for start, cid, end, pid in rows
            if pid == person_id
        )
        got = timeline.filter(pl.col("source") == source)
        actual = sorted(zip(got["time"], got["code"], got["end_time"], strict=True))
        assert actual == expected, source
        total += len(expected)
    assert total > 0
    birth = timeline.filter(pl.col("code") == "MEDS_BIRTH")["time"][0]
    year = con.execute(
        f"SELECT year_of_birth FROM person WHERE person_id = {person_id}"
    ).fetchall()[0][0]
    assert birth.year == year
    assert timeline["subject_id"].unique().to_list() == [subject]


def test_timeline_is_in_time_order_with_static_facts_first(eunomia_store):
    store, _ = eunomia_store
    subject = int(store.subjects()[10])
    times = store.timeline(subject)["time"]
    static = times.is_null()
    assert static.head(int(static.sum())).all()
    assert times.drop_nulls().is_sorted()


def test_reingesting_the_same_source_adds_nothing(eunomia_store, eunomia):
    store, first = eunomia_store
    before = store.stats()
    again = ingest_omop(store, eunomia)
    assert not again.committed
    assert again.events_written == 0 and again.rejects_written == 0
    assert again.events_already_present == first.events_written
    assert store.stats() == before


def _export_csv(eunomia: Path, folder: Path, tables: list[str]) -> None:
    folder.mkdir(parents=True)
    con = duckdb.connect(str(eunomia), read_only=True)
    for t in tables:
        con.execute(f"COPY {t} TO '{folder / (t + '.csv')}' (HEADER)")
    con.close()


def test_csv_folder_with_bad_rows_rejects_them_and_keeps_the_rest(tmp_path, eunomia):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "condition_occurrence"])
    good = (folder / "condition_occurrence.csv").read_text().splitlines()
    header = good[0].split(",")
    bad_rows = []
    for change in (
        {"CONDITION_START_DATE": "2019-13-45"},
        {"PERSON_ID": "abc"},
        {"PERSON_ID": "99999999"},
    ):
        row = good[1].split(",")
        row[0] = str(10_000_000 + len(bad_rows))
        for col, value in change.items():
            row[header.index(col)] = value
        bad_rows.append(",".join(row))
    (folder / "condition_occurrence.csv").write_text("\n".join([*good, *bad_rows]) + "\n")
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/condition_occurrence"]
    assert counts.read == len(good) - 1 + 3
    assert counts.rejected == 3 and counts.accepted == len(good) - 1
    rejects = store.rejects().filter(pl.col("source") == "omop/condition_occurrence").sort("record")
    reasons = set(rejects["reason"])
    assert "CONDITION_START_DATE '2019-13-45' is not a date".lower() in {r.lower() for r in reasons}
    assert "person_id is not an integer" in reasons
    assert "person_id not found in the person table" in reasons
    assert set(rejects["file"]) == {str(folder / "condition_occurrence.csv")}
    n = len(good) - 1
    assert set(rejects["record"]) == {f"row {n + 1}", f"row {n + 2}", f"row {n + 3}"}


def test_death_note_specimen_visit_detail_and_device_rows_map_to_their_events(tmp_path, eunomia):
    """The CDM tables Eunomia leaves empty, with rows as a warehouse holds them (CDM v5.4 CSV);
    an insurance cover is a sociodemographic fact over its period."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept"])
    con = duckdb.connect(str(eunomia), read_only=True)
    (mrn,) = con.execute("SELECT person_source_value FROM person WHERE person_id = 6").fetchone()
    con.close()
    tables = {
        "death": "person_id,death_date,death_datetime,death_type_concept_id,cause_concept_id\n"
        "6,2019-03-04,2019-03-04 10:30:00,32817,4329847\n",
        "note": "note_id,person_id,note_date,note_datetime,note_type_concept_id,"
        "note_class_concept_id,note_title,note_text\n"
        f'1,6,2018-01-02,2018-01-02 09:00:00,32831,44814637,Discharge,"Chest pain, resolved. '
        f'Patient {mrn}, call 06 12 34 56 78."\n',
        "specimen": "specimen_id,person_id,specimen_concept_id,specimen_type_concept_id,"
        "specimen_date,specimen_datetime,quantity,unit_concept_id\n"
        "1,6,4001225,32817,2018-01-03,,2.5,8587\n",
        "visit_detail": "visit_detail_id,person_id,visit_detail_concept_id,"
        "visit_detail_start_date,visit_detail_start_datetime,visit_detail_end_date,"
        "visit_detail_end_datetime,visit_detail_type_concept_id,visit_occurrence_id\n"
        "1,6,9201,2018-01-01,,2018-01-05,,32817,1\n",
        "device_exposure": "device_exposure_id,person_id,device_concept_id,"
        "device_exposure_start_date,device_exposure_start_datetime,device_exposure_end_date,"
        "device_exposure_end_datetime,device_type_concept_id,quantity\n"
        "1,6,4044008,2018-01-02,,2018-03-02,,32817,1\n",
        "episode": "episode_id,person_id,episode_concept_id,episode_start_date,episode_end_date,"
        "episode_object_concept_id,episode_type_concept_id,episode_number\n"
        "1,6,32528,2018-02-01,2018-07-31,192671,32817,1\n",
        "payer_plan_period": "payer_plan_period_id,person_id,payer_plan_period_start_date,"
        "payer_plan_period_end_date,payer_concept_id,payer_source_value,payer_source_concept_id\n"
        "1,6,2017-01-01,2018-12-31,0,Medicare,0\n",
    }
    for table, text in tables.items():
        (folder / f"{table}.csv").write_text(text)
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    for table in tables:
        counts = report.tables[f"omop/{table}"]
        assert (counts.read, counts.accepted, counts.events) == (1, 1, 1), table
    events = store.timeline(store.lookup("omop", "6"))
    by_source = {row["source"]: row for row in events.iter_rows(named=True)}
    death = by_source["omop/death"]
    assert (death["code"], death["domain"]) == ("MEDS_DEATH", "death")
    assert death["time"] == dt.datetime(2019, 3, 4, 10, 30)
    assert death["text_value"] == "SNOMED/22298006"  # the cause, through the concept table
    note = by_source["omop/note"]
    assert note["domain"] == "note"
    assert note["text_value"] == "Chest pain, resolved. Patient [ID], call [PHONE]."
    assert note["time"] == dt.datetime(2018, 1, 2, 9)
    specimen = by_source["omop/specimen"]
    assert specimen["numeric_value"] == 2.5 and specimen["time"] == dt.datetime(2018, 1, 3)
    assert specimen["code"] == "OMOP/4001225"  # not in Eunomia's vocabulary: kept as OMOP/<id>
    detail = by_source["omop/visit_detail"]
    assert detail["code"] == "Visit/IP" and detail["end_time"] == dt.datetime(2018, 1, 5)
    device = by_source["omop/device_exposure"]
    assert device["domain"] == "device" and device["end_time"] == dt.datetime(2018, 3, 2)
    episode = by_source["omop/episode"]  # a disease's first phase, of a GI bleeding (192671)
    assert (episode["domain"], episode["end_time"]) == ("episode", dt.datetime(2018, 7, 31))
    assert episode["text_value"] == "SNOMED/74474003"
    cover = by_source["omop/payer_plan_period"]
    assert (cover["code"], cover["domain"]) == ("SOURCE_CODE/Medicare", "demographic")
    assert (cover["time"], cover["end_time"]) == (
        dt.datetime(2017, 1, 1),
        dt.datetime(2018, 12, 31),
    )


def test_a_code_the_cdm_leaves_unmapped_keeps_the_source_value(tmp_path, eunomia):
    """Concept id 0 ("no matching concept"), with no source concept either: the event's code is
    the source's own (``SOURCE_CODE/...``), not an ``OMOP/0`` every unmapped lab would share."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept"])
    (folder / "measurement.csv").write_text(
        "measurement_id,person_id,measurement_concept_id,measurement_date,value_as_number,"
        "unit_source_value,measurement_source_value,measurement_source_concept_id\n"
        "1,6,0,2018-01-02,4.1,mmol/L,K_SERUM,0\n"
        "2,6,0,2018-01-02,140,mmol/L,NA_SERUM,0\n"
        "3,6,0,2018-01-03,12,g/dL,,0\n"
        "4,6,0,2018-01-04,90,mg/dL, GLU ,4024958\n"  # the source concept still maps it
    )
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    assert report.tables["omop/measurement"].events == 4
    events = store.timeline(store.lookup("omop", "6")).filter(pl.col("domain") == "measurement")
    by_value = dict(zip(events["numeric_value"], events["code"], strict=True))
    assert by_value[4.1] == "SOURCE_CODE/K_SERUM"
    assert by_value[140.0] == "SOURCE_CODE/NA_SERUM"
    assert by_value[12.0] == "OMOP/0"  # nothing names it
    assert by_value[90.0] == "SNOMED/117015009"  # the source concept, through the vocabulary


def test_the_same_source_named_by_another_path_adds_nothing(tmp_path, eunomia, monkeypatch):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "observation_period"])
    store = jumeau.init(tmp_path / "store")
    first = ingest_omop(store, folder)
    assert first.rejects_written > 0  # Eunomia's orphan observation periods
    monkeypatch.chdir(tmp_path)
    again = ingest_omop(store, "cdm")  # relative this time
    assert (again.events_written, again.rejects_written, again.committed) == (0, 0, False)
    assert set(store.rejects()["file"]) == {str((folder / "observation_period.csv").resolve())}


def test_two_sites_numbering_from_one_stay_two_sets_of_patients(tmp_path, eunomia):
    """Two warehouses both have person 6 and drug_exposure 1: named sites keep them apart, and
    each site ingested again adds nothing."""
    store = jumeau.init(tmp_path / "store")
    lille = ingest_omop(store, eunomia, source_name="chu-lille")
    brest = ingest_omop(store, eunomia, source_name="chu-brest")
    assert brest.events_written == lille.events_written > 200_000
    assert store.stats()["subjects"] == 2 * 2694
    a, b = store.lookup("chu-lille", "6"), store.lookup("chu-brest", "6")
    assert a != b and store.timeline(a).height == store.timeline(b).height > 0
    assert ingest_omop(store, eunomia, source_name="chu-brest").events_written == 0
    vault = store.identities()
    assert set(vault["source"]) == {"chu-lille", "chu-brest"}


def test_parquet_folder_and_duckdb_file_give_the_same_events(tmp_path, eunomia, eunomia_store):
    folder = tmp_path / "cdm"
    folder.mkdir()
    con = duckdb.connect(str(eunomia), read_only=True)
    for t in ["person", "concept", "measurement", "visit_occurrence"]:
        con.execute(f"COPY {t} TO '{folder / (t + '.parquet')}' (FORMAT parquet)")
    con.close()
    reference, _ = eunomia_store
    # Same key, so the same pseudonyms: compare with the DuckDB-file ingest of the same tables.
    shutil.copytree(
        reference.root, tmp_path / "copy", ignore=shutil.ignore_patterns("batches", "manifest.json")
    )
    store = jumeau.open(tmp_path / "copy")
    report = ingest_omop(store, folder)
    assert report.tables["omop/measurement"].accepted == 44053
    cols = ["subject_id", "time", "code", "numeric_value", "end_time", "record_key"]
    for source in ("omop/measurement", "omop/visit_occurrence"):
        a = store.scan().filter(pl.col("source") == source).select(cols).collect().sort(cols)
        b = reference.scan().filter(pl.col("source") == source).select(cols).collect().sort(cols)
        assert a.equals(b), source


def test_a_full_vocabulary_is_narrowed_to_the_concepts_used_with_the_same_events(tmp_path, eunomia):
    """A warehouse's concept table holds millions of concepts: the mapping keeps the ones the
    tables use (concepts, source concepts, value and unit concepts) and maps every row alike."""
    folders = {}
    con = duckdb.connect(str(eunomia), read_only=True)
    for kind, unused in (("small", 0), ("full", 150_000)):
        folder = folders[kind] = tmp_path / kind
        folder.mkdir()
        for t in ["person", "drug_exposure", "condition_occurrence"]:
            con.execute(f"COPY {t} TO '{folder / (t + '.parquet')}' (FORMAT parquet)")
        con.execute(  # some results with a unit concept and an answer concept
            f"""COPY (SELECT * REPLACE (
                    CASE WHEN measurement_id % 3 = 0 THEN 8840 ELSE unit_concept_id END AS unit_concept_id,
                    CASE WHEN measurement_id % 5 = 0 THEN 45877994 ELSE value_as_concept_id END
                        AS value_as_concept_id,
                    CASE WHEN measurement_id % 7 = 0 THEN 4171756 ELSE operator_concept_id END
                        AS operator_concept_id) FROM measurement)
            TO '{folder / "measurement.parquet"}' (FORMAT parquet)"""
        )
        con.execute(
            f"""COPY (SELECT * FROM concept UNION ALL
                SELECT 8840, 'milligram per deciliter', 'Unit', 'UCUM', 'Unit', 'S', 'mg/dL',
                       DATE '1970-01-01', DATE '2099-12-31', NULL
                UNION ALL SELECT 45877994, 'Positive', 'Meas Value', 'LOINC', 'Answer', 'S',
                       'LA6576-8', DATE '1970-01-01', DATE '2099-12-31', NULL
                UNION ALL SELECT 900000000 + i, 'unused ' || i, 'Drug', 'RxNorm', 'Clinical Drug',
                       'S', 'U' || i, DATE '1970-01-01', DATE '2099-12-31', NULL
                FROM range({unused}) t(i))
            TO '{folder / "concept.parquet"}' (FORMAT parquet)"""
        )
    con.close()
    stores = {}
    for kind, folder in folders.items():
        stores[kind] = jumeau.init(tmp_path / f"store-{kind}")
        if kind == "full":  # the same key: the same pseudonyms
            stores[kind].key_path.write_text(stores["small"].key_path.read_text())
            stores[kind] = jumeau.open(stores[kind].root)
        ingest_omop(stores[kind], folder)
    cols = ["subject_id", "time", "code", "numeric_value", "text_value", "unit", "record_key"]
    small, full = (stores[k].scan().select(cols).collect().sort(cols) for k in ("small", "full"))
    assert small.height > 100_000 and full.equals(small)
    assert full.filter(pl.col("unit") == "mg/dL").height > 10_000
    assert full.filter(pl.col("text_value") == "LOINC/LA6576-8").height > 5_000
    assert full.filter(pl.col("text_value") == "<").height > 3_000  # "< 5": the comparator
    assert stores["full"].code_descriptions() == stores["small"].code_descriptions()


def test_new_rows_in_a_grown_source_are_appended(tmp_path, eunomia):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "visit_occurrence"])
    lines = (folder / "visit_occurrence.csv").read_text().splitlines()
    (folder / "visit_occurrence.csv").write_text("\n".join(lines[:501]) + "\n")
    store = jumeau.init(tmp_path / "store")
    first = ingest_omop(store, folder)
    assert first.tables["omop/visit_occurrence"].events == 500
    (folder / "visit_occurrence.csv").write_text("\n".join(lines) + "\n")
    second = ingest_omop(store, folder)
    assert second.events_written == len(lines) - 1 - 500
    assert store.stats()["events_by_source"]["omop/visit_occurrence"] == len(lines) - 1
    assert len(store.manifest.batches) == 2


def test_a_warehouse_refresh_that_corrects_a_row_replaces_its_event(tmp_path, eunomia):
    """The warehouse corrects one condition's start date: ingested again, the store shows the
    corrected event in place of the old one (counts unchanged), the store as it was before the
    refresh still shows the old date, and a twin reads the corrected history."""
    import time

    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "condition_occurrence"])
    path = folder / "condition_occurrence.csv"
    lines = path.read_text().splitlines()
    header = lines[0].lower().split(",")  # Eunomia's columns are upper case
    row = lines[1].split(",")
    start = header.index("condition_start_date")
    person = int(row[header.index("person_id")])
    old_date = row[start]
    store = jumeau.init(tmp_path / "store")
    first = ingest_omop(store, folder)
    before = datetime_of(store.manifest.batches[0]["committed_at"])
    time.sleep(1.1)  # commit times have a resolution of a second
    corrected = (dt.date.fromisoformat(old_date) - dt.timedelta(days=1)).isoformat()
    row[start] = corrected
    if "condition_start_datetime" in header:
        row[header.index("condition_start_datetime")] = ""
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    second = ingest_omop(store, folder)
    assert (second.events_written, second.events_amended) == (1, 1)
    assert second.events_already_present == first.events_written - 1
    assert store.stats()["events"] == first.events_written
    subject = store.lookup("omop", str(person))
    code = store.timeline(subject, domains=["condition"])
    dates = {t.date().isoformat() for t in code["time"].to_list()}
    assert corrected in dates and old_date not in dates
    old = store.timeline(subject, domains=["condition"], known_at=before)
    assert old_date in {t.date().isoformat() for t in old["time"].to_list()}
    assert old.height == code.height
    assert ingest_omop(store, folder).events_written == 0  # the refreshed source again: no-op
    from jumeau.export.meds import export_meds

    export_meds(store, tmp_path / "meds")
    exported = pl.read_parquet(tmp_path / "meds" / "data" / "**" / "*.parquet")
    assert exported.height == first.events_written  # one version of the corrected record
    mine = exported.filter(pl.col("code").is_in(code["code"].to_list()))
    assert dt.datetime.fromisoformat(corrected) in mine["time"].to_list()


def test_a_row_that_ends_before_it_starts_is_rejected_with_the_reason(tmp_path, eunomia):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "condition_occurrence"])
    path = folder / "condition_occurrence.csv"
    lines = path.read_text().splitlines()
    header = lines[0].lower().split(",")
    row = lines[1].split(",")
    row[header.index("condition_end_date")] = "2001-01-01"
    row[header.index("condition_end_datetime")] = ""
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/condition_occurrence"]
    assert (counts.read, counts.rejected) == (len(lines) - 1, 1)
    (reject,) = store.rejects().filter(pl.col("source") == "omop/condition_occurrence").to_dicts()
    assert reject["record"] == "row 1" and "ends before it starts" in reject["reason"]


def datetime_of(committed_at: str) -> dt.datetime:
    return dt.datetime.strptime(committed_at, "%Y-%m-%dT%H:%M:%S%z").replace(tzinfo=None)


def test_a_folder_without_a_person_table_is_refused(tmp_path):
    (tmp_path / "cdm").mkdir()
    (tmp_path / "cdm" / "measurement.csv").write_text("measurement_id,person_id\n1,2\n")
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(OmopSourceError, match="no person table"):
        ingest_omop(store, tmp_path / "cdm")
    assert store.stats()["events"] == 0
    assert not list((tmp_path / "store" / ".staging").glob("*"))


def test_unreadable_csv_names_the_file_and_leaves_the_store_unchanged(tmp_path, eunomia):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "visit_occurrence"])
    data = (folder / "visit_occurrence.csv").read_bytes()
    (folder / "visit_occurrence.csv").write_bytes(data[:200] + b"\xff\xfe\xfa" + data[200:])
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(OmopSourceError, match="visit_occurrence.csv"):
        ingest_omop(store, folder)
    assert store.stats()["events"] == 0 and not store.manifest.batches


def test_a_truncated_csv_keeps_its_complete_rows_and_rejects_the_cut_one(tmp_path, eunomia):
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "visit_occurrence"])
    lines = (folder / "visit_occurrence.csv").read_text().splitlines()
    cut = lines[10][: lines[10].index(",", lines[10].index(",") + 1) + 1]  # id and person only
    (folder / "visit_occurrence.csv").write_text("\n".join([*lines[:10], cut]))
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/visit_occurrence"]
    assert (counts.read, counts.accepted, counts.rejected) == (10, 9, 1)
    reason = store.rejects().filter(pl.col("source") == "omop/visit_occurrence")["reason"][0]
    assert "missing" in reason


@pytest.mark.parametrize("layout", ["file", "part folder"])
def test_a_malformed_csv_row_is_rejected_alone_in_a_file_or_a_part_folder(tmp_path, layout):
    """An unclosed quote, an extra field, a short row: the part files of a table are read as
    forgivingly as a single file, so one bad row never fails the table."""
    text = (
        "person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth\n"
        '1,8507,1970,1,1\n2,8532,"1980,1,1\n3,8507,1990,1,1,extra\n4,8532,2000\n'
    )
    folder = tmp_path / "cdm"
    target = folder / "person.csv" if layout == "file" else folder / "person" / "part-0.csv"
    target.parent.mkdir(parents=True)
    target.write_text(text)
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/person"]
    assert (counts.read, counts.accepted, counts.rejected) == (4, 3, 1)
    rejected = store.rejects()
    assert rejected["record"].to_list() == ["row 2"]
    assert "year_of_birth" in rejected["reason"][0]


def _one_person_cdm(tmp_path: Path, **tables: str) -> Path:
    """A CSV CDM folder of person 1 (a man born in 1950) and the given tables' CSV texts."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1950\n")
    for table, text in tables.items():
        (folder / f"{table}.csv").write_text(text)
    return folder


def test_a_drug_exposure_without_an_end_date_ends_after_its_days_supply(tmp_path):
    """OHDSI's convention (THEMIS): an empty end date is the start + days_supply - 1 day; an
    end date given is kept; without a supply there is no end."""
    folder = _one_person_cdm(
        tmp_path,
        drug_exposure=(
            "drug_exposure_id,person_id,drug_concept_id,drug_exposure_start_date,"
            "drug_exposure_end_date,days_supply\n"
            "1,1,1112807,2020-01-01,,30\n"
            "2,1,1112807,2020-03-01,2020-03-10,30\n"
            "3,1,1112807,2020-05-01,,0\n"
            "4,1,1112807,2020-06-01,,thirty\n"
        ),
    )
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    assert report.tables["omop/drug_exposure"].rejected == 1
    assert "days_supply" in store.rejects()["reason"][0]
    drugs = store.timeline(store.lookup("omop", "1")).filter(pl.col("domain") == "drug")
    assert drugs.select("time", "end_time").rows() == [
        (dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 30)),
        (dt.datetime(2020, 3, 1), dt.datetime(2020, 3, 10)),
        (dt.datetime(2020, 5, 1), None),
    ]


def test_datetimes_a_day_off_their_date_are_placeholders_in_any_source(tmp_path):
    folder = _one_person_cdm(
        tmp_path,
        condition_occurrence=(
            "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
            "condition_start_datetime,condition_end_date,condition_end_datetime\n"
            "1,1,201826,2019-05-01,1900-01-01 00:00:00,2019-05-03,2019-05-03 10:00:00\n"
            "2,1,201826,2019-06-01,2019-05-31 22:30:00,,\n"
        ),
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, folder)
    events = store.scan().filter(pl.col("domain") == "condition").sort("time").collect()
    assert events["time"].to_list() == [dt.datetime(2019, 5, 1), dt.datetime(2019, 5, 31, 22, 30)]
    assert events["end_time"].to_list() == [dt.datetime(2019, 5, 3, 10), None]


def test_a_birth_datetime_off_the_year_of_birth_is_a_placeholder(tmp_path):
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth,birth_datetime\n"
        "1,8507,1950,3,2,1900-01-01 00:00:00\n"
        "2,8532,1961,,,1961-07-04 10:30:00\n"
        "3,8507,1970,5,6,1970-05-06 08:00:00\n"
        "4,8532,1980,,,1900-01-01 00:00:00\n"
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, folder)
    births = {
        person: store.timeline(store.lookup("omop", person))
        .filter(pl.col("code") == "MEDS_BIRTH")["time"]
        .item()
        for person in "1234"
    }
    assert births == {
        "1": dt.datetime(1950, 3, 2),
        "2": dt.datetime(1961, 7, 4, 10, 30),
        "3": dt.datetime(1970, 5, 6, 8),
        "4": dt.datetime(1980, 1, 1),
    }


def test_text_datetimes_with_a_utc_offset_are_stored_at_their_utc_instant(tmp_path):
    folder = _one_person_cdm(
        tmp_path,
        measurement=(
            "measurement_id,person_id,measurement_concept_id,measurement_date,measurement_datetime,"
            "value_as_number\n"
            "1,1,3004249,2020-01-01,2020-01-01T10:20:30+02:00,120\n"
            "2,1,3004249,2020-01-02,2020-01-02 10:20:30-0500,121\n"
            "3,1,3004249,2020-01-03,2020-01-03T10:20:30Z,122\n"
            "4,1,3004249,2020-01-04,2020-01-04 10:20:30,123\n"
            "5,1,3004249,20200105,,124\n"
        ),
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, folder)
    times = store.timeline(store.lookup("omop", "1")).filter(pl.col("domain") == "measurement")
    assert times["time"].to_list() == [
        dt.datetime(2020, 1, 1, 8, 20, 30),
        dt.datetime(2020, 1, 2, 15, 20, 30),
        dt.datetime(2020, 1, 3, 10, 20, 30),
        dt.datetime(2020, 1, 4, 10, 20, 30),
        dt.datetime(2020, 1, 5),
    ]


def _codes_by_source(store, sources: tuple[str, ...]) -> pl.DataFrame:
    return (
        store.scan()
        .filter(pl.col("source").is_in(sources))
        .select("source", "code", "time", "numeric_value")
        .collect()
        .sort(pl.all(), nulls_last=True)
    )


TABLES_WITH_CODES = ("omop/condition_occurrence", "omop/drug_exposure", "omop/measurement")


def test_a_vocabulary_in_its_own_schema_is_read_from_there(tmp_path, eunomia, eunomia_store):
    """OHDSI sites often keep the CDM in one schema and the vocabulary in another."""
    reference, _ = eunomia_store
    db = tmp_path / "site.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"ATTACH '{eunomia}' AS e (READ_ONLY)")
    con.execute("CREATE SCHEMA cdm; CREATE SCHEMA vocab")
    for table in ("person", "condition_occurrence", "drug_exposure", "measurement"):
        con.execute(f"CREATE TABLE cdm.{table} AS SELECT * FROM e.{table}")
    con.execute("CREATE TABLE vocab.concept AS SELECT * FROM e.concept")
    con.close()
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, db, schema="cdm", vocabulary_schema="vocab")
    expected = _codes_by_source(reference, TABLES_WITH_CODES)
    assert _codes_by_source(store, TABLES_WITH_CODES).equals(expected)
    assert not expected.filter(pl.col("code").str.starts_with("OMOP/")).height
    with pytest.raises(OmopSourceError, match="no concept table in schema 'cdm2'"):
        ingest_omop(jumeau.init(tmp_path / "other"), db, schema="cdm", vocabulary_schema="cdm2")


def test_a_cdm_exported_without_its_vocabulary_takes_an_athena_folder(
    tmp_path, eunomia, eunomia_store
):
    """The CDM's CSVs without a concept table, and Athena's download beside them (CONCEPT.csv,
    tab-separated, dates as YYYYMMDD): the codes are the vocabulary's, as from the database."""
    reference, _ = eunomia_store
    cdm = tmp_path / "cdm"
    _export_csv(eunomia, cdm, ["person", "condition_occurrence", "drug_exposure", "measurement"])
    athena = tmp_path / "athena"
    athena.mkdir()
    con = duckdb.connect(str(eunomia), read_only=True)
    con.execute(
        f"COPY (SELECT * FROM concept) TO '{athena / 'CONCEPT.csv'}' "
        "(HEADER, DELIMITER '\t', DATEFORMAT '%Y%m%d')"
    )
    con.close()
    without = jumeau.init(tmp_path / "without")
    ingest_omop(without, cdm)
    assert _codes_by_source(without, TABLES_WITH_CODES)["code"].str.starts_with("OMOP/").all()
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, cdm, vocabulary_folder=athena)
    codes = _codes_by_source(store, TABLES_WITH_CODES)
    assert codes.equals(_codes_by_source(reference, TABLES_WITH_CODES))
    with pytest.raises(OmopSourceError, match="no concept table"):
        ingest_omop(jumeau.init(tmp_path / "none"), cdm, vocabulary_folder=cdm)


def test_athena_names_with_quotes_are_read_as_written(tmp_path):
    """Athena's CONCEPT.csv is tab-separated and unquoted: a name may start with a quote."""
    cdm, athena = tmp_path / "cdm", tmp_path / "athena"
    cdm.mkdir()
    athena.mkdir()
    (cdm / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8507,1950\n")
    (cdm / "condition_occurrence.csv").write_text(
        "condition_occurrence_id,person_id,condition_concept_id,condition_start_date\n"
        "1,1,1,2020-01-01\n2,1,2,2020-01-02\n"
    )
    header = "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\t"
    header += "standard_concept\tconcept_code\tvalid_start_date\tvalid_end_date\tinvalid_reason"
    (athena / "CONCEPT.csv").write_text(
        header + "\n"
        '1\t"Lf" units of toxoid\tCondition\tSNOMED\tClinical Finding\tS\t111\t20000101\t20991231\t\n'
        '2\tGauze 5" wide\tCondition\tSNOMED\tClinical Finding\tS\t222\t20000101\t20991231\t\n'
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, cdm, vocabulary_folder=athena)
    names = store.code_descriptions()
    assert (names["SNOMED/111"], names["SNOMED/222"]) == ('"Lf" units of toxoid', 'Gauze 5" wide')


def test_a_duckdb_cdm_made_of_views_over_parquet_is_read(tmp_path, eunomia, eunomia_store):
    """DuckDB CDMs are often views over Parquet files: they are tables like any other."""
    reference, _ = eunomia_store
    parquet = tmp_path / "parquet"
    parquet.mkdir()
    con = duckdb.connect(str(eunomia), read_only=True)
    for table in ("person", "condition_occurrence", "concept"):
        con.execute(f"COPY {table} TO '{parquet / table}.parquet' (FORMAT parquet)")
    con.close()
    db = tmp_path / "views.duckdb"
    con = duckdb.connect(str(db))
    for table in ("person", "condition_occurrence", "concept"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{parquet / table}.parquet')"
        )
    con.close()
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, db)
    assert report.tables["omop/condition_occurrence"].events == 65_332
    sources = ("omop/condition_occurrence",)
    assert _codes_by_source(store, sources).equals(_codes_by_source(reference, sources))


def test_a_full_refresh_withdraws_the_rows_the_warehouse_deleted_and_nothing_else(
    tmp_path, eunomia
):
    """A nightly rebuild no longer holds two condition rows: ingested as a full refresh, their
    events are withdrawn (the store as it was still shows them); a plain ingest of it only adds.
    A table the snapshot does not hold, and another site's rows, are left as they are."""
    import time

    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "condition_occurrence", "drug_exposure"])
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, folder)
    ingest_omop(store, folder, source_name="site-b")
    by_source = store.stats()["events_by_source"]
    before = datetime_of(store.manifest.batches[-1]["committed_at"])
    time.sleep(1.1)  # commit times have a resolution of a second

    path = folder / "condition_occurrence.csv"
    lines = path.read_text().splitlines()
    header = lines[0].lower().split(",")
    corrected = lines[3].split(",")  # a third row, corrected the next night
    start = header.index("condition_start_date")
    corrected[start] = (dt.date.fromisoformat(corrected[start]) - dt.timedelta(days=1)).isoformat()
    if "condition_start_datetime" in header:
        corrected[header.index("condition_start_datetime")] = ""
    path.write_text("\n".join([lines[0], *lines[3:]]) + "\n")
    (folder / "drug_exposure.csv").unlink()
    plain = ingest_omop(store, folder)
    assert (plain.events_written, plain.events_retracted, plain.committed) == (0, 0, False)

    path.write_text("\n".join([lines[0], ",".join(corrected), *lines[4:]]) + "\n")
    refresh = ingest_omop(store, folder, full_refresh=True)
    assert refresh.committed and (refresh.events_amended, refresh.events_retracted) == (1, 2)
    after = store.stats()["events_by_source"]
    assert after["omop/condition_occurrence"] == by_source["omop/condition_occurrence"] - 2
    assert after["omop/drug_exposure"] == by_source["omop/drug_exposure"]  # not in the snapshot
    column = header.index("person_id")
    deleted = Counter(line.split(",")[column] for line in lines[1:3])
    for site, withdrawn in (("omop", deleted), ("site-b", Counter())):  # the other site's stay
        for person in deleted:
            subject = store.lookup(site, person)
            old = store.timeline(subject, domains=["condition"], known_at=before).height
            now = store.timeline(subject, domains=["condition"]).height
            assert now == old - withdrawn[person]
    assert store.manifest.batches[-1]["namespace"] == "omop"
    again = ingest_omop(store, folder, full_refresh=True)
    assert (again.events_retracted, again.committed) == (0, False)


def test_a_semicolon_separated_export_reads_decimal_commas_and_day_first_dates(tmp_path):
    """The European convention (a French warehouse's CSV, written by a spreadsheet): fields
    split by semicolons, numbers with a decimal comma, dates day first. A comma-separated file
    keeps reading ``7,5`` as no number (``1,500`` is 1500 there) and ``02/01/2021`` as no date."""
    folder = tmp_path / "cdm"
    folder.mkdir()
    (folder / "person.csv").write_text(
        "person_id;gender_concept_id;year_of_birth;birth_datetime;race_concept_id;"
        "ethnicity_concept_id\n1;8532;1950;03/02/1950 08:30;0;0\n"
    )
    (folder / "measurement.csv").write_text(
        "measurement_id;person_id;measurement_concept_id;measurement_date;"
        "measurement_type_concept_id;value_as_number;unit_concept_id\n"
        "1;1;3020630;02/01/2021;32817;7,5;8840\n"
        "2;1;3020630;2021-03-04;32817;12.25;8840\n"
        "3;1;3020630;2021-03-05;32817;1.234,5;8840\n"
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, folder)
    events = store.timeline(store.lookup("omop", "1"))
    measured = events.filter(pl.col("domain") == "measurement")
    assert measured.select("time", "numeric_value").rows() == [
        (dt.datetime(2021, 1, 2), 7.5),
        (dt.datetime(2021, 3, 4), 12.25),
    ]
    birth = events.filter(pl.col("code") == "MEDS_BIRTH")["time"].to_list()
    assert birth == [dt.datetime(1950, 2, 3, 8, 30)]
    assert store.rejects()["reason"].to_list() == ["value_as_number '1.234,5' is not a number"]

    parts = tmp_path / "parts"  # the same tables as folders of part files
    for name in ("person", "measurement"):
        (parts / name).mkdir(parents=True)
        shutil.copy(folder / f"{name}.csv", parts / name / "part-0.csv")
    again = jumeau.init(tmp_path / "again")
    ingest_omop(again, parts)
    measured_again = again.timeline(again.lookup("omop", "1")).filter(
        pl.col("domain") == "measurement"
    )
    assert (
        measured_again.select("time", "numeric_value").rows()
        == measured.select("time", "numeric_value").rows()
    )

    comma = tmp_path / "us"
    comma.mkdir()
    for name in ("person", "measurement"):
        text = (folder / f"{name}.csv").read_text().splitlines()
        rows = [line.replace(";", ",") for line in text[:2]]
        (comma / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (comma / "measurement.csv").write_text(
        (comma / "measurement.csv").read_text().replace(",7,5,", ',"7,5",')
    )
    other = jumeau.init(tmp_path / "other")
    report = ingest_omop(other, comma)
    assert report.tables["omop/measurement"].rejected == 1
    (reason,) = other.rejects()["reason"].to_list()
    assert "is not a date" in reason or "is not a number" in reason


def _conditions_stored(tmp_path: Path, eunomia: Path):
    """A CSV CDM of Eunomia's persons and conditions, ingested: the store, its report, the
    condition file and its lines (for a test to break before a full refresh)."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept", "condition_occurrence"])
    store = jumeau.init(tmp_path / "store")
    first = ingest_omop(store, folder)
    path = folder / "condition_occurrence.csv"
    return store, first, path, path.read_text().splitlines()


def test_a_full_refresh_of_a_broken_table_withdraws_nothing_of_it(tmp_path, eunomia):
    """The nightly export renamed a required column: every condition row is rejected, and the
    full refresh keeps the conditions stored instead of withdrawing them all, saying so."""
    store, first, path, lines = _conditions_stored(tmp_path, eunomia)
    header = (
        lines[0]
        .replace("condition_concept_id", "condition_code")
        .replace("CONDITION_CONCEPT_ID", "CONDITION_CODE")
    )
    path.write_text("\n".join([header, *lines[1:]]) + "\n")
    report = ingest_omop(store, path.parent, full_refresh=True)
    assert report.events_retracted == 0 and report.tables["omop/condition_occurrence"].accepted == 0
    assert any("nothing of omop/condition_occurrence was accepted" in w for w in report.warnings)
    assert store.stats()["events"] == first.events_written


def test_a_full_refresh_keeps_a_row_the_snapshot_holds_but_rejects_today(tmp_path, eunomia):
    """A condition row whose date the nightly export broke is still in the warehouse: the full
    refresh rejects it and keeps its stored version."""
    store, first, path, lines = _conditions_stored(tmp_path, eunomia)
    start = lines[0].lower().split(",").index("condition_start_date")
    row = lines[1].split(",")
    row[start] = "not a date"
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    report = ingest_omop(store, path.parent, full_refresh=True)
    assert report.tables["omop/condition_occurrence"].rejected == 1
    assert report.events_retracted == 0
    assert store.stats()["events"] == first.events_written


def test_a_note_written_as_rtf_or_html_is_stored_as_its_text(tmp_path, eunomia):
    """Warehouses copy notes from the clinical system as they were typed: RTF (a word
    processor's), HTML; the store keeps the text a reader sees, scrubbed as any note."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept"])
    rtf = r"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Arial;}}\f0 Douleur thoracique.\par Appeler le 06 12 34 56 78.\par}"
    html = "<html><body><p>Dyspn&eacute;e d'effort.</p><p>ECG normal.</p></body></html>"
    header = (
        "note_id,person_id,note_date,note_datetime,note_type_concept_id,"
        "note_class_concept_id,note_title,note_text\n"
    )
    rows = [(1, rtf), (2, html), (3, "<5 mm nodule, plain text.")]
    (folder / "note.csv").write_text(
        header + "".join(f'{i},6,2018-01-0{i},,32831,44814637,Note,"{t}"\n' for i, t in rows)
    )
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    assert report.tables["omop/note"].accepted == 3
    notes = store.timeline(store.lookup("omop", "6")).filter(pl.col("domain") == "note")
    assert notes["text_value"].to_list() == [
        "Douleur thoracique.\nAppeler le [PHONE].",
        "Dyspnée d'effort.\nECG normal.",
        "<5 mm nodule, plain text.",
    ]


def test_nlp_mentions_of_a_note_are_its_patients_at_its_date_negations_said(tmp_path, eunomia):
    """note_nlp rows (an NLP system's concepts found in notes) have no person of their own:
    each is its note's patient's, dated by the note, its negation and context kept as text;
    a row naming no note is rejected saying so."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept"])
    (folder / "note.csv").write_text(
        "note_id,person_id,note_date,note_datetime,note_type_concept_id,note_class_concept_id,"
        'note_title,note_text\n1,6,2018-01-02,2018-01-02 09:00:00,32831,44814637,CR,"Pas de '
        'fievre. Douleur thoracique."\n'
    )
    (folder / "note_nlp.csv").write_text(
        "note_nlp_id,note_id,section_concept_id,snippet,offset,lexical_variant,"
        "note_nlp_concept_id,note_nlp_source_concept_id,nlp_system,nlp_date,term_exists,"
        "term_temporal,term_modifiers\n"
        "1,1,0,Pas de fievre,0,fievre,437663,0,medspacy,2024-06-01,N,,negated=true\n"
        "2,1,0,Douleur thoracique,14,Douleur thoracique,77670,0,medspacy,2024-06-01,Y,current,\n"
        "3,99,0,x,0,x,437663,0,medspacy,2024-06-01,Y,,\n"
    )
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/note_nlp"]
    assert (counts.read, counts.accepted, counts.rejected) == (3, 2, 1)
    (reason,) = store.rejects().filter(pl.col("source") == "omop/note_nlp")["reason"]
    assert reason == "its note_id names no note of the note table"
    mentions = store.timeline(store.lookup("omop", "6")).filter(pl.col("domain") == "mention")
    assert (
        mentions["time"].to_list() == [dt.datetime(2018, 1, 2, 9)] * 2
    )  # the note's, not the NLP run's
    by_code = dict(zip(mentions["code"].to_list(), mentions["text_value"].to_list(), strict=True))
    assert by_code == {  # fever and chest pain, not in Eunomia's vocabulary subset
        "OMOP/437663": "term_exists=N;modifiers=negated=true;lexical=fievre",
        "OMOP/77670": "term_exists=Y;temporal=current;lexical=Douleur thoracique",
    }


def test_a_csv_note_of_several_paragraphs_with_quotes_is_read_whole(tmp_path, eunomia):
    """A note exported to CSV keeps its line breaks and its quotes inside a quoted field, a
    doubled quote standing for one, and the rows after it are read as rows."""
    folder = tmp_path / "cdm"
    _export_csv(eunomia, folder, ["person", "concept"])
    (folder / "note.csv").write_text(
        "note_id,person_id,note_date,note_datetime,note_type_concept_id,note_class_concept_id,"
        "note_title,note_text\n"
        '1,6,2018-01-02,,32831,44814637,CR,"Motif : douleur.\nAvis : ""pas d\'urgence"", '
        'revoir.\n\nFin."\n'
        "3,6,2018-01-03,,32831,44814637,CR,court\n"
    )
    store = jumeau.init(tmp_path / "store")
    report = ingest_omop(store, folder)
    counts = report.tables["omop/note"]
    assert (counts.read, counts.accepted, counts.rejected) == (2, 2, 0)
    notes = store.timeline(store.lookup("omop", "6")).filter(pl.col("domain") == "note")
    assert notes["text_value"].to_list() == [
        'Motif : douleur.\nAvis : "pas d\'urgence", revoir.\n\nFin.',
        "court",
    ]
