"""Twin benchmark: every Eunomia subject's state and risks, and an incremental update vs a rebuild.

    python bench/bench_twin.py

Prints twins per second for the whole cohort (single process), then the cost of bringing every
twin up to date after one new batch (one more patient's FHIR bundle) against rebuilding them all,
as a ratio from the same run. Results go to ``bench/out/twin_results.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="jumeau-bench-twin-"))
    os.environ["JUMEAU_KEY_DIR"] = str(work / "keys")
    import jumeau
    from jumeau.data import SYNTHEA_DIR, eunomia_path
    from jumeau.ingest.fhir import ingest_fhir
    from jumeau.ingest.omop import ingest_omop
    from jumeau.twin.registry import TwinRegistry

    store = jumeau.init(work / "store")
    ingest_omop(store, eunomia_path())
    as_of = datetime(2019, 6, 1)
    subjects = store.subjects().tolist()
    descriptions = store.code_descriptions()
    start = time.perf_counter()
    built = 0
    for subject in subjects:
        try:
            store.twin(subject, as_of, descriptions=descriptions)
            built += 1
        except KeyError:
            pass
    seconds = time.perf_counter() - start

    registry = TwinRegistry(store, as_of)
    start = time.perf_counter()
    full = registry.update()
    rebuild_seconds = time.perf_counter() - start
    bundle = sorted(SYNTHEA_DIR.glob("*.json"))[0]
    single = work / "one"
    single.mkdir()
    shutil.copy(bundle, single)
    ingest_fhir(store, single)
    start = time.perf_counter()
    incremental = registry.update()
    incremental_seconds = time.perf_counter() - start
    results = {
        "subjects": len(subjects),
        "twins_built": built,
        "seconds": seconds,
        "twins_per_second": built / seconds,
        "registry_full_build_seconds": rebuild_seconds,
        "registry_full_build_twins": full["rebuilt"],
        "incremental_update_seconds": incremental_seconds,
        "incremental_update_twins": incremental["rebuilt"],
        "rebuild_vs_incremental_ratio": rebuild_seconds / incremental_seconds,
    }
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "twin_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
