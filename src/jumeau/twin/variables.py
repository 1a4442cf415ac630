"""The catalogue of clinical variables a twin tracks: which codes measure them, in which units,
and which values are physiologically plausible.

Every variable has one canonical unit; observations in other units are converted (mg/dL and
mmol/L per analyte, lb and kg, °F and °C, in and cm, mmol/mol and %), and values outside the
plausible range are flagged and left out of the state, never used silently. Users extend or
override the catalogue with a JSON mapping file (:func:`load_catalogue`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

Convert = Callable[[float], float]


def _scale(factor: float) -> Convert:
    return lambda v: v * factor


#: The age (years) from which adult reference intervals and adult scores apply.
ADULT_AGE = 18.0


@dataclass(frozen=True)
class Variable:
    """A clinical variable: its codes, canonical unit, conversions and plausible range.

    ``conversions`` maps a source unit (UCUM, lower-cased) to a function giving the canonical
    unit; ``obs_sd`` and ``drift_sd_per_year`` are default measurement noise and natural drift
    (replaced by values learnt from the store when a population model is fitted).
    """

    name: str
    label: str
    unit: str
    codes: tuple[str, ...]
    low: float
    high: float
    conversions: dict[str, Convert] = field(default_factory=dict)
    obs_sd: float = 1.0
    drift_sd_per_year: float = 1.0
    prior_mean: float = 0.0
    prior_sd: float = 1.0
    #: the adult reference interval (lower, upper; either may be None), by sex (``female``,
    #: ``male``) where it differs, else under ``any``: a value outside it is abnormal, not
    #: implausible
    normal: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: the age in years from which ``normal`` holds: a child's pressures, heart rate, BMI or
    #: creatinine are not an adult's, and are not judged by an adult's interval
    normal_from_age: float = ADULT_AGE

    def normal_range(
        self, sex: str | None = None, age: float | None = None
    ) -> tuple[float | None, float | None] | None:
        """The reference interval for a patient of ``sex`` aged ``age`` years when measured
        (None where none is known: a range that differs by sex, for a patient whose sex is not
        recorded; a patient younger than :attr:`normal_from_age`). An unknown age is taken as
        an adult's."""
        if age is not None and age < self.normal_from_age:
            return None
        return self.normal.get(sex or "") or self.normal.get("any")

    def out_of_range(
        self, value: float | None, sex: str | None = None, age: float | None = None
    ) -> str | None:
        """``low`` or ``high`` for a value outside the reference interval, else None."""
        return outside(value, self.normal_range(sex, age))

    def converter(self, unit: str | None) -> Convert | None:
        """The function giving the canonical unit from ``unit`` (None when it is unknown)."""
        key = _unit_key(unit)
        if key in ("", _unit_key(self.unit)):
            return _same
        found = self.conversions.get(key)
        bare = _UCUM_ANNOTATION.sub("", key)  # UCUM's {annotations} do not change a unit
        if found is None and bare and bare != key:
            if bare == _UCUM_ANNOTATION.sub("", _unit_key(self.unit)):
                return _same
            found = self.conversions.get(bare)
        return found

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """The value in the canonical unit, or None when the unit is unknown for this variable."""
        convert = self.converter(unit)
        return None if convert is None else convert(value)

    def to_canonical_array(self, values: np.ndarray, units: list[str | None]) -> np.ndarray:
        """:meth:`to_canonical` over many values at once (NaN where the unit is unknown); values
        without a unit are read by :meth:`read_unitless`."""
        out = np.full(len(values), np.nan)
        units_array = np.array(units, dtype=object)
        for unit in set(units):
            chosen = units_array == unit
            if not _unit_key(unit):
                out[chosen] = self.read_unitless(values[chosen])[0]
                continue
            convert = self.converter(unit)
            if convert is not None:
                out[chosen] = convert(values[chosen])
        return out

    def plausible(self, value: float) -> bool:
        return self.low <= value <= self.high

    def read_unitless(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values recorded without a unit, in the canonical unit, and which of them were read in
        another unit: a value plausible in the canonical unit is taken as it is; one that is
        not, but is plausible in exactly one of the variable's other units (a temperature of 98.6
        is in °F, a glucose of 95 in mg/dL), is read in that unit; any other is NaN."""
        values = np.asarray(values, dtype=float)
        as_is = (values >= self.low) & (values <= self.high)
        out = np.where(as_is, values, np.nan)
        todo = np.flatnonzero(~as_is & ~np.isnan(values))
        if not len(todo) or not self.conversions:
            return out, np.zeros(len(values), dtype=bool)
        read = np.array([convert(values[todo]) for convert in self.conversions.values()])
        read = np.where((read >= self.low) & (read <= self.high), read, np.nan)
        with np.errstate(invalid="ignore"):
            low, high = (
                np.nanmin(read, axis=0, initial=np.inf),
                np.nanmax(read, axis=0, initial=-np.inf),
            )
        one = np.isfinite(low) & np.isclose(low, high, rtol=1e-6)  # every plausible reading agrees
        out[todo[one]] = low[one]
        inferred = np.zeros(len(values), dtype=bool)
        inferred[todo[one]] = True
        return out, inferred


def outside(value: float | None, bounds: tuple[float | None, float | None] | None) -> str | None:
    """``low`` or ``high`` for a value below or above ``bounds`` (either may be None), else None."""
    if value is None or bounds is None:
        return None
    low, high = bounds
    if low is not None and value < low:
        return "low"
    if high is not None and value > high:
        return "high"
    return None


def _same(value):
    return value


def _unit_key(unit: str | None) -> str:
    key = (unit or "").strip().lower().replace(" ", "")
    return key.replace("micro", "u").replace("µ", "u").replace("μ", "u")


#: A UCUM annotation (``%{HbA1c}``, ``{beats}/min``): words in braces that name, not scale;
#: and HealthKit's molar mass of a unit (``mmol<180.1558800000541>/L``, blood glucose).
_UCUM_ANNOTATION = re.compile(r"\{[^}]*\}|<[0-9.]+>")


#: A rate per minute as exports write it (HealthKit's ``count/min``, UCUM's ``{beats}/min``).
_PER_MINUTE = ("bpm", "{beats}/min", "beats/min", "1/min", "{bpm}", "count/min", "breaths/min")
MG_DL_TO_MMOL_GLUCOSE = 1 / 18.016
MG_DL_TO_MMOL_CHOLESTEROL = 1 / 38.67
MG_DL_TO_MMOL_TRIGLYCERIDES = 1 / 88.57
MG_DL_TO_UMOL_CREATININE = 88.42


def _v(
    name, label, unit, codes, low, high, conversions=None, obs_sd=1.0, drift=1.0, mean=0.0, sd=1.0
):
    return Variable(
        name, label, unit, tuple(codes), low, high, conversions or {}, obs_sd, drift, mean, sd
    )


CATALOGUE: dict[str, Variable] = {
    v.name: v
    for v in (
        _v(
            "sbp",
            "Systolic blood pressure",
            "mm[Hg]",
            [
                "LOINC/8480-6",
                "LOINC/8459-0",
                "LOINC/8460-8",
                "LOINC/8461-6",
                "SNOMED/271649006",
                "OMOP/3004249",
            ],
            50,
            260,
            {"mmhg": _scale(1), "kpa": _scale(7.50062)},
            9,
            6,
            125,
            18,
        ),
        _v(
            "dbp",
            "Diastolic blood pressure",
            "mm[Hg]",
            [
                "LOINC/8462-4",
                "LOINC/8453-3",
                "LOINC/8454-1",
                "LOINC/8455-8",
                "SNOMED/271650006",
                "OMOP/3012888",
            ],
            20,
            160,
            {"mmhg": _scale(1), "kpa": _scale(7.50062)},
            7,
            4,
            78,
            11,
        ),
        _v(
            "heart_rate",
            "Heart rate",
            "/min",
            ["LOINC/8867-4", "LOINC/8889-8", "LOINC/8893-0", "SNOMED/364075005", "OMOP/3027018"],
            20,
            250,
            dict.fromkeys(_PER_MINUTE, _scale(1)),
            8,
            4,
            75,
            13,
        ),
        _v(
            "weight",
            "Body weight",
            "kg",
            ["LOINC/29463-7", "LOINC/3141-9", "OMOP/3025315"],
            0.5,
            400,
            {
                "[lb_av]": _scale(0.45359237),
                "lb": _scale(0.45359237),
                "lbs": _scale(0.45359237),
                "g": _scale(0.001),
            },
            1.5,
            4,
            75,
            20,
        ),
        _v(
            "height",
            "Body height",
            "cm",
            ["LOINC/8302-2", "LOINC/8306-3", "LOINC/3137-7", "OMOP/3036277"],
            30,
            250,
            {"[in_i]": _scale(2.54), "in": _scale(2.54), "m": _scale(100)},
            1.0,
            2,
            168,
            12,
        ),
        _v(
            "bmi",
            "Body mass index",
            "kg/m2",
            ["LOINC/39156-5", "OMOP/3038553"],
            10,
            80,
            {"kg/m^2": _scale(1)},
            0.6,
            1.5,
            27,
            5,
        ),
        _v(
            "temperature",
            "Body temperature",
            "Cel",
            [
                "LOINC/8310-5",
                "LOINC/8331-1",
                "LOINC/8332-9",
                "LOINC/8328-7",
                "LOINC/8333-7",
                "LOINC/8329-5",
                "OMOP/3020891",
            ],
            30,
            45,
            {
                **dict.fromkeys(("[degf]", "degf", "°f", "f"), lambda f: (f - 32) * 5 / 9),
                **dict.fromkeys(("°c", "degc", "c"), _scale(1)),
            },
            0.4,
            0.3,
            36.9,
            0.5,
        ),
        _v(
            "spo2",
            "Oxygen saturation",
            "%",
            ["LOINC/59408-5", "LOINC/2708-6", "LOINC/20564-1", "OMOP/40762499"],
            50,
            100,
            {},
            1.5,
            1,
            97,
            2,
        ),
        _v(
            "respiratory_rate",
            "Respiratory rate",
            "/min",
            ["LOINC/9279-1", "OMOP/3024171"],
            4,
            60,
            dict.fromkeys(_PER_MINUTE, _scale(1)),
            2,
            1,
            15,
            3,
        ),
        _v(
            "glucose",
            "Glucose",
            "mmol/L",
            [
                "LOINC/2339-0",
                "LOINC/2345-7",
                "LOINC/15074-8",
                "LOINC/14749-6",
                "LOINC/1558-6",
                "LOINC/14771-0",
                "LOINC/41653-7",
                "OMOP/3004501",
            ],
            1,
            50,
            {"mg/dl": _scale(MG_DL_TO_MMOL_GLUCOSE)},
            0.8,
            0.5,
            5.6,
            1.5,
        ),
        _v(
            "hba1c",
            "Haemoglobin A1c",
            "%",
            ["LOINC/4548-4", "LOINC/17856-6", "LOINC/59261-8", "OMOP/3004410"],
            3,
            20,
            {"mmol/mol": lambda v: v / 10.929 + 2.15},
            0.3,
            0.4,
            5.8,
            1.0,
        ),
        _v(
            "total_cholesterol",
            "Total cholesterol",
            "mmol/L",
            ["LOINC/2093-3", "LOINC/14647-2", "OMOP/3027114"],
            1,
            20,
            {"mg/dl": _scale(MG_DL_TO_MMOL_CHOLESTEROL)},
            0.4,
            0.3,
            5.2,
            1.0,
        ),
        _v(
            "ldl",
            "LDL cholesterol",
            "mmol/L",
            [
                "LOINC/18262-6",
                "LOINC/2089-1",
                "LOINC/13457-7",
                "LOINC/22748-8",
                "LOINC/39469-2",
                "OMOP/3028437",
            ],
            0.2,
            15,
            {"mg/dl": _scale(MG_DL_TO_MMOL_CHOLESTEROL)},
            0.35,
            0.3,
            3.1,
            0.9,
        ),
        _v(
            "hdl",
            "HDL cholesterol",
            "mmol/L",
            ["LOINC/2085-9", "LOINC/14646-4", "OMOP/3007070"],
            0.1,
            5,
            {"mg/dl": _scale(MG_DL_TO_MMOL_CHOLESTEROL)},
            0.12,
            0.1,
            1.4,
            0.4,
        ),
        _v(
            "triglycerides",
            "Triglycerides",
            "mmol/L",
            ["LOINC/2571-8", "LOINC/14927-8", "LOINC/3043-7", "OMOP/3022192"],
            0.1,
            60,
            {"mg/dl": _scale(MG_DL_TO_MMOL_TRIGLYCERIDES)},
            0.4,
            0.3,
            1.5,
            0.8,
        ),
        _v(
            "creatinine",
            "Creatinine",
            "umol/L",
            [
                "LOINC/2160-0",
                "LOINC/38483-4",
                "LOINC/14682-9",
                "LOINC/77140-2",
                "LOINC/21232-4",
                "OMOP/3016723",
            ],
            10,
            2000,
            {"mg/dl": _scale(MG_DL_TO_UMOL_CREATININE), "mmol/l": _scale(1000)},
            8,
            5,
            80,
            20,
        ),
        _v(
            "egfr",
            "Estimated GFR",
            "mL/min/{1.73_m2}",
            [
                "LOINC/33914-3",
                "LOINC/62238-1",
                "LOINC/98979-8",
                "LOINC/48642-3",
                "LOINC/48643-1",
                "LOINC/69405-9",
            ],
            1,
            200,
            {"ml/min/1.73m2": _scale(1), "ml/min": _scale(1)},
            6,
            3,
            90,
            20,
        ),
        _v(
            "potassium",
            "Potassium",
            "mmol/L",
            ["LOINC/6298-4", "LOINC/2823-3", "OMOP/3023103"],
            1.5,
            9,
            {"meq/l": _scale(1)},
            0.3,
            0.2,
            4.3,
            0.5,
        ),
        _v(
            "sodium",
            "Sodium",
            "mmol/L",
            ["LOINC/2947-0", "LOINC/2951-2", "OMOP/3019550"],
            100,
            180,
            {"meq/l": _scale(1)},
            2,
            1,
            140,
            3,
        ),
        _v(
            "haemoglobin",
            "Haemoglobin",
            "g/dL",
            [
                "LOINC/718-7",
                "LOINC/59260-0",
                "LOINC/30313-1",
                "LOINC/30350-3",
                "LOINC/20509-6",
                "OMOP/3000963",
            ],
            3,
            25,
            {"g/l": _scale(0.1), "mmol/l": _scale(1.611)},
            0.6,
            0.4,
            14,
            1.6,
        ),
        _v(
            "qtc",
            "QTc interval",
            "ms",
            ["LOINC/8636-3"],
            250,
            700,
            {},
            15,
            5,
            420,
            25,
        ),
        _v(
            "lvef",
            "Left ventricular ejection fraction",
            "%",
            ["LOINC/10230-1", "LOINC/8806-2", "LOINC/18043-0"],
            5,
            95,
            {"1": _scale(100)},  # written as a fraction
            5,
            3,
            60,
            10,
        ),
    )
}

#: Adult reference intervals in each variable's canonical unit, by sex where they differ. Vital
#: signs: ESC/ESH 2018 (office hypertension from 140/90 mmHg), WHO's BMI classes, usual
#: clinical bounds; lipids: ESC/EAS 2019 (LDL below 3.0 mmol/L for people at low risk,
#: triglycerides below 1.7, HDL from 1.0 in men and 1.2 in women); glycaemia: ADA (HbA1c from
#: 5.7% is prediabetes; 7.8 mmol/L, 140 mg/dL, the upper bound of a glucose not known to be
#: fasting); kidney: KDIGO 2012 (an eGFR under 60); anaemia: WHO 2011 (13 g/dL in men, 12 in
#: women); creatinine: Mayo Clinic Laboratories' adult intervals; QTc: ESC 2015 (prolonged
#: above 450 ms in men, 460 in women); LVEF: ESC 2021 (reduced under 50%). Override them in a
#: mapping file (``"normal": {"any": [low, high]}``) with your laboratory's own.
NORMAL_RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "sbp": {"any": (90, 139)},
    "dbp": {"any": (60, 89)},
    "heart_rate": {"any": (60, 100)},
    "bmi": {"any": (18.5, 24.9)},
    "temperature": {"any": (36.0, 37.9)},
    "spo2": {"any": (95, None)},
    "respiratory_rate": {"any": (12, 20)},
    "glucose": {"any": (3.9, 7.8)},
    "hba1c": {"any": (None, 5.6)},
    "total_cholesterol": {"any": (None, 5.2)},
    "ldl": {"any": (None, 3.0)},
    "hdl": {"female": (1.2, None), "male": (1.0, None)},
    "triglycerides": {"any": (None, 1.7)},
    "creatinine": {"female": (52, 92), "male": (65, 119)},
    "egfr": {"any": (60, None)},
    "potassium": {"any": (3.5, 5.0)},
    "sodium": {"any": (135, 145)},
    "haemoglobin": {"female": (12.0, 15.5), "male": (13.0, 17.5)},
    "qtc": {"female": (None, 460), "male": (None, 450)},
    "lvef": {"any": (50, None)},
}
#: The variables whose adult interval also holds for children, and from which age (years): body
#: temperature and oxygen saturation from birth; glucose, HbA1c, sodium and potassium from the
#: first year (a newborn's glucose and potassium run on other bounds); eGFR reaches adult values
#: by two (KDIGO 2012). The others hold from :data:`ADULT_AGE`.
NORMAL_FROM_AGE: dict[str, float] = {
    "temperature": 0.0,
    "spo2": 0.0,
    "glucose": 1.0,
    "hba1c": 1.0,
    "sodium": 1.0,
    "potassium": 1.0,
    "egfr": 2.0,
}
CATALOGUE = {
    name: replace(
        v,
        normal=NORMAL_RANGES.get(name, {}),
        normal_from_age=NORMAL_FROM_AGE.get(name, ADULT_AGE),
    )
    for name, v in CATALOGUE.items()
}

#: Sex as the connectors write it (``Gender/F``), as the MEDS ETLs do (``GENDER//F``) and in SNOMED.
SEX_CODES: dict[str, str] = {
    "Gender/F": "female",
    "Gender/M": "male",
    "GENDER//F": "female",
    "GENDER//M": "male",
    "SNOMED/248152002": "female",
    "SNOMED/248153007": "male",
}
#: Smoking status (LOINC 72166-2 and SNOMED findings) mapped to current / former / never.
SMOKING_STATUS_CODES = frozenset({"LOINC/72166-2"})
SMOKING_VALUES: dict[str, str] = {
    "SNOMED/449868002": "current",
    "SNOMED/428041000124106": "current",
    "SNOMED/77176002": "current",
    "SNOMED/65568007": "current",
    "SNOMED/230063004": "current",
    "SNOMED/428061000124105": "current",
    "SNOMED/8517006": "former",
    "SNOMED/266919005": "never",
    "SNOMED/266927001": "unknown",
}


def load_catalogue(path: str | Path | None = None) -> dict[str, Variable]:
    """The built-in catalogue, extended by a user JSON file.

    The file maps variable names to objects with any of ``label``, ``unit``, ``codes`` (added to
    the built-in ones), ``low``, ``high`` (the plausible range), ``normal`` (the reference
    interval, ``{"any": [low, high]}`` or by ``female`` / ``male``, a bound ``null`` where there
    is none), ``normal_from_age`` (the age in years from which that interval holds; 18 unless
    the built-in variable says otherwise) and ``conversions`` as ``{"unit": factor}``; an unknown name defines a new variable
    (``unit``, ``codes``, ``low`` and ``high`` required).
    """
    catalogue = dict(CATALOGUE)
    if path is None:
        return catalogue
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the variable mapping ({exc})") from exc
    for name, entry in spec.items():
        conversions = {
            _unit_key(u): _scale(float(f)) for u, f in entry.get("conversions", {}).items()
        }
        normal = _normal_ranges(path, name, entry.get("normal"))
        if name in catalogue:
            base = catalogue[name]
            catalogue[name] = replace(
                base,
                label=entry.get("label", base.label),
                codes=base.codes + tuple(c for c in entry.get("codes", []) if c not in base.codes),
                low=entry.get("low", base.low),
                high=entry.get("high", base.high),
                conversions={**base.conversions, **conversions},
                normal=base.normal if normal is None else normal,
                normal_from_age=_normal_from_age(path, name, entry, base.normal_from_age),
            )
            continue
        missing = [k for k in ("unit", "codes", "low", "high") if k not in entry]
        if missing:
            raise ValueError(f"{path}: new variable {name!r} needs {', '.join(missing)}")
        catalogue[name] = Variable(
            name,
            entry.get("label", name),
            entry["unit"],
            tuple(entry["codes"]),
            float(entry["low"]),
            float(entry["high"]),
            conversions,
            float(entry.get("obs_sd", 1.0)),
            float(entry.get("drift_sd_per_year", 1.0)),
            float(entry.get("prior_mean", 0.0)),
            float(entry.get("prior_sd", 1.0)),
            normal or {},
            _normal_from_age(path, name, entry, ADULT_AGE),
        )
    return catalogue


def _normal_from_age(path: Path, name: str, entry: dict, default: float) -> float:
    """A mapping file's age from which a variable's reference interval holds."""
    age = entry.get("normal_from_age", default)
    if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
        raise ValueError(
            f"{path}: {name!r}: normal_from_age must be an age in years (0 or more), not {age!r}"
        )
    return float(age)


def _normal_ranges(
    path: Path, name: str, spec: object
) -> dict[str, tuple[float | None, float | None]] | None:
    """A mapping file's reference intervals of one variable (None when it gives none)."""
    if spec is None:
        return None
    problem = (
        f"{path}: {name!r}: normal must map any, female or male to [low, high] (null where "
        f"there is no bound), not {spec!r}"
    )
    if not isinstance(spec, dict) or not set(spec) <= {"any", "female", "male"}:
        raise ValueError(problem)
    ranges = {}
    for sex, bounds in spec.items():
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(
                b is None or (isinstance(b, int | float) and not isinstance(b, bool))
                for b in bounds
            )
        ):
            raise ValueError(problem)
        ranges[sex] = (
            None if bounds[0] is None else float(bounds[0]),
            None if bounds[1] is None else float(bounds[1]),
        )
    return ranges


def code_index(
    catalogue: dict[str, Variable], ancestors: dict[str, tuple[str, ...]] | None = None
) -> dict[str, str]:
    """code -> variable name; with ``ancestors`` (:meth:`Store.code_ancestors
    <jumeau.store.Store.code_ancestors>`), a local code whose nearest catalogued ancestor measures
    a variable measures it too (a MEDS ``LAB//50912//mg/dL`` under ``LOINC/2160-0``)."""
    index = {code: v.name for v in catalogue.values() for code in v.codes}
    for code, above in (ancestors or {}).items():
        if code not in index:
            name = next((index[a] for a in above if a in index), None)
            if name is not None:
                index[code] = name
    return index
