"""OMOP ingest from a real PostgreSQL server started by the test."""

from __future__ import annotations

import shutil

import adbc_driver_postgresql.dbapi as pg
import duckdb
import polars as pl
import pytest

import jumeau
from jumeau._duck import arrow_table
from jumeau.ingest.omop import ingest_omop
from jumeau.ingest.omop_sources import OmopSourceError
from tests.postgres_server import postgres_server

TABLES = ["person", "concept", "condition_occurrence", "measurement", "death"]


@pytest.fixture(scope="module")
def omop_postgres(eunomia):
    with postgres_server() as url:
        src = duckdb.connect(str(eunomia), read_only=True)
        with pg.connect(url) as conn, conn.cursor() as cur:
            cur.execute("CREATE SCHEMA cdm")
            for table in TABLES:
                data = arrow_table(src, f"SELECT * FROM {table}")
                data = data.rename_columns([c.lower() for c in data.column_names])
                cur.adbc_ingest(table, data, mode="create", db_schema_name="cdm")
            conn.commit()
        src.close()
        yield url


def test_postgres_ingest_equals_the_duckdb_file_ingest(omop_postgres, eunomia_store, tmp_path):
    reference, ref_report = eunomia_store
    shutil.copytree(
        reference.root, tmp_path / "copy", ignore=shutil.ignore_patterns("batches", "manifest.json")
    )
    store = jumeau.open(tmp_path / "copy")
    report = ingest_omop(store, omop_postgres, schema="cdm")
    assert "jumeau@127.0.0.1" in report.source
    for table in ("person", "condition_occurrence", "measurement", "death"):
        got, want = report.tables[f"omop/{table}"], ref_report.tables[f"omop/{table}"]
        assert (got.read, got.accepted, got.rejected, got.events) == (
            want.read,
            want.accepted,
            want.rejected,
            want.events,
        )
    cols = ["subject_id", "time", "code", "numeric_value", "unit", "end_time", "record_key"]
    for source in ("omop/person", "omop/condition_occurrence", "omop/measurement"):
        a = (
            store.scan()
            .filter(pl.col("source") == source)
            .select(cols)
            .collect()
            .sort(cols, nulls_last=True)
        )
        b = (
            reference.scan()
            .filter(pl.col("source") == source)
            .select(cols)
            .collect()
            .sort(cols, nulls_last=True)
        )
        assert a.equals(b), source


def test_a_vocabulary_schema_of_its_own_gives_the_codes(omop_postgres, new_store):
    """CDM tables in one schema, the concept table only in another."""
    with pg.connect(omop_postgres) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA site")
        cur.execute("CREATE SCHEMA vocab")
        for table in ("person", "condition_occurrence"):
            cur.execute(f"CREATE TABLE site.{table} AS SELECT * FROM cdm.{table}")
        cur.execute("CREATE TABLE vocab.concept AS SELECT * FROM cdm.concept")
        conn.commit()
    said: list[str] = []
    report = ingest_omop(
        new_store, omop_postgres, schema="site", vocabulary_schema="vocab", progress=said.append
    )
    assert report.tables["omop/condition_occurrence"].events > 0
    assert "reading vocab.concept from PostgreSQL" in said
    codes = (
        new_store.scan()
        .filter(pl.col("source") == "omop/condition_occurrence")
        .select("code")
        .collect()["code"]
    )
    assert codes.str.starts_with("SNOMED/").all()
    with pytest.raises(OmopSourceError, match="no concept table in schema 'site'"):
        ingest_omop(new_store, omop_postgres, schema="site", vocabulary_schema="site")


def test_unreachable_postgres_is_a_clear_error(new_store):
    with pytest.raises(OmopSourceError, match="cannot connect to PostgreSQL") as error:
        ingest_omop(new_store, "postgresql://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(error.value)
    assert new_store.stats()["events"] == 0
