"""A variable's true current value from its noisy, irregular observations.

Each series is filtered by a local-linear-trend Kalman filter: the level drifts as a random walk
(variance growing with the time between measurements) and moves with the population's velocity
at the patient's age (children grow, adults slowly gain weight), the trend is the patient's own
slowly varying departure from that velocity, and each observation adds measurement noise.
Priors, velocities and noise come from the population (learnt from the store by
:func:`fit_noise`), so a patient with one measurement is pulled towards people of the same age
and a patient with many is described by their own series.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import numpy as np

from jumeau.twin.variables import Variable

DAYS_PER_YEAR = 365.25
LEVELS = (0.5, 0.8, 0.95)
Z80, Z95 = 1.2815515655446004, 1.959963984540054
AGE_KNOTS = (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 30.0, 45.0, 60.0, 75.0, 90.0, 110.0)
_PSEUDO_YEARS = 3.0
_PSEUDO_SUBJECTS = 3.0
_CALIBRATION_HORIZON_DAYS = 366.0
FIT_SERIES = 2000
FIT_LENGTH = 100
TREND_POINTS = 3
STACK_SAMPLE = 100_000


def z_score(level: float) -> float:
    """The standard normal quantile bounding a central interval of ``level``."""
    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class AgeCurve:
    """A population curve over age in years, linear between :data:`AGE_KNOTS`."""

    values: tuple[float, ...]
    #: effective number of parameters (each knot counts by how little it was shrunk)
    effective_parameters: float = 0.0

    def at(self, age: np.ndarray | float) -> np.ndarray:
        return np.interp(age, AGE_KNOTS, self.values)

    def change(self, age_from: np.ndarray, age_to: np.ndarray) -> np.ndarray:
        """The integral of the curve (a velocity per year) between two ages."""
        return self._cumulative(age_to) - self._cumulative(age_from)

    def _cumulative(self, age: np.ndarray) -> np.ndarray:
        knots, values = np.asarray(AGE_KNOTS), np.asarray(self.values)
        at_knots = np.concatenate(
            [[0.0], np.cumsum(np.diff(knots) * (values[:-1] + values[1:]) / 2)]
        )
        age = np.clip(age, knots[0], knots[-1])
        i = np.clip(np.searchsorted(knots, age, side="right") - 1, 0, len(knots) - 2)
        return at_knots[i] + (age - knots[i]) * (values[i] + np.interp(age, knots, values)) / 2


@dataclass(frozen=True)
class NoiseModel:
    """Population parameters of one variable: priors by age, velocity by age, noise, drift.

    A forecast starts from the last observed value and moves ``blend`` of the way towards the
    filter's forecast, ``trend_weight`` of the way towards the line through the patient's last
    :data:`TREND_POINTS` observations and ``population_weight`` of the way towards the
    population's level at the patient's age (where a lab value scatters around the same mean for
    everyone, the population knows more than the last value); ``interval_scales`` widen or
    narrow the Gaussian intervals at each of :data:`LEVELS`. All are chosen on the
    population's own forecasts (stacking and split-conformal calibration).
    """

    prior_mean: float
    prior_sd: float
    obs_sd: float
    drift_sd_per_year: float
    slope_sd_per_year: float
    n_subjects: int = 0
    learnt: bool = False
    interval_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blend: float = 1.0
    trend_weight: float = 0.0
    population_weight: float = 0.0
    level_by_age: AgeCurve | None = None
    velocity_by_age: AgeCurve | None = None

    @classmethod
    def default(cls, variable: Variable) -> NoiseModel:
        return cls(
            variable.prior_mean,
            variable.prior_sd,
            variable.obs_sd,
            variable.drift_sd_per_year,
            variable.drift_sd_per_year / 2,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("level_by_age", "velocity_by_age"):
            curve = getattr(self, name)
            out[name] = {"ages": list(AGE_KNOTS), "values": list(curve.values)} if curve else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> NoiseModel:
        """The model :meth:`to_dict` wrote."""
        fields = dict(data)
        for name in ("level_by_age", "velocity_by_age"):
            curve = fields.get(name)
            if curve is not None:
                if tuple(curve["ages"]) != AGE_KNOTS:
                    raise ValueError(f"{name} was written for other ages than {AGE_KNOTS}")
                fields[name] = AgeCurve(tuple(curve["values"]))
        fields["interval_scales"] = tuple(fields["interval_scales"])
        return cls(**fields)


@dataclass
class Estimate:
    """The filtered state of a variable at a date."""

    mean: float
    sd: float
    slope_per_year: float
    slope_sd_per_year: float
    n_observations: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        z = z_score(level)
        return self.mean - z * self.sd, self.mean + z * self.sd

    def to_dict(self) -> dict:
        low, high = self.interval(0.95)
        return {**asdict(self), "interval_95": [low, high]}


@dataclass(frozen=True)
class Predictive:
    """The distribution of a new measurement: a calibrated Gaussian."""

    mean: float
    sd: float
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def interval(self, level: float) -> tuple[float, float]:
        half = z_score(level) * self.sd * self._scale(level)
        return self.mean - half, self.mean + half

    def _scale(self, level: float) -> float:
        return float(np.interp(level, LEVELS, self.scales))


class _Batch:
    """Many subjects' series padded into arrays, filtered together one step at a time."""

    def __init__(self, series: list[tuple[np.ndarray, np.ndarray, float | None]]):
        self.n = np.array([len(s[1]) for s in series], dtype=int)
        width = int(self.n.max()) if len(series) else 0
        self.days = np.full((len(series), width), np.nan)
        self.values = np.full((len(series), width), np.nan)
        for i, (days, values, _) in enumerate(series):
            self.days[i, : len(days)] = days
            self.values[i, : len(values)] = values
        self.birth = np.array([np.nan if s[2] is None else s[2] for s in series], dtype=float)


class LocalTrendFilter:
    """Kalman filter of ``[level, slope per day]`` for one variable's irregular series.

    ``birth_day`` (days since the epoch) lets the filter use the population's age curves.
    """

    def __init__(self, noise: NoiseModel, birth_day: float | None = None) -> None:
        self.noise = noise
        self.birth_day = birth_day
        self.q_level = noise.drift_sd_per_year**2 / DAYS_PER_YEAR
        self.q_slope = (noise.slope_sd_per_year / DAYS_PER_YEAR) ** 2 / DAYS_PER_YEAR
        self.r = noise.obs_sd**2

    def initial(self, first_day: np.ndarray, birth: np.ndarray) -> list[np.ndarray]:
        """The prior state ``[x0, x1, p00, p01, p11]`` of each subject at its first day."""
        mean = self.population_level(first_day, birth)
        zero = np.zeros(len(first_day))
        slope_var = (self.noise.slope_sd_per_year / DAYS_PER_YEAR) ** 2
        return [mean, zero.copy(), zero + self.noise.prior_sd**2, zero.copy(), zero + slope_var]

    def advance(
        self, state: list[np.ndarray], day_from: np.ndarray, day_to: np.ndarray, birth: np.ndarray
    ) -> list[np.ndarray]:
        """The state moved forward in time (no observation)."""
        x0, x1, p00, p01, p11 = state
        dt = np.maximum(np.nan_to_num(day_to - day_from), 0.0)
        drift = np.zeros_like(dt)
        if self.noise.velocity_by_age is not None:
            known = ~np.isnan(birth) & (dt > 0)
            drift[known] = self.noise.velocity_by_age.change(
                (day_from[known] - birth[known]) / DAYS_PER_YEAR,
                (day_from[known] + dt[known] - birth[known]) / DAYS_PER_YEAR,
            )
        return [
            x0 + x1 * dt + drift,
            x1,
            p00 + 2 * dt * p01 + dt * dt * p11 + self.q_level * dt,
            p01 + dt * p11,
            p11 + self.q_slope * dt,
        ]

    def observe(
        self, state: list[np.ndarray], y: np.ndarray, active: np.ndarray
    ) -> list[np.ndarray]:
        """The state updated with one observation per active subject."""
        x0, x1, p00, p01, p11 = state
        s = p00 + self.r
        k0, k1 = p00 / s, p01 / s
        resid = np.where(active, y - x0, 0.0)
        keep = np.where(active, 1.0, 0.0)
        return [
            x0 + keep * k0 * resid,
            x1 + keep * k1 * resid,
            p00 - keep * k0 * p00,
            p01 - keep * k0 * p01,
            p11 - keep * k1 * p01,
        ]

    def run(self, days: np.ndarray, values: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Filter one series; return the state after its last observation and that day.

        The recursion runs on plain floats (the population's drift between observations is
        computed for all of them at once): an ICU patient's thousands of heart rates are
        filtered in milliseconds, with the very arithmetic of :meth:`advance` and
        :meth:`observe`.
        """
        days, values = np.asarray(days, dtype=float), np.asarray(values, dtype=float)
        birth = self._birth()
        first = float(days[0]) if len(days) else 0.0
        x0, x1, p00, p01, p11 = (float(part[0]) for part in self.initial(np.array([first]), birth))
        since = np.concatenate(([first], days[:-1]))
        gaps = np.maximum(days - since, 0.0)
        drift = np.zeros(len(days))
        velocity = self.noise.velocity_by_age
        if velocity is not None and self.birth_day is not None:
            moved = gaps > 0
            drift[moved] = velocity.change(
                (since[moved] - self.birth_day) / DAYS_PER_YEAR,
                (since[moved] + gaps[moved] - self.birth_day) / DAYS_PER_YEAR,
            )
        q_level, q_slope, r = self.q_level, self.q_slope, self.r
        for dt, y, change in zip(gaps.tolist(), values.tolist(), drift.tolist(), strict=True):
            x0 = x0 + x1 * dt + change
            p00 = p00 + 2 * dt * p01 + dt * dt * p11 + q_level * dt
            p01 = p01 + dt * p11
            p11 = p11 + q_slope * dt
            k0, k1 = p00 / (p00 + r), p01 / (p00 + r)
            resid = y - x0
            x0, x1 = x0 + k0 * resid, x1 + k1 * resid
            p00, p01, p11 = p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01
        last = float(days[-1]) if len(days) else first
        return [np.array([v]) for v in (x0, x1, p00, p01, p11)], last

    def estimate(self, days: np.ndarray, values: np.ndarray, at_day: float) -> Estimate:
        """The state at ``at_day`` (on or after the last observation)."""
        birth = self._birth()
        state, last = self.run(days, values)
        x0, x1, p00, _, p11 = self.advance(state, np.array([last]), np.array([at_day]), birth)
        return Estimate(
            mean=float(x0[0]),
            sd=math.sqrt(max(float(p00[0]), 0.0)),
            slope_per_year=float(x1[0] * DAYS_PER_YEAR),
            slope_sd_per_year=math.sqrt(max(float(p11[0]), 0.0)) * DAYS_PER_YEAR,
            n_observations=len(values),
        )

    def _birth(self) -> np.ndarray:
        """The birth day as the one-subject array the batch methods take (NaN if unknown)."""
        return np.array([np.nan if self.birth_day is None else float(self.birth_day)])

    def population_level(self, day: np.ndarray, birth: np.ndarray) -> np.ndarray:
        """The population's mean value at each subject's age on ``day`` (its overall mean where
        the birth date is unknown)."""
        level = np.full(len(day), self.noise.prior_mean)
        if self.noise.level_by_age is not None:
            known = ~np.isnan(birth)
            level[known] = self.noise.level_by_age.at((day[known] - birth[known]) / DAYS_PER_YEAR)
        return level

    def predictive(self, days: np.ndarray, values: np.ndarray, at_day: float) -> Predictive:
        """The distribution of a new measurement taken at ``at_day``."""
        if not len(values):
            est = self.estimate(days, values, at_day)
            return Predictive(est.mean, math.sqrt(est.sd**2 + self.r), self.noise.interval_scales)
        mean, sd = predict_new(self.noise, [(days, values, self.birth_day)], [0], [at_day])
        return Predictive(float(mean[0]), float(sd[0]), self.noise.interval_scales)


def recent_trend(days: np.ndarray, values: np.ndarray, at_day: np.ndarray) -> np.ndarray:
    """Per row, the least-squares line through the observed points (NaN marks none) read at
    ``at_day``: the patient's own recent course, which a growing child's height follows better
    than any population curve. One point (or one day) gives its mean."""
    seen = ~np.isnan(values)
    count = np.maximum(seen.sum(axis=1), 1)
    day_mean = np.where(seen, days, 0.0).sum(axis=1) / count
    value_mean = np.where(seen, values, 0.0).sum(axis=1) / count
    dx = np.where(seen, days - day_mean[:, None], 0.0)
    dy = np.where(seen, values - value_mean[:, None], 0.0)
    sxx = (dx * dx).sum(axis=1)
    slope = np.divide((dx * dy).sum(axis=1), sxx, out=np.zeros_like(sxx), where=sxx > 0)
    return value_mean + slope * (at_day - day_mean)


def _stacked(
    noise: NoiseModel,
    last: np.ndarray,
    filtered: np.ndarray,
    trend: np.ndarray,
    level: np.ndarray,
) -> np.ndarray:
    """The forecast mean: the last value moved towards the filter's, the recent trend's and the
    population's level at the patient's age."""
    return (
        last
        + noise.blend * (filtered - last)
        + noise.trend_weight * (trend - last)
        + noise.population_weight * (level - last)
    )


def _walk(noise: NoiseModel, batch: _Batch, visit=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Filter every series of ``batch`` together, calling ``visit(step, prior, posterior,
    active)`` after each step; return each series' state after its last observation and that
    observation's day (a series that has ended is carried unchanged)."""
    flt = LocalTrendFilter(noise)
    if batch.days.size == 0:
        return [np.zeros(len(batch.n)) for _ in range(5)], np.zeros(len(batch.n))
    state = flt.initial(batch.days[:, 0], batch.birth)
    last = batch.days[:, 0]
    for step in range(batch.days.shape[1]):
        active = step < batch.n
        day = np.where(active, batch.days[:, step], last)
        prior = flt.advance(state, last, day, batch.birth)
        state = flt.observe(prior, np.nan_to_num(batch.values[:, step]), active)
        last = day
        if visit is not None:
            visit(step, prior, state, active)
    return state, last


#: Observations (series x longest series) filtered at once by :func:`predict_new`.
_PREDICT_CELLS = 2_000_000
#: Blocks of at most this many series are filtered one series at a time, on plain floats.
_SCALAR_SERIES = 4


def predict_new(
    noise: NoiseModel,
    series: list[tuple[np.ndarray, np.ndarray, float | None]],
    rows: np.ndarray | list[int],
    at_days: np.ndarray | list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Predictive means and sds of new measurements, many forecasts at once.

    Forecast ``k`` is of a measurement at day ``at_days[k]`` given the whole of
    ``series[rows[k]]`` (``(days, values, birth day or None)``, at least one value): the
    stacked forecast :meth:`LocalTrendFilter.predictive` gives. Series are filtered together,
    those of similar lengths in blocks of at most :data:`_PREDICT_CELLS` observations, so a
    back-test of a warehouse's patients takes seconds and a patient with thousands of
    observations does not pad everyone else's.
    """
    rows, at_days = np.asarray(rows, dtype=np.int64), np.asarray(at_days, dtype=float)
    mean, sd = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    lengths = np.array([len(v) for _, v, _ in series], dtype=np.int64)
    if (lengths[np.unique(rows)] == 0).any():
        raise ValueError("a forecast needs at least one observation of its series")
    order = np.argsort(lengths, kind="stable")
    blocks, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * lengths[order[end]] <= _PREDICT_CELLS:
            end += 1
        blocks.append(order[start:end])
        start = end
    block_of, local = np.empty(len(series), np.int64), np.empty(len(series), np.int64)
    for b, members in enumerate(blocks):
        block_of[members], local[members] = b, np.arange(len(members))
    by_block = np.argsort(block_of[rows], kind="stable")
    bounds = np.searchsorted(block_of[rows][by_block], np.arange(len(blocks) + 1))
    flt = LocalTrendFilter(noise)
    for b, members in enumerate(blocks):
        ks = by_block[bounds[b] : bounds[b + 1]]
        if not len(ks):
            continue
        batch = _Batch([series[i] for i in members])
        if len(members) <= _SCALAR_SERIES:  # a patient's own forecasts: one long series
            runs = [LocalTrendFilter(noise, series[i][2]).run(*series[i][:2]) for i in members]
            state = [np.concatenate([st[k] for st, _ in runs]) for k in range(5)]
            last_day = np.array([day for _, day in runs])
        else:
            state, last_day = _walk(noise, batch, None)
        j = local[rows[ks]]
        x0, _, p00, _, _ = flt.advance(
            [part[j] for part in state], last_day[j], at_days[ks], batch.birth[j]
        )
        n = batch.n[j]
        recent = np.clip(n[:, None] - TREND_POINTS + np.arange(TREND_POINTS), -1, None)
        seen = recent >= 0
        picked = np.clip(recent, 0, None)
        days = np.where(seen, batch.days[j[:, None], picked], np.nan)
        values = np.where(seen, batch.values[j[:, None], picked], np.nan)
        trend = recent_trend(days, values, at_days[ks])
        level = flt.population_level(at_days[ks], batch.birth[j])
        mean[ks] = _stacked(noise, batch.values[j, n - 1], x0, trend, level)
        # the estimate's sd squared back, as an Estimate-based forecast computes it: the same
        # rounding, so a forecast is the same to the last bit whichever way it is made
        sd[ks] = np.sqrt(np.sqrt(np.maximum(p00, 0.0)) ** 2 + flt.r)
    return mean, sd


def one_step_log_likelihood(noise: NoiseModel, batch: _Batch) -> float:
    """Sum over subjects of the log density of each observation given the ones before it."""
    r = noise.obs_sd**2
    total = [0.0]

    def visit(step, prior, _posterior, active):
        s = prior[2] + r
        resid = np.nan_to_num(batch.values[:, step]) - prior[0]
        total[0] += float(
            np.sum(np.where(active, -0.5 * (np.log(2 * np.pi * s) + resid**2 / s), 0.0))
        )

    _walk(noise, batch, visit)
    return total[0]


def population_backtest(
    noise: NoiseModel,
    batch: _Batch,
    horizon_days: float = _CALIBRATION_HORIZON_DAYS,
    ahead: int = 6,
) -> dict[str, np.ndarray]:
    """The forecasts a back-test would make on the population's own series.

    A forecast at a date between two observations sees the history up to the first and targets
    every later observation within ``horizon_days`` of that date. Returns the targets, the
    filter's means and predictive sds, the last observed values, the recent trends and the
    population's levels at the targets' ages.
    """
    flt = LocalTrendFilter(noise)
    parts: dict[str, list[np.ndarray]] = {
        "target": [],
        "mean": [],
        "sd": [],
        "last": [],
        "trend": [],
        "level": [],
    }

    def visit(step, _prior, posterior, active):
        recent = slice(max(0, step - TREND_POINTS + 1), step + 1)
        for k in range(1, ahead + 1):
            target = step + k
            if target >= batch.days.shape[1]:
                break
            ok = active & (target < batch.n)
            ok &= batch.days[:, target] - batch.days[:, step + 1] < horizon_days
            if not ok.any():
                continue
            rows = np.flatnonzero(ok)
            sub = [s[rows] for s in posterior]
            x0, _, p00, _, _ = flt.advance(
                sub, batch.days[rows, step], batch.days[rows, target], batch.birth[rows]
            )
            parts["target"].append(batch.values[rows, target])
            parts["mean"].append(x0)
            parts["sd"].append(np.sqrt(p00 + flt.r))
            parts["last"].append(batch.values[rows, step])
            parts["level"].append(flt.population_level(batch.days[rows, target], batch.birth[rows]))
            parts["trend"].append(
                recent_trend(
                    batch.days[rows, recent], batch.values[rows, recent], batch.days[rows, target]
                )
            )

    _walk(noise, batch, visit)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def fit_noise(
    variable: Variable, series: list[tuple[np.ndarray, np.ndarray, float | None]]
) -> NoiseModel:
    """Learn a variable's population model from many subjects' series (empirical Bayes).

    ``series`` holds ``(days, values, birth_day)`` per subject. The level and the velocity by
    age are learnt from every subject's values and consecutive changes (shrunk towards the
    overall mean and towards no change where data are thin); measurement noise, level drift,
    prior spread and slope variability maximise the one-step-ahead predictive likelihood of
    every series; interval scales make the population's own forecasts cover as claimed.
    """
    default = NoiseModel.default(variable)
    # in an order set by the data alone, not by the subjects' pseudonyms: the same patients give
    # the same model whatever the store's key (a sum's order moves the optimiser's path)
    series = sorted(
        (s for s in series if len(s[1])),
        key=lambda s: (float(s[0][0]), len(s[1]), *np.asarray(s[1], dtype=float)[:3].tolist()),
    )
    if len(series) < 5:
        return default
    packed = _Packed(series)
    prior_mean = float(np.mean(packed.subject_means()))
    level = _level_by_age(packed, prior_mean)
    velocity = _velocity_by_age(packed)
    first_age = (packed.days[packed.starts] - packed.birth) / DAYS_PER_YEAR
    first_level = np.where(np.isnan(packed.birth), prior_mean, level.at(np.nan_to_num(first_age)))
    firsts = packed.values[packed.starts] - first_level
    prior_sd = float(np.std(firsts)) or default.prior_sd
    base = NoiseModel(
        prior_mean,
        prior_sd,
        default.obs_sd,
        default.drift_sd_per_year,
        default.slope_sd_per_year,
        len(series),
        True,
        level_by_age=level,
        velocity_by_age=velocity,
    )
    if sum(len(v) - 1 for _, v, _ in series) < 10:
        return base
    batch = _Batch(_fitting_sample(series))
    candidates = [_maximise_likelihood(base, default, batch)]
    if velocity is not None:
        candidates.append(_maximise_likelihood(replace(base, velocity_by_age=None), default, batch))
    best = max(candidates, key=lambda m: _information(m, batch))
    return _calibrated(best, batch)


def _fitting_sample(series: list) -> list:
    """At most :data:`FIT_SERIES` series (a fixed random draw) of at most :data:`FIT_LENGTH`
    latest observations each: enough to fit four noise parameters, and a large warehouse's
    population is fitted in seconds rather than hours."""
    if len(series) > FIT_SERIES:
        chosen = np.random.default_rng(0).choice(len(series), FIT_SERIES, replace=False)
        series = [series[i] for i in np.sort(chosen)]
    return [(d[-FIT_LENGTH:], v[-FIT_LENGTH:], b) for d, v, b in series]


def _information(noise: NoiseModel, batch: _Batch) -> float:
    """Akaike's criterion (as a log-likelihood): a velocity curve must earn its (effective)
    parameters."""
    curve = noise.velocity_by_age
    parameters = 4 + (curve.effective_parameters if curve else 0.0)
    return one_step_log_likelihood(noise, batch) - parameters


def _maximise_likelihood(base: NoiseModel, default: NoiseModel, batch: _Batch) -> NoiseModel:
    from scipy.optimize import minimize

    def model(theta: np.ndarray) -> NoiseModel:
        obs, drift, slope, prior = np.exp(np.clip(theta, -12, 6))
        return replace(
            base,
            obs_sd=default.obs_sd * obs,
            drift_sd_per_year=default.drift_sd_per_year * drift,
            slope_sd_per_year=default.drift_sd_per_year * slope,
            prior_sd=base.prior_sd * prior,
        )

    def loss(theta: np.ndarray) -> float:
        # a Gamma(2) prior on the spread of true levels between people (Chung et al. 2013's
        # boundary-avoiding prior: the log of that sd added to the log-likelihood): where the
        # data cannot tell people's levels apart, the maximum-likelihood spread is zero and every
        # patient's true value would be claimed known exactly
        value = -one_step_log_likelihood(model(theta), batch) - float(np.clip(theta[3], -12, 6))
        return value if math.isfinite(value) else 1e300

    grid = [
        np.log([obs, drift, slope, 1.0])
        for obs in (0.1, 0.5, 2.0)
        for drift in (0.01, 0.1, 1.0)
        for slope in (0.01, 0.3)
    ]
    start = min(grid, key=loss)
    result = minimize(
        loss, start, method="Nelder-Mead", options={"xatol": 0.05, "fatol": 0.05, "maxfev": 250}
    )
    return model(result.x if result.fun <= loss(start) else start)


def _calibrated(noise: NoiseModel, batch: _Batch) -> NoiseModel:
    """Stack and scale the forecasts on the population's own back-test.

    The weights of the filter, of the recent trend and of the population's level against the
    last observed value are those that minimise the absolute error (a stacked model: where a
    variable is a step function, as many adults' weights are, the last value wins; where it
    grows, as a child's height does, the trend does; where it scatters around everyone's mean,
    as a potassium does, the population does); the interval scales make the stacked forecasts
    cover as claimed.
    """
    bt = population_backtest(noise, batch)
    n = len(bt["target"])
    if n < 30:
        return noise
    grid = np.linspace(0.0, 1.0, 11)
    candidates = [
        replace(noise, blend=float(b), trend_weight=float(t), population_weight=float(w))
        for b in grid
        for t in grid
        for w in grid
        if b + t + w <= 1.0 + 1e-9
    ]
    parts = (bt["last"], bt["mean"], bt["trend"], bt["level"])
    # the weights are chosen on at most STACK_SAMPLE forecasts: plenty for three weights
    pick = slice(None)
    if n > STACK_SAMPLE:
        pick = np.random.default_rng(0).choice(n, STACK_SAMPLE, replace=False)
    sample = tuple(part[pick] for part in parts)
    errors = [np.abs(bt["target"][pick] - _stacked(c, *sample)).mean() for c in candidates]
    noise = candidates[int(np.argmin(errors))]
    mean = _stacked(noise, *parts)
    z = np.abs(bt["target"] - mean) / bt["sd"]
    scales = tuple(
        min(
            max(float(np.quantile(z, min(math.ceil((n + 1) * lv) / n, 1.0))) / z_score(lv), 0.3),
            5.0,
        )
        for lv in LEVELS
    )
    # the 95% interval is never narrower, for its level, than the 80%: a population's own
    # forecasts hold too few extreme errors to show tails lighter than Gaussian (Synthea's
    # labs, drawn within ranges, look so in sample, not after the cutoff)
    scales = (scales[0], scales[1], max(scales[2], scales[1]))
    return replace(noise, interval_scales=scales)


def _triangle_weights(age: np.ndarray) -> np.ndarray:
    """(n, knots) weights that spread each age over its two neighbouring knots."""
    knots = np.asarray(AGE_KNOTS)
    age = np.clip(age, knots[0], knots[-1])
    i = np.clip(np.searchsorted(knots, age, side="right") - 1, 0, len(knots) - 2)
    frac = (age - knots[i]) / (knots[i + 1] - knots[i])
    weights = np.zeros((len(age), len(knots)))
    weights[np.arange(len(age)), i] = 1 - frac
    weights[np.arange(len(age)), i + 1] += frac
    return weights


class _Packed:
    """Many subjects' series end to end: one array of days and of values, where each series
    starts and how long it is, and each series' birth day (NaN when unknown)."""

    def __init__(self, series: list[tuple[np.ndarray, np.ndarray, float | None]]) -> None:
        self.lengths = np.array([len(v) for _, v, _ in series], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)
        self.days = np.concatenate([np.asarray(d, dtype=float) for d, _, _ in series])
        self.values = np.concatenate([np.asarray(v, dtype=float) for _, v, _ in series])
        self.birth = np.array([np.nan if b is None else b for _, _, b in series], dtype=float)

    def per_value(self, per_series: np.ndarray) -> np.ndarray:
        """A value per series repeated for each of its values."""
        return np.repeat(per_series, self.lengths)

    def subject_means(self) -> np.ndarray:
        return np.add.reduceat(self.values, self.starts) / self.lengths


def _level_by_age(packed: _Packed, overall: float) -> AgeCurve:
    """Mean value by age, each subject weighing one, shrunk towards ``overall``."""
    age = (packed.days - packed.per_value(packed.birth)) / DAYS_PER_YEAR
    known = ~np.isnan(age)
    if not known.any():
        return AgeCurve(tuple([overall] * len(AGE_KNOTS)))
    weight = packed.per_value(1.0 / packed.lengths)[known]
    w = _triangle_weights(age[known]) * weight[:, None]
    total = w.sum(axis=0)
    mean = (w * packed.values[known][:, None]).sum(axis=0)
    return AgeCurve(tuple((mean + _PSEUDO_SUBJECTS * overall) / (total + _PSEUDO_SUBJECTS)))


def _velocity_by_age(packed: _Packed) -> AgeCurve | None:
    """Change per year by age: the weighted median rate of consecutive observations (30 days
    to 5 years apart) around each age, robust to outliers and shrunk towards no change."""
    birth = packed.per_value(packed.birth)[:-1]
    same_series = np.ones(max(len(packed.days) - 1, 0), dtype=bool)
    same_series[packed.starts[1:] - 1] = False  # a series' last value and the next one's first
    span = np.diff(packed.days) / DAYS_PER_YEAR
    ok = same_series & ~np.isnan(birth) & (span >= 30 / DAYS_PER_YEAR) & (span <= 5)
    if not ok.any():
        return None
    mid = ((packed.days[:-1] + packed.days[1:]) / 2 - birth)[ok] / DAYS_PER_YEAR
    rate = np.diff(packed.values)[ok] / span[ok]
    weights = _triangle_weights(mid) * span[ok][:, None]
    order = np.argsort(rate, kind="stable")
    velocity, kept = [], 0.0
    for w in weights[order].T:
        years = w.sum()
        if years <= 0:
            velocity.append(0.0)
            continue
        median = rate[order][np.searchsorted(np.cumsum(w), years / 2)]
        velocity.append(float(median) * years / (years + _PSEUDO_YEARS))
        kept += years / (years + _PSEUDO_YEARS)
    return AgeCurve(tuple(velocity), kept)
