"""Probabilistic forecasts of a patient's variables, and their temporal back-test.

A forecast combines the population (priors, measurement noise and drift learnt from every
subject's series before the forecast date) with the patient's own series (the local-trend
filter), so it starts at the population and becomes personal as observations accumulate. The
back-test trains on data before a cutoff and scores forecasts of what was measured after it
against last-value-carried-forward and the population mean.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from jumeau.twin.series import birth_days, each_series, measurement_frame
from jumeau.twin.state import DAYS_PER_YEAR, LEVELS, Predictive, predict_new, z_score
from jumeau.twin.twin import day_number

if TYPE_CHECKING:
    from jumeau.store import Store
    from jumeau.twin.state import NoiseModel
    from jumeau.twin.twin import PopulationModel, Twin

_HORIZON = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(min|mins|minutes?|h|hr|hrs|hours?|d|day|days|w|wk|weeks?|mo|months?"
    r"|y|yr|years?)\s*$"
)


def horizon_days(text: str | float | int) -> float:
    """``"3mo"``, ``"6 months"``, ``"1y"``, ``"90d"``, ``"6h"`` (an ICU stay's), ``"30min"`` or a
    number of days."""
    if isinstance(text, int | float):
        return float(text)
    match = _HORIZON.match(text.lower())
    if not match:
        raise ValueError(
            f"horizon {text!r}: use a number with min, h, d, w, mo or y (e.g. 6h, 3mo, 1y)"
        )
    value, unit = float(match.group(1)), match.group(2)
    if unit.startswith("mi"):
        return value / (24 * 60)
    if unit.startswith("h"):
        return value / 24
    if unit.startswith("d"):
        return value
    if unit.startswith("w"):
        return value * 7
    if unit.startswith("m"):
        return value * DAYS_PER_YEAR / 12
    return value * DAYS_PER_YEAR


def _when(moment: datetime, ahead_days: float) -> str:
    """The forecast's date; its time of day too for a horizon within the day (``6h``)."""
    if ahead_days >= 1:
        return moment.date().isoformat()
    return moment.isoformat(timespec="minutes")


def _quantiles(predictive: Predictive, low: float = -math.inf, high: float = math.inf) -> dict:
    """Median and central intervals, kept inside the variable's physiological range."""
    out = {"median": predictive.mean}
    for level in LEVELS:
        lo, hi = predictive.interval(level)
        out[f"interval_{round(level * 100)}"] = [max(lo, low), min(hi, high)]
    return out


def forecast(twin: Twin, variable: str, horizons=("3mo", "6mo", "12mo")) -> list[dict]:
    """The predictive distribution of a new measurement of ``variable`` at each horizon."""
    if twin.deceased is not None:
        raise ValueError(
            f"subject {twin.subject_id} died on {twin.deceased.date()}: nothing to forecast"
        )
    state = twin.variables.get(variable)
    if state is None or len(state.values) == 0:
        raise KeyError(
            f"subject {twin.subject_id} has no {variable} observation before {twin.as_of.date()}"
        )
    flt = twin.population.filter(variable, twin.birth)
    variable_spec = twin.population.catalogue[variable]
    days = [horizon_days(h) for h in horizons]
    at_days = [day_number(twin.as_of) + d for d in days]
    history = [(state.days, state.values, flt.birth_day)]
    means, sds = predict_new(flt.noise, history, [0] * len(days), at_days)  # one filter pass
    out = []
    for horizon, ahead, mean, sd in zip(horizons, days, means, sds, strict=True):
        predictive = Predictive(float(mean), float(sd), flt.noise.interval_scales)
        out.append(
            {
                "horizon": horizon,
                "date": _when(twin.as_of + timedelta(days=ahead), ahead),
                "unit": state.unit,
                "sd": predictive.sd,
                **_quantiles(predictive, variable_spec.low, variable_spec.high),
            }
        )
    return out


def backtest(
    store: Store,
    cutoff: datetime,
    *,
    horizon: str | float = "12mo",
    population: PopulationModel | None = None,
) -> dict:
    """Forecast every measurement in ``(cutoff, cutoff + horizon]`` from the data up to ``cutoff``.

    Returns per variable: the number of forecasts, MAE of the twin, of last value carried
    forward and of the population mean, the twin's improvement over carry-forward with a 95%
    interval (a bootstrap over patients: a patient's forecasts are not independent of each
    other), the coverage of its 80% and 95% intervals, and its MAE by how many observations the
    patient had. Results of several cutoffs combine with :func:`pool`; :func:`published` gives
    the result without the per-patient sums the interval is drawn from.
    """
    from jumeau.twin.twin import PopulationModel

    population = population or PopulationModel.fit_cached(store, cutoff)
    frame = measurement_frame(store, population.catalogue)
    births = birth_days(store)
    cut = day_number(cutoff)
    end = cut + horizon_days(horizon)
    results: dict[str, dict] = {}
    # per variable: each forecast subject's history, and the later values it is scored on
    histories: dict[str, list[tuple[np.ndarray, np.ndarray, float | None]]] = {}
    outcomes: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    observed_before: dict[str, int] = {}
    for variable, subject, days, values in each_series(frame):
        past = days <= cut
        observed_before[variable] = observed_before.get(variable, 0) + int(past.any())
        future = (days > cut) & (days <= end)
        if not past.any() or not future.any():
            continue
        histories.setdefault(variable, []).append((days[past], values[past], births.get(subject)))
        outcomes.setdefault(variable, []).append((subject, days[future], values[future]))
    for variable, history in histories.items():
        noise = population.noise[variable]
        scored = outcomes[variable]
        rows = np.repeat(np.arange(len(scored)), [len(d) for _, d, _ in scored])
        actual = np.concatenate([v for _, _, v in scored])
        mean, sd = predict_new(noise, history, rows, np.concatenate([d for _, d, _ in scored]))
        predictive = Predictive(mean, sd, noise.interval_scales)
        in80, in95 = (
            (lo <= actual) & (actual <= hi)
            for lo, hi in (predictive.interval(0.8), predictive.interval(0.95))
        )
        locf = np.array([v[-1] for _, v, _ in history])[rows]
        n_hist = np.array([len(v) for _, v, _ in history])[rows]
        subjects = np.array([s for s, _, _ in scored], dtype=np.int64)[rows]
        pop = noise.prior_mean
        err = np.abs(actual - mean)
        mae, mae_locf, mae_pop = (
            float(err.mean()),
            float(np.abs(actual - locf).mean()),
            float(np.abs(actual - pop).mean()),
        )
        by_history = {}
        for label, lo, hi in (("1", 1, 1), ("2-3", 2, 3), ("4-7", 4, 7), ("8+", 8, math.inf)):
            sel = (n_hist >= lo) & (n_hist <= hi)
            if sel.any():
                by_history[label] = {
                    "n": int(sel.sum()),
                    "mae": float(err[sel].mean()),
                    "mae_carry_forward": float(np.abs(actual - locf)[sel].mean()),
                }
        sums = _subject_sums(subjects, err, np.abs(actual - locf))
        learning = _learning_curve(noise, history, rows, scored, actual, locf)
        results[variable] = {
            "n": len(actual),
            "subjects": observed_before[variable],
            "unit": population.catalogue[variable].unit,
            "mae": mae,
            "mae_carry_forward": mae_locf,
            "mae_population_mean": mae_pop,
            "improvement_vs_carry_forward": 1 - mae / mae_locf if mae_locf else None,
            "improvement_ci95": improvement_interval(sums),
            "coverage_80": float(in80.mean()),
            "coverage_95": float(in95.mean()),
            "mae_by_history": by_history,
            "mae_by_own_observations": learning,
            SUBJECT_SUMS: sums,
        }
    return {
        "cutoff": cutoff.isoformat(),
        "horizon": str(horizon),
        "variables": results,
        "population": population.to_dict(),
    }


#: How many of the patient's latest observations the learning curve gives the twin.
LEARNING_CURVE_POINTS = (1, 2, 4)


def _learning_curve(
    noise: NoiseModel,
    history: list[tuple[np.ndarray, np.ndarray, float | None]],
    rows: np.ndarray,
    scored: list[tuple[int, np.ndarray, np.ndarray]],
    actual: np.ndarray,
    carried: np.ndarray,
) -> dict | None:
    """The twin's MAE on the same forecasts when it sees only the patient's last 1, 2 and 4
    observations, and all of them: the error falling as the patient's own data accumulate,
    on forecasts whose history has at least :data:`LEARNING_CURVE_POINTS`' last count (so
    every point is the same patients, the same targets and the same population)."""
    longest = LEARNING_CURVE_POINTS[-1]
    panel = np.flatnonzero(np.array([len(v) for _, v, _ in history])[rows] >= longest)
    if not len(panel):
        return None
    at_days = np.concatenate([d for _, d, _ in scored])[panel]
    curve: dict = {"n": len(panel)}
    for k in (*LEARNING_CURVE_POINTS, None):
        seen = history if k is None else [(d[-k:], v[-k:], b) for d, v, b in history]
        mean, _ = predict_new(noise, seen, rows[panel], at_days)
        curve["all" if k is None else str(k)] = float(np.abs(actual[panel] - mean).mean())
    curve["carry_forward"] = float(np.abs(actual[panel] - carried[panel]).mean())
    return curve


#: Key of a variable's per-patient error sums in a back-test result (not published).
SUBJECT_SUMS = "_subject_sums"
BOOTSTRAP_DRAWS = 2000
#: Patients above which the interval is the delta method's, the bootstrap's large-sample limit
#: (2,000 resamples of 300,000 patients take half a minute a variable, the linearised variance
#: milliseconds; on fewer patients the bootstrap keeps the interval's asymmetry).
BOOTSTRAP_MAX_PATIENTS = 20_000
#: resample counts held at once by the bootstrap (8 bytes each)
_BOOTSTRAP_CELLS = 4_000_000


def _subject_sums(subjects: np.ndarray, error: np.ndarray, error_carry_forward: np.ndarray) -> dict:
    """subject -> [forecasts, summed absolute error of the twin, of carry-forward]."""
    out: dict[int, list[float]] = {}
    for subject, e, c in zip(
        subjects.tolist(), error.tolist(), error_carry_forward.tolist(), strict=True
    ):
        acc = out.setdefault(subject, [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += e
        acc[2] += c
    return out


def improvement_interval(sums: dict, level: float = 0.95, seed: int = 0) -> list[float] | None:
    """A percentile bootstrap interval of the improvement over carry-forward, resampling
    patients (with all their forecasts) rather than forecasts; beyond
    :data:`BOOTSTRAP_MAX_PATIENTS` patients, the delta-method interval of the same ratio with
    patients as clusters. None with fewer than 2 patients."""
    if len(sums) < 2:
        return None
    # in an order of the data, not of the pseudonyms: the same patients, the same interval
    totals = np.array(sorted(sums.values()), dtype=float)
    if len(totals) > BOOTSTRAP_MAX_PATIENTS:
        return _delta_interval(totals[:, 1], totals[:, 2], level)
    rng = np.random.default_rng(seed)
    share = np.full(len(totals), 1 / len(totals))
    # draws a few at a time: 2,000 resamples of a million patients would not fit in memory
    step = max(1, _BOOTSTRAP_CELLS // len(totals))
    error, carried = np.empty(BOOTSTRAP_DRAWS), np.empty(BOOTSTRAP_DRAWS)
    for start in range(0, BOOTSTRAP_DRAWS, step):
        draws = rng.multinomial(len(totals), share, min(step, BOOTSTRAP_DRAWS - start))
        error[start : start + len(draws)] = draws @ totals[:, 1]
        carried[start : start + len(draws)] = draws @ totals[:, 2]
    ok = carried > 0
    if not ok.any():
        return None
    improvement = 1 - error[ok] / carried[ok]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(improvement, tail)), float(np.percentile(improvement, 100 - tail))]


def _delta_interval(error: np.ndarray, carried: np.ndarray, level: float) -> list[float] | None:
    """The interval of ``1 - sum(error) / sum(carried)`` from the ratio's linearised variance,
    each patient's sums one cluster."""
    total = carried.sum()
    if total <= 0:
        return None
    ratio = error.sum() / total
    n = len(error)
    spread = math.sqrt(n / (n - 1) * float(np.sum((error - ratio * carried) ** 2))) / total
    half = z_score(level) * spread
    return [float(1 - ratio - half), float(1 - ratio + half)]


def published(result: dict) -> dict:
    """A back-test result as it is shown and saved: without the per-patient error sums."""
    variables = {
        name: {k: v for k, v in fields.items() if k != SUBJECT_SUMS}
        for name, fields in result["variables"].items()
    }
    return {**result, "variables": variables}


def pool(results: list[dict]) -> dict:
    """Combine back-tests at several cutoffs into one (weighted by forecasts); a patient
    forecast at several cutoffs is one patient in the improvement's interval."""
    pooled: dict[str, dict] = {}
    for result in results:
        for name, v in result["variables"].items():
            acc = pooled.setdefault(
                name, {"n": 0, "unit": v["unit"], "sums": {}, "by_history": {}, "subjects": {}}
            )
            for subject, (n, e, c) in v.get(SUBJECT_SUMS, {}).items():
                total = acc["subjects"].setdefault(subject, [0, 0.0, 0.0])
                total[0] += n
                total[1] += e
                total[2] += c
            acc["n"] += v["n"]
            for key in (
                "mae",
                "mae_carry_forward",
                "mae_population_mean",
                "coverage_80",
                "coverage_95",
            ):
                acc["sums"][key] = acc["sums"].get(key, 0.0) + v[key] * v["n"]
            curve = v.get("mae_by_own_observations")
            if curve:
                c = acc.setdefault("learning", {})
                for key, value in curve.items():
                    weight = 1 if key == "n" else curve["n"]
                    c[key] = c.get(key, 0.0) + value * weight
            for label, h in v["mae_by_history"].items():
                b = acc["by_history"].setdefault(
                    label, {"n": 0, "mae": 0.0, "mae_carry_forward": 0.0}
                )
                b["n"] += h["n"]
                b["mae"] += h["mae"] * h["n"]
                b["mae_carry_forward"] += h["mae_carry_forward"] * h["n"]
    variables = {}
    for name, acc in pooled.items():
        n = acc["n"]
        v = {key: total / n for key, total in acc["sums"].items()}
        v["improvement_vs_carry_forward"] = (
            1 - v["mae"] / v["mae_carry_forward"] if v["mae_carry_forward"] else None
        )
        v["improvement_ci95"] = improvement_interval(acc["subjects"])
        v["mae_by_history"] = {
            label: {
                "n": b["n"],
                "mae": b["mae"] / b["n"],
                "mae_carry_forward": b["mae_carry_forward"] / b["n"],
            }
            for label, b in acc["by_history"].items()
        }
        learning = acc.get("learning")
        v["mae_by_own_observations"] = (
            {key: (int(t) if key == "n" else t / learning["n"]) for key, t in learning.items()}
            if learning
            else None
        )
        variables[name] = {"n": n, "unit": acc["unit"], **v, SUBJECT_SUMS: acc["subjects"]}
    return {
        "cutoff": ", ".join(r["cutoff"] for r in results),
        "horizon": results[0]["horizon"],
        "variables": variables,
    }
