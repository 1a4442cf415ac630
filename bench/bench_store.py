"""Store benchmark: OMOP ingest, timeline reads, full scans and peak memory, against peers.

Eunomia GiBleed is replicated ``--replicas`` times with offset ids (372 replicas give just over
1 million subjects and ~85 million events), written as a Parquet OMOP folder that both tools
read. Each measured step runs in its own process so peak memory (max RSS) is its own.

    python bench/bench_store.py --replicas 372          # the issue's scale
    python bench/bench_store.py --replicas 10           # a quick look

Everything is printed as ratios from the same run, and written to ``bench/out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
OFFSET = 10_000_000
TABLES = {
    "person": ["person_id"],
    "observation_period": ["observation_period_id", "person_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "visit_occurrence_id"],
    "drug_exposure": ["drug_exposure_id", "person_id", "visit_occurrence_id"],
    "procedure_occurrence": ["procedure_occurrence_id", "person_id", "visit_occurrence_id"],
    "measurement": ["measurement_id", "person_id", "visit_occurrence_id"],
    "observation": ["observation_id", "person_id", "visit_occurrence_id"],
}


#: Eunomia is CDM v5.3; meds_etl reads v5.4 names, so the benchmark data uses them.
V54_NAMES = {
    "discharge_to_concept_id": "discharged_to_concept_id",
    "discharge_to_source_value": "discharged_to_source_value",
    "admitting_source_concept_id": "admitted_from_concept_id",
    "admitting_source_value": "admitted_from_source_value",
}


def build_dataset(out: Path, replicas: int) -> dict:
    """Write Eunomia x ``replicas`` as ``out/<table>/part-*.parquet`` with lower-case CDM columns."""
    from jumeau.data import eunomia_path

    marker = out / "DONE.json"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"ATTACH '{eunomia_path()}' AS e (READ_ONLY)")
    con.execute("SET preserve_insertion_order = false")
    counts = {}
    for table, id_cols in TABLES.items():
        cols = [r[0] for r in con.execute(f"DESCRIBE e.{table}").fetchall()]
        select = []
        for c in cols:
            low = V54_NAMES.get(c.lower(), c.lower())
            if low in id_cols:
                select.append(f"CAST({c} AS BIGINT) + r.k * {OFFSET} AS {low}")
            elif low in ("value_as_number", "quantity", "range_low", "range_high"):
                select.append(f"TRY_CAST({c} AS DOUBLE) AS {low}")
            elif low.endswith("_source_value") or low in ("value_as_string", "sig", "stop_reason"):
                select.append(f"CAST({c} AS VARCHAR) AS {low}")  # CDM types, as meds_etl expects
            else:
                select.append(f"{c} AS {low}")
        (out / table).mkdir()
        step = max(
            1, 5_000_000 // max(1, con.execute(f"SELECT count(*) FROM e.{table}").fetchall()[0][0])
        )
        n = 0
        for part, start in enumerate(range(0, replicas, step)):
            stop = min(replicas, start + step)
            con.execute(
                f"COPY (SELECT {', '.join(select)} FROM e.{table}, range({start}, {stop}) r(k)) "
                f"TO '{out / table / f'part-{part:04d}.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
            )
        n = con.execute(f"SELECT count(*) FROM read_parquet('{out / table}/*.parquet')").fetchall()[
            0
        ][0]
        counts[table] = n
    (out / "concept").mkdir()
    con.execute(
        "COPY (SELECT concept_id AS concept_id, concept_name AS concept_name, domain_id AS domain_id, vocabulary_id AS vocabulary_id, "
        "concept_class_id AS concept_class_id, standard_concept AS standard_concept, concept_code AS concept_code, valid_start_date AS valid_start_date, valid_end_date AS valid_end_date, invalid_reason AS invalid_reason FROM e.concept) "
        f"TO '{out / 'concept' / 'part-0000.parquet'}' (FORMAT parquet)"
    )
    con.close()
    info = {
        "replicas": replicas,
        "rows": counts,
        "subjects": counts["person"],
        "source_rows": sum(counts.values()),
    }
    marker.write_text(json.dumps(info))
    return info


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; return wall seconds, peak RSS (MiB) and its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "stdout": stdout}


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


INGEST = """
import sys, json, jumeau
from jumeau.ingest.omop import ingest_omop
store = jumeau.init(sys.argv[1])
report = ingest_omop(store, sys.argv[2])
print(json.dumps({"events": report.events_written, "subjects": report.subjects}))
"""

MEDS_IMPORT = """
import sys, json, jumeau
from jumeau.ingest.meds import ingest_meds
store = jumeau.init(sys.argv[1])
report = ingest_meds(store, sys.argv[2])
print(json.dumps({"events": report.events_written, "subjects": report.subjects}))
"""

READS = """
import sys, json, time, random, statistics
import jumeau
store = jumeau.open(sys.argv[1])
ids = json.loads(open(sys.argv[2]).read())
store.timeline_arrow(ids[0])
out = {}
for name, fn in (("arrow", store.timeline_arrow), ("polars", store.timeline)):
    for attempt in ("cold", "warm"):
        times, n = [], 0
        for sid in ids:
            t = time.perf_counter(); frame = fn(sid); times.append(time.perf_counter() - t)
            n += len(frame)
        out[name if attempt == "warm" else name + "_cold"] = {"median_us": statistics.median(times) * 1e6, "events": n}
print(json.dumps(out))
"""

MEDS_READER_READS = """
import sys, json, time, statistics
import meds_reader
ids = json.loads(open(sys.argv[2]).read())
with meds_reader.SubjectDatabase(sys.argv[1]) as db:
    db[ids[0]].events
    out = {}
    for attempt in ("cold", "warm"):
        times, n = [], 0
        for sid in ids:
            t = time.perf_counter()
            events = [(e.time, e.code) for e in db[sid].events]
            times.append(time.perf_counter() - t)
            n += len(events)
        out[attempt] = {"median_us": statistics.median(times) * 1e6, "events": n}
print(json.dumps({**out["warm"], "cold": out["cold"]}))
"""

SCAN = """
import sys, json, time, jumeau
store = jumeau.open(sys.argv[1])
con = store.connect()
runs = []
for _ in range(2):  # the second run reads from a warm page cache, as the peer's does
    t = time.perf_counter()
    n, total, codes = con.execute("SELECT count(*), sum(numeric_value), count(DISTINCT code) FROM events").fetchall()[0]
    runs.append(time.perf_counter() - t)
seconds = min(runs)
print(json.dumps({"events": n, "seconds": seconds, "events_per_second": n / seconds}))
"""

MEDS_SCAN = """
import sys, json, time, duckdb
con = duckdb.connect()
con.execute("SET enable_progress_bar = false").fetchall()
runs = []
for _ in range(2):
    t = time.perf_counter()
    n, total, codes = con.execute(f"SELECT count(*), sum(numeric_value), count(DISTINCT code) FROM read_parquet('{sys.argv[1]}/data/**/*.parquet')").fetchall()[0]
    runs.append(time.perf_counter() - t)
seconds = min(runs)
print(json.dumps({"events": n, "seconds": seconds, "events_per_second": n / seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=372)
    parser.add_argument("--work", type=Path, default=HERE / "out")
    parser.add_argument(
        "--reads", type=int, default=2000, help="subjects sampled for timeline reads"
    )
    parser.add_argument("--skip-meds-etl", action="store_true")
    parser.add_argument(
        "--reingest",
        action="store_true",
        help="with --reuse: measure jumeau again (ingest, export, convert) but keep meds_etl's run",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the ingest, meds_etl and convert results of an earlier run; measure the rest",
    )
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "JUMEAU_KEY_DIR": str(work / "keys")}
    results_path = work / f"results_x{args.replicas}.json"
    results: dict = {"replicas": args.replicas}
    if args.reuse and results_path.exists():
        results = json.loads(results_path.read_text())

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    print(f"building Eunomia x{args.replicas} ...", flush=True)
    data = work / f"omop_x{args.replicas}"
    results["dataset"] = build_dataset(data, args.replicas)
    print(
        f"  {results['dataset']['subjects']:,} subjects, {results['dataset']['source_rows']:,} source rows",
        flush=True,
    )

    store = work / f"store_x{args.replicas}"
    reuse = args.reuse and "meds_reader_convert_seconds" in results and store.exists()
    keep_peer = reuse and args.reingest
    reuse = reuse and not args.reingest
    if not reuse:
        shutil.rmtree(store, ignore_errors=True)
        for key in (work / "keys").glob("*.key"):
            key.unlink()
        print("jumeau ingest ...", flush=True)
        run = measured(python(INGEST, str(store), str(data)), env)
        results["jumeau_ingest"] = {
            **json.loads(run["stdout"]),
            "seconds": run["seconds"],
            "peak_mib": run["peak_mib"],
        }
        print(f"  {results['jumeau_ingest']}", flush=True)
        save()

    meds_out = work / f"meds_etl_x{args.replicas}"
    if not args.skip_meds_etl and not reuse and not keep_peer:
        shutil.rmtree(meds_out, ignore_errors=True)
        print("meds_etl_omop ...", flush=True)
        peers = Path(
            subprocess.run(
                ["bash", str(HERE / "setup_peers.sh")], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        run = measured(
            [
                str(peers / "meds_etl_omop"),
                str(data),
                str(meds_out),
                "--num_proc",
                "2",
                "--num_shards",
                "10",
            ]
        )
        results["meds_etl_ingest"] = {"seconds": run["seconds"], "peak_mib": run["peak_mib"]}
        print(f"  {results['meds_etl_ingest']}", flush=True)
        save()
    if meds_out.exists():
        results["meds_etl_scan"] = json.loads(measured(python(MEDS_SCAN, str(meds_out)))["stdout"])

    export = work / f"export_x{args.replicas}"
    reader_db = work / f"meds_reader_x{args.replicas}"
    if not reuse:
        print("MEDS export + meds_reader_convert ...", flush=True)
        shutil.rmtree(export, ignore_errors=True)
        shutil.rmtree(reader_db, ignore_errors=True)
        run = measured(
            [str(bin_dir / "jumeau"), "export", "meds", str(export), "--store", str(store)], env
        )
        results["jumeau_export_seconds"] = run["seconds"]
        run = measured(
            [
                str(bin_dir / "meds_reader_convert"),
                str(export),
                str(reader_db),
                "--num_threads",
                "2",
            ]
        )
        results["meds_reader_convert_seconds"] = run["seconds"]
        save()

    if export.exists():
        # the same MEDS dataset in, to a random-access store: what meds_reader_convert does
        print("MEDS import of the export ...", flush=True)
        meds_store = work / f"meds_store_x{args.replicas}"
        shutil.rmtree(meds_store, ignore_errors=True)
        run = measured(python(MEDS_IMPORT, str(meds_store), str(export)), env)
        results["jumeau_meds_import"] = {
            **json.loads(run["stdout"]),
            "seconds": run["seconds"],
            "peak_mib": run["peak_mib"],
        }
        shutil.rmtree(meds_store, ignore_errors=True)
        print(f"  {results['jumeau_meds_import']}", flush=True)
        save()

    con = duckdb.connect()
    subjects = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT subject_id FROM read_parquet('{store}/batches/*/subjects.parquet')"
        ).fetchall()
    ]
    con.close()
    random.seed(0)
    sample = random.sample(subjects, min(args.reads, len(subjects)))
    ids_file = work / "sample_ids.json"
    ids_file.write_text(json.dumps(sample))
    print("timeline reads ...", flush=True)
    results["jumeau_reads"] = json.loads(
        measured(python(READS, str(store), str(ids_file)), env)["stdout"]
    )
    results["meds_reader_reads"] = json.loads(
        measured(python(MEDS_READER_READS, str(reader_db), str(ids_file)))["stdout"]
    )
    print("full scan ...", flush=True)
    results["jumeau_scan"] = json.loads(measured(python(SCAN, str(store)), env)["stdout"])

    ratios = {
        "timeline_read_speedup_vs_meds_reader_arrow": results["meds_reader_reads"]["median_us"]
        / results["jumeau_reads"]["arrow"]["median_us"],
        "timeline_read_speedup_vs_meds_reader_polars": results["meds_reader_reads"]["median_us"]
        / results["jumeau_reads"]["polars"]["median_us"],
        "cold_timeline_read_speedup_vs_meds_reader_arrow": results["meds_reader_reads"]["cold"][
            "median_us"
        ]
        / results["jumeau_reads"]["arrow_cold"]["median_us"],
    }
    if "jumeau_meds_import" in results:
        ratios["meds_import_speedup_vs_meds_reader_convert"] = (
            results["meds_reader_convert_seconds"] / results["jumeau_meds_import"]["seconds"]
        )
    if "meds_etl_ingest" in results:
        ratios["ingest_speedup_vs_meds_etl"] = (
            results["meds_etl_ingest"]["seconds"] / results["jumeau_ingest"]["seconds"]
        )
        ratios["ingest_speedup_vs_meds_etl_plus_meds_reader_convert"] = (
            results["meds_etl_ingest"]["seconds"] + results["meds_reader_convert_seconds"]
        ) / results["jumeau_ingest"]["seconds"]
        ratios["ingest_peak_memory_vs_meds_etl"] = (
            results["jumeau_ingest"]["peak_mib"] / results["meds_etl_ingest"]["peak_mib"]
        )
        ratios["scan_speed_vs_meds_etl_output"] = (
            results["jumeau_scan"]["events_per_second"]
            / results["meds_etl_scan"]["events_per_second"]
        )
    results["ratios"] = ratios
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
