"""Twin benchmark: every Eunomia subject's state and risks, and an incremental update vs a rebuild.

    python bench/bench_twin.py

Prints twins per second for the whole cohort (single process), then the cost of bringing every
twin up to date after one new batch (one more patient's FHIR bundle) against rebuilding them all,
as a ratio from the same run, then the back-test's forecasts per second made in batches
(``predict_new``) against one at a time (``LocalTrendFilter.predictive``, as the back-test made
them before), on generated blood-pressure series, and the filter of one 10,000-observation series
on plain floats against the array filter stepping one observation at a time. Results go to
``bench/out/twin_results.json``.
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
    results.update(forecast_speed())
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "twin_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def forecast_speed(subjects: int = 100_000, alone: int = 3_000) -> dict:
    """Forecasts per second of a back-test over ``subjects`` generated series (4-20 systolic
    pressures each), in batches and one at a time (on the first ``alone``)."""
    import numpy as np

    from jumeau.twin.state import LocalTrendFilter, _Batch, _walk, fit_noise, predict_new
    from jumeau.twin.variables import CATALOGUE

    rng = np.random.default_rng(0)
    series = []
    for _ in range(subjects):
        days = np.cumsum(rng.uniform(100, 500, rng.integers(4, 21)))
        series.append((days, rng.normal(130, 15) + rng.normal(0, 10, len(days)), None))
    noise = fit_noise(CATALOGUE["sbp"], series[:2000])
    rows = np.arange(subjects)
    at_days = np.array([d[-1] for d, _, _ in series]) + 180.0
    start = time.perf_counter()
    predict_new(noise, series, rows, at_days)
    batched = time.perf_counter() - start
    flt = LocalTrendFilter(noise)
    start = time.perf_counter()
    for k in range(alone):
        flt.predictive(series[k][0], series[k][1], at_days[k])
    one_by_one = time.perf_counter() - start
    long_days = np.cumsum(rng.uniform(0.01, 0.1, 10_000))  # an ICU stay's heart rates
    long_values = rng.normal(80, 10, len(long_days))
    start = time.perf_counter()
    flt.run(long_days, long_values)
    scalar = time.perf_counter() - start
    start = time.perf_counter()
    _walk(noise, _Batch([(long_days, long_values, None)]))
    stepwise = time.perf_counter() - start
    return {
        "long_series_observations": len(long_days),
        "long_series_filter_seconds": scalar,
        "long_series_array_filter_seconds": stepwise,
        "long_series_speedup": stepwise / scalar,
        "backtest_forecasts": subjects,
        "backtest_forecasts_per_second_batched": subjects / batched,
        "backtest_forecasts_per_second_one_at_a_time": alone / one_by_one,
        "backtest_batched_vs_one_at_a_time_ratio": (subjects / batched) / (alone / one_by_one),
    }


if __name__ == "__main__":
    main()
