"""MEDS datasets in: ``data/**/*.parquet`` shards plus optional ``metadata/codes.parquet``.

MEDS subject ids are source ids like any other: they become keyed pseudonyms. A MEDS row has no
record id, so its record key hashes the row's content and its rank among identical rows, which
makes re-importing the same dataset a no-op.

MEDS has no domain or unit column. Datasets built by the MEDS ETLs (MIMIC-IV, eICU...) say both
in their codes: ``LAB//50912//mg/dL`` is a measurement in mg/dL, ``DIAGNOSIS//ICD//10//I10`` a
condition, ``HOSPITAL_ADMISSION//...`` a visit. Where a dataset gives neither, the domain comes
from the code's prefix (:data:`CODE_PREFIX_DOMAINS`) and the unit from the code's last part when
that part is written as a unit. The codes' ``parent_codes`` (a lab's LOINC code) are kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from jumeau._duck import arrow_table, connect, run, scalar, sql_string
from jumeau.ingest.events import reject_table
from jumeau.model import BIRTH_CODE, DEATH_CODE
from jumeau.store import BatchWriter, IngestReport, Progress, Store
from jumeau.store.keys import record_key_sql
from jumeau.store.writer import range_conditions

#: The domain of a code by its prefix (after MEDS's own birth and death codes and a dataset's own
#: domain or source table): the MEDS ETLs' event prefixes, then vocabularies.
CODE_PREFIX_DOMAINS: tuple[tuple[str, str], ...] = tuple(
    (prefix, domain)
    for domain, prefixes in (
        ("demographic", "GENDER// RACE// ETHNICITY// MARITAL_STATUS// LANGUAGE// INSURANCE//"),
        ("measurement", "LAB// VITAL// VITALS// LOINC/"),
        ("condition", "DIAGNOSIS// ICD10CM/ ICD9CM/ ICD10/ ICD9/"),
        ("procedure", "PROCEDURE// CPT4/ HCPCS/ ICD10PCS/ ICD9Proc/"),
        ("drug", "MEDICATION// INFUSION RxNorm/ ATC/ NDC/"),
        (
            "visit",
            "HOSPITAL_ADMISSION HOSPITAL_DISCHARGE ED_REGISTRATION ED_OUT ICU_ADMISSION "
            "ICU_DISCHARGE TRANSFER_TO VISIT//",
        ),
    )
    for prefix in prefixes.split()
)
#: Unit words a code's last part may be without a slash or a percent sign (``mg/dL`` and ``%``
#: are units by their shape).
_UNIT_WORDS = (
    "kg g mg lb lbs cm mm m in inch inches ml l mmhg bpm °c °f degc degf c f iu u ms s min "
    "ratio units meq mmol umol pg ng fl"
)


def _unit_in_code_sql(code: str) -> str:
    """SQL for the unit a code's last ``//`` part names (``LAB//50912//mg/dL``), else NULL."""
    last = f"split_part({code}, '//', -1)"
    words = ", ".join(sql_string(w) for w in _UNIT_WORDS.split())
    return (
        f"CASE WHEN len(string_split({code}, '//')) >= 3 AND length({last}) <= 20 "
        f"AND NOT contains({last}, ' ') AND upper({last}) <> 'UNK' "
        f"AND (contains({last}, '/') OR contains({last}, '%') OR lower({last}) IN ({words})) "
        f"THEN {last} END"
    )


def _domain_from_code_sql(code: str) -> str:
    cases = " ".join(
        f"WHEN starts_with({code}, {sql_string(prefix)}) THEN {sql_string(domain)}"
        for prefix, domain in CODE_PREFIX_DOMAINS
    )
    return f"CASE {cases} END"


class MedsError(ValueError):
    """A MEDS dataset is missing or malformed."""


def ingest_meds(
    store: Store,
    source: str | Path,
    *,
    source_name: str = "meds",
    progress: Progress | None = None,
) -> IngestReport:
    """Import a MEDS dataset into ``store`` as one atomic batch.

    Columns beyond MEDS's own (``text_value``, ``unit``, ``end_time``, ``domain``) are kept when
    present, so a jumeau MEDS export comes back unchanged. ``meds_etl``'s OMOP output names its
    end time ``end`` and its source table ``table``; the table gives the domain.
    ``source_name`` namespaces the dataset's subject ids (as for OMOP and FHIR sites).
    """
    root = Path(source)
    data_dir = root / "data" if (root / "data").is_dir() else root
    if data_dir == root and root.name == "data":  # the dataset's data folder itself was named
        root = root.parent
    metadata = root / "metadata"
    files = sorted(str(p) for p in data_dir.rglob("*.parquet") if not p.is_relative_to(metadata))
    if not files:
        raise MedsError(f"{root}: no MEDS data shards (expected data/*.parquet)")
    with BatchWriter(store, "meds", str(root.resolve())) as writer:
        files = _readable(files, writer)
        con = connect(writer.staging_dir / "meds-tmp")
        try:
            _map(con, store, writer, files, progress, source_name)
            codes = metadata / "codes.parquet"
            if codes.exists():
                writer.add_codes(_code_metadata(con, codes))
        except duckdb.Error as exc:  # a shard whose footer reads but whose data does not
            message = str(exc).split("\n\n")[0]
            raise MedsError(f"{root}: cannot read the MEDS data: {message}") from exc
        finally:
            con.close()
        return writer.commit()


def _readable(files: list[str], writer: BatchWriter) -> list[str]:
    """The shards that are Parquet files; each other one is rejected whole, with the reason,
    and the dataset's other shards are imported."""
    readable, broken = [], []
    for name in files:
        try:
            pq.read_metadata(name)
        except (OSError, pa.ArrowException) as exc:
            broken.append((name, f"not a readable Parquet file ({exc})"))
        else:
            readable.append(name)
    if broken:
        writer.report.table("meds/data").rejected += len(broken)
        writer.add_rejects(
            pa.concat_tables(
                reject_table("meds/data", name, [("whole file", reason)]) for name, reason in broken
            )
        )
    if not readable:
        raise MedsError(f"{files[0]}: no readable MEDS data shard ({broken[0][1]})")
    return readable


def _code_metadata(con, path: Path) -> pa.Table:
    """The dataset's code metadata: description and parent codes, each optional in MEDS."""
    cols = {
        r[0]: r[1] for r in run(con, f"DESCRIBE SELECT * FROM read_parquet({sql_string(path)})")
    }
    if "code" not in cols:
        raise MedsError(f"{path}: MEDS code metadata lacks the code column")
    description = "CAST(description AS VARCHAR)" if "description" in cols else "NULL::VARCHAR"
    parents = "NULL::VARCHAR[]"
    if "parent_codes" in cols:
        kind = cols["parent_codes"]
        if kind.endswith("[]"):
            parents = "CAST(parent_codes AS VARCHAR[])"
        elif kind == "VARCHAR":  # one parent written as a plain string, not a list of them
            parents = "CASE WHEN parent_codes IS NULL OR parent_codes = '' THEN NULL "
            parents += "ELSE [parent_codes] END"
        else:
            raise MedsError(
                f"{path}: parent_codes is {kind}; the MEDS schema makes it a list of strings"
            )
    return arrow_table(
        con,
        f"SELECT CAST(code AS VARCHAR) AS code, {description} AS description, "
        f"{parents} AS parent_codes FROM read_parquet({sql_string(path)}) WHERE code IS NOT NULL",
    )


def _map(
    con, store: Store, writer: BatchWriter, files: list[str], progress, source_name: str
) -> None:
    cols = {
        r[0].lower()
        for r in run(
            con, "DESCRIBE SELECT * FROM read_parquet($f, union_by_name=true)", {"f": files}
        )
    }
    # MEDS before 0.3 (and meds_etl before it) named them patient_id and timestamp
    subject = "subject_id" if "subject_id" in cols else "patient_id"
    when = "time" if "time" in cols else "timestamp"
    missing = [c for c in (subject, when, "code") if c not in cols]
    if missing:
        raise MedsError(f"{files[0]}: MEDS data lacks required column(s) {', '.join(missing)}")
    if progress:
        progress("data")
    opt = lambda c, t: f'TRY_CAST("{c}" AS {t})' if c in cols else f"NULL::{t}"  # noqa: E731
    end = "end_time" if "end_time" in cols else "end"
    # a value of the wrong type rejects its row, naming the value (never a subject id)
    bad = " ".join(
        f'WHEN "{c}" IS NOT NULL AND {opt(c, t)} IS NULL THEN '
        f"'{c} ' || shown(\"{c}\") || ' is not {what}'"
        for c, t, what in (
            (when, "TIMESTAMP", "a time"),
            ("numeric_value", "DOUBLE", "a number"),
            (end, "TIMESTAMP", "a time"),
        )
        if c in cols
    )
    # a view, not a copy: each pass below reads only the columns it needs from the shards
    listed = "[" + ", ".join(sql_string(f) for f in files) + "]"
    run(
        con,
        f"""CREATE TEMP VIEW src AS SELECT filename, file_row_number + 1 AS _row,
            "{subject}" AS subject_raw, TRY_CAST("{subject}" AS BIGINT) AS sid,
            {opt(when, "TIMESTAMP")} AS time, CAST(code AS VARCHAR) AS code,
            {opt("numeric_value", "DOUBLE")} AS numeric_value,
            {opt("text_value", "VARCHAR")} AS text_value, {opt("unit", "VARCHAR")} AS unit,
            {opt(end, "TIMESTAMP")} AS end_time,
            {opt("domain", "VARCHAR")} AS domain, {opt("table", "VARCHAR")} AS source_table,
            CASE WHEN TRY_CAST("{subject}" AS BIGINT) IS NULL
                     THEN 'subject_id is missing or not an integer'
                 WHEN code IS NULL OR CAST(code AS VARCHAR) = '' THEN 'code is missing'
                 {bad} END AS reject_reason
        FROM read_parquet({listed}, union_by_name=true, filename=true, file_row_number=true)""",
    )
    tables = [r[0] for r in run(con, "SELECT DISTINCT source_table FROM src") if r[0]]
    con.register(
        "table_domains",
        pa.table(
            {
                "source_table": pa.array(tables, pa.string()),
                "table_domain": pa.array([omop_table_domain(t) for t in tables], pa.string()),
            }
        ),
    )
    p = store.pseudonymiser
    p.register_pseudonyms(con, "meds_pseudonyms", source_name, "SELECT sid AS source_id FROM src")
    run(
        con,
        """CREATE OR REPLACE TEMP TABLE meds_map AS
        SELECT CAST(source_id AS BIGINT) AS sid, subject_id, shift_us FROM meds_pseudonyms""",
    )
    counts = writer.report.table("meds/data")
    counts.read = counts.rejected + run(con, "SELECT count(*) FROM src")[0][0]
    rejects = arrow_table(
        con,
        """SELECT 'meds/data' AS source, filename AS file, 'row ' || _row AS record,
            reject_reason AS reason, NULL::BIGINT AS record_key
        FROM src WHERE reject_reason IS NOT NULL""",
    )
    counts.rejected += writer.add_rejects(rejects)
    counts.accepted = counts.read - counts.rejected
    shift = "" if store.config.max_date_shift_days <= 0 else " + to_microseconds(m.shift_us)"
    content = (
        "concat_ws('|', s.sid, s.time, s.code, s.numeric_value, s.text_value, s.unit, s.end_time)"
    )
    # identical rows are told apart by their rank among themselves (which of them is first
    # does not matter: they are the same), so the same dataset in any order or sharding gives
    # the same keys
    same = "s.sid, s.time, s.code, s.numeric_value, s.text_value, s.unit, s.end_time"
    key = record_key_sql(
        p.record_salt,
        sql_string(f"{source_name}/data"),
        f"{content} || '#' || row_number() OVER (PARTITION BY {same})",
    )
    # identical rows belong to one subject, so the ranking runs one range of subjects at a
    # time: windows that fit in memory instead of one over the whole dataset that spills
    counts.events = 0
    for i, in_range in enumerate(_subject_ranges(con, counts.read)):
        out = writer.raw_path(f"meds-{i}")
        run(
            con,
            f"""COPY (SELECT m.subject_id, s.time{shift} AS time, s.code, s.numeric_value,
                s.text_value, COALESCE(s.unit, {_unit_in_code_sql("s.code")}) AS unit,
                s.end_time{shift} AS end_time,
                COALESCE(s.domain, CASE s.code WHEN '{BIRTH_CODE}' THEN 'demographic'
                                               WHEN '{DEATH_CODE}' THEN 'death' END,
                         d.table_domain, {_domain_from_code_sql("s.code")}, 'other') AS domain,
                'meds/data' AS source, {key} AS record_key
            FROM src s JOIN meds_map m USING (sid) LEFT JOIN table_domains d USING (source_table)
            WHERE s.reject_reason IS NULL AND {in_range})
            TO '{out}' (FORMAT parquet)""",
        )
        counts.events += scalar(con, f"SELECT count(*) FROM read_parquet('{out}')")


#: Rows of a MEDS dataset mapped (and their duplicates ranked) at once.
RANGE_ROWS = 12_000_000


def _subject_ranges(con, rows: int) -> list[str]:
    """Conditions on the source subject id cutting the dataset into ranges of about
    :data:`RANGE_ROWS` rows (cut at the ids' quantiles)."""
    parts = max(1, math.ceil(rows / RANGE_ROWS))
    if parts == 1:
        return ["true"]
    quantiles = [k / parts for k in range(1, parts)]
    edges = run(con, f"SELECT approx_quantile(sid, {quantiles}) FROM src")[0][0] or []
    return range_conditions("s.sid", sorted({int(e) for e in edges if e is not None}))


def omop_table_domain(table: str) -> str | None:
    """The domain of an OMOP table named in full (``condition_occurrence``) or short
    (``condition``, as ``meds_etl`` writes it); None for a name that is not an OMOP table."""
    from jumeau.ingest.omop import SPECS

    name = table.strip().lower()
    if name == "person":
        return "demographic"
    for candidate in (name, f"{name}_occurrence", f"{name}_exposure"):
        if candidate in SPECS:
            return SPECS[candidate].domain
    return None
