"""The population state-space model, on series generated with known dynamics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from jumeau.twin.state import (
    DAYS_PER_YEAR,
    AgeCurve,
    LocalTrendFilter,
    fit_noise,
    predict_new,
    recent_trend,
)
from jumeau.twin.variables import CATALOGUE, code_index

YEAR = DAYS_PER_YEAR


def _children(rng: np.random.Generator, n: int = 60) -> list:
    """Heights of children growing 6 cm a year from age 3 to 12, measured with 0.5 cm noise."""
    series = []
    for _ in range(n):
        birth = rng.uniform(0, 3000)
        ages = np.sort(rng.uniform(3, 12, 8))
        heights = 95 + rng.normal(0, 4) + 6 * (ages - 3) + rng.normal(0, 0.5, len(ages))
        series.append((birth + ages * YEAR, heights, birth))
    return series


def _adults_around_their_own_level(rng: np.random.Generator, n: int = 80) -> list:
    """Systolic pressures scattered (sd 10) around a personal level (population sd 15)."""
    series = []
    for _ in range(n):
        level = rng.normal(130, 15)
        days = np.cumsum(rng.uniform(200, 500, 10))
        series.append((days, level + rng.normal(0, 10, len(days)), None))
    return series


def test_age_curve_integrates_a_velocity_exactly():
    curve = AgeCurve(tuple([2.0] * 14))
    assert curve.change(np.array([10.0]), np.array([13.0]))[0] == pytest.approx(6.0)
    ramp = AgeCurve((0.0, 1.0) + tuple([1.0] * 12))
    assert ramp.change(np.array([0.0]), np.array([1.0]))[0] == pytest.approx(0.5)


def test_the_population_velocity_by_age_is_learnt():
    model = fit_noise(CATALOGUE["height"], _children(np.random.default_rng(1)))
    assert model.velocity_by_age is not None
    assert model.velocity_by_age.at(6.0) == pytest.approx(6.0, rel=0.15)


def test_growth_is_forecast_from_a_single_measurement():
    rng = np.random.default_rng(2)
    model = fit_noise(CATALOGUE["height"], _children(rng))
    birth = 0.0
    flt = LocalTrendFilter(model, birth_day=birth)
    one = flt.predictive(np.array([5 * YEAR]), np.array([110.0]), 7 * YEAR)
    assert one.mean == pytest.approx(122.0, abs=1.5)
    assert one.interval(0.8)[0] < one.mean < one.interval(0.8)[1]


def test_forecasts_beat_carry_forward_with_calibrated_intervals_on_noisy_levels():
    rng = np.random.default_rng(3)
    model = fit_noise(CATALOGUE["sbp"], _adults_around_their_own_level(rng))
    assert model.obs_sd == pytest.approx(10, rel=0.25)
    errors, errors_locf, inside80, inside95 = [], [], [], []
    for days, values, birth in _adults_around_their_own_level(rng, 200):
        flt = LocalTrendFilter(model, birth)
        prediction = flt.predictive(days[:6], values[:6], float(days[6]))
        errors.append(abs(values[6] - prediction.mean))
        errors_locf.append(abs(values[6] - values[5]))
        low, high = prediction.interval(0.8)
        inside80.append(low <= values[6] <= high)
        low, high = prediction.interval(0.95)
        inside95.append(low <= values[6] <= high)
    assert np.mean(errors) < 0.85 * np.mean(errors_locf)
    assert 0.72 <= np.mean(inside80) <= 0.88
    assert 0.90 <= np.mean(inside95) <= 0.99


def test_step_functions_are_carried_forward():
    """Where values hold still for years then jump, the last value is the best forecast."""
    rng = np.random.default_rng(4)
    series = []
    for _ in range(60):
        days = np.cumsum(rng.uniform(300, 400, 10))
        levels = 70 + rng.normal(0, 10) + np.cumsum(rng.normal(0, 4, 10) * (rng.random(10) < 0.2))
        series.append((days, levels, None))
    model = fit_noise(CATALOGUE["weight"], series)
    days, values, _ = series[0]
    prediction = LocalTrendFilter(model).predictive(days, values, float(days[-1] + 365))
    assert prediction.mean == pytest.approx(values[-1], abs=0.5)


def test_the_recent_trend_is_the_least_squares_line_through_the_last_points():
    days = np.array([[0.0, 10.0, 20.0], [np.nan, np.nan, 5.0], [0.0, 10.0, np.nan]])
    values = np.array([[1.0, 2.0, 3.0], [np.nan, np.nan, 7.0], [4.0, 2.0, np.nan]])
    trend = recent_trend(days, values, np.array([30.0, 100.0, 20.0]))
    assert trend == pytest.approx([4.0, 7.0, 0.0])  # one point is carried forward


def test_each_child_grows_at_its_own_rate_and_the_stack_follows_it():
    """Children growing 3 to 9 cm a year: the population's mean velocity misses most of them,
    the line through a child's own last measurements does not."""
    rng = np.random.default_rng(6)

    def children(n):
        series = []
        for _ in range(n):
            birth, rate = rng.uniform(0, 3000), rng.uniform(3, 9)
            ages = 3 + np.cumsum(rng.uniform(0.8, 1.2, 8))
            heights = 95 + rate * (ages - 3) + rng.normal(0, 0.3, len(ages))
            series.append((birth + ages * YEAR, heights, birth))
        return series

    model = fit_noise(CATALOGUE["height"], children(80))
    errors, errors_locf = [], []
    for days, values, birth in children(100):
        prediction = LocalTrendFilter(model, birth).predictive(days[:6], values[:6], days[6])
        errors.append(abs(values[6] - prediction.mean))
        errors_locf.append(abs(values[6] - values[5]))
    assert np.mean(errors) < 0.25 * np.mean(errors_locf)


def test_a_forecast_stacks_the_last_value_the_filter_and_the_recent_trend():
    model = replace(fit_noise(CATALOGUE["sbp"], []), blend=0.0, trend_weight=1.0)
    days, values = np.array([0.0, 100.0, 200.0, 300.0]), np.array([150.0, 120.0, 130.0, 140.0])
    assert LocalTrendFilter(model).predictive(days, values, 400.0).mean == pytest.approx(150.0)
    carried = replace(model, trend_weight=0.0)
    assert LocalTrendFilter(carried).predictive(days, values, 400.0).mean == pytest.approx(140.0)
    everyone = replace(model, trend_weight=0.0, population_weight=1.0)
    forecast = LocalTrendFilter(everyone).predictive(days, values, 400.0).mean
    assert forecast == pytest.approx(model.prior_mean)


def test_values_that_scatter_around_everyones_mean_are_forecast_from_the_population():
    """A lab value drawn afresh around the same mean each time (as Synthea's potassium is):
    the last value is noise, the population's mean is the forecast."""
    rng = np.random.default_rng(7)

    def people(n):
        return [
            (np.cumsum(rng.uniform(200, 400, 8)), rng.normal(4.2, 0.4, 8), None) for _ in range(n)
        ]

    model = fit_noise(CATALOGUE["potassium"], people(80))
    errors, errors_locf = [], []
    for days, values, birth in people(200):
        prediction = LocalTrendFilter(model, birth).predictive(days[:5], values[:5], days[5])
        errors.append(abs(values[5] - prediction.mean))
        errors_locf.append(abs(values[5] - values[4]))
    assert np.mean(errors) < 0.8 * np.mean(errors_locf)  # E|x-mu| / E|x-x'| = 1/sqrt(2)


def test_a_population_without_spread_between_people_still_leaves_each_level_uncertain():
    """Values that scatter around one mean for everyone (no spread between people in the data)
    drive the maximum-likelihood spread of true levels to zero, and with it the interval of
    every patient's true value; the boundary-avoiding prior on that spread keeps the state's
    interval open while the forecasts still come from the population."""
    rng = np.random.default_rng(2)
    people = [
        (np.cumsum(rng.uniform(200, 400, 8)), rng.normal(6.0, 0.2, 8), None) for _ in range(20)
    ]
    model = fit_noise(CATALOGUE["hba1c"], people)
    assert model.learnt and model.prior_sd > 0.01
    days, values, _ = people[0]
    estimate = LocalTrendFilter(model).estimate(days, values, days[-1] + 60)
    low, high = estimate.interval(0.95)
    assert high - low > 0.02
    assert abs(estimate.mean - 6.0) < 0.1


def test_a_large_population_is_fitted_on_a_bounded_sample():
    rng = np.random.default_rng(5)
    model = fit_noise(CATALOGUE["sbp"], _adults_around_their_own_level(rng, 6000))
    assert model.n_subjects == 6000  # the priors see everyone
    assert model.obs_sd == pytest.approx(10, rel=0.25)  # the noise, fitted on a sample, holds


def test_unit_conversion_over_arrays_matches_one_value_at_a_time():
    glucose = CATALOGUE["glucose"]
    values = np.array([90.0, 5.0, 7.0, 100.0])
    units = ["mg/dL", "mmol/L", None, "furlongs"]
    converted = glucose.to_canonical_array(values, units)
    for value, unit, got in zip(values, units, converted, strict=True):
        one = glucose.to_canonical(value, unit)
        assert (np.isnan(got) and one is None) or got == pytest.approx(one)
    assert converted[0] == pytest.approx(90 / 18.016)


@pytest.mark.parametrize(
    ("variable", "value", "unit", "expected"),
    [
        ("temperature", 98.6, "[degF]", 37.0),
        ("temperature", 98.6, "°F", 37.0),
        ("temperature", 37.0, "degC", 37.0),
        ("heart_rate", 72, "1/min", 72),
        ("sbp", 120, "mmHg", 120),
        ("weight", 180, "[lb_av]", 81.65),
        ("height", 70, "[in_i]", 177.8),
        ("hba1c", 53, "mmol/mol", 7.0),
        ("creatinine", 1.0, "mg/dL", 88.42),
        ("creatinine", 88.4, "micromol/L", 88.4),
        ("hba1c", 7.0, "%{HbA1c}", 7.0),  # UCUM annotations name, they do not scale
        ("hba1c", 53, "mmol/mol{Hb}", 7.0),
        ("glucose", 90, "mg/dL{fasting}", 5.0),
        ("heart_rate", 70, "/min{beats}", 70),
        ("heart_rate", 72, "count/min", 72),  # HealthKit's unit
        ("respiratory_rate", 14, "count/min", 14),
        ("glucose", 5.5, "mmol<180.1558800000541>/L", 5.5),  # HealthKit's molar glucose
    ],
)
def test_the_units_exports_write_are_converted(variable, value, unit, expected):
    assert CATALOGUE[variable].to_canonical(value, unit) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(
    ("code", "value", "unit", "variable", "expected"),
    [  # European laboratories report in SI units under LOINC codes of their own
        ("LOINC/14682-9", 88.4, "umol/L", "creatinine", 88.4),
        ("LOINC/14749-6", 5.5, "mmol/L", "glucose", 5.5),
        ("LOINC/14647-2", 5.2, "mmol/L", "total_cholesterol", 5.2),
        ("LOINC/14646-4", 1.3, "mmol/L", "hdl", 1.3),
        ("LOINC/22748-8", 3.0, "mmol/L", "ldl", 3.0),
        ("LOINC/14927-8", 1.7, "mmol/L", "triglycerides", 1.7),
        ("LOINC/59260-0", 8.7, "mmol/L", "haemoglobin", 14.0),
        ("LOINC/8459-0", 132, "mm[Hg]", "sbp", 132),  # sitting
        ("LOINC/8453-3", 84, "mm[Hg]", "dbp", 84),
        ("LOINC/8332-9", 38.2, "Cel", "temperature", 38.2),  # rectal
    ],
)
def test_si_unit_and_position_specific_codes_measure_their_variable(
    code, value, unit, variable, expected
):
    assert code_index(CATALOGUE)[code] == variable
    assert CATALOGUE[variable].to_canonical(value, unit) == pytest.approx(expected, abs=0.05)


def _one_forecast(noise, days, values, birth, at_day):
    """A forecast made the plain way: filter the one series, stack, add the noise."""
    flt = LocalTrendFilter(noise, birth)
    est = flt.estimate(days, values, at_day)
    trend = recent_trend(days[None, -3:], values[None, -3:], np.array([at_day]))[0]
    level = flt.population_level(np.array([at_day]), flt._birth())[0]
    last = values[-1]
    mean = (
        last
        + noise.blend * (est.mean - last)
        + noise.trend_weight * (trend - last)
        + noise.population_weight * (level - last)
    )
    return mean, np.sqrt(est.sd**2 + flt.r)


@pytest.mark.parametrize("cells", [2_000_000, 7])
def test_many_forecasts_at_once_equal_each_made_alone(monkeypatch, cells):
    """The back-test's batch of forecasts (series of any length, in blocks when they are many)
    gives each forecast exactly what it would be alone, children's growth curves included."""
    import jumeau.twin.state as state

    monkeypatch.setattr(state, "_PREDICT_CELLS", cells)
    rng = np.random.default_rng(3)
    series = []
    for days, values, birth in _children(rng, 30) + _adults_around_their_own_level(rng, 30):
        kept = rng.integers(1, len(days) + 1)  # from one observation to all of them
        series.append((days[:kept], values[:kept], birth))
    noise = replace(
        fit_noise(CATALOGUE["height"], _children(rng)),
        blend=0.5,
        trend_weight=0.3,
        population_weight=0.1,
    )
    rows = rng.integers(0, len(series), 200)
    at_days = np.array([series[r][0][-1] + rng.uniform(1, 400) for r in rows])
    mean, sd = predict_new(noise, series, rows, at_days)
    for k, (row, at_day) in enumerate(zip(rows, at_days, strict=True)):
        expected = _one_forecast(noise, *series[row], at_day)
        assert (mean[k], sd[k]) == expected
    alone = LocalTrendFilter(noise, series[rows[0]][2]).predictive(*series[rows[0]][:2], at_days[0])
    assert (alone.mean, alone.sd) == (mean[0], sd[0])
    with pytest.raises(ValueError, match="at least one observation"):
        predict_new(noise, [(np.zeros(0), np.zeros(0), None)], [0], [10.0])
