"""A two-element Windkessel model of the arterial system, calibrated on the patient.

The aorta and large arteries are a compliance ``C`` (mL/mmHg) emptying through the peripheral
resistance ``R`` (mmHg·s/mL): ``C dP/dt = Q(t) - P/R``. The heart ejects a stroke volume ``SV``
(mL) as a half-sine flow during systole, whose duration follows the heart rate
(``Ts = 0.37 * sqrt(RR)``, Bazett-like). For a periodic heartbeat the pressure wave has a closed
form, so systolic and diastolic pressures for any (R, C, SV, heart rate) cost microseconds.

Assumptions, stated because they matter: a fixed stroke volume across the patient's visits
(default 70 mL, or one the user gives), no wave reflection (a 3-element model would add the
characteristic impedance), and cuff pressures taken as aortic pressures. Fitting R and C to a
patient's paired (SBP, DBP, HR) measurements answers what-if questions a data-only model cannot:
what a different heart rate or resistance would do to the pressures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

DEFAULT_STROKE_VOLUME = 70.0


def systole_seconds(heart_rate: float) -> float:
    """Ejection duration from the RR interval (0.37·sqrt(RR), about 0.3 s at 60/min)."""
    return 0.37 * math.sqrt(60.0 / heart_rate)


def pressures(
    resistance: float,
    compliance: float,
    heart_rate: float,
    stroke_volume: float = DEFAULT_STROKE_VOLUME,
    points: int = 400,
) -> tuple[float, float]:
    """Steady-state (systolic, diastolic) pressure in mmHg of the 2-element Windkessel."""
    tau = resistance * compliance
    period = 60.0 / heart_rate
    ts = systole_seconds(heart_rate)
    omega = math.pi / ts
    amplitude = stroke_volume * math.pi / (2 * ts)  # peak flow, so that the ejected volume is SV
    k = (amplitude / compliance) * tau / (1 + (omega * tau) ** 2)
    # Periodicity P(0) = P(T) gives the pressure at the start of ejection.
    p0 = (
        k
        * omega
        * tau
        * (1 + math.exp(-ts / tau))
        * math.exp(-(period - ts) / tau)
        / (1 - math.exp(-period / tau))
    )
    t = np.linspace(0.0, ts, points)
    particular = k * (np.sin(omega * t) - omega * tau * np.cos(omega * t))
    wave = particular + (p0 + k * omega * tau) * np.exp(-t / tau)
    return float(wave.max()), float(wave.min())


@dataclass
class WindkesselFit:
    """A patient's calibrated Windkessel: parameters, fit quality and what-if predictions."""

    resistance: float
    compliance: float
    stroke_volume: float
    rmse_mmhg: float
    n_visits: int
    assumed_heart_rates: int = 0

    def predict(
        self, heart_rate: float, *, resistance: float | None = None, compliance: float | None = None
    ) -> dict:
        """Predicted pressures at a heart rate, optionally with a changed resistance or compliance."""
        r = resistance if resistance is not None else self.resistance
        c = compliance if compliance is not None else self.compliance
        sbp, dbp = pressures(r, c, heart_rate, self.stroke_volume)
        return {
            "heart_rate": heart_rate,
            "resistance": r,
            "compliance": c,
            "sbp": sbp,
            "dbp": dbp,
            "mean_pressure": dbp + (sbp - dbp) / 3,
        }

    def to_dict(self) -> dict:
        return {
            "model": "2-element Windkessel",
            "resistance_mmHg_s_per_mL": self.resistance,
            "compliance_mL_per_mmHg": self.compliance,
            "time_constant_s": self.resistance * self.compliance,
            "stroke_volume_mL (assumed)": self.stroke_volume,
            "rmse_mmHg": self.rmse_mmhg,
            "n_visits": self.n_visits,
            "visits_with_assumed_heart_rate": self.assumed_heart_rates,
            "assumptions": "fixed stroke volume; no wave reflection; cuff pressure taken as aortic; "
            "resting heart rate assumed where none was measured",
        }


def fit(sbp, dbp, heart_rate, stroke_volume: float = DEFAULT_STROKE_VOLUME) -> WindkesselFit:
    """Calibrate R and C on paired measurements (arrays of SBP, DBP, HR taken together)."""
    sbp, dbp, hr = (np.asarray(x, dtype=float) for x in (sbp, dbp, heart_rate))
    if not (len(sbp) == len(dbp) == len(hr)) or len(sbp) == 0:
        raise ValueError("fit needs paired, non-empty SBP, DBP and heart-rate series")

    def residuals(params: np.ndarray) -> np.ndarray:
        r, c = np.exp(params)
        out = []
        for s, d, h in zip(sbp, dbp, hr, strict=True):
            ps, pd = pressures(r, c, h, stroke_volume, points=200)
            out.extend((ps - s, pd - d))
        return np.array(out)

    mean_pressure = float(np.mean(dbp + (sbp - dbp) / 3))
    cardiac_output = stroke_volume * float(np.mean(hr)) / 60.0
    r0 = mean_pressure / cardiac_output
    c0 = stroke_volume / max(float(np.mean(sbp - dbp)), 5.0)
    result = least_squares(residuals, np.log([r0, c0]), method="lm", xtol=1e-12, ftol=1e-12)
    r, c = np.exp(result.x)
    rmse = float(np.sqrt(np.mean(result.fun**2)))
    return WindkesselFit(float(r), float(c), stroke_volume, rmse, len(sbp))


def fit_twin(
    twin,
    stroke_volume: float = DEFAULT_STROKE_VOLUME,
    max_gap_hours: float = 1.0,
    resting_heart_rate: float = 70.0,
) -> WindkesselFit:
    """Calibrate on the twin's blood pressures, each paired with the heart rate measured at the
    same visit, or with ``resting_heart_rate`` where none was (an assumption the fit reports)."""
    needed = [v for v in ("sbp", "dbp") if v not in twin.variables]
    if needed:
        raise KeyError(
            f"subject {twin.subject_id} has no {', '.join(needed)} to calibrate a Windkessel on"
        )
    s, d = twin.variables["sbp"], twin.variables["dbp"]
    h = twin.variables.get("heart_rate")
    gap = max_gap_hours / 24
    rows, assumed = [], 0
    for day, sv in zip(s.days, s.values, strict=True):
        di = int(np.argmin(np.abs(d.days - day)))
        if abs(d.days[di] - day) > gap:
            continue
        rate = resting_heart_rate
        if h is not None and len(h.days):
            hi = int(np.argmin(np.abs(h.days - day)))
            if abs(h.days[hi] - day) <= gap:
                rate = float(h.values[hi])
        assumed += rate == resting_heart_rate
        rows.append((sv, d.values[di], rate))
    if not rows:
        raise KeyError(
            f"subject {twin.subject_id} has no visit with both systolic and diastolic pressure"
        )
    sbp, dbp, hr = zip(*rows, strict=True)
    result = fit(sbp, dbp, hr, stroke_volume)
    result.assumed_heart_rates = assumed
    return result
