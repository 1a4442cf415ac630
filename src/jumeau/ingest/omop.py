"""OMOP CDM v5.3/v5.4 to canonical events.

Every source row becomes exactly one event, or one reject with its reason (the person table
gives a birth event plus its gender, race and ethnicity facts). Concept ids become
``VOCABULARY/concept_code`` through the CDM's own concept table; ``OMOP/<concept_id>`` is kept
only where no vocabulary mapping exists. The mapping is SQL run by DuckDB, so it streams tables
larger than memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from jumeau._duck import arrow_table, connect, run, scalar, sql_string
from jumeau.ingest import omop_sources
from jumeau.ingest.documents import HTML_START, RTF_START, document_text
from jumeau.ingest.events import reject_file
from jumeau.ingest.omop_sources import OmopSourceError, OmopTables, read_header_row
from jumeau.ingest.redact import redact_sql
from jumeau.model import BIRTH_CODE, DEATH_CODE
from jumeau.store import BatchWriter, IngestReport, Progress, Store
from jumeau.store.keys import record_key_sql

#: The vocabulary of a source's own codes where the CDM maps them to no concept (meds_etl's
#: name for them).
SOURCE_CODE_PREFIX = "SOURCE_CODE/"


@dataclass(frozen=True)
class TableSpec:
    """How one CDM event table maps to canonical columns (CDM v5.4 column names)."""

    domain: str
    id: str | None
    start_datetime: str | None
    start_date: str | None
    concept: str | None
    source_concept: str | None = None
    end_datetime: str | None = None
    end_date: str | None = None
    number: str | None = None
    string: str | None = None
    value_concept: str | None = None
    unit_concept: str | None = None
    unit_source: str | None = None
    fixed_code: str | None = None
    operator_concept: str | None = None
    #: A duration in days that dates the end when the end date is empty (OHDSI THEMIS: start
    #: + days_supply - 1 day).
    supply_days: str | None = None
    #: The source's own code (``condition_source_value``...), the event's code as
    #: ``SOURCE_CODE/<value>`` where neither concept maps it (concept id 0: a local lab code
    #: the ETL left unmapped is still that lab, not "no matching concept").
    source_value: str | None = None
    #: Why a row has no person where the table takes its person from another (a note_nlp row
    #: from its note).
    no_person: str = "person_id is missing"


SPECS: dict[str, TableSpec] = {
    "observation_period": TableSpec(
        "observation_period",
        "observation_period_id",
        None,
        "observation_period_start_date",
        None,
        end_date="observation_period_end_date",
        fixed_code="JUMEAU/observation_period",
    ),
    "visit_occurrence": TableSpec(
        "visit",
        "visit_occurrence_id",
        "visit_start_datetime",
        "visit_start_date",
        "visit_concept_id",
        "visit_source_concept_id",
        end_datetime="visit_end_datetime",
        end_date="visit_end_date",
    ),
    "visit_detail": TableSpec(
        "visit",
        "visit_detail_id",
        "visit_detail_start_datetime",
        "visit_detail_start_date",
        "visit_detail_concept_id",
        "visit_detail_source_concept_id",
        end_datetime="visit_detail_end_datetime",
        end_date="visit_detail_end_date",
    ),
    "condition_occurrence": TableSpec(
        "condition",
        "condition_occurrence_id",
        "condition_start_datetime",
        "condition_start_date",
        "condition_concept_id",
        "condition_source_concept_id",
        end_datetime="condition_end_datetime",
        end_date="condition_end_date",
        source_value="condition_source_value",
    ),
    "drug_exposure": TableSpec(
        "drug",
        "drug_exposure_id",
        "drug_exposure_start_datetime",
        "drug_exposure_start_date",
        "drug_concept_id",
        "drug_source_concept_id",
        end_datetime="drug_exposure_end_datetime",
        end_date="drug_exposure_end_date",
        number="quantity",
        supply_days="days_supply",
        source_value="drug_source_value",
    ),
    "procedure_occurrence": TableSpec(
        "procedure",
        "procedure_occurrence_id",
        "procedure_datetime",
        "procedure_date",
        "procedure_concept_id",
        "procedure_source_concept_id",
        number="quantity",
        source_value="procedure_source_value",
    ),
    "device_exposure": TableSpec(
        "device",
        "device_exposure_id",
        "device_exposure_start_datetime",
        "device_exposure_start_date",
        "device_concept_id",
        "device_source_concept_id",
        end_datetime="device_exposure_end_datetime",
        end_date="device_exposure_end_date",
        number="quantity",
        source_value="device_source_value",
    ),
    "measurement": TableSpec(
        "measurement",
        "measurement_id",
        "measurement_datetime",
        "measurement_date",
        "measurement_concept_id",
        "measurement_source_concept_id",
        number="value_as_number",
        value_concept="value_as_concept_id",
        unit_concept="unit_concept_id",
        unit_source="unit_source_value",
        operator_concept="operator_concept_id",
        source_value="measurement_source_value",
    ),
    "observation": TableSpec(
        "observation",
        "observation_id",
        "observation_datetime",
        "observation_date",
        "observation_concept_id",
        "observation_source_concept_id",
        number="value_as_number",
        string="value_as_string",
        value_concept="value_as_concept_id",
        unit_concept="unit_concept_id",
        unit_source="unit_source_value",
        source_value="observation_source_value",
    ),
    "death": TableSpec(
        "death",
        "person_id",
        "death_datetime",
        "death_date",
        None,
        value_concept="cause_concept_id",
        fixed_code=DEATH_CODE,
    ),
    "specimen": TableSpec(
        "specimen",
        "specimen_id",
        "specimen_datetime",
        "specimen_date",
        "specimen_concept_id",
        number="quantity",
        unit_concept="unit_concept_id",
        source_value="specimen_source_value",
    ),
    "note": TableSpec(
        "note",
        "note_id",
        "note_datetime",
        "note_date",
        "note_class_concept_id",
        "note_type_concept_id",
        string="note_text",
    ),
    # a concept an NLP system found in a note (negated and hypothetical mentions included, as
    # its term_exists, term_temporal and term_modifiers say), dated and owned by its note
    "note_nlp": TableSpec(
        "mention",
        "note_nlp_id",
        "note_datetime",
        "note_date",
        "note_nlp_concept_id",
        "note_nlp_source_concept_id",
        string="nlp_mention",
        no_person="its note_id names no note of the note table",
    ),
    # a disease phase or a treatment course (CDM v5.4, oncology): its object (the disease, the
    # regimen) as the value
    "episode": TableSpec(
        "episode",
        "episode_id",
        "episode_start_datetime",
        "episode_start_date",
        "episode_concept_id",
        end_datetime="episode_end_datetime",
        end_date="episode_end_date",
        value_concept="episode_object_concept_id",
        source_value="episode_source_value",
    ),
    # a health insurance cover over its period (a sociodemographic fact, as a FHIR Coverage is)
    "payer_plan_period": TableSpec(
        "demographic",
        "payer_plan_period_id",
        None,
        "payer_plan_period_start_date",
        "payer_concept_id",
        "payer_source_concept_id",
        end_date="payer_plan_period_end_date",
        source_value="payer_source_value",
    ),
}

#: The CDM's operator concepts (measurement.operator_concept_id) and their comparators ("=" says
#: nothing a value does not).
_OPERATORS = {4171756: "<", 4171754: "<=", 4171755: ">=", 4172704: ">"}

#: Standard concepts so common that a CDM without its vocabulary tables still names them.
BUILTIN_CONCEPTS: dict[int, tuple[str, str]] = {
    8507: ("Gender", "M"),
    8532: ("Gender", "F"),
    8527: ("Race", "5"),
    8516: ("Race", "3"),
    8515: ("Race", "2"),
    8657: ("Race", "1"),
    8557: ("Race", "4"),
    38003563: ("Ethnicity", "Hispanic"),
    38003564: ("Ethnicity", "Not Hispanic"),
    9201: ("Visit", "IP"),
    9202: ("Visit", "OP"),
    9203: ("Visit", "ER"),
}

#: ``jts``: a CDM date or datetime written as text (``2020-01-31``, ``20200131``,
#: ``2020-01-31 08:00:00``), one with a UTC offset (``2020-01-31T08:00:00+02:00``) taken at
#: its UTC instant like every stored time (a plain cast would drop the offset). ``off_day``: an
#: optional datetime more than a day off the required date it belongs to, so a placeholder
#: (SynPUF's ``1900-01-01``); within a day of it, the gap is a time zone's. ``jts_day_first``:
#: ``jts``, or a date written day first (``31/01/2020``), as European exports write them.
_MACROS = """
CREATE OR REPLACE MACRO jts(x) AS CASE
    WHEN regexp_matches(CAST(x AS VARCHAR), '[0-9]:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)? ?[+-][0-9]{2}(:?[0-9]{2})?$')
    THEN TRY_CAST(CAST(x AS VARCHAR) AS TIMESTAMPTZ)::TIMESTAMP
    ELSE COALESCE(TRY_CAST(x AS TIMESTAMP), TRY_STRPTIME(CAST(x AS VARCHAR), '%Y%m%d')) END;
CREATE OR REPLACE MACRO jts_day_first(x) AS COALESCE(
    jts(x),
    TRY_STRPTIME(CAST(x AS VARCHAR), ['%d/%m/%Y %H:%M:%S', '%d/%m/%Y %H:%M', '%d/%m/%Y'])
);
CREATE OR REPLACE MACRO blank(x) AS (x IS NULL OR trim(CAST(x AS VARCHAR)) = '');
CREATE OR REPLACE MACRO off_day(moment, day) AS
    date_diff('hour', day, moment) NOT BETWEEN -24 AND 48;
"""


#: Domain and source are one value a table: as ENUMs they cost the raw Parquet write nothing
#: (as text, every row's value would be hashed into the column's dictionary) and read back as text.
_CONSTANT_TYPES = f"""
CREATE TYPE omop_domain AS ENUM ({", ".join(repr(d) for d in sorted({"demographic", *(s.domain for s in SPECS.values())}))});
CREATE TYPE omop_source AS ENUM ({", ".join(repr(f"omop/{t}") for t in ["person", *SPECS])});
"""


_INTEGER_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
)


_INT64_TYPES = frozenset(_INTEGER_TYPES) - {"HUGEINT", "UBIGINT"}
#: Rows whose ids are checked for repeats in memory (8 bytes an id, twice, while sorting).
_SORTED_IDS_LIMIT = 50_000_000
#: Concepts from which the vocabulary is narrowed to the ones the tables use.
_FULL_VOCABULARY = 100_000

#: Columns whose values are source ids: a reject reason never quotes them.
_IDENTIFYING = frozenset({"person_id"})


class _Typed:
    """SQL for reading a CDM column of whatever type the source gave it.

    Typed columns (a DATE, a BIGINT) are read as they are; text columns (CSV) are parsed, and
    only they can hold a value that does not parse, which then becomes the row's reject reason.
    """

    def __init__(self, types: dict[str, str], *, european: bool = False) -> None:
        self.types = types
        #: text in the European convention (a semicolon-separated file's): numbers with a
        #: decimal comma (``7,5``), dates day first (``31/01/2020``)
        self.european = european

    def ref(self, name: str | None) -> str:
        return f'"{name}"' if name and name in self.types else "NULL"

    def _is_text(self, name: str) -> bool:
        return self.types[name].upper().startswith("VARCHAR")

    def blank(self, name: str | None) -> str:
        if not name or name not in self.types:
            return "true"
        if self._is_text(name):
            return f'("{name}" IS NULL OR trim("{name}") = \'\')'
        return f'("{name}" IS NULL)'

    def time(self, name: str | None) -> str:
        if not name or name not in self.types:
            return "NULL::TIMESTAMP"
        kind = self.types[name].upper()
        if kind.startswith(("DATE", "TIMESTAMP")):
            return f'CAST("{name}" AS TIMESTAMP)'
        return f'{"jts_day_first" if self.european else "jts"}("{name}")'

    def moment(self, datetime_name: str | None, date_name: str | None) -> str:
        """A record's datetime, or its date where it has none or where the datetime is a
        placeholder (``off_day``): the date is the CDM's required field."""
        moment, day = self.time(datetime_name), self.time(date_name)
        if moment == "NULL::TIMESTAMP" or day == "NULL::TIMESTAMP":
            return f"COALESCE({moment}, {day})"
        return f"CASE WHEN off_day({moment}, {day}) THEN {day} ELSE COALESCE({moment}, {day}) END"

    def text(self, name: str | None) -> str:
        """A text column, blank (``''``, spaces) read as missing."""
        if not name or name not in self.types:
            return "NULL::VARCHAR"
        return f'CASE WHEN NOT {self.blank(name)} THEN CAST("{name}" AS VARCHAR) END'

    def integer(self, name: str | None) -> str:
        if not name or name not in self.types:
            return "NULL::BIGINT"
        if self.types[name].upper() in _INTEGER_TYPES:
            return f'CAST("{name}" AS BIGINT)'
        return f'TRY_CAST(trim(CAST("{name}" AS VARCHAR)) AS BIGINT)'

    def number(self, name: str | None) -> str:
        if not name or name not in self.types:
            return "NULL::DOUBLE"
        if self.european and self._is_text(name):  # 7,5 is 7.5; 1.234,5 stays unread
            return (
                f'TRY_CAST(CASE WHEN contains("{name}", \'.\') THEN "{name}" '
                f"ELSE replace(\"{name}\", ',', '.') END AS DOUBLE)"
            )
        return f'TRY_CAST("{name}" AS DOUBLE)'

    def _bad(self, name: str | None, parsed: str, what: str) -> str:
        if not name or name not in self.types or not self._is_text(name):
            return ""
        shown = "''" if name in _IDENTIFYING else f"' ' || shown(\"{name}\")"
        return f"WHEN NOT {self.blank(name)} AND {parsed} IS NULL THEN '{name}' || {shown} || ' is not {what}'"

    def bad_time(self, name: str | None) -> str:
        return self._bad(name, self.time(name), "a date")

    def bad_integer(self, name: str | None) -> str:
        if (
            name
            and name in self.types
            and self.types[name].upper() in ("DOUBLE", "FLOAT", "DECIMAL")
        ):
            return f'WHEN "{name}" <> floor("{name}") THEN \'{name} \' || shown("{name}") || \' is not an integer\''
        return self._bad(name, self.integer(name), "an integer")

    def bad_number(self, name: str | None) -> str:
        return self._bad(name, self.number(name), "a number")


_HEADER_ROW_REASON = "the table's column names, loaded as a row (a CSV header read as data)"
_HEADER_ROW_WARNING = (
    "the first row holds the column names (a CSV header loaded as data): "
    "read under those names, without that row"
)


def ingest_omop(
    store: Store,
    source: str | Path,
    *,
    schema: str | None = None,
    vocabulary_schema: str | None = None,
    vocabulary_folder: str | Path | None = None,
    source_name: str = "omop",
    full_refresh: bool = False,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest an OMOP CDM database into ``store`` as one atomic batch.

    Parameters
    ----------
    store:
        The target store (its key must be available).
    source:
        A folder of CDM tables (CSV or Parquet), a DuckDB or SQLite file, or a
        ``postgresql://`` URL.
    schema:
        The database schema holding the CDM tables (default ``main`` for DuckDB, ``public`` for
        PostgreSQL).
    vocabulary_schema:
        The schema of the vocabulary tables when it is not ``schema`` (OHDSI sites often keep
        the vocabulary in a schema of its own); DuckDB and PostgreSQL sources.
    vocabulary_folder:
        A folder holding the concept table (an Athena vocabulary download) to use instead of
        the source's own: a CDM exported without its vocabulary still gets its codes.
    source_name:
        The namespace of the source's person ids and record ids. Warehouses of different sites
        all number their persons and rows from 1: give each its own name (``chu-lille``) and
        they stay apart; the same name again recognises what is already stored.
    full_refresh:
        The source is the warehouse's whole current state (a nightly rebuild): the rows that
        earlier ingests of ``source_name`` stored from the tables it holds, and that it no
        longer holds, were deleted there and are withdrawn (the store as it was still shows
        them); a table none of whose rows is accepted withdraws nothing. Without it an ingest
        only adds and amends.
    progress:
        Called with the name of each table as its mapping starts.

    Returns
    -------
    IngestReport
        Per-table counts (``read == accepted + rejected``), events written, rejects.
    """
    source_str = str(source)
    is_url = source_str.startswith(("postgres://", "postgresql://"))
    label = omop_sources._redact(source_str) if is_url else str(Path(source).resolve())
    with BatchWriter(store, "omop", label, namespace=source_name) as writer:
        con = connect(writer.staging_dir / "omop-tmp")
        try:
            run(con, _MACROS)
            run(con, _CONSTANT_TYPES)
            con.create_function(
                "jumeau_document_text",
                lambda text: document_text(text),
                [duckdb.sqltype("VARCHAR")],
                duckdb.sqltype("VARCHAR"),
                side_effects=False,
            )
            tables = _open_source(
                source_str, is_url, con, writer, schema, vocabulary_schema, progress
            )
            if vocabulary_folder is not None:
                omop_sources.use_vocabulary_folder(tables, Path(vocabulary_folder))
            _OmopMapper(store, tables, writer, progress, source_name).run()
        finally:
            con.close()
        if full_refresh:
            writer.refresh()
        return writer.commit()


def _open_source(
    source: str,
    is_url: bool,
    con: duckdb.DuckDBPyConnection,
    writer: BatchWriter,
    schema: str | None,
    vocabulary_schema: str | None = None,
    progress: Progress | None = None,
) -> OmopTables:
    if is_url:
        return omop_sources.from_postgres(
            source,
            con,
            writer.staging_dir / "pg-snapshot",
            schema or "public",
            vocabulary_schema,
            progress,
        )
    path = Path(source)
    if not path.exists():
        raise OmopSourceError(f"{source}: no such file or folder")
    if path.is_dir():
        if vocabulary_schema is not None:
            raise OmopSourceError(
                f"{source}: a folder has no schemas; give its vocabulary as a vocabulary folder"
            )
        tables = omop_sources.from_folder(path, con)
    elif omop_sources.is_sqlite(path):
        if schema is not None or vocabulary_schema is not None:
            raise OmopSourceError(f"{source}: a SQLite database has no schemas")
        tables = omop_sources.from_sqlite(
            path, con, writer.staging_dir / "sqlite-snapshot", progress
        )
    elif path.suffix.lower() in (".duckdb", ".db", ".ddb"):
        tables = omop_sources.from_duckdb(path, con, schema, vocabulary_schema)
    else:
        raise OmopSourceError(
            f"{source}: expected a folder of CDM tables, a DuckDB or SQLite file or a "
            "postgresql:// URL"
        )
    if "person" not in tables.relations:
        raise OmopSourceError(f"{source}: no person table found; is this an OMOP CDM?")
    return tables


class _OmopMapper:
    def __init__(
        self,
        store: Store,
        tables: OmopTables,
        writer: BatchWriter,
        progress: Progress | None,
        source_name: str = "omop",
    ) -> None:
        self.store = store
        self.tables = tables
        self.con = tables.con
        self.writer = writer
        self.report = writer.report
        self.progress = progress or (lambda _table: None)
        self.salt = store.pseudonymiser.record_salt
        self.source_name = source_name

    def run(self) -> None:
        for table in list(self.tables.relations):
            with self._reading(table):
                read_header_row(self.tables, table)
        with self._reading("concept"):
            self._load_concepts()
        self.progress("person")
        with self._reading("person"):
            self._persons()
        self._reject_header_row("person")
        self._note_nlp_with_its_notes()
        for table, spec in SPECS.items():
            if table in self.tables.relations:
                self.progress(table)
                with self._reading(table):
                    self._events(table, spec)
                self._reject_header_row(table)
        if self.tables.header_rows:
            named = ", ".join(f"omop/{t}" for t in sorted(self.tables.header_rows))
            self.report.warnings.append(f"{named}: {_HEADER_ROW_WARNING}")

    def _note_nlp_with_its_notes(self) -> None:
        """Give each note_nlp row its note's person and dates, and its mention as text
        (``term_exists=N`` a negated one, ``lexical_variant`` the words of the note); without
        a note table, the rows are rejected for the person they lack."""
        if "note_nlp" not in self.tables.relations:
            return
        cols = self.tables.column_types("note_nlp")
        if "note_id" not in cols:
            return  # rejected whole for the columns it lacks
        own = [c for c in ("person_id", "note_date", "note_datetime") if c in cols]
        kept = f"n.* EXCLUDE ({', '.join(own)})" if own else "n.*"
        facts = [
            f"'{name}=' || CAST(n.\"{column}\" AS VARCHAR)"
            for name, column in (
                ("term_exists", "term_exists"),
                ("temporal", "term_temporal"),
                ("modifiers", "term_modifiers"),
                ("lexical", "lexical_variant"),
            )
            if column in cols
        ]
        mention = f"concat_ws(';', {', '.join(facts)})" if facts else "NULL::VARCHAR"
        if "note" in self.tables.relations and "note_id" in self.tables.column_types("note"):
            notes = (
                "(SELECT CAST(note_id AS VARCHAR) AS _note, person_id, note_date, note_datetime "
                f"FROM {self.tables.relations['note']})"
            )
        else:
            notes = (
                "(SELECT NULL::VARCHAR AS _note, NULL::BIGINT AS person_id, NULL::DATE AS "
                "note_date, NULL::TIMESTAMP AS note_datetime WHERE false)"
            )
        for name, relation in (
            ("relations", self.tables.relations["note_nlp"]),
            ("numbered_relations", self.tables.numbered("note_nlp")),
        ):
            getattr(self.tables, name)["note_nlp"] = (
                f"(SELECT {kept}, t.person_id, t.note_date, t.note_datetime, "
                f"NULLIF({mention}, '') AS nlp_mention FROM {relation} n LEFT JOIN {notes} t "
                "ON t._note = CAST(n.note_id AS VARCHAR))"
            )

    def _reject_header_row(self, table: str) -> None:
        """Count the row that held a table's column names (see
        :func:`~jumeau.ingest.omop_sources.read_header_row`) as read and rejected: it is no record."""
        row = self.tables.header_rows.get(table)
        if row is None:
            return
        counts = self.report.table(f"omop/{table}")
        counts.read += 1
        counts.rejected += 1
        reject_file(
            self.writer, f"omop/{table}", self.tables.files[table], _HEADER_ROW_REASON, f"row {row}"
        )

    @contextmanager
    def _reading(self, table: str):
        """Name the file behind a table that cannot be read at all (bad encoding, broken CSV)."""
        try:
            yield
        except duckdb.Error as exc:
            where = self.tables.files.get(table, table)
            message = str(exc).split("\n\n")[0]
            raise OmopSourceError(f"{where}: cannot read the {table} table: {message}") from exc

    # -- vocabulary ------------------------------------------------------------------------

    def _load_concepts(self) -> None:
        builtin = pa.table(
            {
                "concept_id": list(BUILTIN_CONCEPTS),
                "vocabulary_id": [v for v, _ in BUILTIN_CONCEPTS.values()],
                "concept_code": [c for _, c in BUILTIN_CONCEPTS.values()],
                "concept_name": pa.nulls(len(BUILTIN_CONCEPTS), pa.string()),
            }
        )
        self.con.register("builtin_concepts", builtin)
        cdm = (
            "SELECT NULL::BIGINT concept_id, NULL vocabulary_id, NULL concept_code, "
            "NULL concept_name WHERE false"
        )
        if "concept" in self.tables.relations:
            cols = set(self.tables.columns("concept"))
            if {"concept_id", "vocabulary_id", "concept_code"} <= cols:
                cdm = (
                    "SELECT TRY_CAST(concept_id AS BIGINT) concept_id, vocabulary_id, "
                    "CAST(concept_code AS VARCHAR) concept_code, "
                    f"CAST({'concept_name' if 'concept_name' in cols else 'NULL'} AS VARCHAR) concept_name FROM {self.tables.relations['concept']}"
                )
        used = self._used_concept_ids(cdm)
        cdm_used = f"SELECT * FROM ({cdm}) WHERE concept_id IS NOT NULL" + (
            f" AND concept_id IN (SELECT id FROM {used})" if used else ""
        )
        run(
            self.con,
            f"""CREATE OR REPLACE TEMP TABLE concepts AS
            SELECT concept_id, any_value(vocabulary_id || '/' || concept_code) AS code,
                   any_value(concept_code) AS concept_code, any_value(concept_name) AS concept_name
            FROM ({cdm_used}
                  UNION ALL SELECT * FROM builtin_concepts b
                  WHERE b.concept_id NOT IN (SELECT concept_id FROM ({cdm_used})))
            GROUP BY concept_id""",
        )
        self.writer.add_codes(
            arrow_table(self.con, "SELECT code, concept_name AS description FROM concepts")
        )

    def _used_concept_ids(self, cdm: str) -> str | None:
        """A temp table of the concept ids the CDM tables use, when the vocabulary is a full one.

        A warehouse's concept table holds millions of concepts and its events use a few
        thousand: four hash joins a table against all of them cost seconds each, a scan of the
        concept columns much less. Text (CSV) sources, which a scan would parse again, and small
        vocabularies keep the whole table.
        """
        if "concept" not in self.tables.numbered_relations:
            return None
        if scalar(self.con, f"SELECT count(*) FROM ({cdm})") < _FULL_VOCABULARY:
            return None
        parts = []
        for table, spec in {"person": None, **SPECS}.items():
            if table not in self.tables.numbered_relations:
                continue
            cols = set(self.tables.columns(table))
            wanted = (
                ["gender_concept_id", "race_concept_id", "ethnicity_concept_id"]
                if spec is None
                else [spec.concept, spec.source_concept, spec.value_concept, spec.unit_concept]
            )
            rel = self.tables.relations[table]
            parts += [
                f'SELECT DISTINCT TRY_CAST("{c}" AS BIGINT) AS id FROM {rel}'
                for c in wanted
                if c and c in cols
            ]
        if not parts:
            return None
        run(
            self.con,
            "CREATE OR REPLACE TEMP TABLE used_concept_ids AS SELECT DISTINCT id FROM ("
            + " UNION ALL ".join(parts)
            + ") WHERE id IS NOT NULL",
        )
        return "used_concept_ids"

    # -- helpers ---------------------------------------------------------------------------

    def _col(self, cols: set[str], name: str | None) -> str:
        return f'"{name}"' if name and name in cols else "NULL"

    def _missing(self, table: str, cols: set[str], required: list[str]) -> bool:
        """Reject every row of a table that lacks required columns; True if it did."""
        missing = [c for c in required if c not in cols]
        if not missing:
            return False
        rel = self.tables.relations[table]
        shown = ", ".join(sorted(cols)[:6])
        reason = f"table lacks required column(s) {', '.join(missing)} (has: {shown})"
        rejects = arrow_table(
            self.con,
            f"SELECT 'omop/{table}' AS source, $file AS file, 'row ' || row_number() OVER () AS record, "
            f"$reason AS reason, NULL::BIGINT AS record_key FROM {rel}",
            {"file": self.tables.files[table], "reason": reason},
        )
        counts = self.report.table(f"omop/{table}")
        counts.read = counts.rejected = self.writer.add_rejects(rejects)
        return True

    def _write(self, table: str, events_sql: str, id_col: str = "id") -> None:
        """Write the events of ``events_sql`` straight into the batch (one DuckDB pass), then
        report its rejects.

        ``events_sql`` yields canonical columns plus ``reject_reason`` (null for events),
        ``_row`` (the source row), ``_rid`` (the record id) and ``_primary`` (false for the
        extra facts of a row, so each source row counts once).
        """
        out = self.writer.raw_path(f"omop_{table}")
        run(self.con, f"COPY ({events_sql}) TO '{out}' (FORMAT parquet, COMPRESSION snappy)")
        self._reject_exact_duplicates(out, id_col)
        counts = self.report.table(f"omop/{table}")
        counts.read, counts.rejected, counts.events, shared = run(
            self.con,
            "SELECT count(*) FILTER (_primary), count(reject_reason) FILTER (_primary), "
            "count(*) FILTER (reject_reason IS NULL), count(*) FILTER (_shared AND reject_reason IS NULL) "
            f"FROM read_parquet('{out}')",
        )[0]
        counts.accepted = counts.read - counts.rejected
        if counts.rejected:
            self.writer.add_rejects(
                arrow_table(
                    self.con,
                    f"SELECT 'omop/{table}' AS source, $file AS file, 'row ' || _row AS record, "
                    f"reject_reason AS reason, {self._record_key(table, '_rid')} "
                    f"AS record_key FROM read_parquet('{out}') WHERE reject_reason IS NOT NULL ORDER BY _row",
                    {"file": self.tables.files[table]},
                )
            )
        if shared:
            self.report.warnings.append(
                f"omop/{table}: {shared} rows share their {id_col} with a different row; "
                "kept, each identified by its content"
            )

    def _reject_exact_duplicates(self, out: Path, id_col: str) -> None:
        """Rows sharing both their id and their content are one record: keep the first."""
        duplicated = scalar(
            self.con,
            f"SELECT count(*) FROM (SELECT _rid FROM read_parquet('{out}') WHERE _shared AND _primary "
            "GROUP BY _rid HAVING count(*) > 1)",
        )
        if not duplicated:
            return
        fixed = out.with_name(out.stem + "-dedup.parquet")
        run(
            self.con,
            f"""COPY (SELECT * REPLACE (CASE WHEN reject_reason IS NULL AND _shared AND
                    row_number() OVER (PARTITION BY _rid, _primary ORDER BY _row) > 1
                THEN 'exact duplicate of an earlier row with the same {id_col}'
                ELSE reject_reason END AS reject_reason)
            FROM read_parquet('{out}')) TO '{fixed}' (FORMAT parquet, COMPRESSION snappy)""",
        )
        fixed.replace(out)

    def _find_shared_ids(self, rel: str, id_col: str, id_type: str) -> None:
        """The temp table ``shared_ids`` (``id_raw``): ids that more than one row carries.

        Integer ids (the CDM's type) of a table of up to :data:`_SORTED_IDS_LIMIT` rows are sorted
        in NumPy (not at all when they come in increasing order), several times faster than a
        hash aggregate over tens of millions of distinct ids (NumPy's default sort: 20 M ids in
        0.15-0.2 s, shuffled or mostly ascending, against 0.4-1.9 s stable); other types, and
        larger tables (whose ids would not fit in memory), are grouped in DuckDB, which spills.
        """
        in_memory = (
            id_type.upper() in _INT64_TYPES
            and scalar(self.con, f"SELECT count(*) FROM {rel}") <= _SORTED_IDS_LIMIT
        )
        if not in_memory:
            run(
                self.con,
                f"""CREATE OR REPLACE TEMP TABLE shared_ids AS SELECT "{id_col}" AS id_raw
                FROM {rel} GROUP BY 1 HAVING count(*) > 1""",
            )
            return
        ids = self.con.sql(f'SELECT "{id_col}" AS id FROM {rel} WHERE "{id_col}" IS NOT NULL')
        ordered = np.asarray(ids.fetchnumpy()["id"], dtype=np.int64)
        if len(ordered) > 1 and not (ordered[1:] > ordered[:-1]).all():
            # ids exported in increasing order (a table clustered on its key) repeat none
            if not ordered.flags.writeable:
                ordered = ordered.copy()
            ordered.sort()
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        self.con.register("shared_id_array", pa.table({"id_raw": repeated}))
        run(
            self.con,
            "CREATE OR REPLACE TEMP TABLE shared_ids AS SELECT id_raw FROM shared_id_array",
        )
        self.con.unregister("shared_id_array")

    def _shifted(self, expr: str, shift: str = "s.shift_us") -> str:
        if self.store.config.max_date_shift_days <= 0:
            return expr
        return f"({expr} + to_microseconds({shift}))"

    def _record_key(self, table: str, id_sql: str = "s.rid") -> str:
        """The keyed hash of a row's id within its table and its source (``omop`` unless the
        ingest names its site)."""
        return record_key_sql(self.salt, sql_string(f"{self.source_name}/{table}"), id_sql)

    # -- person ----------------------------------------------------------------------------

    def _persons(self) -> None:
        cols = set(self.tables.columns("person"))
        if self._missing("person", cols, ["person_id", "year_of_birth"]):
            raise OmopSourceError(
                f"{self.tables.files['person']}: the person table lacks person_id or year_of_birth"
            )
        c = lambda name: self._col(cols, name)  # noqa: E731
        run(
            self.con,
            f"""CREATE OR REPLACE TEMP TABLE staged_persons AS
            WITH src AS (SELECT * FROM {self.tables.numbered("person")}),
            t AS (SELECT _row, CAST(person_id AS VARCHAR) AS rid,
                    TRY_CAST(person_id AS BIGINT) AS person_id,
                    TRY_CAST(year_of_birth AS INTEGER) AS y,
                    COALESCE(TRY_CAST({c("month_of_birth")} AS INTEGER), 1) AS m,
                    COALESCE(TRY_CAST({c("day_of_birth")} AS INTEGER), 1) AS d,
                    TRY_CAST({c("month_of_birth")} AS INTEGER) IS NOT NULL
                        AND TRY_CAST({c("day_of_birth")} AS INTEGER) IS NOT NULL AS has_day,
                    {"jts_day_first" if "person" in self.tables.european else "jts"}({c("birth_datetime")}) AS birth_dt,
                    year_of_birth AS y_raw,
                    TRY_CAST({c("gender_concept_id")} AS BIGINT) AS gender,
                    TRY_CAST({c("race_concept_id")} AS BIGINT) AS race,
                    TRY_CAST({c("ethnicity_concept_id")} AS BIGINT) AS ethnicity,
                    CAST({c("person_source_value")} AS VARCHAR) AS person_source_value,
                    row_number() OVER (PARTITION BY person_id ORDER BY _row) AS dup
                  FROM src)
            SELECT *, CASE
                -- birth_datetime is optional, year_of_birth required: a datetime off the birth
                -- day (or more than a day off the year, where no day is given) is a placeholder
                WHEN birth_dt IS NULL OR born IS NULL THEN COALESCE(birth_dt, born)
                WHEN has_day AND off_day(birth_dt, born) THEN born
                WHEN NOT has_day AND year(birth_dt + INTERVAL 1 DAY) <> y
                     AND year(birth_dt - INTERVAL 1 DAY) <> y THEN born
                ELSE birth_dt END AS birth,
              CASE WHEN blank(rid) THEN 'person_id is missing'
                   WHEN person_id IS NULL THEN 'person_id is not an integer'
                   WHEN dup > 1 THEN 'duplicate person_id (row ' || _row || ')'
                   WHEN blank(y_raw) THEN 'year_of_birth is missing'
                   WHEN y IS NULL OR y < 1850 OR y > 2200 THEN 'year_of_birth ' || shown(y_raw) || ' is not a plausible year'
              END AS reason
            FROM (SELECT *, TRY_CAST(make_timestamp(y, m, d, 0, 0, 0) AS TIMESTAMP) AS born FROM t)""",
        )
        self.store.pseudonymiser.register_pseudonyms(
            self.con,
            "person_pseudonyms",
            self.source_name,
            "SELECT rid AS source_id FROM staged_persons WHERE reason IS NULL",
        )
        run(
            self.con,
            """CREATE OR REPLACE TEMP TABLE subject_map AS
            SELECT s.person_id, p.subject_id, p.shift_us, s.rid, s.person_source_value
            FROM staged_persons s JOIN person_pseudonyms p ON p.source_id = s.rid
            WHERE s.reason IS NULL""",
        )
        self.writer.add_identities(
            arrow_table(
                self.con,
                """SELECT subject_id, $source AS source, rid AS source_id,
                    json_object('person_source_value', person_source_value)::VARCHAR AS identifiers
                FROM subject_map""",
                {"source": self.source_name},
            )
        )
        static = []
        for column, suffix in (("gender", "gender"), ("race", "race"), ("ethnicity", "ethnicity")):
            static.append(
                f"""SELECT m.subject_id, NULL::TIMESTAMP AS time,
                    COALESCE(c.code, 'OMOP/' || s.{column}) AS code, NULL::DOUBLE AS numeric_value,
                    NULL AS text_value, NULL AS unit, NULL::TIMESTAMP AS end_time,
                    'demographic'::omop_domain AS domain, 'omop/person'::omop_source AS source,
                    {self._record_key("person", f"s.rid || '#{suffix}'")} AS record_key,
                    NULL AS reject_reason, s._row, NULL AS _rid, false AS _primary, false AS _shared
                FROM staged_persons s JOIN subject_map m USING (person_id)
                LEFT JOIN concepts c ON c.concept_id = s.{column}
                WHERE s.reason IS NULL AND s.{column} IS NOT NULL AND s.{column} <> 0"""
            )
        birth = f"""SELECT m.subject_id, {self._shifted("s.birth", "m.shift_us")} AS time, '{BIRTH_CODE}' AS code,
                NULL::DOUBLE AS numeric_value, NULL AS text_value, NULL AS unit,
                NULL::TIMESTAMP AS end_time, 'demographic'::omop_domain AS domain,
                'omop/person'::omop_source AS source,
                {self._record_key("person", "s.rid || '#birth'")} AS record_key,
                s.reason AS reject_reason, s._row, CASE WHEN s.reason IS NOT NULL THEN s.rid END AS _rid, true AS _primary, false AS _shared
            FROM staged_persons s LEFT JOIN subject_map m USING (person_id)"""
        self._write("person", " UNION ALL ".join([birth, *static]))

    # -- event tables ----------------------------------------------------------------------

    def _source_value(self, table: str, spec: TableSpec, x: _Typed) -> str:
        """SQL of the table's source code, read only where some row's concept is 0 (reading a
        text column of every row costs a fifth of a large ingest)."""
        if spec.source_value not in x.types or spec.concept not in x.types:
            return "NULL::VARCHAR"
        unmapped = scalar(
            self.con,
            f"SELECT EXISTS (SELECT 1 FROM {self.tables.relations[table]} "
            f"WHERE {x.integer(spec.concept)} = 0)",
        )
        return x.text(spec.source_value) if unmapped else "NULL::VARCHAR"

    def _events(self, table: str, spec: TableSpec) -> None:
        types = self.tables.column_types(table)
        cols = set(types)
        required = ["person_id", spec.id or "person_id"]
        if spec.concept and spec.fixed_code is None:
            required.append(spec.concept)
        starts = [x for x in (spec.start_datetime, spec.start_date) if x]
        if not any(s in cols for s in starts):
            required.append(spec.start_date or spec.start_datetime or "")
        if self._missing(table, cols, sorted(set(required))):
            return
        x = _Typed(types, european=table in self.tables.european)
        rel = self.tables.relations[table]
        id_col = spec.id or "person_id"
        self._find_shared_ids(rel, id_col, types[id_col])
        time_checks = " ".join(
            x.bad_time(col)
            for col in (spec.start_date, spec.start_datetime, spec.end_date, spec.end_datetime)
        )
        start = x.moment(spec.start_datetime, spec.start_date)
        supplied = ""
        if spec.supply_days and spec.supply_days in cols:
            days = x.integer(spec.supply_days)
            supplied = (
                f", CASE WHEN {days} >= 1 THEN {start} + to_days(CAST({days} - 1 AS INTEGER)) END"
            )
        content = ", ".join(
            f"CAST({x.ref(col)} AS VARCHAR)"
            for col in (
                "person_id",
                spec.start_datetime,
                spec.start_date,
                spec.end_datetime,
                spec.end_date,
                spec.concept,
                spec.source_concept,
                spec.number,
                spec.string,
                spec.value_concept,
                spec.unit_concept,
                spec.unit_source,
            )
        )
        run(
            self.con,
            f"""CREATE OR REPLACE TEMP VIEW staged AS
            WITH src AS (SELECT * FROM {self.tables.numbered(table)}),
            t AS (SELECT src._row,
                    CAST(src."{id_col}" AS VARCHAR) AS id_raw,
                    shared_ids.id_raw IS NOT NULL AS _shared,
                    CASE WHEN shared_ids.id_raw IS NULL THEN CAST(src."{id_col}" AS VARCHAR)
                         ELSE CAST(src."{id_col}" AS VARCHAR) || '#' || left(md5(concat_ws('|', {content})), 16)
                    END AS rid,
                    {x.integer("person_id")} AS person_id,
                    {start} AS t0,
                    COALESCE({x.moment(spec.end_datetime, spec.end_date)}{supplied}) AS t1,
                    {x.integer(spec.concept)} AS concept_id,
                    {x.integer(spec.source_concept)} AS source_concept_id,
                    {x.number(spec.number)} AS number,
                    {x.text(spec.string)} AS string,
                    {x.integer(spec.value_concept)} AS value_concept_id,
                    {x.integer(spec.unit_concept)} AS unit_concept_id,
                    {x.integer(spec.operator_concept)} AS operator_concept_id,
                    {x.text(spec.unit_source)} AS unit_source,
                    {self._source_value(table, spec, x)} AS source_value,
                    CASE WHEN {x.blank(id_col)} THEN '{id_col} is missing'
                         WHEN {x.blank("person_id")} THEN {sql_string(spec.no_person)}
                         {x.bad_integer("person_id")}
                         WHEN {x.blank(spec.start_datetime)} AND {x.blank(spec.start_date)} THEN 'start date is missing'
                         {time_checks}
                         {f"WHEN {x.blank(spec.concept)} THEN 'concept id is missing'" if spec.fixed_code is None and spec.concept else ""}
                         {x.bad_integer(spec.concept)}
                         {x.bad_number(spec.number)}
                         {x.bad_integer(spec.supply_days)}
                    END AS input_problem
                  FROM src LEFT JOIN shared_ids ON shared_ids.id_raw = src."{id_col}")
            SELECT t.*, m.subject_id, m.shift_us, m.person_source_value,
              COALESCE(t.input_problem,
                       CASE WHEN m.subject_id IS NULL THEN 'person_id not found in the person table'
                            WHEN CAST(t.t1 AS DATE) < CAST(t.t0 AS DATE)
                            THEN 'ends before it starts (end date before start date)' END
              ) AS reason
            FROM t LEFT JOIN subject_map m ON t.person_id = m.person_id""",
        )
        if spec.fixed_code:
            code = f"'{spec.fixed_code}'"
        else:
            local = redact_sql("trim(s.source_value)", ["s.person_source_value"])
            code = (
                "COALESCE(CASE WHEN s.concept_id <> 0 THEN c.code END, sc.code, "
                f"CASE WHEN s.concept_id = 0 THEN '{SOURCE_CODE_PREFIX}' || {local} END, "
                "'OMOP/' || s.concept_id)"
            )
        # free text (a note, a value written as text) is scrubbed of identifiers, the patient's
        # own source value (often the MRN) included
        string = "s.string"
        if spec.domain == "note":  # an RTF or HTML note is stored as the text a reader sees
            string = (
                f"CASE WHEN regexp_matches(s.string, {sql_string(RTF_START.pattern)}) "
                f"OR regexp_matches(s.string, {sql_string('(?i)' + HTML_START.pattern)}) "
                "THEN jumeau_document_text(s.string) ELSE s.string END"
            )
        if spec.string:
            string = redact_sql(string, ["s.person_source_value"])
        # a result given as "< 5" keeps its comparator as text, as FHIR's valueQuantity does
        comparator = " ".join(f"WHEN {cid} THEN '{sym}'" for cid, sym in _OPERATORS.items())
        text = (
            f"COALESCE({string}, CASE WHEN s.value_concept_id <> 0 THEN "
            f"COALESCE(vc.code, 'OMOP/' || s.value_concept_id) END, "
            f"CASE s.operator_concept_id {comparator} END)"
        )
        unit = "COALESCE(CASE WHEN s.unit_concept_id <> 0 THEN uc.concept_code END, s.unit_source)"
        events_sql = f"""SELECT s.subject_id, {self._shifted("s.t0")} AS time, {code} AS code,
                s.number AS numeric_value, {text} AS text_value, {unit} AS unit,
                {self._shifted("s.t1")} AS end_time, '{spec.domain}'::omop_domain AS domain,
                'omop/{table}'::omop_source AS source, {self._record_key(table)} AS record_key,
                s.reason AS reject_reason,
                -- row and id travel only where a reject or a shared id needs them (not 8 bytes
                -- a row through the batch's raw file)
                CASE WHEN s.reason IS NOT NULL OR s._shared THEN s._row END AS _row,
                CASE WHEN s.reason IS NOT NULL OR s._shared THEN s.rid END AS _rid, true AS _primary, s._shared
            FROM staged s
            LEFT JOIN concepts c ON c.concept_id = s.concept_id
            LEFT JOIN concepts sc ON sc.concept_id = s.source_concept_id AND s.source_concept_id <> 0
            LEFT JOIN concepts vc ON vc.concept_id = s.value_concept_id
            LEFT JOIN concepts uc ON uc.concept_id = s.unit_concept_id"""
        self._write(table, events_sql, id_col)
