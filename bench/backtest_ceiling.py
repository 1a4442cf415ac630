"""How far the twin's forecast model can go on the Synthea back-test: its ceiling.

    python bench/backtest_ceiling.py [SYNTHEA_FOLDER]

The back-test (``jumeau evaluate forecasts``, 12-month horizon, cutoffs 2012...2019 pooled) scores
the twin against last-value-carried-forward. This script asks what the same model would score if
its parameters were chosen with hindsight: for each variable, a grid over the filter's
measurement noise, level drift and slope variability (scaled to the variable's typical change)
and over the stacking weights (filter, recent trend, population level), each point scored on the
very outcomes of the back-test. The best point bounds, up to the grid's resolution, what any
fitting of this model could reach on these patients (a fit never sees the outcomes): where it
stays under the 10% target, the target is beyond this model on this data, not only beyond its
fitting. Results
go to ``bench/out/backtest_ceiling.json``; the improvement of the fitted model is printed beside.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CUTOFFS = [datetime(year, 1, 1) for year in range(2012, 2020)]
HORIZON_DAYS = 365.25
#: Multiples of the variable's typical change between visits (the median absolute change).
NOISE = (0.1, 0.3, 1.0, 3.0)
DRIFT = (0.3, 1.0, 3.0, 10.0)
SLOPE = (0.01, 0.3)
#: (population weight, trend weight); the filter takes the rest.
STACKING = ((0.0, 0.0), (0.2, 0.0), (0.5, 0.0), (0.0, 0.3), (0.2, 0.3), (0.5, 0.3))


def forecasts(store) -> dict[str, list[tuple]]:
    """Per variable, every back-test forecast: (fitted noise model, history days, values, birth
    day, target days, target values)."""
    from jumeau.twin.series import birth_days, each_series, measurement_frame
    from jumeau.twin.twin import CATALOGUE, PopulationModel, day_number

    births = birth_days(store)
    series = list(each_series(measurement_frame(store, CATALOGUE)))  # the same at every cutoff
    out: dict[str, list[tuple]] = {}
    for cutoff in CUTOFFS:
        population = PopulationModel.fit_cached(store, cutoff)
        cut = day_number(cutoff)
        for variable, subject, days, values in series:
            past, future = days <= cut, (days > cut) & (days <= cut + HORIZON_DAYS)
            if past.any() and future.any():
                out.setdefault(variable, []).append(
                    (
                        population.noise[variable],
                        days[past],
                        values[past],
                        births.get(subject),
                        days[future],
                        values[future],
                    )
                )
    return out


def improvement(cases: list[tuple], adjust=lambda noise: noise) -> float:
    """1 - MAE / MAE of carry-forward over the cases, each forecast by ``adjust(noise)``."""
    from jumeau.twin.state import predict_new

    error = carried = 0.0
    by_model: dict[int, list[tuple]] = {}  # a cutoff's forecasts share its fitted model
    for case in cases:
        by_model.setdefault(id(case[0]), []).append(case)
    for group in by_model.values():
        rows = np.repeat(np.arange(len(group)), [len(c[5]) for c in group])
        targets = np.concatenate([c[5] for c in group])
        mean, _ = predict_new(
            adjust(group[0][0]),
            [(days, values, birth) for _, days, values, birth, _, _ in group],
            rows,
            np.concatenate([c[4] for c in group]),
        )
        error += float(np.abs(targets - mean).sum())
        carried += float(np.abs(targets - np.array([c[2][-1] for c in group])[rows]).sum())
    return 1 - error / carried if carried else float("nan")


def ceiling(cases: list[tuple]) -> tuple[float, dict]:
    """The best improvement over the grid, and where it is reached."""
    changes = [
        np.median(np.abs(np.diff(values))) for _, _, values, _, _, _ in cases if len(values) > 1
    ]
    scale = float(np.median(changes)) if changes else 0.0
    if not scale > 0:  # a step function (an adult's height, BMI): the typical change is none
        scale = float(np.median([np.std(c[2]) for c in cases])) or 1.0
    best, where = -np.inf, {}
    for obs, drift, slope, (population, trend) in itertools.product(NOISE, DRIFT, SLOPE, STACKING):

        def adjust(noise, obs=obs, drift=drift, slope=slope, population=population, trend=trend):
            return replace(
                noise,
                obs_sd=obs * scale,
                drift_sd_per_year=drift * scale,
                slope_sd_per_year=slope * scale,
                blend=1 - population - trend,
                population_weight=population,
                trend_weight=trend,
            )

        score = improvement(cases, adjust)
        if score > best:
            best = score
            where = {
                "obs_sd": obs * scale,
                "drift_sd_per_year": drift * scale,
                "slope_sd_per_year": slope * scale,
                "population_weight": population,
                "trend_weight": trend,
            }
    return best, where


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="jumeau-ceiling-"))
    os.environ["JUMEAU_KEY_DIR"] = str(work / "keys")
    import jumeau
    from jumeau.ingest.fhir import ingest_fhir

    source = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else HERE.parent.parent / "shared/data/fhir/synthea-r4"
    )
    store = jumeau.init(work / "store")
    ingest_fhir(store, source)
    results = {}
    for variable, cases in sorted(forecasts(store).items(), key=lambda kv: -len(kv[1])):
        targets = sum(len(c[5]) for c in cases)
        if targets < 30:  # as the README's target: variables with 30+ forecasts
            continue
        fitted = improvement(cases)
        best, where = ceiling(cases)
        results[variable] = {
            "forecasts": targets,
            "fitted_improvement": fitted,
            "ceiling_improvement": best,
            "ceiling_at": where,
            "settings_tried": len(NOISE) * len(DRIFT) * len(SLOPE) * len(STACKING),
        }
        print(f"{variable:12s} {targets:4d} forecasts: fitted {fitted:+.1%}, ceiling {best:+.1%}")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "backtest_ceiling.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
