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
        return est.mean, math.sqrt(est.sd**2 + self.r)


def fit_noise(variable: Variable, series: list[tuple[np.ndarray, np.ndarray]]) -> NoiseModel:
    """Learn a variable's prior, measurement noise and drift from many subjects' series.

    The variogram of within-subject differences, ``E[(y2 - y1)^2] = 2 sd_obs^2 + q * dt``, is
    fitted by least squares on pairs of consecutive observations; the prior is the distribution
    of subjects' mean values.
    """
    default = NoiseModel.default(variable)
    gaps, sq = [], []
    means = []
    for days, values in series:
        if len(values) == 0:
            continue
        means.append(float(np.mean(values)))
        if len(values) > 1:
            gaps.append(np.diff(days))
            sq.append(np.diff(values) ** 2)
    if len(means) < 5:
        return default
    prior_mean = float(np.mean(means))
    prior_sd = float(np.std(means)) or default.prior_sd
    if not gaps or sum(len(g) for g in gaps) < 20:
        return NoiseModel(
            prior_mean,
            prior_sd,
            default.obs_sd,
            default.drift_sd_per_year,
            default.slope_sd_per_year,
            len(means),
            True,
        )
    dt = np.concatenate(gaps)
    d2 = np.concatenate(sq)
    keep = dt > 0
    dt, d2 = dt[keep], d2[keep]
    design = np.column_stack([np.full_like(dt, 2.0), dt])
    (r2, q), *_ = np.linalg.lstsq(design, d2, rcond=None)
    if r2 <= 0:
        r2 = max(
            float(np.median(d2[dt < np.percentile(dt, 10) + 1]) / 2), (default.obs_sd / 4) ** 2
        )
    q = max(float(q), 1e-9)
    drift_per_year = math.sqrt(q * DAYS_PER_YEAR)
    return NoiseModel(
        prior_mean,
        prior_sd,
        math.sqrt(float(r2)),
        drift_per_year,
        drift_per_year / 2,
        len(means),
        True,
    )
