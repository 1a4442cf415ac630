"""Export a store as a MEDS dataset (``data/``, ``metadata/codes.parquet``, ``dataset.json``,
``subject_splits.parquet``), valid under the ``meds`` package schema and readable by
``meds_reader`` after ``meds_reader_convert``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.parquet as pq

from jumeau import __version__
from jumeau._duck import arrow_reader, arrow_table, run
from jumeau.store import Store

#: Canonical columns carried into MEDS beyond its four required ones.
EXTRA_COLUMNS = ("text_value", "unit", "end_time", "domain")


def meds_schemas() -> tuple[pa.Schema, pa.Schema, pa.Schema]:
    """The ``meds`` package's data, code-metadata and subject-split schemas (0.3 and 0.4 APIs)."""
    if hasattr(meds, "DataSchema"):
        return (
            meds.DataSchema.schema(),
            meds.CodeMetadataSchema.schema(),
            meds.SubjectSplitSchema.schema(),
        )
    return meds.data_schema(), meds.code_metadata_schema(), meds.subject_split_schema


def meds_data_schema() -> pa.Schema:
    """The MEDS data schema with jumeau's extra columns (text_value, unit, end_time, domain)."""
    schema = meds_schemas()[0]
    extras = {
        "text_value": pa.string(),
        "unit": pa.string(),
        "end_time": pa.timestamp("us"),
        "domain": pa.string(),
    }
    for name, kind in extras.items():
        if name not in schema.names:
            schema = schema.append(pa.field(name, kind))
    return schema


def export_meds(
    store: Store,
    out: str | Path,
    *,
    subjects_per_shard: int = 50_000,
    dataset_name: str = "jumeau",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict:
    """Write the store as a MEDS dataset at ``out`` (which must not exist or be empty).

    Parameters
    ----------
    subjects_per_shard:
        Subjects per ``data/<n>.parquet`` shard; every subject's events sit in one shard, sorted
        by time.
    splits:
        Fractions of subjects for the train, tuning and held-out splits, assigned by a stable
        hash of the subject id.

    Returns
    -------
    dict
        Counts written: subjects, events, shards, codes.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; MEDS export writes a new dataset")
    data_dir = out / meds.data_subdirectory
    data_dir.mkdir(parents=True)
    (out / "metadata").mkdir()
    schema = meds_data_schema()
    con = store.connect()
    try:
        subjects = [r[0] for r in run(con, "SELECT DISTINCT subject_id FROM events ORDER BY 1")]
        shards = 0
        events = 0
        for start in range(0, len(subjects), subjects_per_shard):
            lo, hi = subjects[start], subjects[min(start + subjects_per_shard, len(subjects)) - 1]
            reader = arrow_reader(
                con,
                "SELECT subject_id, time, code, CAST(numeric_value AS FLOAT) AS numeric_value, "
                "text_value, unit, end_time, domain FROM events "
                "WHERE subject_id BETWEEN $lo AND $hi "
                "ORDER BY subject_id, time NULLS FIRST, record_key",
                {"lo": lo, "hi": hi},
            )
            with pq.ParquetWriter(data_dir / f"{shards}.parquet", schema, compression="zstd") as w:
                for batch in reader:
                    w.write_table(pa.Table.from_batches([batch]).cast(schema))
                    events += batch.num_rows
            shards += 1
        codes = arrow_table(
            con,
            "SELECT e.code, c.description, COALESCE(c.parent_codes, []::VARCHAR[]) AS parent_codes "
            "FROM (SELECT DISTINCT code FROM events) e "
            f"LEFT JOIN ({store.codes_sql()}) c USING (code) ORDER BY e.code",
        )
        _, codes_schema, splits_schema = meds_schemas()
        pq.write_table(codes.cast(codes_schema), out / meds.code_metadata_filepath)
        train, tuning, _ = splits
        split_rows = []
        for sid in subjects:
            u = (sid * 0x9E3779B97F4A7C15 % (1 << 64)) / float(1 << 64)
            split = (
                meds.train_split
                if u < train
                else meds.tuning_split
                if u < train + tuning
                else meds.held_out_split
            )
            split_rows.append(split)
        pq.write_table(
            pa.table({"subject_id": pa.array(subjects, pa.int64()), "split": split_rows}).cast(
                splits_schema
            ),
            out / meds.subject_splits_filepath,
        )
        metadata = {
            "dataset_name": dataset_name,
            "dataset_version": store.config.store_id,
            "etl_name": "jumeau",
            "etl_version": __version__,
            "meds_version": getattr(meds, "__version__", "unknown"),
            "created_at": datetime.now(UTC).isoformat(),
        }
        (out / meds.dataset_metadata_filepath).write_text(json.dumps(metadata, indent=2))
    except BaseException:
        con.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    con.close()
    return {"subjects": len(subjects), "events": events, "shards": shards, "codes": codes.num_rows}
