"""The digital twin of one patient as of a date.

A :class:`Twin` is built only from what was known at ``as_of``: events timed at or before it
and, when ``known_at`` is given, only from batches committed by then. It holds the patient's
demographics, the filtered state of every catalogued variable (with uncertainty and trend),
active problems and medications, allergies, recent encounters and risk scores; it serialises to
JSON and says what changed since an earlier twin.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jumeau.model import (
    BIRTH_CODE,
    BOUND_COMPARATORS,
    DEATH_CODE,
    FAMILY_HISTORY_DESCRIPTION,
    FAMILY_HISTORY_PREFIX,
    TENTATIVE_PREFIX,
)
from jumeau.signals.codes import is_series_observation
from jumeau.store import layout
from jumeau.twin import conditions as cond
from jumeau.twin.risks import RiskResult, compute_risks
from jumeau.twin.state import DAYS_PER_YEAR, Estimate, LocalTrendFilter, NoiseModel
from jumeau.twin.variables import (
    CATALOGUE,
    SEX_CODES,
    SMOKING_STATUS_CODES,
    SMOKING_VALUES,
    Variable,
    code_index,
    outside,
)

if TYPE_CHECKING:
    from jumeau.store import Store

US_PER_DAY = 86_400_000_000
ACTIVE_DRUG_WINDOW = timedelta(days=90)
#: How far back the orders and referrals a twin lists go.
RECENT_ORDER_WINDOW = timedelta(days=90)
#: Domains of events that happened at some date: one stored undated (a patient summary's
#: allergy or past surgery, a relative's illness, its date unknown) is known from the day its
#: batch was stored. An undated event of any other domain is a static fact, true at every date
#: (sex, a genotype, MEDS's static measurements).
HAPPENED_DOMAINS = frozenset(
    {
        "condition",
        "allergy",
        "procedure",
        "imaging",
        "drug",
        "observation",
        "device",
        "alert",
        "order",
        "consent",
    }
)
#: Codes that state an absence ("no known allergy", as patient summaries record it): kept in
#: the timeline, never listed as a problem, medication or allergy of the patient.
ABSENT_CODES = frozenset(
    {
        "SNOMED/716186003",  # no known allergy
        "SNOMED/409137002",  # no known drug allergy
        "SNOMED/429625007",  # no known food allergy
        "SNOMED/428607008",  # no known environmental allergy
        "SNOMED/160245001",  # no current problems or disability
        "SNOMED/787483001",  # no known device use
    }
)
#: The International Patient Summary's code system of absent and unknown data (IPS 1.x).
ABSENT_SYSTEM = "http://hl7.org/fhir/uv/ips/CodeSystem/absent-unknown-uv-ips/"


def _static(row: dict) -> bool:
    """A fact true at every date of the patient's life (see :data:`HAPPENED_DOMAINS`)."""
    return row["time"] is None and row["domain"] not in HAPPENED_DOMAINS


def _absent(row: dict) -> bool:
    """Whether a row states an absence (:data:`ABSENT_CODES`, the IPS absent/unknown codes)."""
    return row["code"] in ABSENT_CODES or row["code"].startswith(ABSENT_SYSTEM)


def _stated(rows: list[dict]) -> list[dict]:
    """The rows that state something present, not an absence."""
    return [r for r in rows if not _absent(r)]


def day_number(moment: datetime) -> float:
    """Days since the epoch (the time axis the filters run on)."""
    return (moment - datetime(1970, 1, 1)).total_seconds() / 86_400


@dataclass
class VariableState:
    """What the twin knows about one variable."""

    variable: str
    unit: str
    estimate: Estimate
    last_value: float | None
    last_time: datetime | None
    days: np.ndarray
    values: np.ndarray
    flagged: list[dict] = field(default_factory=list)
    bounds: tuple[float, float] = (-np.inf, np.inf)
    #: values recorded without a unit and read in another unit than the canonical one
    units_inferred: int = 0
    #: the reference interval for this patient (see :meth:`Variable.normal_range`)
    normal: tuple[float | None, float | None] | None = None

    @property
    def out_of_range(self) -> str | None:
        """``low`` or ``high`` when the last value is outside the reference interval."""
        return outside(self.last_value, self.normal)

    def to_dict(self, as_of: datetime) -> dict:
        return {
            "unit": self.unit,
            "last_value": self.last_value,
            "last_time": self.last_time.isoformat() if self.last_time else None,
            "age_days": round((as_of - self.last_time).total_seconds() / 86_400, 1)
            if self.last_time
            else None,
            "estimate": round(self.estimate.mean, 3),
            "sd": round(self.estimate.sd, 3),
            "interval_95": [
                round(float(np.clip(x, *self.bounds)), 3) for x in self.estimate.interval(0.95)
            ],
            "trend_per_year": round(self.estimate.slope_per_year, 3),
            "trend_sd_per_year": round(self.estimate.slope_sd_per_year, 3),
            "n_observations": self.estimate.n_observations,
            "flagged": self.flagged,
            "units_inferred": self.units_inferred,
            "normal_range": list(self.normal) if self.normal else None,
            "out_of_range": self.out_of_range,
        }


def _source_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def model_fingerprint() -> str:
    """A digest of the code that fits a population model (its filter, its series, its
    catalogue): a model kept by another version of jumeau is fitted again, not read back."""
    from jumeau.signals import codes
    from jumeau.twin import series, state, variables

    return _source_digest([Path(m.__file__) for m in (state, series, variables, codes)])


@functools.cache
def twin_fingerprint() -> str:
    """A digest of the code that builds a twin (the whole ``jumeau.twin`` package and the
    signal codes it reads): twins kept by another version of jumeau are built again."""
    from jumeau.signals import codes

    package = Path(__file__).parent
    return _source_digest([*sorted(package.glob("*.py")), Path(codes.__file__)])


class PopulationModel:
    """Per-variable priors and noise (default from the catalogue, or learnt by ``fit``)."""

    def __init__(
        self,
        catalogue: dict[str, Variable] | None = None,
        noise: dict[str, NoiseModel] | None = None,
    ):
        self.catalogue = catalogue or CATALOGUE
        self.noise = {n: NoiseModel.default(v) for n, v in self.catalogue.items()}
        self.noise.update(noise or {})

    def filter(self, variable: str, birth: datetime | None = None) -> LocalTrendFilter:
        """The filter of ``variable`` for a patient born on ``birth`` (when known)."""
        return LocalTrendFilter(self.noise[variable], day_number(birth) if birth else None)

    @classmethod
    def fit(
        cls,
        store: Store,
        cutoff: datetime | None = None,
        catalogue: dict[str, Variable] | None = None,
        *,
        known_at: datetime | None = None,
    ) -> PopulationModel:
        """Learn each variable's population model from every subject's series before ``cutoff``
        (and, with ``known_at``, from the store as it was then)."""
        from jumeau.twin.series import variable_series
        from jumeau.twin.state import fit_noise

        model = cls(catalogue)
        for name, series in variable_series(store, model.catalogue, cutoff, known_at).items():
            model.noise[name] = fit_noise(model.catalogue[name], series)
        return model

    @classmethod
    def fit_cached(
        cls, store: Store, cutoff: datetime | None = None, *, known_at: datetime | None = None
    ) -> PopulationModel:
        """:meth:`fit` with the built-in catalogue, kept under ``STORE/twins/populations/``:
        asked again of the same store state (its batches as of ``known_at``) and the same
        cutoff (a cutoff after the store's last event is that event's time), it is read back
        instead of fitted again."""
        batches = (
            sorted(store.batches_known_at(known_at))
            if known_at is not None
            else list(store.manifest.batch_ids)
        )
        latest = store.latest_time(known_at=known_at)
        effective = cutoff if cutoff is not None and (latest is None or cutoff < latest) else latest
        key = hashlib.sha256(
            json.dumps([batches, str(effective), sorted(CATALOGUE), model_fingerprint()]).encode()
        ).hexdigest()[:24]
        path = store.root / layout.TWINS_DIR / layout.POPULATIONS_DIR / f"{key}.json"
        if path.exists():
            return cls.from_dict(json.loads(path.read_text()))
        model = cls.fit(store, cutoff, known_at=known_at)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            layout.write_json_atomic(path, model.to_dict())
        except OSError:
            pass  # a store the reader may not write to is still read; the fit is just not kept
        return model

    def to_dict(self) -> dict:
        return {n: m.to_dict() for n, m in self.noise.items() if m.learnt}

    @classmethod
    def from_dict(cls, data: dict) -> PopulationModel:
        """The model :meth:`to_dict` wrote (built-in catalogue)."""
        return cls(noise={n: NoiseModel.from_dict(m) for n, m in data.items()})


@dataclass
class Twin:
    """One patient's twin as of a date; build it with :meth:`Store.twin <jumeau.store.Store.twin>`."""

    subject_id: int
    as_of: datetime
    known_at: datetime | None
    birth: datetime | None
    sex: str | None
    deceased: datetime | None
    variables: dict[str, VariableState]
    smoking_status: str | None
    problems: list[dict]
    medications: list[dict]
    allergies: list[dict]
    encounters: list[dict]
    events_used: int
    family_history: list[dict] = field(default_factory=list)
    #: established problems no longer active (resolved, or a claim's diagnosis, which ends with
    #: its claim), each with when it was first and last recorded, the latest first
    past_problems: list[dict] = field(default_factory=list)
    #: procedures done (surgery, imaging, screening), each once: first and last time, how
    #: many times, the latest first
    procedures: list[dict] = field(default_factory=list)
    #: vaccines given, each once: first and last time, how many doses, the latest first
    immunizations: list[dict] = field(default_factory=list)
    #: the patient's called variants (a VCF's): how many, in how many genes, and those of
    #: high impact on their gene's product (None without any)
    genomics: dict | None = None
    #: devices the patient uses (implants, a pacemaker), with their start when known
    devices: list[dict] = field(default_factory=list)
    #: care goals being pursued (an HbA1c below 7.0), with their start and how far achieved
    goals: list[dict] = field(default_factory=list)
    #: episodes of care under way (a home care programme, a chemotherapy course), with their
    #: start
    episodes: list[dict] = field(default_factory=list)
    #: alerts in force (immunocompromised, a fall risk), with their start when known
    alerts: list[dict] = field(default_factory=list)
    #: consents and refusals in force (do not resuscitate, a research consent), with their
    #: start and terms (``provision=deny;scope=treatment``)
    consents: list[dict] = field(default_factory=list)
    #: the latest clinical notes, latest first: type, date and the start of their text
    notes: list[dict] = field(default_factory=list)
    #: orders and referrals placed in the last 90 days, latest first, with their intent
    orders: list[dict] = field(default_factory=list)
    #: what the record says of absent allergies ("No known allergy") when none is listed
    allergy_status: str | None = None
    descriptions: dict[str, str] = field(repr=False, default_factory=dict)
    risks: dict[str, RiskResult] = field(default_factory=dict)
    signal_features: dict[str, dict] = field(default_factory=dict)
    version: int = 0
    population: PopulationModel = field(repr=False, default_factory=lambda: PopulationModel())

    def forecast(self, variable: str, horizons=("3mo", "6mo", "12mo")) -> list[dict]:
        """Predictive distribution (median, 50/80/95% intervals) of ``variable`` at each horizon."""
        from jumeau.twin.forecast import forecast

        return forecast(self, variable, horizons)

    @property
    def age(self) -> float | None:
        """Age in years at ``as_of``, or at death for a patient who died before it."""
        if self.birth is None:
            return None
        until = self.deceased or self.as_of  # a death is known only up to as_of
        return _age_years(self.birth, until)

    def condition_flags(self) -> dict[str, bool]:
        """Whether any recorded problem (active or past) belongs to each scored condition."""
        codes = [p["code"] for p in self._all_conditions]
        return {name: any(cond.matches(c, name) for c in codes) for name in cond.CONDITIONS}

    def on_antiplatelet_or_nsaid(self) -> bool:
        names = " ".join((m.get("description") or "").lower() for m in self.medications)
        return any(drug in names for drug in cond.ANTIPLATELETS_AND_NSAIDS)

    def to_dict(self) -> dict:
        """A JSON-ready snapshot (for the service, the viewer and ``twin.diff``)."""
        return {
            "subject_id": self.subject_id,
            "as_of": self.as_of.isoformat(),
            "known_at": self.known_at.isoformat() if self.known_at else None,
            "version": self.version,
            "demographics": {
                "birth_date": self.birth.date().isoformat() if self.birth else None,
                "age": self.age,
                "sex": self.sex,
                "deceased": self.deceased.isoformat() if self.deceased else None,
                "smoking_status": self.smoking_status,
            },
            "variables": {n: v.to_dict(self.as_of) for n, v in sorted(self.variables.items())},
            "problems": self.problems,
            "past_problems": self.past_problems,
            "medications": self.medications,
            "allergies": self.allergies,
            "allergy_status": self.allergy_status,
            "family_history": self.family_history,
            "genomics": self.genomics,
            "procedures": self.procedures,
            "immunizations": self.immunizations,
            "devices": self.devices,
            "goals": self.goals,
            "episodes": self.episodes,
            "alerts": self.alerts,
            "consents": self.consents,
            "recent_orders": self.orders,
            "latest_notes": self.notes,
            "recent_encounters": self.encounters,
            "risks": {n: r.to_dict() for n, r in self.risks.items()},
            "signal_features": self.signal_features,
            "events_used": self.events_used,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def diff(self, previous: Twin | dict) -> dict:
        """What changed since an earlier twin of the same subject.

        New and resolved problems, started and stopped medications, new and ended care goals
        and alerts, procedures done and vaccines given since, variables whose last value left
        or came back within its reference interval, observations that fell outside the earlier
        twin's 95% predictive interval, and risk scores that moved.
        """
        before = previous.to_dict() if isinstance(previous, Twin) else previous
        after = self.to_dict()
        prob_before, prob_after = _codes(before, "problems"), _codes(after, "problems")
        meds_before, meds_after = _codes(before, "medications"), _codes(after, "medications")
        goals_before, goals_after = _codes(before, "goals"), _codes(after, "goals")
        alerts_before, alerts_after = _codes(before, "alerts"), _codes(after, "alerts")
        abnormal = {}
        for name, state in after["variables"].items():
            earlier = before["variables"].get(name, {})
            was = earlier.get("out_of_range")
            # a snapshot of an older twin says nothing of ranges: no change to report
            if (
                "out_of_range" in earlier
                and state["out_of_range"] != was
                or (not earlier and state["out_of_range"])
            ):
                abnormal[name] = {
                    "before": was,
                    "after": state["out_of_range"],
                    "value": state["last_value"],
                    "normal_range": state["normal_range"],
                }
        surprises = []
        if isinstance(previous, Twin):
            for name, state in self.variables.items():
                old = previous.variables.get(name)
                new_obs = state.days > day_number(previous.as_of)
                if old is None or not len(old.values) or not new_obs.any():
                    continue
                flt = self.population.filter(name, self.birth)
                for day, value in zip(state.days[new_obs], state.values[new_obs], strict=True):
                    expected = flt.predictive(old.days, old.values, float(day))
                    low, high = expected.interval(0.95)
                    if not low <= value <= high:
                        surprises.append(
                            {
                                "variable": name,
                                "time": (
                                    datetime(1970, 1, 1) + timedelta(days=float(day))
                                ).isoformat(),
                                "value": float(value),
                                "expected": round(expected.mean, 3),
                                "interval_95": [round(low, 3), round(high, 3)],
                            }
                        )
        risk_changes = {}
        for name, risk in after["risks"].items():
            old = before["risks"].get(name, {}).get("value")
            if old != risk["value"]:
                risk_changes[name] = {"before": old, "after": risk["value"]}
        return {
            "subject_id": self.subject_id,
            "from": before["as_of"],
            "to": after["as_of"],
            "new_problems": sorted(prob_after - prob_before),
            "resolved_problems": sorted(prob_before - prob_after),
            "started_medications": sorted(meds_after - meds_before),
            "stopped_medications": sorted(meds_before - meds_after),
            "new_goals": sorted(goals_after - goals_before),
            "ended_goals": sorted(goals_before - goals_after),
            "new_alerts": sorted(alerts_after - alerts_before),
            "ended_alerts": sorted(alerts_before - alerts_after),
            "procedures_since": _done_since(after.get("procedures", []), before["as_of"]),
            "vaccines_since": _done_since(after.get("immunizations", []), before["as_of"]),
            "outside_predicted_interval": surprises,
            "normal_range_changes": abnormal,
            "risk_changes": risk_changes,
        }


def build_twin(
    store: Store,
    subject_id: int,
    as_of: datetime | None = None,
    *,
    known_at: datetime | None = None,
    population: PopulationModel | None = None,
    descriptions: dict[str, str] | None = None,
) -> Twin:
    """Build a subject's twin from the store (see :class:`Twin`)."""
    population = population or PopulationModel()
    stored_by = known_at if as_of is None else min(as_of, known_at or as_of)
    as_of = as_of or datetime.now()
    timeline = store.timeline_arrow(subject_id, known_at=known_at, plain=True).to_pylist()
    rows = [r for r in timeline if r["time"] is not None and r["time"] <= as_of or _static(r)]
    if any(r["time"] is None and not _static(r) for r in timeline):
        # an undated fact (a patient summary's allergy) is known from when it was stored: a
        # twin as of an earlier day must not see it
        stored = (
            timeline
            if stored_by == known_at  # the read above is the store as it was then
            else store.timeline_arrow(subject_id, known_at=stored_by, plain=True).to_pylist()
        )
        rows += [r for r in stored if r["time"] is None and not _static(r)]
    dated = any(r["time"] is not None for r in rows)
    if not rows or (not dated and any(r["time"] is not None for r in timeline)):
        # a subject the store does not know yet at that date (or not born); a subject known only
        # by undated facts (a family history sent alone) has a twin of those facts
        raise KeyError(f"subject {subject_id} has no events known at {as_of.isoformat()}")
    descriptions = store.code_descriptions() if descriptions is None else descriptions
    ancestors = store.code_ancestors()
    by_domain: dict[str, list[dict]] = {}
    for r in rows:
        by_domain.setdefault(r["domain"], []).append(r)
    demographic = by_domain.get("demographic", [])
    sexes = [SEX_CODES[r["code"]] for r in demographic if r["code"] in SEX_CODES]
    birth = next((r["time"] for r in rows if r["code"] == BIRTH_CODE), None)
    sex = sexes[-1] if sexes else None
    twin = Twin(
        subject_id=subject_id,
        as_of=as_of,
        known_at=known_at,
        birth=birth,
        sex=sex,
        deceased=next(
            (r["time"] for r in rows if r["code"] == DEATH_CODE and r["time"] is not None), None
        ),
        variables=_variable_states(rows, population, as_of, birth, ancestors, sex),
        smoking_status=_smoking(rows, ancestors),
        problems=[],
        medications=[],
        allergies=[],
        encounters=[],
        events_used=len(rows),
        descriptions=descriptions,
        version=len(store.manifest.batches),
    )
    twin.population = population
    conditions = _stated(by_domain.get("condition", []))
    # a working or differential diagnosis is listed, said tentative, and never scored (a code
    # recorded once as established is established)
    established = {
        r["code"] for r in conditions if not (r["text_value"] or "").startswith(TENTATIVE_PREFIX)
    }
    tentative = {
        r["code"]: r["text_value"].removeprefix(TENTATIVE_PREFIX)
        for r in conditions
        if r["code"] not in established
    }
    # a local diagnosis code is scored by the standard codes above it (ICD10CM/I10 over a MEDS
    # DIAGNOSIS//ICD//10//I10)
    twin._all_conditions = [  # type: ignore[attr-defined]
        {"code": c}
        for r in conditions
        if r["code"] in established
        for c in (r["code"], *ancestors.get(r["code"], ()))
    ]
    active = [r for r in conditions if r["end_time"] is None or r["end_time"] > as_of]
    active_codes = {r["code"] for r in active}
    twin.problems = [
        {"code": code, "description": descriptions.get(code), "since": _iso(since)}
        | ({} if code in established else {"verification": tentative[code]})
        for code, since, _ in _first_by_code(active)
    ]
    twin.past_problems = _history_by_code(
        [r for r in conditions if r["code"] in established and r["code"] not in active_codes],
        descriptions,
    )
    on_drug = [
        r
        for r in _stated(by_domain.get("drug", []))
        if (r["end_time"] is not None and r["end_time"] >= as_of)
        or (
            r["end_time"] is None
            and r["time"] is not None
            and r["time"] >= as_of - ACTIVE_DRUG_WINDOW
        )
    ]
    twin.medications = [
        {
            "code": code,
            "description": descriptions.get(code),
            "since": _iso(since),
            "until": _iso(until),
        }
        for code, since, until in _first_by_code(on_drug)
    ]
    # a resolved allergy is past
    twin.allergies = _in_force(by_domain.get("allergy", []), as_of, descriptions)
    absences = {
        descriptions.get(r["code"]) or r["code"] for r in by_domain.get("allergy", []) if _absent(r)
    }
    twin.allergy_status = "; ".join(sorted(absences)) if absences and not twin.allergies else None
    twin.family_history = _family_history(by_domain.get("observation", []), descriptions)
    twin.procedures = _history_by_code(_stated(by_domain.get("procedure", [])), descriptions)
    twin.immunizations = _history_by_code(by_domain.get("immunization", []), descriptions)
    twin.devices = _in_force(by_domain.get("device", []), as_of, descriptions)
    twin.genomics = _genomics(by_domain.get("genomic", []))
    twin.goals = _goals(by_domain.get("goal", []), as_of, descriptions)
    twin.alerts = _in_force(by_domain.get("alert", []), as_of, descriptions)
    twin.episodes = _in_force(by_domain.get("episode", []), as_of, descriptions)
    twin.consents = _consents(by_domain.get("consent", []), as_of, descriptions)
    twin.orders = _recent_orders(by_domain.get("order", []), as_of, descriptions)
    twin.notes = _latest_notes(by_domain.get("note", []), descriptions)
    visits = sorted(
        (r for r in by_domain.get("visit", []) if r["time"] is not None),
        key=lambda r: (r["time"], r["code"]),
    )[-5:]
    twin.encounters = [
        {
            "code": r["code"],
            "description": descriptions.get(r["code"]),
            "start": r["time"].isoformat(),
            "end": r["end_time"].isoformat() if r["end_time"] else None,
        }
        for r in visits
    ]
    twin.signal_features = _signal_features(rows)
    twin.risks = compute_risks(twin)
    return twin


def _codes(snapshot: dict, key: str) -> set[str]:
    """The codes a twin snapshot lists under ``key`` (none in a snapshot older than the key)."""
    return {item["code"] for item in snapshot.get(key, [])}


def _in_force(rows: list[dict], as_of: datetime, descriptions: dict[str, str]) -> list[dict]:
    """The records not ended by ``as_of`` (an allergy, a device in use, an alert), each code
    once with its first start."""
    current = [r for r in _stated(rows) if r["end_time"] is None or r["end_time"] > as_of]
    return [
        {"code": code, "description": descriptions.get(code), "since": _iso(since)}
        for code, since, _ in _first_by_code(current)
    ]


#: Consent statuses under which a consent is not (or no longer) in force.
_CONSENTS_NOT_IN_FORCE = frozenset({"draft", "proposed", "rejected", "inactive"})


def _consents(rows: list[dict], as_of: datetime, descriptions: dict[str, str]) -> list[dict]:
    """The consents and refusals in force at ``as_of``, each with its latest terms (a newer
    record of the same code says what holds now)."""
    latest: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["time"] is not None, r["time"] or datetime.min)):
        latest[r["code"]] = r
    held = []
    for code, r in latest.items():
        if _facts(r["text_value"]).get("status") in _CONSENTS_NOT_IN_FORCE:
            continue
        if r["end_time"] is not None and r["end_time"] <= as_of:
            continue
        held.append(
            {
                "code": code,
                "description": descriptions.get(code),
                "since": _iso(r["time"]),
                "terms": r["text_value"],
            }
        )
    return held


#: Variant consequences of high impact (Ensembl VEP's HIGH class, in Sequence Ontology terms
#: as VEP and SnpEff's ANN write them, and SnpEff's older EFF names): a variant likely to
#: truncate or abolish its gene's product.
HIGH_IMPACT_CONSEQUENCES = frozenset(
    {
        "transcript_ablation",
        "splice_acceptor_variant",
        "splice_donor_variant",
        "stop_gained",
        "frameshift_variant",
        "stop_lost",
        "start_lost",
        "transcript_amplification",
        "feature_elongation",
        "feature_truncation",
        "exon_loss_variant",
        "frame_shift",
        "splice_site_acceptor",
        "splice_site_donor",
        "exon_deleted",
    }
)


def _genomics(rows: list[dict]) -> dict | None:
    """The called variants' summary: how many, in how many genes, each of high impact (a
    consequence in :data:`HIGH_IMPACT_CONSEQUENCES`) with its gene and genotype, and what a
    laboratory reported they mean (clinical significance and condition: a FHIR report's
    implication, a VCF's ClinVar annotation), pathogenic first."""
    if not rows:
        return None
    facts = [(r["code"], _facts(r["text_value"])) for r in rows]
    high = [
        {
            "code": code,
            "gene": fact.get("GENE"),
            "consequence": fact.get("CONSEQUENCE"),
            "genotype": fact.get("GT"),
        }
        for code, fact in facts
        if HIGH_IMPACT_CONSEQUENCES.intersection(
            re.split(r"[&+,]", (fact.get("CONSEQUENCE") or "").lower())
        )
    ]
    implications = [
        {
            "code": code,
            "gene": fact.get("GENE"),
            "significance": fact["SIGNIFICANCE"],
            "condition": fact.get("CONDITION"),
        }
        for code, fact in facts
        if fact.get("SIGNIFICANCE")
    ]
    return {
        "variants": len({code for code, _ in facts}),  # an implication shares its variant's
        "genes": len({f["GENE"] for _, f in facts if f.get("GENE")}),
        "high_impact": sorted(high, key=lambda v: (v["gene"] or "", v["code"])),
        "implications": sorted(
            implications,
            key=lambda v: (
                "pathogenic" not in v["significance"].lower(),
                v["gene"] or "",
                v["code"],
            ),
        ),
    }


def _facts(text: str | None) -> dict[str, str]:
    """The ``key=value;key=value`` facts a connector wrote in an event's text."""
    return dict(part.split("=", 1) for part in (text or "").split(";") if "=" in part)


def _recent_orders(rows: list[dict], as_of: datetime, descriptions: dict[str, str]) -> list[dict]:
    """Orders and referrals placed in the :data:`RECENT_ORDER_WINDOW` before ``as_of``, the
    latest first, with their intent (``order``, ``plan``...) and whether they forbid the act."""
    recent = sorted(
        (r for r in rows if r["time"] is not None and r["time"] >= as_of - RECENT_ORDER_WINDOW),
        key=lambda r: (r["time"], r["code"]),
        reverse=True,
    )
    return [
        {
            "code": r["code"],
            "description": descriptions.get(r["code"]),
            "placed": _iso(r["time"]),
            "due": _iso(r["end_time"]),
        }
        # its status is the source's latest, which a twin of an earlier date must not see
        | {k: v for k, v in _facts(r["text_value"]).items() if k != "status" and v != "None"}
        for r in recent
    ]


#: Notes a twin shows, and how much of each one's text.
NOTES_SHOWN = 5
NOTE_EXCERPT = 240


def _latest_notes(rows: list[dict], descriptions: dict[str, str]) -> list[dict]:
    """The :data:`NOTES_SHOWN` latest notes, latest first, each with the start of its text
    (the whole note stays in the timeline)."""
    dated = sorted(
        (r for r in rows if r["time"] is not None), key=lambda r: (r["time"], r["code"])
    )[-NOTES_SHOWN:]
    out = []
    for r in reversed(dated):
        text = " ".join((r["text_value"] or "").split())
        if len(text) > NOTE_EXCERPT:
            text = text[: NOTE_EXCERPT - 1].rstrip() + "…"
        out.append(
            {
                "code": r["code"],
                "description": descriptions.get(r["code"]),
                "written": _iso(r["time"]),
                "excerpt": text or None,
            }
        )
    return out


def _goals(rows: list[dict], as_of: datetime, descriptions: dict[str, str]) -> list[dict]:
    """The goals not completed nor ended by ``as_of``, each once (its first start) with its
    latest achievement status (``in-progress``, ``achieved``...)."""
    pursued = [
        r
        for r in rows
        if "status=completed" not in (r["text_value"] or "")
        and (r["end_time"] is None or r["end_time"] > as_of)
    ]
    latest = {}
    for r in sorted(pursued, key=lambda r: (r["time"] is not None, r["time"] or as_of)):
        latest[r["code"]] = _facts(r["text_value"]).get("achievement")
    return [
        {
            "code": code,
            "description": descriptions.get(code),
            "since": _iso(since),
            "achievement": latest.get(code),
        }
        for code, since, _ in _first_by_code(pursued)
    ]


def _signal_features(rows: list[dict]) -> dict[str, dict]:
    """The latest value of each ECG feature (record summaries preferred over windows at the same
    time) and of each EEG band power per channel."""
    from jumeau.signals.codes import FEATURE_CODES

    names = {code: name for name, (code, _) in FEATURE_CODES.items()}
    latest: dict[str, dict] = {}
    for r in rows:
        if (
            r["source"] not in ("derived/ecg", "derived/eeg")
            or r["time"] is None
            or r["numeric_value"] is None
        ):
            continue
        scope, _, channel = (r["text_value"] or "").partition("; ")
        if r["source"] == "derived/ecg":
            key = f"ecg_{names.get(r['code'], r['code'])}"
        else:
            key = f"eeg_{r['code'].rsplit('/', 1)[-1].removesuffix('_relative_power')}@{scope}"
            channel = scope
        rank = (r["time"], scope == "record")
        if key not in latest or rank >= latest[key]["_rank"]:
            latest[key] = {
                "value": r["numeric_value"],
                "unit": r["unit"],
                "time": r["time"].isoformat(),
                "channel": channel or None,
                "_rank": rank,
            }
    return {
        k: {f: v for f, v in item.items() if f != "_rank"} for k, item in sorted(latest.items())
    }


def _first_by_code(rows: list[dict]) -> list[tuple[str, datetime | None, datetime | None]]:
    """(code, first time, latest end) per code, ordered by first time then code; a code only
    ever recorded undated (a patient summary's allergy) has no first time and comes last."""
    first: dict[str, list] = {}
    for r in rows:
        entry = first.setdefault(r["code"], [r["time"], r["end_time"]])
        if r["time"] is not None and (entry[0] is None or r["time"] < entry[0]):
            entry[0] = r["time"]
        if r["end_time"] is not None and (entry[1] is None or r["end_time"] > entry[1]):
            entry[1] = r["end_time"]
    return sorted(
        ((c, t, e) for c, (t, e) in first.items()),
        key=lambda x: (x[1] is None, x[1] or datetime.min, x[0]),
    )


def _done_since(history: list[dict], since: str) -> list[str]:
    """The codes of a :func:`_history_by_code` list last recorded after ``since`` (ISO)."""
    return sorted(h["code"] for h in history if h["last"] is not None and h["last"] > since)


def _history_by_code(rows: list[dict], descriptions: dict[str, str]) -> list[dict]:
    """Per code: first and last time recorded and how many times, the latest recorded first
    (a claims history lists every diagnosis billed, each ending with its claim; a procedure or
    a vaccine is given again and again)."""
    seen: dict[str, list] = {}
    for r in rows:
        entry = seen.setdefault(r["code"], [r["time"], r["time"], 0])
        if r["time"] is not None:
            entry[0] = r["time"] if entry[0] is None else min(entry[0], r["time"])
            entry[1] = r["time"] if entry[1] is None else max(entry[1], r["time"])
        entry[2] += 1
    ordered = sorted(
        seen.items(),
        key=lambda x: (x[1][1] is not None, x[1][1] or datetime.min, x[0]),
        reverse=True,
    )
    return [
        {
            "code": code,
            "description": descriptions.get(code),
            "first": _iso(first),
            "last": _iso(last),
            "times": times,
        }
        for code, (first, last, times) in ordered
    ]


def _family_history(rows: list[dict], descriptions: dict[str, str]) -> list[dict]:
    """A relative's conditions: the condition's code, the relative, the age at onset."""
    out = []
    for r in rows:
        if not r["code"].startswith(FAMILY_HISTORY_PREFIX):
            continue
        details = dict(
            part.split("=", 1) for part in (r["text_value"] or "").split(";") if "=" in part
        )
        code = r["code"].removeprefix(FAMILY_HISTORY_PREFIX)
        out.append(
            {
                "code": code,
                "description": descriptions.get(code)
                or (descriptions.get(r["code"]) or "").removeprefix(FAMILY_HISTORY_DESCRIPTION)
                or None,
                "relative": details.get("relationship") or details.get("relative"),
                "onset_age": r["numeric_value"],
                "recorded": _iso(r["time"]),
            }
        )
    return out


def _iso(time: datetime | None) -> str | None:
    return time.isoformat() if time is not None else None


def _smoking(rows: list[dict], ancestors: dict[str, tuple[str, ...]]) -> str | None:
    statuses = [
        SMOKING_VALUES.get(r["text_value"])
        for r in rows
        if r["text_value"]
        and SMOKING_STATUS_CODES.intersection((r["code"], *ancestors.get(r["code"], ())))
    ]
    statuses = [s for s in statuses if s and s != "unknown"]
    return statuses[-1] if statuses else None


def observations(
    rows: list[dict],
    catalogue: dict[str, Variable],
    ancestors: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, tuple[list, list, list, int]]:
    """Per variable: (times, canonical values, flagged problems) of a subject's events (local
    codes read through their ``ancestors``, see :func:`code_index`), and how many values
    without a unit were read in another unit than the canonical one."""
    index = code_index(catalogue, ancestors)
    out: dict[str, tuple[list, list, list]] = {}
    unit_inferred: dict[str, int] = {}
    unitless: dict[str, tuple[list, list, str | None]] = {}
    converters: dict[tuple[str, str | None], Callable[[float], float] | None] = {}
    for r in rows:
        name = index.get(r["code"])
        if name is None or r["numeric_value"] is None or r["time"] is None:
            continue
        if not is_series_observation(r["source"], r["text_value"]):
            continue
        var = catalogue[name]
        times, values, flagged = out.setdefault(name, ([], [], []))
        value, unit, time = r["numeric_value"], r["unit"], r["time"]
        if r["text_value"] in BOUND_COMPARATORS:  # "< 5": a limit, not a measured value
            flagged.append(
                {
                    "time": time.isoformat(),
                    "value": value,
                    "unit": unit,
                    "problem": f"a bound ({r['text_value']} {value:g}), not an exact value",
                }
            )
            continue
        if not unit:  # read together below, each variable's at once
            unitless.setdefault(name, ([], [], unit))
            unitless[name][0].append(time)
            unitless[name][1].append(value)
            continue
        if (name, unit) not in converters:  # a watch's million samples share one unit
            converters[name, unit] = var.converter(unit)
        convert = converters[name, unit]
        converted = None if convert is None else convert(value)
        if converted is None:
            flagged.append(
                {
                    "time": time.isoformat(),
                    "value": value,
                    "unit": unit,
                    "problem": f"unit {unit!r} unknown for {var.name}",
                }
            )
        elif not var.plausible(converted):
            flagged.append(_implausible(var, time, value, unit, converted))
        else:
            times.append(time)
            values.append(converted)
    # values without a unit: the canonical one, else the one unit that makes them plausible
    for name, (unit_times, unit_values, unit) in unitless.items():
        var = catalogue[name]
        times, values, flagged = out[name]
        read, inferred = var.read_unitless(np.array(unit_values, dtype=float))
        unit_inferred[name] = int(inferred.sum())
        for time, value, converted in zip(unit_times, unit_values, read.tolist(), strict=True):
            if np.isnan(converted):
                flagged.append(_implausible(var, time, value, unit, value))
            else:
                times.append(time)
                values.append(converted)
        flagged.sort(key=lambda f: f["time"])  # in time order, as the rows came
    return {name: (*series, unit_inferred.get(name, 0)) for name, series in out.items()}


def _age_years(birth: datetime | None, moment: datetime) -> float | None:
    """Age in years at ``moment`` (None when the birth date is not known)."""
    return None if birth is None else round((moment - birth).days / DAYS_PER_YEAR, 2)


def _implausible(var: Variable, time: datetime, value: float, unit, converted: float) -> dict:
    """The flag of a value implausible for ``var`` once in its unit."""
    return {
        "time": time.isoformat(),
        "value": value,
        "unit": unit,
        "problem": f"implausible ({converted:g} {var.unit} outside {var.low:g}-{var.high:g})",
    }


def _variable_states(
    rows: list[dict],
    population: PopulationModel,
    as_of: datetime,
    birth: datetime | None,
    ancestors: dict[str, tuple[str, ...]],
    sex: str | None = None,
) -> dict[str, VariableState]:
    states = {}
    at = day_number(as_of)
    catalogue = population.catalogue
    for name, (times, values, flagged, inferred) in observations(
        rows, catalogue, ancestors
    ).items():
        days = np.array([day_number(t) for t in times], dtype=float)
        vals = np.array(values, dtype=float)
        # values of the same time in value order, as the population's series have them: the
        # data's order, not the store key's (an ordered series, the usual one, is left as it is)
        if not ((days[1:] > days[:-1]) | ((days[1:] == days[:-1]) & (vals[1:] >= vals[:-1]))).all():
            order = np.lexsort((vals, days))
            days, vals, times = days[order], vals[order], [times[i] for i in order]
        estimate = (
            population.filter(name, birth).estimate(days, vals, at)
            if len(vals)
            else Estimate(
                population.noise[name].prior_mean, population.noise[name].prior_sd, 0.0, 0.0, 0
            )
        )
        states[name] = VariableState(
            name,
            population.catalogue[name].unit,
            estimate,
            float(vals[-1]) if len(vals) else None,
            times[-1] if times else None,
            days,
            vals,
            flagged,
            (population.catalogue[name].low, population.catalogue[name].high),
            inferred,
            population.catalogue[name].normal_range(
                sex, _age_years(birth, times[-1]) if times else _age_years(birth, as_of)
            ),
        )
    return states
