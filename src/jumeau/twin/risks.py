"""Clinical risk scores from published equations.

Each score is a plain function of its inputs (tested against its publication's worked examples),
and :func:`compute_risks` applies them to a twin: every result names the inputs it used with their
dates, what was missing, and an uncertainty interval propagated from uncertain inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from jumeau.twin.variables import ADULT_AGE, MG_DL_TO_UMOL_CREATININE

# --- SCORE2 (SCORE2 working group, Eur Heart J 2021;42:2439-54) and SCORE2-OP (Eur Heart J
# 2021;42:2455-67): sex-specific coefficients, baseline survival and region recalibration scales
# (scale1, scale2) of the publications' supplementary tables.
SCORE2 = {
    "male": {
        "age": 0.3742,
        "smoking": 0.6012,
        "sbp": 0.2777,
        "tchol": 0.1458,
        "hdl": -0.2698,
        "smoking_age": -0.0755,
        "sbp_age": -0.0255,
        "tchol_age": -0.0281,
        "hdl_age": 0.0426,
        "s0": 0.9605,
    },
    "female": {
        "age": 0.4648,
        "smoking": 0.7744,
        "sbp": 0.3131,
        "tchol": 0.1002,
        "hdl": -0.2606,
        "smoking_age": -0.1088,
        "sbp_age": -0.0277,
        "tchol_age": -0.0226,
        "hdl_age": 0.0613,
        "s0": 0.9776,
    },
}
SCORE2_SCALES = {
    "low": {"male": (-0.5699, 0.7476), "female": (-0.7380, 0.7019)},
    "moderate": {"male": (-0.1565, 0.8009), "female": (-0.3143, 0.7701)},
    "high": {"male": (0.3207, 0.9360), "female": (0.5710, 0.9369)},
    "very_high": {"male": (0.5836, 0.8294), "female": (0.9412, 0.8329)},
}
SCORE2_OP = {
    "male": {
        "age": 0.0634,
        "diabetes": 0.4245,
        "smoking": 0.3524,
        "sbp": 0.0094,
        "tchol": 0.0850,
        "hdl": -0.3564,
        "diabetes_age": -0.0174,
        "smoking_age": -0.0247,
        "sbp_age": -0.0005,
        "tchol_age": 0.0073,
        "hdl_age": 0.0091,
        "s0": 0.7576,
        "mean_lp": 0.0929,
    },
    "female": {
        "age": 0.0789,
        "diabetes": 0.6010,
        "smoking": 0.4921,
        "sbp": 0.0102,
        "tchol": 0.0605,
        "hdl": -0.3040,
        "diabetes_age": -0.0107,
        "smoking_age": -0.0255,
        "sbp_age": -0.0004,
        "tchol_age": -0.0009,
        "hdl_age": 0.0154,
        "s0": 0.8082,
        "mean_lp": 0.2290,
    },
}
SCORE2_OP_SCALES = {
    "low": {"male": (-0.34, 1.19), "female": (-0.52, 1.01)},
    "moderate": {"male": (0.01, 1.25), "female": (-0.10, 1.10)},
    "high": {"male": (0.08, 1.15), "female": (0.38, 1.09)},
    "very_high": {"male": (0.05, 0.70), "female": (0.38, 0.69)},
}
#: France belongs to the ESC low-risk region.
DEFAULT_REGION = "low"


def _recalibrate(risk, scales: tuple[float, float]):
    s1, s2 = scales
    # a risk of exactly 0 or 1 (an extreme draw of uncertain inputs) keeps its limit, quietly
    risk = np.clip(risk, 1e-15, 1 - 1e-15)
    return 1 - np.exp(-np.exp(s1 + s2 * np.log(-np.log(1 - risk))))


def score2(age, sex: str, smoker, sbp, total_chol, hdl, region: str = DEFAULT_REGION):
    """SCORE2 10-year risk (fraction) of fatal and non-fatal CVD, ages 40-69.

    ``sbp`` in mmHg, cholesterols in mmol/L; array inputs give array outputs (used to carry
    input uncertainty through).
    """
    c = SCORE2[sex]
    cage = (np.asarray(age, dtype=float) - 60) / 5
    csbp = (np.asarray(sbp, dtype=float) - 120) / 20
    ctc = np.asarray(total_chol, dtype=float) - 6
    chdl = (np.asarray(hdl, dtype=float) - 1.3) / 0.5
    smoke = np.asarray(smoker, dtype=float)
    lp = (
        c["age"] * cage
        + c["smoking"] * smoke
        + c["sbp"] * csbp
        + c["tchol"] * ctc
        + c["hdl"] * chdl
        + c["smoking_age"] * smoke * cage
        + c["sbp_age"] * csbp * cage
        + c["tchol_age"] * ctc * cage
        + c["hdl_age"] * chdl * cage
    )
    uncalibrated = 1 - c["s0"] ** np.exp(lp)
    return _recalibrate(uncalibrated, SCORE2_SCALES[region][sex])


def score2_op(age, sex: str, smoker, diabetes, sbp, total_chol, hdl, region: str = DEFAULT_REGION):
    """SCORE2-OP 10-year risk (fraction) of fatal and non-fatal CVD, ages 70 and over."""
    c = SCORE2_OP[sex]
    cage = np.asarray(age, dtype=float) - 73
    csbp = np.asarray(sbp, dtype=float) - 150
    ctc = np.asarray(total_chol, dtype=float) - 6
    chdl = np.asarray(hdl, dtype=float) - 1.4
    smoke = np.asarray(smoker, dtype=float)
    dm = np.asarray(diabetes, dtype=float)
    lp = (
        c["age"] * cage
        + c["diabetes"] * dm
        + c["smoking"] * smoke
        + c["sbp"] * csbp
        + c["tchol"] * ctc
        + c["hdl"] * chdl
        + c["diabetes_age"] * dm * cage
        + c["smoking_age"] * smoke * cage
        + c["sbp_age"] * csbp * cage
        + c["tchol_age"] * ctc * cage
        + c["hdl_age"] * chdl * cage
    )
    uncalibrated = 1 - c["s0"] ** np.exp(lp - c["mean_lp"])
    return _recalibrate(uncalibrated, SCORE2_OP_SCALES[region][sex])


def ckd_epi_2021(creatinine_mg_dl, age, sex: str):
    """CKD-EPI 2021 race-free eGFR (mL/min/1.73 m²) from serum creatinine (Inker et al., NEJM 2021)."""
    female = sex == "female"
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = np.asarray(creatinine_mg_dl, dtype=float) / kappa
    egfr = (
        142
        * np.minimum(ratio, 1) ** alpha
        * np.maximum(ratio, 1) ** -1.200
        * 0.9938 ** np.asarray(age, dtype=float)
    )
    return egfr * (1.012 if female else 1.0)


def bedside_schwartz(creatinine_mg_dl, height_cm):
    """Bedside Schwartz eGFR (mL/min/1.73 m²) of a child or adolescent from serum creatinine
    and height: 0.413 × height / creatinine (Schwartz et al., JASN 2009, the CKiD equation
    for enzymatic creatinine)."""
    return 0.413 * np.asarray(height_cm, dtype=float) / np.asarray(creatinine_mg_dl, dtype=float)


def cha2ds2_vasc(
    *,
    chf: bool,
    hypertension: bool,
    age: float,
    diabetes: bool,
    stroke_tia: bool,
    vascular: bool,
    female: bool,
) -> int:
    """CHA₂DS₂-VASc stroke-risk score in atrial fibrillation (Lip et al., Chest 2010), 0-9."""
    return (
        int(chf)
        + int(hypertension)
        + (2 if age >= 75 else 1 if age >= 65 else 0)
        + int(diabetes)
        + 2 * int(stroke_tia)
        + int(vascular)
        + int(female)
    )


def has_bled(
    *,
    hypertension: bool,
    abnormal_renal: bool,
    abnormal_liver: bool,
    stroke: bool,
    bleeding: bool,
    labile_inr: bool,
    elderly: bool,
    drugs: bool,
    alcohol: bool,
) -> int:
    """HAS-BLED major-bleeding score on anticoagulation (Pisters et al., Chest 2010), 0-9.

    Hypertension means uncontrolled, systolic > 160 mmHg; elderly means age > 65.
    """
    return sum(
        map(
            int,
            (
                hypertension,
                abnormal_renal,
                abnormal_liver,
                stroke,
                bleeding,
                labile_inr,
                elderly,
                drugs,
                alcohol,
            ),
        )
    )


def bmi_class(bmi: float) -> str:
    """WHO adult BMI class."""
    for limit, name in (
        (18.5, "underweight"),
        (25, "normal"),
        (30, "overweight"),
        (35, "obese class I"),
        (40, "obese class II"),
    ):
        if bmi < limit:
            return name
    return "obese class III"


def bmi_for_age_z(bmi: float, age: float, sex: str) -> float:
    """A child's BMI-for-age z-score on the WHO growth standards (birth to 5, 2006) and reference
    (5 to 19, 2007), by the LMS method (``pygrowup``)."""
    from pygrowup import Observation

    days = max(1, int(age * 365.25))
    return float(Observation(sex=sex, age_in_days=days).bmifa(round(bmi, 2)))


def child_bmi_class(z: float, age: float) -> str:
    """WHO class of a child's BMI-for-age z-score. Under 5 (WHO 2006): severe wasting below -3,
    wasting below -2, possible risk of overweight above +1, overweight above +2, obese above +3;
    from 5 to 19 (WHO 2007): severe thinness below -3, thinness below -2, overweight above +1
    (BMI 25 at 19), obese above +2 (BMI 30 at 19)."""
    if age < 5:
        low = ("severe wasting", "wasting")
        high = ((3, "obese"), (2, "overweight"), (1, "possible risk of overweight"))
    else:
        low = ("severe thinness", "thinness")
        high = ((2, "obese"), (1, "overweight"))
    if z < -3:
        return low[0]
    if z < -2:
        return low[1]
    return next((name for limit, name in high if z > limit), "normal")


def qtc_class(qtc_ms: float, sex: str) -> str:
    """QTc class: normal, borderline, prolonged (> 450 ms men, > 460 ms women) or high risk (> 500)."""
    if qtc_ms > 500:
        return "high risk (>500 ms)"
    upper = 460 if sex == "female" else 450
    if qtc_ms > upper:
        return "prolonged"
    if qtc_ms > upper - 20:
        return "borderline"
    return "normal"


@dataclass
class RiskResult:
    """A score's value, the inputs it used (with their dates), what was missing, its interval."""

    name: str
    value: float | int | str | None
    unit: str = ""
    inputs: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    interval_95: tuple[float, float] | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "inputs": self.inputs,
            "missing": self.missing,
            "interval_95": list(self.interval_95) if self.interval_95 else None,
            "note": self.note,
        }


def _draws(estimate, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(estimate.mean, estimate.sd, n)


def compute_risks(twin, region: str = DEFAULT_REGION, draws: int = 2000) -> dict[str, RiskResult]:
    """Every score whose inputs the twin has, with the rest reported as missing."""
    rng = np.random.default_rng(0)
    out: dict[str, RiskResult] = {}
    age, sex = twin.age, twin.sex
    state = twin.variables

    def used(*names: str) -> dict:
        found = {}
        for n in names:
            v = state.get(n)
            if v is not None and v.last_value is not None:
                found[n] = {
                    "estimate": v.estimate.mean,
                    "last_value": v.last_value,
                    "last_time": v.last_time,
                }
        return found

    def missing(*names: str) -> list[str]:
        return [n for n in names if state.get(n) is None or state[n].last_value is None]

    demographic_missing = [n for n, v in (("age", age), ("sex", sex)) if v is None]
    smoking = twin.smoking_status
    conditions = twin.condition_flags()

    need = ("sbp", "total_cholesterol", "hdl")
    gaps = demographic_missing + missing(*need) + ([] if smoking else ["smoking_status"])
    name = "SCORE2-OP" if age is not None and age >= 70 else "SCORE2"
    if gaps or age is None or age < 40 or age > 89:
        note = "" if gaps else "defined for ages 40-89"
        out["score2"] = RiskResult(name, None, "%", used(*need), gaps, note=note)
    else:
        smoker = smoking == "current"
        args = [_draws(state[n].estimate, draws, rng) for n in need]
        if age >= 70:
            sample = score2_op(age, sex, smoker, conditions["diabetes"], *args, region=region)
            point = score2_op(
                age,
                sex,
                smoker,
                conditions["diabetes"],
                *(state[n].estimate.mean for n in need),
                region=region,
            )
        else:
            sample = score2(age, sex, smoker, *args, region=region)
            point = score2(age, sex, smoker, *(state[n].estimate.mean for n in need), region=region)
        note = f"ESC {region}-risk region"
        if conditions["diabetes"] and age < 70:
            note += "; the patient has diabetes: SCORE2-Diabetes applies, SCORE2 underestimates"
        out["score2"] = RiskResult(
            name,
            round(float(point) * 100, 2),
            "%",
            {
                **used(*need),
                "age": age,
                "sex": sex,
                "smoking": smoking,
                "diabetes": conditions["diabetes"],
            },
            [],
            (
                round(float(np.percentile(sample, 2.5)) * 100, 2),
                round(float(np.percentile(sample, 97.5)) * 100, 2),
            ),
            note,
        )

    # C: clinical heart failure, or objective evidence of moderate-to-severe left ventricular
    # dysfunction (ESC 2020 AF guidelines), taken here as an ejection fraction of 40% or less
    lvef = state.get("lvef")
    lv_dysfunction = lvef is not None and lvef.last_value is not None and lvef.last_value <= 40
    if age is not None and sex is not None:
        out["cha2ds2_vasc"] = RiskResult(
            "CHA2DS2-VASc",
            cha2ds2_vasc(
                chf=conditions["heart_failure"] or lv_dysfunction,
                hypertension=conditions["hypertension"],
                age=age,
                diabetes=conditions["diabetes"],
                stroke_tia=conditions["stroke"],
                vascular=conditions["vascular"],
                female=sex == "female",
            ),
            "points",
            {
                "age": age,
                "sex": sex,
                **{
                    k: conditions[k]
                    for k in ("heart_failure", "hypertension", "diabetes", "stroke", "vascular")
                },
                **used("lvef"),
            },
            note=""
            if conditions["atrial_fibrillation"]
            else "no atrial fibrillation recorded: for information",
        )
        sbp = state.get("sbp")
        egfr_state = state.get("egfr")
        out["has_bled"] = RiskResult(
            "HAS-BLED",
            has_bled(
                hypertension=bool(sbp and sbp.estimate.mean > 160),
                abnormal_renal=conditions["renal"]
                or bool(egfr_state and egfr_state.estimate.mean < 15),
                abnormal_liver=conditions["liver"],
                stroke=conditions["stroke"],
                bleeding=conditions["bleeding"],
                labile_inr=False,
                elderly=age > 65,
                drugs=twin.on_antiplatelet_or_nsaid(),
                alcohol=conditions["alcohol"],
            ),
            "points",
            {
                **used("sbp", "egfr"),
                **{k: conditions[k] for k in ("renal", "liver", "stroke", "bleeding", "alcohol")},
            },
            missing=["labile_inr"] + missing("sbp"),
            note="labile INR not assessed (needs INR time in range)",
        )
    creat = state.get("creatinine")
    child = age is not None and age < ADULT_AGE
    out["egfr_bedside_schwartz"] = _schwartz(creat, state.get("height"), age, draws, rng, used)
    if child:
        out["egfr_ckd_epi_2021"] = RiskResult(
            "eGFR (CKD-EPI 2021)",
            None,
            "mL/min/1.73m2",
            note=f"defined for ages {ADULT_AGE:g} and over: a child's is egfr_bedside_schwartz",
        )
    elif creat is not None and creat.last_value is not None and age is not None and sex is not None:
        mg = creat.estimate.mean / MG_DL_TO_UMOL_CREATININE
        sample = ckd_epi_2021(
            np.clip(_draws(creat.estimate, draws, rng), 5, None) / MG_DL_TO_UMOL_CREATININE,
            age,
            sex,
        )
        out["egfr_ckd_epi_2021"] = RiskResult(
            "eGFR (CKD-EPI 2021)",
            round(float(ckd_epi_2021(mg, age, sex)), 1),
            "mL/min/1.73m2",
            {**used("creatinine"), "age": age, "sex": sex},
            [],
            (
                round(float(np.percentile(sample, 2.5)), 1),
                round(float(np.percentile(sample, 97.5)), 1),
            ),
        )
    else:
        out["egfr_ckd_epi_2021"] = RiskResult(
            "eGFR (CKD-EPI 2021)",
            None,
            "mL/min/1.73m2",
            {},
            demographic_missing + missing("creatinine"),
        )
    bmi = _bmi(state)
    if bmi is not None and child:
        out["bmi_class"] = _child_bmi_class(bmi, age, sex)
    elif bmi is not None:
        value, inputs = bmi
        out["bmi_class"] = RiskResult(
            "BMI class", bmi_class(value), "", {"bmi": round(value, 1), **inputs}
        )
    else:
        out["bmi_class"] = RiskResult(
            "BMI class", None, "", {}, missing("bmi") if missing("weight", "height") else []
        )
    qtc = state.get("qtc")
    if qtc is not None and qtc.last_value is not None and sex is not None:
        out["qtc_class"] = RiskResult(
            "QTc class", qtc_class(qtc.estimate.mean, sex), "", used("qtc")
        )
    else:
        out["qtc_class"] = RiskResult(
            "QTc class", None, "", {}, missing("qtc") + demographic_missing
        )
    return out


def _schwartz(creat, height, age, draws: int, rng: np.random.Generator, used) -> RiskResult:
    """The bedside Schwartz eGFR of a patient aged 1 to 17, from the estimated creatinine and
    height (their uncertainty drawn together into the interval)."""
    name, unit = "eGFR (bedside Schwartz, CKiD 2009)", "mL/min/1.73m2"
    if age is None or not 1 <= age < ADULT_AGE:
        return RiskResult(name, None, unit, note=f"defined for ages 1 to {ADULT_AGE - 1:g}")
    lacking = [
        n
        for n, v in (("creatinine", creat), ("height", height))
        if v is None or v.last_value is None
    ]
    if lacking:
        return RiskResult(name, None, unit, missing=lacking)
    mg = creat.estimate.mean / MG_DL_TO_UMOL_CREATININE
    sample = bedside_schwartz(
        np.clip(_draws(creat.estimate, draws, rng), 5, None) / MG_DL_TO_UMOL_CREATININE,
        np.clip(_draws(height.estimate, draws, rng), 30, None),
    )
    return RiskResult(
        name,
        round(float(bedside_schwartz(mg, height.estimate.mean)), 1),
        unit,
        {**used("creatinine", "height"), "age": age},
        [],
        (round(float(np.percentile(sample, 2.5)), 1), round(float(np.percentile(sample, 97.5)), 1)),
    )


def _child_bmi_class(bmi: tuple[float, dict], age: float, sex: str | None) -> RiskResult:
    """A child's BMI class from its BMI-for-age z-score (WHO's adult classes hold from 18)."""
    value, inputs = bmi
    inputs = {"bmi": round(value, 1), **inputs, "age": age}
    if sex is None:
        return RiskResult("BMI class (BMI-for-age, WHO)", None, "", inputs, ["sex"])
    from pygrowup.exceptions import PyGrowUpException

    try:
        z = bmi_for_age_z(value, age, sex)
    except PyGrowUpException as exc:  # a BMI outside the reference's 5-60 kg/m2
        return RiskResult("BMI class (BMI-for-age, WHO)", None, "", inputs, note=str(exc))
    return RiskResult(
        "BMI class (BMI-for-age, WHO)",
        child_bmi_class(z, age),
        "",
        {**inputs, "bmi_for_age_z": round(z, 2), "centile": round(100 * _normal_cdf(z), 1)},
        note="WHO growth standards (under 5) and reference (5-19)",
    )


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _bmi(state) -> tuple[float, dict] | None:
    bmi = state.get("bmi")
    if bmi is not None and bmi.last_value is not None:
        return bmi.estimate.mean, {"source": "recorded BMI", "last_time": bmi.last_time}
    w, h = state.get("weight"), state.get("height")
    if w is not None and h is not None and w.last_value is not None and h.last_value is not None:
        return w.estimate.mean / (h.estimate.mean / 100) ** 2, {"source": "weight / height²"}
    return None
