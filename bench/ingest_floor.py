"""How fast could an OMOP ingest into this store layout be? A floor, against jumeau and meds_etl.

The floor is one DuckDB pass doing only what every event of the store needs: read the CDM's event
tables, map concepts (standard, source, value and unit) to vocabulary codes, join each person to
its pseudonym, hash each record id with a key (MD5, as the store's record keys), sort by subject
and time, and write the memory-mapped Arrow file and its Parquet copy. It checks nothing, rejects
nothing, finds no duplicate ids and writes no index, so no real ingest can beat it. Its variants
without the Parquet copy and without the record hashes tell what those cost.

    python bench/ingest_floor.py --replicas 40       # Eunomia x 40, ~9 M events
    python bench/ingest_floor.py --replicas 40 --runs 3

Each tool runs in its own process, in turns, ``--runs`` times; medians and ratios against
meds_etl are printed and written to ``bench/out/ingest_floor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_store import INGEST, build_dataset, measured, python  # noqa: E402

#: table: (id, start date, end date, concept, source concept, number, value concept, unit concept)
TABLES = {
    "condition_occurrence": (
        "condition_occurrence_id", "condition_start_date", "condition_end_date",
        "condition_concept_id", "condition_source_concept_id", None, None, None,
    ),
    "drug_exposure": (
        "drug_exposure_id", "drug_exposure_start_date", "drug_exposure_end_date",
        "drug_concept_id", "drug_source_concept_id", "quantity", None, None,
    ),
    "procedure_occurrence": (
        "procedure_occurrence_id", "procedure_date", None,
        "procedure_concept_id", "procedure_source_concept_id", None, None, None,
    ),
    "measurement": (
        "measurement_id", "measurement_date", None, "measurement_concept_id",
        "measurement_source_concept_id", "value_as_number", "value_as_concept_id", "unit_concept_id",
    ),
    "observation": (
        "observation_id", "observation_date", None, "observation_concept_id",
        "observation_source_concept_id", "value_as_number", "value_as_concept_id", "unit_concept_id",
    ),
    "visit_occurrence": (
        "visit_occurrence_id", "visit_start_date", "visit_end_date",
        "visit_concept_id", "visit_source_concept_id", None, None, None,
    ),
    "observation_period": (
        "observation_period_id", "observation_period_start_date", "observation_period_end_date",
        "period_type_concept_id", None, None, None, None,
    ),
}  # fmt: skip

FLOOR = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
import duckdb, pyarrow as pa, pyarrow.parquet as pq
src, out, tables, parquet, hashed = sys.argv[1], sys.argv[2], eval(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
con = duckdb.connect()
con.execute("SET preserve_insertion_order = false")
con.execute(f"CREATE TABLE concepts AS SELECT concept_id, vocabulary_id || '/' || concept_code AS code, concept_code FROM read_parquet('{src}/concept/*.parquet')")
con.execute(f"CREATE TABLE pseudonyms AS SELECT person_id, (md5_number('key|' || person_id) >> 65)::BIGINT AS subject_id FROM read_parquet('{src}/person/*.parquet')")
def col(name, kind):
    return name if name else f"NULL::{kind}"
parts = [
    f"SELECT '{t}' AS source, {i} AS id, person_id, CAST({d} AS TIMESTAMP) AS time, "
    f"CAST({col(e, 'DATE')} AS TIMESTAMP) AS end_time, {c} AS cid, {col(sc, 'BIGINT')} AS scid, "
    f"{col(v, 'DOUBLE')} AS numeric_value, {col(vc, 'BIGINT')} AS vcid, {col(uc, 'BIGINT')} AS ucid "
    f"FROM read_parquet('{src}/{t}/*.parquet')"
    for t, (i, d, e, c, sc, v, vc, uc) in tables.items()
]
key = "(md5_number('key|' || e.source || '|' || e.id) >> 68)::BIGINT" if hashed else "e.id"
sources = ", ".join(repr(t) for t in tables)
query = f'''SELECT m.subject_id, e.time, COALESCE(c.code, sc.code, 'OMOP/' || e.cid) AS code,
    e.numeric_value, CASE WHEN e.vcid <> 0 THEN COALESCE(vc.code, 'OMOP/' || e.vcid) END AS text_value,
    uc.concept_code AS unit, e.end_time, e.source::ENUM({sources}) AS source, {key} AS record_key
  FROM ({' UNION ALL '.join(parts)}) e JOIN pseudonyms m USING (person_id)
  LEFT JOIN concepts c ON c.concept_id = e.cid
  LEFT JOIN concepts sc ON sc.concept_id = e.scid AND e.scid <> 0
  LEFT JOIN concepts vc ON vc.concept_id = e.vcid LEFT JOIN concepts uc ON uc.concept_id = e.ucid
  ORDER BY m.subject_id, e.time NULLS FIRST, (record_key >> 29)::INTEGER'''
pool, pending, rows, last, arrow, table_writer = ThreadPoolExecutor(1), [], 0, None, None, None
with pa.OSFile(f"{out}/events.arrow", "wb") as sink:
    for batch in con.sql(query).to_arrow_reader(131072):
        if arrow is None:
            arrow = pa.ipc.new_file(sink, batch.schema)
            if parquet:
                table_writer = pq.ParquetWriter(f"{out}/events.parquet", batch.schema, compression="zstd",
                    compression_level=1, write_statistics=["subject_id", "time"])
        arrow.write_batch(batch)
        if parquet:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= 1 << 20:
                if last:
                    last.result()
                last = pool.submit(table_writer.write_table, pa.Table.from_batches(pending))
                pending, rows = [], 0
    if last:
        last.result()
    if parquet:
        if pending:
            table_writer.write_table(pa.Table.from_batches(pending))
        table_writer.close()
    arrow.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    args = parser.parse_args()
    data = args.work / f"omop_x{args.replicas}"
    info = build_dataset(data, args.replicas)
    peers = Path(
        measured(["bash", str(HERE / "setup_peers.sh")])["stdout"].strip().splitlines()[-1]
    )
    runs: dict[str, list[float]] = {}
    for _ in range(args.runs):
        scratch = Path(tempfile.mkdtemp(prefix="jumeau-floor-", dir=args.work))
        env = {**os.environ, "JUMEAU_KEY_DIR": str(scratch / "keys")}
        steps = {
            "meds_etl_omop": [
                str(peers / "meds_etl_omop"), str(data), str(scratch / "meds"),
                "--num_proc", "2", "--num_shards", "10",
            ],
            "jumeau ingest": python(INGEST, str(scratch / "store"), str(data)),
            "floor (Arrow + Parquet, hashed keys)": python(FLOOR, str(data), str(scratch), repr(TABLES), "1", "1"),
            "floor without the Parquet copy": python(FLOOR, str(data), str(scratch), repr(TABLES), "0", "1"),
            "floor without the record hashes": python(FLOOR, str(data), str(scratch), repr(TABLES), "1", "0"),
        }  # fmt: skip
        for name, cmd in steps.items():
            runs.setdefault(name, []).append(measured(cmd, env)["seconds"])
            print(f"  {name}: {runs[name][-1]:.2f} s", flush=True)
        shutil.rmtree(scratch)
    peer = statistics.median(runs["meds_etl_omop"])
    results = {"dataset": info, "runs": runs, "median_seconds": {}, "speed_vs_meds_etl": {}}
    print(f"\nEunomia x{args.replicas}, median of {args.runs} runs:")
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        results["median_seconds"][name] = median
        results["speed_vs_meds_etl"][name] = peer / median
        print(f"  {name:40s} {median:7.2f} s   {peer / median:4.2f}x meds_etl")
    (args.work / "ingest_floor.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
