"""A variable's true current value from its noisy, irregular observations.

Each series is filtered by a local-linear-trend Kalman filter: the level drifts as a random walk
(variance growing with the time between measurements), the trend is a slowly varying slope, and
each observation adds measurement noise. Priors and noise come from the population (learnt from
the store by :func:`fit_population`), so a patient with one measurement is pulled towards the
population and a patient with many is described by their own series.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from jumeau.twin.variables import Variable

DAYS_PER_YEAR = 365.25
Z80, Z95 = 1.2815515655446004, 1.959963984540054


@dataclass(frozen=True)
class NoiseModel:
    """Population parameters of one variable: prior, measurement noise, drift."""

    prior_mean: float
    prior_sd: float
    obs_sd: float
    drift_sd_per_year: float
    slope_sd_per_year: float
    n_subjects: int = 0
    learnt: bool = False
    interval_scale: float = 1.0

    @classmethod
    def default(cls, variable: Variable) -> NoiseModel:
        return cls(
            variable.prior_mean,
            variable.prior_sd,
            variable.obs_sd,
            variable.drift_sd_per_year,
            variable.drift_sd_per_year / 2,
        )


@dataclass
class Estimate:
    """The filtered state of a variable at a date."""

    mean: float
    sd: float
    slope_per_year: float
    slope_sd_per_year: float
    n_observations: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        z = {0.8: Z80, 0.95: Z95}.get(level) or _z(level)
        return self.mean - z * self.sd, self.mean + z * self.sd

    def to_dict(self) -> dict:
        low, high = self.interval(0.95)
        return {**asdict(self), "interval_95": [low, high]}


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


class LocalTrendFilter:
    """Kalman filter of ``[level, slope per day]`` for one variable's irregular series."""

    def __init__(self, noise: NoiseModel) -> None:
        self.noise = noise
        self.q_level = noise.drift_sd_per_year**2 / DAYS_PER_YEAR
        self.q_slope = (noise.slope_sd_per_year / DAYS_PER_YEAR) ** 2 / DAYS_PER_YEAR
        self.r = noise.obs_sd**2

    def run(self, days: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Filter the series; return the state, its covariance and the day of the last update."""
        x = np.array([self.noise.prior_mean, 0.0])
        p = np.diag([self.noise.prior_sd**2, (self.noise.slope_sd_per_year / DAYS_PER_YEAR) ** 2])
        last = float(days[0]) if len(days) else 0.0
        for day, y in zip(days, values, strict=True):
            x, p = self._predict(x, p, float(day) - last)
            last = float(day)
            s = p[0, 0] + self.r
            k = p[:, 0] / s
            x = x + k * (y - x[0])
            p = p - np.outer(k, p[0, :])
        return x, p, last

    def _predict(self, x: np.ndarray, p: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        if dt <= 0:
            return x, p
        f = np.array([[1.0, dt], [0.0, 1.0]])
        q = np.diag([self.q_level * dt, self.q_slope * dt])
        return f @ x, f @ p @ f.T + q

    def estimate(self, days: np.ndarray, values: np.ndarray, at_day: float) -> Estimate:
        """The state at ``at_day`` (no later than... any day after the last observation)."""
        x, p, last = self.run(days, values)
        x, p = self._predict(x, p, at_day - last)
        return Estimate(
            mean=float(x[0]),
            sd=math.sqrt(max(p[0, 0], 0.0)),
            slope_per_year=float(x[1] * DAYS_PER_YEAR),
            slope_sd_per_year=math.sqrt(max(p[1, 1], 0.0)) * DAYS_PER_YEAR,
            n_observations=len(values),
        )

    def predictive(
        self, days: np.ndarray, values: np.ndarray, at_day: float
    ) -> tuple[float, float]:
        """Mean and sd of a new measurement taken at ``at_day``."""
        est = self.estimate(days, values, at_day)
        return est.mean, math.sqrt(est.sd**2 + self.r) * self.noise.interval_scale


def one_step_log_likelihood(
    noise: NoiseModel, series: list[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Sum over subjects of the log density of each observation given the ones before it."""
    flt = LocalTrendFilter(noise)
    total = 0.0
    for days, values in series:
        x = np.array([noise.prior_mean, 0.0])
        p = np.diag([noise.prior_sd**2, (noise.slope_sd_per_year / DAYS_PER_YEAR) ** 2])
        last = float(days[0])
        for day, y in zip(days, values, strict=True):
            x, p = flt._predict(x, p, float(day) - last)
            last = float(day)
            s = p[0, 0] + flt.r
            resid = y - x[0]
            total += -0.5 * (math.log(2 * math.pi * s) + resid * resid / s)
            k = p[:, 0] / s
            x = x + k * resid
            p = p - np.outer(k, p[0, :])
    return total


def fit_noise(variable: Variable, series: list[tuple[np.ndarray, np.ndarray]]) -> NoiseModel:
    """Learn a variable's prior, measurement noise and drift from many subjects' series.

    The prior is the distribution of subjects' mean values; measurement noise, level drift and
    slope variability are chosen on a grid around the catalogue's defaults to maximise the
    one-step-ahead predictive likelihood of every subject's series (empirical Bayes), which
    also calibrates the predictive intervals.
    """
    default = NoiseModel.default(variable)
    series = [(d, v) for d, v in series if len(v)]
    means = [float(np.mean(v)) for _, v in series]
    if len(means) < 5:
        return default
    prior_mean = float(np.mean(means))
    prior_sd = float(np.std(means)) or default.prior_sd
    base = NoiseModel(
        prior_mean,
        prior_sd,
        default.obs_sd,
        default.drift_sd_per_year,
        default.slope_sd_per_year,
        len(means),
        True,
    )
    if sum(len(v) - 1 for _, v in series) < 10:
        return base
    best, best_ll = base, -math.inf
    for obs in (0.1, 0.25, 0.5, 1.0, 2.0):
        for drift in (0.03, 0.1, 0.3, 1.0, 3.0):
            for slope in (0.0, 0.1, 0.5, 1.0):
                candidate = NoiseModel(
                    prior_mean,
                    prior_sd,
                    default.obs_sd * obs,
                    default.drift_sd_per_year * drift,
                    max(default.drift_sd_per_year * slope, 1e-6),
                    len(means),
                    True,
                )
                ll = one_step_log_likelihood(candidate, series)
                if ll > best_ll:
                    best, best_ll = candidate, ll
    return _calibrated(best, series)


def _calibrated(
    noise: NoiseModel, series: list[tuple[np.ndarray, np.ndarray]], horizon_days: float = 366
) -> NoiseModel:
    """Scale predictive intervals so that 80% of the training data's own forecasts (from each
    history to the next observations within the horizon) fall inside the 80% interval."""
    from dataclasses import replace

    flt = LocalTrendFilter(noise)
    z = []
    for days, values in series:
        for i in range(1, len(values)):
            for j in range(i, min(i + 3, len(values))):
                if days[j] - days[i - 1] > horizon_days:
                    break
                mean, sd = flt.predictive(days[:i], values[:i], float(days[j]))
                z.append(abs(values[j] - mean) / sd)
    if len(z) < 30:
        return noise
    scale = float(np.quantile(z, 0.8)) / Z80
    return replace(noise, interval_scale=min(max(scale, 0.5), 3.0))
