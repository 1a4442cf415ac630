"""Forecasts and their back-test on the Synthea patients."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

import jumeau
from jumeau.ingest.fhir import ingest_fhir
from jumeau.twin import PopulationModel
from jumeau.twin.forecast import backtest, horizon_days, pool, published
from tests.subjects import living_subject_with

CUTOFFS = [datetime(y, 1, 1) for y in range(2012, 2020)]


def test_horizons_parse():
    assert horizon_days("3mo") == pytest.approx(91.3, abs=0.1)
    assert horizon_days("1y") == pytest.approx(365.25)
    assert horizon_days("90d") == 90
    assert horizon_days("6h") == pytest.approx(0.25)
    assert horizon_days("30 min") == pytest.approx(30 / 1440)
    with pytest.raises(ValueError, match="horizon"):
        horizon_days("soon")


def test_forecast_gives_nested_intervals_that_widen_with_horizon(synthea_store):
    store, _ = synthea_store
    population = PopulationModel.fit(store, datetime(2018, 1, 1))
    subject = living_subject_with(store, "LOINC/8480-6", datetime(2018, 1, 1))
    twin = store.twin(subject, datetime(2018, 1, 1), population=population)
    forecasts = twin.forecast("sbp", ["3mo", "12mo"])
    for f in forecasts:
        assert f["interval_50"][0] < f["median"] < f["interval_50"][1]
        assert f["interval_95"][0] < f["interval_80"][0] < f["interval_50"][0]
    width = [f["interval_95"][1] - f["interval_95"][0] for f in forecasts]
    assert width[1] > width[0]
    with pytest.raises(KeyError):
        twin.forecast("qtc")


@pytest.fixture(scope="module")
def pooled(synthea_full_store):
    store, _ = synthea_full_store
    return pool([backtest(store, c) for c in CUTOFFS])


def test_backtest_beats_carry_forward_on_blood_pressure(pooled):
    for variable in ("sbp", "dbp"):
        result = pooled["variables"][variable]
        assert result["n"] >= 50
        assert result["mae"] < result["mae_carry_forward"]
        assert result["mae"] < result["mae_population_mean"]


def test_backtest_intervals_are_roughly_calibrated(pooled):
    for variable in ("sbp", "dbp", "weight", "bmi"):
        result = pooled["variables"][variable]
        assert 0.65 <= result["coverage_80"] <= 0.95, variable
        assert 0.85 <= result["coverage_95"] <= 1.0, variable


def test_error_falls_as_the_patient_accumulates_observations(pooled):
    """The same forecasts, made seeing only the patient's last 1, 2 or 4 observations or all
    of them: the twin's error falls as it sees more of the patient's own series."""
    for variable in ("sbp", "dbp", "height"):
        curve = pooled["variables"][variable]["mae_by_own_observations"]
        assert curve["n"] >= 40, variable
        assert curve["1"] > curve["2"], variable
        assert curve["1"] > 1.05 * curve["all"], variable
    by_history = pooled["variables"]["sbp"]["mae_by_history"]
    assert by_history["1"]["mae"] > by_history["4-7"]["mae"]


def test_the_learning_curve_uses_the_same_forecasts_at_every_point(synthea_store):
    store, _ = synthea_store
    result = backtest(store, datetime(2016, 1, 1))
    for name, v in result["variables"].items():
        curve = v["mae_by_own_observations"]
        if curve is None:  # nobody had four observations before the cutoff
            continue
        assert curve["n"] <= v["n"], name
        assert set(curve) == {"n", "1", "2", "4", "all", "carry_forward"}, name
        if curve["n"] == v["n"]:  # every forecast is in the panel: its full history is the twin's
            assert curve["all"] == pytest.approx(v["mae"]), name
            assert curve["carry_forward"] == pytest.approx(v["mae_carry_forward"]), name


def test_the_population_is_learnt_only_before_the_cutoff(synthea_full_store):
    store, _ = synthea_full_store
    early = PopulationModel.fit(store, datetime(2010, 1, 1))
    late = PopulationModel.fit(store, datetime(2020, 1, 1))
    assert early.noise["sbp"].n_subjects <= late.noise["sbp"].n_subjects
    assert early.noise["sbp"].prior_mean != late.noise["sbp"].prior_mean


def test_intervals_stay_within_the_physiological_range(synthea_store):
    store, _ = synthea_store
    subject = living_subject_with(store, "LOINC/2571-8", datetime(2020, 1, 1))
    twin = store.twin(subject, datetime(2020, 1, 1))
    low = twin.population.catalogue["triglycerides"].low
    assert twin.to_dict()["variables"]["triglycerides"]["interval_95"][0] >= low
    assert all(f["interval_95"][0] >= low for f in twin.forecast("triglycerides"))


def test_the_improvement_interval_resamples_patients():
    from jumeau.twin.forecast import improvement_interval

    # every patient's forecasts halve carry-forward's error: no resampling can move that
    halved = {s: [3, 1.0 + s, 2.0 * (1.0 + s)] for s in range(10)}
    assert improvement_interval(halved) == pytest.approx([0.5, 0.5])
    # one patient far better, nine a little worse: the interval spans both outcomes
    mixed = {0: [10, 10.0, 100.0], **{s: [10, 11.0, 10.0] for s in range(1, 10)}}
    low, high = improvement_interval(mixed)
    assert low < 0 < high
    assert improvement_interval({0: [5, 1.0, 2.0]}) is None  # one patient: no interval


def test_many_patients_get_the_delta_method_interval_the_bootstrap_tends_to(monkeypatch):
    """Beyond BOOTSTRAP_MAX_PATIENTS the interval is the ratio's linearised one: on 5,000
    generated patients both methods give the same interval to a few percent of its width."""
    import jumeau.twin.forecast as forecast

    rng = np.random.default_rng(1)
    error = rng.gamma(2.0, 1.0, 5000)
    carried = error * rng.uniform(0.8, 1.4, len(error))
    sums = {i: [1, float(e), float(c)] for i, (e, c) in enumerate(zip(error, carried, strict=True))}
    boot = forecast.improvement_interval(sums)
    monkeypatch.setattr(forecast, "BOOTSTRAP_MAX_PATIENTS", 1000)
    delta = forecast.improvement_interval(sums)
    assert delta != boot  # the other method ran
    width = boot[1] - boot[0]
    assert delta == pytest.approx(boot, abs=0.05 * width)
    point = 1 - error.sum() / carried.sum()
    assert delta[0] < point < delta[1]


def test_pooled_back_tests_count_a_patient_once_in_the_interval(pooled):
    from jumeau.twin.forecast import SUBJECT_SUMS, published

    sbp = pooled["variables"]["sbp"]
    sums = sbp[SUBJECT_SUMS]
    assert sum(n for n, _, _ in sums.values()) == sbp["n"]
    assert len(sums) <= 20  # the 20 Synthea patients, each once across the eight cutoffs
    assert sum(e for _, e, _ in sums.values()) / sbp["n"] == pytest.approx(sbp["mae"])
    low, high = sbp["improvement_ci95"]
    assert low < sbp["improvement_vs_carry_forward"] < high
    assert SUBJECT_SUMS not in published(pooled)["variables"]["sbp"]


def test_the_same_patients_give_the_same_back_test_whatever_the_stores_key(
    tmp_path, synthea_full_store, synthea_dir
):
    # pseudonyms and the order of events of the same time follow each store's secret; the
    # population model and the forecasts must follow the data alone
    store, _ = synthea_full_store
    other = jumeau.init(tmp_path / "other")
    ingest_fhir(other, synthea_dir)
    assert set(store.subjects().tolist()).isdisjoint(other.subjects().tolist())
    cutoff = datetime(2019, 1, 1)
    ours, theirs = (published(backtest(s, cutoff)) for s in (store, other))
    assert ours["population"] == theirs["population"]
    for name, v in ours["variables"].items():
        other_v = theirs["variables"][name]
        assert v["coverage_80"] == other_v["coverage_80"], name
        assert v["mae"] == pytest.approx(other_v["mae"], rel=1e-12), name  # a sum's last digit
        assert v["improvement_ci95"] == pytest.approx(other_v["improvement_ci95"], abs=1e-9), name
