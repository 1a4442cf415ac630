"""OMOP CDM ingest from SQLite, the format of OHDSI's Eunomia and SynPUF sample databases.

The SQLite files are written here from the real Eunomia GiBleed data the way R's
DatabaseConnector writes them (dates as seconds since 1970, some ids as reals), and by hand for
what SQLite lets a column hold (blank strings in integer columns, Julian days, placeholders).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import duckdb
import polars as pl
import pytest

import jumeau
from jumeau.ingest.omop import SPECS, ingest_omop
from jumeau.ingest.omop_sources import OmopSourceError

#: Eunomia's person ids up to this: some 60 patients.
PERSONS = 120
TABLES = ["person", "concept", *SPECS]
EPOCH = dt.datetime(1970, 1, 1)


def _as_sqlite_value(value, real_ids: bool, column: str):
    if isinstance(value, dt.datetime):
        return (value - EPOCH).total_seconds()
    if isinstance(value, dt.date):
        return (dt.datetime.combine(value, dt.time()) - EPOCH).total_seconds()
    if real_ids and isinstance(value, int) and column.endswith("concept_id"):
        return float(value)
    return value


@pytest.fixture(scope="module")
def eunomia_subset(tmp_path_factory, eunomia: Path) -> tuple[Path, Path]:
    """The first persons of Eunomia as a DuckDB file and as a DatabaseConnector-style SQLite."""
    folder = tmp_path_factory.mktemp("sqlite-cdm")
    duck_path, sqlite_path = folder / "subset.duckdb", folder / "subset.sqlite"
    con = duckdb.connect(str(duck_path))
    con.execute(f"ATTACH '{eunomia}' AS e (READ_ONLY)")
    present = {r[0].lower() for r in con.execute("SHOW TABLES FROM e").fetchall()}
    lite = sqlite3.connect(sqlite_path)
    for table in TABLES:
        if table not in present:
            continue
        columns = [r[0] for r in con.execute(f"DESCRIBE e.{table}").fetchall()]
        keep = (
            f"WHERE person_id <= {PERSONS}" if "person_id" in [c.lower() for c in columns] else ""
        )
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM e.{table} {keep}")
        rows = con.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
        real_ids = table == "measurement"
        lite.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        lite.executemany(
            f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})",
            (
                [
                    _as_sqlite_value(v, real_ids, c.lower())
                    for v, c in zip(row, columns, strict=True)
                ]
                for row in rows
            ),
        )
    lite.commit()
    lite.close()
    con.close()
    return duck_path, sqlite_path


CONTENT = ["time", "code", "numeric_value", "text_value", "unit", "end_time", "domain", "source"]


def _content(store) -> pl.DataFrame:
    return store.scan().select(CONTENT).collect().sort(CONTENT, nulls_last=True)


def test_a_sqlite_cdm_gives_the_very_events_of_the_same_cdm_in_duckdb(tmp_path, eunomia_subset):
    duck_path, sqlite_path = eunomia_subset
    duck_store = jumeau.init(tmp_path / "from-duckdb")
    lite_store = jumeau.init(tmp_path / "from-sqlite")
    from_duckdb = ingest_omop(duck_store, duck_path)
    from_sqlite = ingest_omop(lite_store, sqlite_path)
    assert from_sqlite.events_written == from_duckdb.events_written > 4_000
    for table, counts in from_duckdb.tables.items():
        again = from_sqlite.tables[table]
        assert (again.read, again.accepted, again.rejected) == (
            counts.read,
            counts.accepted,
            counts.rejected,
        ), table
    persons = from_duckdb.tables["omop/person"].read
    assert lite_store.stats()["subjects"] == duck_store.stats()["subjects"] == persons > 50
    assert _content(lite_store).equals(_content(duck_store))
    # one patient's timeline, event for event (events of the same time sorted alike)
    ours, theirs = (
        store.timeline(store.lookup("omop", "7")).select(CONTENT).sort(CONTENT, nulls_last=True)
        for store in (lite_store, duck_store)
    )
    assert ours.height > 10 and ours.equals(theirs)


def _quirky_cdm(path: Path) -> Path:
    """A CDM as SQLite lets one be written: dates as Julian days, YYYYMMDD integers, seconds or
    milliseconds since 1970 or text, blank strings in integer and text columns, a placeholder datetime, a
    date that is none."""
    lite = sqlite3.connect(path)
    lite.executescript(
        """
        CREATE TABLE person (person_id INT, gender_concept_id INT, year_of_birth INT,
            month_of_birth INT, day_of_birth INT, race_concept_id INT, ethnicity_concept_id INT,
            person_source_value TEXT);
        INSERT INTO person VALUES (1, 8507, 1950, 3, 2, 0, 0, 'MRN-0001');
        INSERT INTO person VALUES (2, 8532, 1961, '', '', 0, 0, 'MRN-0002');
        CREATE TABLE concept (concept_id INT, concept_name TEXT, vocabulary_id TEXT,
            concept_code TEXT);
        INSERT INTO concept VALUES (3004249, 'Systolic blood pressure', 'LOINC', '8480-6');
        INSERT INTO concept VALUES (8876, 'millimeter mercury column', 'UCUM', 'mm[Hg]');
        INSERT INTO concept VALUES (8507, 'MALE', 'Gender', 'M');
        INSERT INTO concept VALUES (8532, 'FEMALE', 'Gender', 'F');
        CREATE TABLE measurement (measurement_id INT, person_id INT,
            measurement_concept_id INT, measurement_date, measurement_datetime,
            operator_concept_id INT, value_as_number REAL, unit_concept_id INT,
            unit_source_value TEXT, value_source_value TEXT);
        INSERT INTO measurement VALUES (1, 1, 3004249, 2458879.5, '2020-01-31 08:15:00', '', 120.0, 8876, '', '120');
        INSERT INTO measurement VALUES (2, 1, 3004249, 2458881.5, NULL, '', 118, 8876, 'mmHg', '118');
        INSERT INTO measurement VALUES (3, 2, 3004249, 2458882.5, '1900-01-01', 0, '', 8876, '', '');
        INSERT INTO measurement VALUES (4, 2, 3004249, 'last spring', NULL, '', 131, 8876, '', '131');
        CREATE TABLE condition_occurrence (condition_occurrence_id INT, person_id INT,
            condition_concept_id INT, condition_start_date INT, condition_start_datetime,
            condition_end_date REAL);
        INSERT INTO condition_occurrence VALUES (1, 1, 201826, 20190501, 1556701200123, 1556841600.0);
        INSERT INTO condition_occurrence VALUES (2, 2, 201826, '2019-06-01', NULL, NULL);
        """
    )
    lite.commit()
    lite.close()
    return path


def test_sqlites_loose_columns_are_read_by_what_they_hold(tmp_path):
    source = _quirky_cdm(tmp_path / "cdm.db")  # a .db suffix: told SQLite by its header
    store = jumeau.init(tmp_path / "store")
    said: list[str] = []
    report = ingest_omop(store, source, progress=said.append)
    assert "reading measurement from SQLite" in said  # a large file's copy is shown as it goes
    counts = report.tables["omop/measurement"]
    assert (counts.read, counts.accepted, counts.rejected) == (4, 3, 1)
    events = store.scan().filter(pl.col("source") == "omop/measurement").sort("time").collect()
    assert events["time"].to_list() == [
        dt.datetime(2020, 1, 31, 8, 15),  # its datetime, on its date (a Julian day)
        dt.datetime(2020, 2, 2),
        dt.datetime(2020, 2, 3),  # its 1900-01-01 datetime is a placeholder
    ]
    assert events["code"].unique().to_list() == ["LOINC/8480-6"]
    assert events["numeric_value"].to_list() == [120.0, 118.0, None]
    assert events["unit"].to_list() == ["mm[Hg]", "mm[Hg]", "mm[Hg]"]
    assert events["text_value"].null_count() == 3  # blank strings are no value
    reject = store.rejects().row(0, named=True)
    assert (
        reject["record"] == "row 4"
        and "measurement_date 'last spring' is not a date" in (reject["reason"])
    )
    conditions = store.scan().filter(pl.col("domain") == "condition").sort("time").collect()
    assert conditions["time"].to_list() == [  # YYYYMMDD; milliseconds since 1970; text
        dt.datetime(2019, 5, 1, 9, 0, 0, 123000),
        dt.datetime(2019, 6, 1),
    ]
    assert conditions["end_time"].to_list() == [dt.datetime(2019, 5, 3), None]
    births = store.scan().filter(pl.col("code") == "MEDS_BIRTH").sort("time").collect()
    assert births["time"].to_list() == [dt.datetime(1950, 3, 2), dt.datetime(1961, 1, 1)]


def test_a_file_that_is_no_database_is_refused_naming_it(tmp_path):
    fake = tmp_path / "cdm.sqlite"
    fake.write_text("person_id\n1\n")
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(OmopSourceError, match="cdm.sqlite: expected a folder of CDM tables"):
        ingest_omop(store, fake)
    with pytest.raises(OmopSourceError, match="a SQLite database has no schemas"):
        ingest_omop(store, _quirky_cdm(tmp_path / "cdm.sqlite3"), schema="cdm")
