"""Where OMOP CDM tables come from: a folder of CSV/Parquet files, a DuckDB or SQLite file,
PostgreSQL.

Each source exposes the CDM tables it holds as DuckDB relations on one connection, so the mapping
to canonical events is written once, in SQL, whatever the origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jumeau._duck import run, sql_string
from jumeau.store.report import Progress

CDM_TABLES = (
    "person",
    "observation_period",
    "visit_occurrence",
    "visit_detail",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
    "death",
    "specimen",
    "note",
    "note_nlp",
    "payer_plan_period",
    "episode",
    "concept",
)


class OmopSourceError(ValueError):
    """An OMOP source cannot be read at all (not found, unreadable, no person table)."""


@dataclass
class OmopTables:
    """The CDM tables found in a source, as SQL expressions readable on ``con``."""

    con: duckdb.DuckDBPyConnection
    label: str
    relations: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    #: Per table, a relation adding ``_row`` (1-based position in the source) without a window
    #: over the whole table: Parquet row numbers and DuckDB row ids are free.
    numbered_relations: dict[str, str] = field(default_factory=dict)
    #: Per table whose column names were loaded as a data row (see :func:`read_header_row`),
    #: that row's number: it is no record, and is rejected as such.
    header_rows: dict[str, int] = field(default_factory=dict)
    #: Tables read from semicolon-separated files, the European convention: numbers with a
    #: decimal comma (``7,5``), dates day first (``31/01/2020``).
    european: set[str] = field(default_factory=set)

    def numbered(self, table: str) -> str:
        """The table with its source row number as ``_row``."""
        return self.numbered_relations.get(
            table, f"(SELECT row_number() OVER () AS _row, * FROM {self.relations[table]})"
        )

    def column_types(self, table: str) -> dict[str, str]:
        """The table's column names, lower-cased (CDM names are case-insensitive), and types."""
        rows = run(self.con, f"DESCRIBE SELECT * FROM {self.relations[table]}")
        return {r[0].lower(): r[1] for r in rows}

    def columns(self, table: str) -> list[str]:
        """The table's lower-cased column names."""
        return list(self.column_types(table))


#: The names DuckDB gives the columns of a CSV file it read without a header (``column0``,
#: ``column00``...).
_UNNAMED_COLUMN = re.compile(r"column\d+")
_CDM_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def read_header_row(tables: OmopTables, table: str) -> None:
    """Read ``table`` under the column names its first row holds, if it holds them.

    A loader that cannot tell a CSV file's header from its data (DuckDB's sniffer, given a
    header-only file or one of text columns only) names the columns ``column0``... and loads the
    header as a row: the Eunomia DuckDB file's empty tables are such tables. A table whose
    columns all bear such names and whose first row names CDM columns (``person_id``, or
    ``concept_id`` for the vocabulary) is read under the names of that row, without it; the
    row's number is kept in ``tables.header_rows``.
    """
    unnamed = tables.columns(table)
    if not unnamed or not all(_UNNAMED_COLUMN.fullmatch(c) for c in unnamed):
        return
    numbered = tables.numbered(table)
    listed = ", ".join(f'"{c}"' for c in unnamed)
    first = run(tables.con, f"SELECT _row, {listed} FROM {numbered} ORDER BY _row LIMIT 1")
    if not first:
        return
    row, *values = first[0]
    names = [str(v).strip().lower() if v is not None else "" for v in values]
    key = "concept_id" if table == "concept" else "person_id"
    if key not in names or len(set(names)) < len(names):
        return
    if not all(_CDM_NAME.fullmatch(n) for n in names):
        return
    renamed = ", ".join(f'"{c}" AS "{n}"' for c, n in zip(unnamed, names, strict=True))
    tables.relations[table] = f"(SELECT {renamed} FROM {numbered} WHERE _row <> {row})"
    tables.numbered_relations[table] = (
        f"(SELECT _row, {renamed} FROM {numbered} WHERE _row <> {row})"
    )
    tables.header_rows[table] = row


def _numbered_parquet(files: list[Path]) -> str:
    """Parquet files read in order with their global row number, from each file's own row
    numbers and the row counts in the footers."""
    parts, offset = [], 0
    for f in files:
        parts.append(
            f"SELECT file_row_number + {offset + 1} AS _row, * EXCLUDE (file_row_number) "
            f"FROM read_parquet({sql_string(f)}, file_row_number=true)"
        )
        offset += pq.read_metadata(f).num_rows
    return "(" + " UNION ALL BY NAME ".join(parts) + ")"


def _folder_relation(
    path: Path, con: duckdb.DuckDBPyConnection
) -> tuple[str, str | None, bool] | None:
    """A DuckDB reader for one table stored as a file or a folder of part files; for Parquet,
    the same read with each row's number (see :meth:`OmopTables.numbered`); and whether it is
    written in the European convention (see :attr:`OmopTables.european`)."""
    name = path.name.lower()
    if path.is_dir():
        parquet = sorted(path.glob("*.parquet"))
        csv = sorted([*path.glob("*.csv"), *path.glob("*.csv.gz")])
        if parquet:
            relation = f"read_parquet({[str(p) for p in parquet]!r}, union_by_name=true)"
            return relation, _numbered_parquet(parquet), False
        if csv:
            relation, european = _csv_reader(con, [str(p) for p in csv])
            return relation, None, european
        return None
    if name.endswith(".parquet"):  # the footer read doubles as the check that it is Parquet
        return f"read_parquet({sql_string(path)})", _numbered_parquet([path]), False
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        relation, european = _csv_reader(con, [str(path)], tab_separated=name.endswith(".tsv"))
        return relation, None, european
    return None


def _csv_reader(
    con: duckdb.DuckDBPyConnection, files: list[str], *, tab_separated: bool = False
) -> tuple[str, bool]:
    """A DuckDB reader of CSV part files as text columns, forgiving of a malformed row (an
    unclosed quote, a missing or extra field: the row's values then fail their own checks
    and it is rejected with its reason) instead of failing the whole table. A file the sniffer
    finds unquoted is read without quotes: Athena's tab-separated vocabulary writes names such
    as ``"Lf" units`` as they are. Also says whether the files are semicolon-separated (the
    European convention: decimal commas, dates day first)."""
    listed = "[" + ", ".join(sql_string(f) for f in files) + "]"
    # one reader thread: DuckDB's parallel one cannot pad short rows of a file whose quoted
    # fields hold line breaks (a note's paragraphs)
    opts = "header=true, all_varchar=true, strict_mode=false, null_padding=true, parallel=false"
    if len(files) > 1:
        opts += ", union_by_name=true"
    delimiter, quote, escape = _sniffed(con, files[0])
    if tab_separated or delimiter == "\t":
        opts += ", delim='\\t'"
        if quote == "(empty)":
            opts += ", quote=''"
    elif quote not in (None, "(empty)", ""):
        # said, not left to the lenient reader: it would keep a doubled quote ("") as two and
        # cut the field there (a file the sniffer cannot read, an unclosed quote's, is left to
        # the reader's own guess, which rejects the bad row alone)
        escape = escape if escape not in (None, "(empty)", "") else quote
        opts += f", quote={sql_string(quote)}, escape={sql_string(escape)}"
    return f"read_csv({listed}, {opts})", delimiter == ";"


def _sniffed(
    con: duckdb.DuckDBPyConnection, path: str
) -> tuple[str | None, str | None, str | None]:
    """The delimiter, quote and escape DuckDB's sniffer finds in a CSV file (None if it cannot
    tell)."""
    try:
        rows = run(con, "SELECT Delimiter, Quote, Escape FROM sniff_csv($path)", {"path": path})
    except duckdb.Error:
        return None, None, None
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else (None, None, None)


def _table_name(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".csv.gz", ".parquet", ".csv", ".tsv", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def from_folder(folder: Path, con: duckdb.DuckDBPyConnection) -> OmopTables:
    """CDM tables as ``<table>.csv|.csv.gz|.parquet`` files or ``<table>/`` part folders."""
    if not folder.is_dir():
        raise OmopSourceError(f"{folder}: not a folder of OMOP CDM tables")
    tables = OmopTables(con, str(folder))
    for child in sorted(folder.iterdir()):
        table = _table_name(child)
        if table not in CDM_TABLES or table in tables.relations:
            continue
        try:
            found = _folder_relation(child, con)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
            raise OmopSourceError(f"{child}: unreadable ({exc})") from exc
        if found:
            tables.relations[table], numbered, european = found
            tables.files[table] = str(child)
            if numbered:
                tables.numbered_relations[table] = numbered
            if european:
                tables.european.add(table)
    return tables


def use_vocabulary_folder(tables: OmopTables, folder: Path) -> None:
    """Read the concept table from ``folder`` (an Athena vocabulary download:
    ``CONCEPT.csv``, tab-separated, or a ``concept`` Parquet file or folder) instead of the
    source's own."""
    found = from_folder(folder, tables.con) if folder.is_dir() else None
    if found is None or "concept" not in found.relations:
        raise OmopSourceError(f"{folder}: no concept table (CONCEPT.csv or concept.parquet)")
    tables.relations["concept"] = found.relations["concept"]
    tables.files["concept"] = found.files["concept"]
    tables.numbered_relations.pop("concept", None)
    if "concept" in found.numbered_relations:
        tables.numbered_relations["concept"] = found.numbered_relations["concept"]


def from_duckdb(
    path: Path,
    con: duckdb.DuckDBPyConnection,
    schema: str | None = None,
    vocabulary_schema: str | None = None,
) -> OmopTables:
    """CDM tables inside a DuckDB database file (opened read-only); the concept table from
    ``vocabulary_schema`` when the vocabulary has a schema of its own."""
    if not path.is_file():
        raise OmopSourceError(f"{path}: DuckDB file not found")
    path = path.resolve()
    try:
        run(con, f"ATTACH {sql_string(path)} AS omop_src (READ_ONLY)")
    except duckdb.Error as exc:
        raise OmopSourceError(f"{path}: cannot open as a DuckDB database ({exc})") from exc
    # views too (a CDM is often a set of views over Parquet files), told apart: only a table
    # has row ids
    found = run(
        con,
        "SELECT schema_name, table_name, true FROM duckdb_tables() WHERE database_name = 'omop_src' "
        "UNION ALL SELECT schema_name, view_name, false FROM duckdb_views() "
        "WHERE database_name = 'omop_src' AND NOT internal",
    )
    rows = [(s, t) for s, t, _ in found]
    base_tables = {(s, t) for s, t, is_table in found if is_table}
    schemas = {s for s, t in rows if t.lower() == "person"}
    if schema is None:
        schema = "main" if "main" in schemas else (sorted(schemas)[0] if schemas else "main")
    tables = OmopTables(con, str(path))
    if vocabulary_schema is not None and (vocabulary_schema, "concept") not in {
        (s, t.lower()) for s, t in rows
    }:
        raise OmopSourceError(f"{path}: no concept table in schema {vocabulary_schema!r}")
    for s, t in rows:
        wanted = vocabulary_schema if t.lower() == "concept" and vocabulary_schema else schema
        if s == wanted and t.lower() in CDM_TABLES:
            tables.relations[t.lower()] = f'omop_src."{s}"."{t}"'
            tables.files[t.lower()] = f"{path}:{s}.{t}"
            if (s, t) in base_tables:  # a view has no row ids: numbered in order instead
                tables.numbered_relations[t.lower()] = (
                    f'(SELECT rowid + 1 AS _row, * FROM omop_src."{s}"."{t}")'
                )
    return tables


def from_postgres(
    url: str,
    con: duckdb.DuckDBPyConnection,
    snapshot_dir: Path,
    schema: str = "public",
    vocabulary_schema: str | None = None,
    progress: Progress | None = None,
) -> OmopTables:
    """CDM tables of a PostgreSQL schema, streamed through ADBC into Parquet snapshots (the
    concept table from ``vocabulary_schema`` when the vocabulary has a schema of its own).

    The snapshot makes one batch read one consistent copy (a single REPEATABLE READ transaction)
    and lets the SQL mapping read each table as often as it needs.
    """
    import adbc_driver_postgresql.dbapi as pg

    snapshot_dir.mkdir(parents=True, exist_ok=True)
    try:
        conn = pg.connect(url)
    except Exception as exc:  # noqa: BLE001 - the driver's errors vary by failure
        raise OmopSourceError(f"cannot connect to PostgreSQL ({_redact(url)}): {exc}") from exc
    tables = OmopTables(con, _redact(url))
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

            def names_in(table_schema: str) -> list[str]:
                cur.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                    parameters=(table_schema,),
                )
                return [r[0] for r in cur.fetchall()]

            located = [(schema, name) for name in names_in(schema)]
            if vocabulary_schema is not None:
                located = [(s, n) for s, n in located if n.lower() != "concept"]
                vocabulary = [n for n in names_in(vocabulary_schema) if n.lower() == "concept"]
                if not vocabulary:
                    raise OmopSourceError(
                        f"{_redact(url)}: no concept table in schema {vocabulary_schema!r}"
                    )
                located.append((vocabulary_schema, vocabulary[0]))
            for table_schema, name in located:
                if name.lower() not in CDM_TABLES:
                    continue
                if progress:
                    progress(f"reading {table_schema}.{name} from PostgreSQL")
                cur.execute(f'SELECT * FROM "{table_schema}"."{name}"')
                reader = cur.fetch_record_batch()
                out = snapshot_dir / f"{name.lower()}.parquet"
                with pq.ParquetWriter(out, reader.schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch)
                tables.relations[name.lower()] = f"read_parquet({sql_string(out)})"
                tables.files[name.lower()] = f"{_redact(url)} {table_schema}.{name}"
                tables.numbered_relations[name.lower()] = _numbered_parquet([out])
            cur.execute("COMMIT")
    finally:
        conn.close()
    return tables


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Numbers a SQLite date column may hold, by what they count: ``20200131`` (an Athena-style
#: date), a Julian day (SQLite's own ``julianday()``, 1800-2200), else seconds since 1970 (R's
#: DatabaseConnector, which writes OHDSI's Eunomia files) or, beyond 10^11, milliseconds.
_YYYYMMDD = (18000101, 22001231)
_JULIAN_DAYS = (2378496.5, 2524594.5)
_SQLITE_ROWS = 65_536


def is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a SQLite database (told by its header, whatever its suffix)."""
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def from_sqlite(
    path: Path,
    con: duckdb.DuckDBPyConnection,
    snapshot_dir: Path,
    progress: Progress | None = None,
) -> OmopTables:
    """CDM tables of a SQLite database (OHDSI's Eunomia and SynPUF samples, small CDMs), read
    once into Parquet snapshots.

    A SQLite column holds whatever each row put in it (an INT column with ``''`` in some rows,
    ids written as reals, dates as text, day numbers or seconds), so every value is snapshot as
    text: dates as ISO text (each column's numbers read by what they count, see
    :data:`_JULIAN_DAYS`), whole reals as integers, ``''`` as missing. The mapping then parses
    and checks them as it does a CSV's, and a value that is not what its column needs rejects
    its row, naming it.
    """
    import sqlite3

    path = path.resolve()
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        listed = db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise OmopSourceError(f"{path}: cannot open as a SQLite database ({exc})") from exc
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    tables = OmopTables(con, str(path))
    try:
        for (name,) in listed:
            table = name.lower()
            if table not in CDM_TABLES or table in tables.relations:
                continue
            out = snapshot_dir / f"{table}.parquet"
            if progress:
                progress(f"reading {name} from SQLite")
            try:
                _snapshot_sqlite_table(db, name, out)
            except (sqlite3.DatabaseError, ValueError) as exc:
                raise OmopSourceError(f"{path}: cannot read table {name} ({exc})") from exc
            tables.relations[table] = f"read_parquet({sql_string(out)})"
            tables.files[table] = f"{path}:{name}"
            tables.numbered_relations[table] = _numbered_parquet([out])
    finally:
        db.close()
    return tables


def _snapshot_sqlite_table(db, name: str, out: Path) -> None:
    columns = [row[1] for row in db.execute(f"PRAGMA table_info({_sqlite_name(name)})")]
    lowered = [c.lower() for c in columns]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"column names differ only by case: {columns}")
    select = ", ".join(_sqlite_text(db, name, c) for c in columns)
    schema = pa.schema([(c, pa.string()) for c in lowered])
    cursor = db.execute(f"SELECT {select} FROM {_sqlite_name(name)}")
    with pq.ParquetWriter(out, schema) as writer:
        while rows := cursor.fetchmany(_SQLITE_ROWS):
            values = zip(*rows, strict=True)
            writer.write_table(pa.table([pa.array(v, pa.string()) for v in values], schema=schema))


def _sqlite_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_text(db, table: str, column: str) -> str:
    """SQLite SQL reading ``column`` as text (see :func:`from_sqlite`)."""
    c = _sqlite_name(column)
    number = f"typeof({c}) IN ('integer', 'real')"
    whole = (
        f"CASE WHEN typeof({c}) = 'real' AND {c} = CAST({c} AS INTEGER) "
        f"THEN CAST(CAST({c} AS INTEGER) AS TEXT) ELSE NULLIF(CAST({c} AS TEXT), '') END"
    )
    if not column.lower().endswith(("_date", "_datetime")):
        return f"{whole} AS {c}"
    low, high = db.execute(
        f"SELECT min({c}), max({c}) FROM {_sqlite_name(table)} WHERE {number}"
    ).fetchone()
    if low is None or (_YYYYMMDD[0] <= low and high <= _YYYYMMDD[1]):
        return f"{whole} AS {c}"
    iso = "'%Y-%m-%d %H:%M:%f'"  # to the millisecond
    if _JULIAN_DAYS[0] <= low and high <= _JULIAN_DAYS[1]:
        as_date = f"strftime({iso}, {c})"
    elif max(abs(low), abs(high)) >= 1e11:
        as_date = f"strftime({iso}, {c} / 1000.0, 'unixepoch')"
    else:
        as_date = f"strftime({iso}, {c}, 'unixepoch')"
    return f"CASE WHEN {number} THEN {as_date} ELSE NULLIF(CAST({c} AS TEXT), '') END AS {c}"


def _redact(url: str) -> str:
    """A connection URL without its password, for messages and reports."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url
