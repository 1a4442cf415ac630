"""The Windkessel model: recovers known parameters, fits real pressures, answers what-ifs."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from jumeau.twin import windkessel as wk


@pytest.mark.parametrize(("resistance", "compliance"), [(1.05, 1.3), (0.8, 2.0), (1.4, 0.9)])
def test_recovers_known_parameters_from_data_it_generated(resistance, compliance):
    rng = np.random.default_rng(1)
    hr = rng.uniform(55, 100, 12)
    sbp, dbp = np.array([wk.pressures(resistance, compliance, h) for h in hr]).T
    noisy_sbp = sbp + rng.normal(0, 0.3, len(hr))
    noisy_dbp = dbp + rng.normal(0, 0.3, len(hr))
    fit = wk.fit(noisy_sbp, noisy_dbp, hr)
    assert fit.resistance == pytest.approx(resistance, rel=0.05)
    assert fit.compliance == pytest.approx(compliance, rel=0.05)
    assert fit.rmse_mmhg < 1.0


def test_physiology_moves_the_right_way():
    sbp, dbp = wk.pressures(1.15, 1.1, 70)
    assert 70 < dbp < 90 < 110 < sbp < 140  # a textbook 120/80-like adult
    stiffer = wk.pressures(1.15, 0.6, 70)
    assert stiffer[0] - stiffer[1] > sbp - dbp  # lower compliance widens pulse pressure
    constricted = wk.pressures(1.5, 1.1, 70)
    assert constricted[1] > dbp  # higher resistance raises diastolic pressure
    faster = wk.pressures(1.15, 1.1, 100)
    assert faster[1] > dbp  # shorter diastole, less run-off


def test_closed_form_matches_a_direct_integration_of_the_ode():
    r, c, hr, sv = 1.1, 1.4, 72, 70.0
    period, ts = 60 / hr, wk.systole_seconds(hr)
    dt = 1e-5
    t = np.arange(0, 12 * period, dt)
    phase = t % period
    flow = np.where(phase < ts, sv * np.pi / (2 * ts) * np.sin(np.pi * phase / ts), 0.0)
    p = np.empty_like(t)
    p[0] = 80.0
    for i in range(1, len(t)):  # explicit Euler on C dP/dt = Q - P/R
        p[i] = p[i - 1] + dt * (flow[i - 1] - p[i - 1] / r) / c
    last_beat = p[t >= 11 * period]
    sbp, dbp = wk.pressures(r, c, hr, sv, points=2000)
    assert last_beat.max() == pytest.approx(sbp, abs=0.1)
    assert last_beat.min() == pytest.approx(dbp, abs=0.1)
    assert last_beat.mean() == pytest.approx(
        r * sv / period, rel=0.01
    )  # mean P = R x cardiac output


def test_fits_a_real_patients_pressures_and_answers_what_if(synthea_store):
    store, _ = synthea_store
    best = None
    for subject in store.subjects().tolist():
        try:
            fit = wk.fit_twin(store.twin(subject, datetime(2021, 1, 1)))
        except KeyError:  # no events by then, or no blood pressure
            continue
        if fit.n_visits >= 3 and (best is None or fit.n_visits > best.n_visits):
            best = fit
    assert best is not None
    assert 0.3 < best.resistance < 5 and 0.2 < best.compliance < 10
    assert best.rmse_mmhg < 15
    base = best.predict(70)
    assert (
        best.predict(70, resistance=best.resistance * 1.2)["mean_pressure"] > base["mean_pressure"]
    )
    assert "fixed stroke volume" in best.to_dict()["assumptions"]
