"""The twin as of a date: no leakage, units, plausibility, problems, medications, diff."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import jumeau
from jumeau.model import EVENT_SCHEMA
from jumeau.store import BatchWriter
from jumeau.twin import PopulationModel
from jumeau.twin.series import measurement_frame
from jumeau.twin.variables import MG_DL_TO_MMOL_CHOLESTEROL, MG_DL_TO_MMOL_GLUCOSE, load_catalogue

AS_OF = datetime(2015, 1, 1)


def _copy_events(source: jumeau.Store, target: jumeau.Store, frame: pl.DataFrame) -> None:
    codes = source.code_descriptions()
    with BatchWriter(target, "test", "copy") as writer:
        writer.add_events(frame.select(EVENT_SCHEMA.names).to_arrow())
        writer.add_codes(pa.table({"code": list(codes), "description": list(codes.values())}))
        writer.commit()


@pytest.fixture(scope="module")
def truncated_store(tmp_path_factory, synthea_store):
    """The Synthea store cut at AS_OF: what a store would hold if nothing later had happened."""
    store, _ = synthea_store
    target = jumeau.init(tmp_path_factory.mktemp("cut") / "store")
    target.key_path.write_text(store.key_path.read_text())
    frame = store.scan().filter(pl.col("time").is_null() | (pl.col("time") <= AS_OF)).collect()
    _copy_events(store, jumeau.open(target.root), frame)
    return jumeau.open(target.root)


def _snapshot(twin) -> dict:
    data = twin.to_dict()
    data.pop("version")
    return data


def test_a_twin_as_of_a_date_ignores_later_data(synthea_store, truncated_store):
    store, _ = synthea_store
    checked = 0
    for subject in store.subjects().tolist():
        try:
            full = store.twin(subject, AS_OF)
        except KeyError:
            continue
        assert _snapshot(full) == _snapshot(truncated_store.twin(subject, AS_OF))
        checked += 1
    assert checked >= 3


def test_known_at_reads_the_store_as_it_was(tmp_path, synthea_store):
    store, _ = synthea_store
    measured = store.scan().filter((pl.col("domain") == "measurement") & (pl.col("time") < AS_OF))
    subject = int(measured.select("subject_id").collect()["subject_id"].min())
    events = store.timeline(subject)
    target = jumeau.init(tmp_path / "store")
    early = events.filter(pl.col("domain") != "measurement")
    _copy_events(store, target, early)
    first_commit = datetime.strptime(
        target.manifest.batches[0]["committed_at"], "%Y-%m-%dT%H:%M:%S%z"
    )
    time.sleep(1.1)
    _copy_events(
        store, target, events.filter(pl.col("domain") == "measurement")
    )  # late-arriving labs
    then = target.twin(subject, AS_OF, known_at=first_commit.replace(tzinfo=None))
    now = target.twin(subject, AS_OF)
    assert then.variables == {}
    assert now.variables
    assert then.events_used < now.events_used
    known = first_commit.replace(tzinfo=None)
    assert target.scan(known_at=known).collect().height == early.height
    catalogue = PopulationModel().catalogue
    assert measurement_frame(target, catalogue, AS_OF).height > 0
    assert measurement_frame(target, catalogue, AS_OF, known_at=known).is_empty()  # came later


def test_units_are_converted_and_implausible_values_flagged(tmp_path, synthea_store):
    store, _ = synthea_store
    chol = store.scan().filter(pl.col("code") == "LOINC/2093-3").collect()
    assert set(chol["unit"]) == {"mg/dL"}
    subject = int(chol["subject_id"][0])
    events = store.timeline(subject)
    row = events.filter(pl.col("code") == "LOINC/8480-6").head(1)
    bad = row.with_columns(
        numeric_value=pl.lit(900.0),
        record_key=pl.lit(1, dtype=pl.Int64),
        time=pl.col("time") + pl.duration(days=1),
    )
    target = jumeau.init(tmp_path / "s")
    _copy_events(store, target, pl.concat([events, bad]))
    twin = target.twin(subject, datetime(2030, 1, 1))
    last_mg_dl = events.filter(pl.col("code") == "LOINC/2093-3").sort("time")["numeric_value"][-1]
    assert twin.variables["total_cholesterol"].last_value == pytest.approx(
        last_mg_dl * MG_DL_TO_MMOL_CHOLESTEROL
    )
    assert twin.variables["total_cholesterol"].unit == "mmol/L"
    flagged = twin.variables["sbp"].flagged
    assert len(flagged) == 1 and "implausible" in flagged[0]["problem"]
    assert 900.0 not in twin.variables["sbp"].values


def test_a_twin_has_demographics_problems_risks_and_serialises(synthea_full_store):
    store, _ = synthea_full_store
    subject = max(
        store.subjects().tolist(), key=lambda s: store.timeline(s, domains=["condition"]).height
    )
    twin = store.twin(subject, datetime(2020, 1, 1))
    data = json.loads(twin.to_json())
    assert data["demographics"]["sex"] in ("male", "female")
    assert data["demographics"]["age"] > 0
    assert data["problems"], "the subject with most conditions has active problems"
    assert {
        "score2",
        "cha2ds2_vasc",
        "has_bled",
        "egfr_ckd_epi_2021",
        "bmi_class",
        "qtc_class",
    } <= set(data["risks"])
    for risk in data["risks"].values():
        assert risk["value"] is not None or risk["missing"] or risk["note"]
    sbp = data["variables"]["sbp"]
    low, high = sbp["interval_95"]
    assert low < sbp["estimate"] < high


def test_a_twin_lists_the_care_goals_pursued_from_their_plans_start(synthea_full_store):
    store, _ = synthea_full_store
    goals = store.scan().filter(pl.col("domain") == "goal").collect()
    subject = goals["subject_id"][0]
    own = goals.filter(pl.col("subject_id") == subject)
    start = own["time"].min()
    twin = store.twin(subject, start + timedelta(days=1))
    assert {g["code"] for g in twin.goals} == set(own.filter(pl.col("time") == start)["code"])
    assert {g["achievement"] for g in twin.goals} == {"in-progress"}
    assert "TEXT/Hemoglobin A1c total in Blood < 7.0" in set(goals["code"])
    assert store.twin(subject, start - timedelta(days=1)).goals == []
    assert json.loads(twin.to_json())["goals"] == twin.goals
    before = store.twin(subject, start - timedelta(days=1))
    assert twin.diff(before)["new_goals"] == sorted(g["code"] for g in twin.goals)


def test_diff_names_what_changed(synthea_full_store):
    store, _ = synthea_full_store
    subject = max(
        store.subjects().tolist(), key=lambda s: store.timeline(s, domains=["condition"]).height
    )
    events = store.timeline(subject, domains=["condition"]).sort("time")
    onset = events["time"][events.height // 2]
    before = store.twin(subject, onset - timedelta(days=1))
    after = store.twin(subject, datetime(2021, 1, 1))
    change = after.diff(before)
    assert change["new_problems"] or change["resolved_problems"]
    assert change["from"] < change["to"]
    for surprise in change["outside_predicted_interval"]:
        low, high = surprise["interval_95"]
        assert not low <= surprise["value"] <= high


def test_a_user_mapping_file_extends_the_catalogue(tmp_path):
    path = tmp_path / "vars.json"
    path.write_text(
        json.dumps(
            {
                "sbp": {"codes": ["LOCAL/PAS"]},
                "nt_probnp": {
                    "unit": "pg/mL",
                    "codes": ["LOINC/33762-6"],
                    "low": 0,
                    "high": 70000,
                    "conversions": {"ng/L": 1},
                },
            }
        )
    )
    catalogue = load_catalogue(path)
    assert "LOCAL/PAS" in catalogue["sbp"].codes and "LOINC/8480-6" in catalogue["sbp"].codes
    assert catalogue["nt_probnp"].to_canonical(125, "ng/L") == 125
    path.write_text(json.dumps({"new_var": {"unit": "x"}}))
    with pytest.raises(ValueError, match="needs codes, low, high"):
        load_catalogue(path)


def test_a_twin_reads_local_codes_through_their_parent_codes(tmp_path):
    """A MEDS dataset's lab and diagnosis codes are local (``LAB//50912//mg/dL``); its codes
    metadata puts them under LOINC and ICD: the twin tracks the creatinine in its own unit and
    scores the diagnoses."""
    from jumeau.ingest.meds import ingest_meds
    from tests.ingest.meds_etl_style import write_dataset

    linked, unlinked = jumeau.init(tmp_path / "linked"), jumeau.init(tmp_path / "unlinked")
    ingest_meds(linked, write_dataset(tmp_path / "with-parents"))
    ingest_meds(unlinked, write_dataset(tmp_path / "without-parents", parents=False))
    as_of = datetime(2150, 3, 5)
    twin = linked.twin(linked.lookup("meds", "10001"), as_of)
    creatinine = twin.variables["creatinine"]
    assert creatinine.values.tolist() == pytest.approx([88.42, 1.2 * 88.42], rel=1e-6)
    assert twin.variables["glucose"].last_value == pytest.approx(99 / 18.016, rel=1e-6)
    flags = twin.condition_flags()
    assert flags["hypertension"] and flags["atrial_fibrillation"] and not flags["diabetes"]
    assert twin.age == pytest.approx(70.2, abs=0.1) and twin.sex == "male"
    assert twin.risks["cha2ds2_vasc"].value == 2  # 65-74 years, hypertension
    assert twin.risks["cha2ds2_vasc"].note == ""  # atrial fibrillation is recorded
    plain = unlinked.twin(unlinked.lookup("meds", "10001"), as_of)
    assert "creatinine" not in plain.variables and not plain.condition_flags()["hypertension"]
    # the population model reads the same codes
    frame = measurement_frame(linked, load_catalogue())
    assert frame.filter(pl.col("variable") == "creatinine").height == 3


def test_variable_series_are_each_subjects_own_observations_in_time_order(synthea_store):
    """The series are cut from one array per variable: each is exactly its subject's values."""
    from jumeau.twin.series import birth_days, variable_series

    store, _ = synthea_store
    catalogue = load_catalogue()
    series = variable_series(store, catalogue)
    frame = measurement_frame(store, catalogue)
    births = birth_days(store)
    for name, subjects in series.items():
        expected = [
            (group["day"].to_numpy(), group["value"].to_numpy(), births.get(subject))
            for (subject,), group in frame.filter(pl.col("variable") == name).group_by(
                ["subject_id"], maintain_order=True
            )
        ]
        assert len(subjects) == len(expected)
        for (days, values, birth), (want_days, want_values, want_birth) in zip(
            subjects, expected, strict=True
        ):
            assert days.tolist() == want_days.tolist() and values.tolist() == want_values.tolist()
            assert birth == want_birth


def test_a_fitted_population_is_kept_for_the_same_store_state_and_cutoff(
    tmp_path, synthea_dir, monkeypatch
):
    from jumeau.ingest.fhir import ingest_fhir

    bundles = sorted(synthea_dir.glob("*.json"))
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, bundles[0])
    first = PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    assert first.to_dict() == PopulationModel.fit(store, datetime(2030, 1, 1)).to_dict()
    subject = int(store.subjects()[0])
    fresh = store.twin(subject, datetime(2019, 1, 1), population=first).to_dict()

    def refit(*args, **kwargs):
        raise AssertionError("fitted again")

    with monkeypatch.context() as patched:
        patched.setattr(PopulationModel, "fit", refit)
        # the same store, a cutoff after its last event: read back, the twin is the same
        again = PopulationModel.fit_cached(store, datetime(2040, 6, 1))
        assert again.to_dict() == first.to_dict()
        assert store.twin(subject, datetime(2019, 1, 1), population=again).to_dict() == fresh
    ingest_fhir(store, bundles[1])  # a new batch: another store state, fitted anew
    calls = []
    monkeypatch.setattr(
        PopulationModel, "fit", classmethod(lambda cls, *a, **k: calls.append(a) or cls())
    )
    PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    assert len(calls) == 1


def test_a_population_kept_by_other_model_code_is_fitted_again(tmp_path, synthea_dir, monkeypatch):
    """An upgrade that changes how populations are fitted must not read back the model the
    previous version kept for the same store and cutoff."""
    from jumeau.ingest.fhir import ingest_fhir
    from jumeau.twin import twin as twin_module

    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, sorted(synthea_dir.glob("*.json"))[0])
    PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    calls = []
    monkeypatch.setattr(
        PopulationModel, "fit", classmethod(lambda cls, *a, **k: calls.append(a) or cls())
    )
    PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    assert calls == []  # the same code: read back
    monkeypatch.setattr(twin_module, "model_fingerprint", lambda: "another version's code")
    PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    assert len(calls) == 1


def test_a_store_that_cannot_be_written_to_still_gets_its_population_fitted(
    tmp_path, synthea_dir, monkeypatch
):
    from jumeau.ingest.fhir import ingest_fhir
    from jumeau.store import layout

    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, sorted(synthea_dir.glob("*.json"))[0])

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(layout, "write_json_atomic", read_only)
    model = PopulationModel.fit_cached(store, datetime(2030, 1, 1))
    assert model.to_dict() == PopulationModel.fit(store, datetime(2030, 1, 1)).to_dict()
    assert not (store.root / "twins" / "populations").exists() or not any(
        (store.root / "twins" / "populations").iterdir()
    )


def test_a_value_without_unit_is_read_in_the_one_unit_that_makes_it_plausible():
    catalogue = load_catalogue()
    temperature, glucose, weight = (catalogue[n] for n in ("temperature", "glucose", "weight"))
    values, inferred = temperature.read_unitless(np.array([37.2, 98.6, 300.0]))
    assert values[:2] == pytest.approx([37.2, 37.0]) and np.isnan(values[2])
    assert inferred.tolist() == [False, True, False]
    values, inferred = glucose.read_unitless(np.array([5.5, 95.0]))
    assert values == pytest.approx([5.5, 95 * MG_DL_TO_MMOL_GLUCOSE]) and inferred.tolist() == [
        False,
        True,
    ]
    # 154 is a plausible weight in kg: an unspoken unit is the canonical one when it can be
    assert weight.read_unitless(np.array([154.0]))[0] == pytest.approx([154.0])


def test_a_result_given_as_a_bound_is_flagged_and_left_out_of_the_series(tmp_path, new_store):
    from jumeau.ingest.fhir import ingest_fhir

    def hba1c(k: int, day: str, value: float, comparator: str | None = None) -> dict:
        quantity = {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
        if comparator:
            quantity["comparator"] = comparator
        return {
            "resource": {
                "resourceType": "Observation",
                "id": f"a1c-{k}",
                "status": "final",
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": day,
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "valueQuantity": quantity,
            }
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}},
            hba1c(1, "2020-01-10", 7.1),
            hba1c(2, "2020-04-10", 14.0, ">"),  # above the assay's range
        ],
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p1.json").write_text(json.dumps(bundle))
    ingest_fhir(new_store, tmp_path / "in")
    subject = new_store.lookup("fhir", "p1")
    state = new_store.twin(subject, as_of=datetime(2020, 5, 1)).variables["hba1c"]
    assert state.last_value == pytest.approx(7.1) and state.estimate.n_observations == 1
    assert [f["problem"] for f in state.flagged] == ["a bound (> 14), not an exact value"]
    frame = measurement_frame(new_store, load_catalogue())
    assert frame.filter(pl.col("variable") == "hba1c")["value"].to_list() == pytest.approx([7.1])


def _omop_patient_who_died(folder) -> jumeau.Store:
    cdm = folder / "cdm"
    cdm.mkdir()
    (cdm / "person.csv").write_text(
        "person_id,gender_concept_id,year_of_birth,month_of_birth,day_of_birth\n16,8507,1934,1,1\n"
    )
    (cdm / "death.csv").write_text("person_id,death_date\n16,2010-12-01\n")
    (cdm / "concept.csv").write_text(
        "concept_id,vocabulary_id,concept_code\n3004249,LOINC,8480-6\n8876,UCUM,mm[Hg]\n"
    )
    (cdm / "measurement.csv").write_text(
        "measurement_id,person_id,measurement_concept_id,measurement_date,value_as_number,"
        "unit_concept_id\n"
        + "".join(f"{i},16,3004249,{2005 + i}-03-01,{140 + i},8876\n" for i in range(1, 6))
    )
    from jumeau.ingest.omop import ingest_omop

    store = jumeau.init(folder / "store")
    ingest_omop(store, cdm)
    return store


def test_a_patient_who_died_is_aged_at_death_and_not_forecast(tmp_path):
    store = _omop_patient_who_died(tmp_path)
    subject = store.lookup("omop", "16")
    alive = store.twin(subject, datetime(2009, 1, 1))
    assert alive.deceased is None and alive.age == pytest.approx(75.0, abs=0.01)
    assert alive.forecast("sbp", ["6mo"])[0]["median"] > 100
    twin = store.twin(subject, datetime(2026, 12, 1))
    assert twin.deceased == datetime(2010, 12, 1)
    assert twin.age == pytest.approx(76.92, abs=0.02)  # not the 92 he would be now
    assert twin.to_dict()["demographics"]["deceased"].startswith("2010-12-01")
    with pytest.raises(ValueError, match="died on 2010-12-01: nothing to forecast"):
        twin.forecast("sbp")
    from tests.cli.test_cli import jumeau as cli

    shown = cli("twin", str(subject), "--store", str(store.root), "--forecast", "sbp").stdout
    assert "died 2010-12-01, aged 76.9" in shown


def test_problems_no_longer_active_are_the_past_problems_latest_first(tmp_path):
    from jumeau.ingest.omop import ingest_omop

    cdm = tmp_path / "cdm"
    cdm.mkdir()
    (cdm / "person.csv").write_text("person_id,gender_concept_id,year_of_birth\n1,8532,1950\n")
    (cdm / "condition_occurrence.csv").write_text(
        "condition_occurrence_id,person_id,condition_concept_id,condition_start_date,"
        "condition_end_date\n"
        "1,1,201826,2005-01-01,\n"  # active
        "2,1,201826,2004-01-01,2004-01-02\n"  # an earlier claim of the same: it is active
        "3,1,4329847,2006-01-01,2006-01-02\n"
        "4,1,4329847,2008-05-01,2008-05-02\n"
        "5,1,80502,2007-01-01,2007-01-02\n"
        "6,1,80502,2010-01-01,2010-01-02\n"  # after as_of: not known yet
    )
    store = jumeau.init(tmp_path / "store")
    ingest_omop(store, cdm)
    twin = store.twin(store.lookup("omop", "1"), datetime(2009, 1, 1))
    assert [p["code"] for p in twin.problems] == ["OMOP/201826"]
    assert [(p["code"], p["first"], p["last"], p["times"]) for p in twin.past_problems] == [
        ("OMOP/4329847", "2006-01-01T00:00:00", "2008-05-01T00:00:00", 2),
        ("OMOP/80502", "2007-01-01T00:00:00", "2007-01-01T00:00:00", 1),
    ]
    assert twin.to_dict()["past_problems"] == twin.past_problems


def test_a_value_outside_its_reference_interval_is_said_so_for_the_patients_sex():
    """Reference intervals are adult ones, by sex where they differ (a haemoglobin of 12.5 g/dL
    is anaemia in a man, not in a woman); a bound may be open (an LDL has no lower one); a
    plausible value may still be abnormal; a mapping file puts a laboratory's own in."""
    catalogue = load_catalogue()
    haemoglobin = catalogue["haemoglobin"]
    assert haemoglobin.out_of_range(12.5, "male") == "low"
    assert haemoglobin.out_of_range(12.5, "female") is None
    assert haemoglobin.normal_range(None) is None  # it differs by sex, and the sex is unknown
    assert (
        catalogue["ldl"].out_of_range(0.5) is None and catalogue["ldl"].out_of_range(4.1) == "high"
    )
    assert (
        catalogue["potassium"].plausible(6.1) and catalogue["potassium"].out_of_range(6.1) == "high"
    )
    assert catalogue["egfr"].out_of_range(45.0) == "low"
    assert catalogue["weight"].normal_range("male") is None


def test_a_childs_values_are_not_judged_by_an_adults_reference_interval(tmp_path):
    """A 5-year-old's heart rate of 110, blood pressure of 95/55 and BMI of 15.5 are normal for
    the age: adult intervals hold from 18 and say nothing of them; a temperature or a sodium is
    judged the same at any age past infancy; a mapping file sets the age a laboratory's interval
    holds from."""
    catalogue = load_catalogue()
    for name, value in (("heart_rate", 110), ("dbp", 55), ("bmi", 15.5), ("creatinine", 30)):
        assert catalogue[name].out_of_range(value, "female", age=5) is None
        assert catalogue[name].out_of_range(value, "female", age=30) is not None
        assert catalogue[name].out_of_range(value, "female") is not None  # age unknown: adult
    assert catalogue["temperature"].out_of_range(39.5, "male", age=0.5) == "high"
    assert catalogue["sodium"].out_of_range(128, "male", age=5) == "low"
    assert catalogue["glucose"].normal_range("male", age=0.1) is None  # a newborn's bounds differ
    path = tmp_path / "mapping.json"
    path.write_text(
        json.dumps({"heart_rate": {"normal": {"any": [70, 140]}, "normal_from_age": 1}})
    )
    assert load_catalogue(path)["heart_rate"].out_of_range(150, "male", age=3) == "high"
    path.write_text(json.dumps({"heart_rate": {"normal_from_age": "adult"}}))
    with pytest.raises(ValueError, match="heart_rate.*normal_from_age must be an age in years"):
        load_catalogue(path)


def test_a_mapping_file_gives_a_laboratorys_reference_intervals(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"potassium": {"normal": {"any": [3.6, 5.3]}}}))
    assert load_catalogue(path)["potassium"].out_of_range(5.2) is None
    path.write_text(json.dumps({"potassium": {"normal": {"any": [3.6]}}}))
    with pytest.raises(ValueError, match="potassium.*normal must map any, female or male"):
        load_catalogue(path)


def test_a_twin_flags_abnormal_last_values_and_its_diff_says_when_one_turns(synthea_store):
    store, _ = synthea_store
    twins = {}
    for subject in store.subjects().tolist():
        try:
            twin = store.twin(subject, datetime(2019, 1, 1))
        except KeyError:  # born later
            continue
        for name, state in twin.to_dict()["variables"].items():
            variable = twin.population.catalogue[name]
            measured = datetime.fromisoformat(state["last_time"]) if state["last_time"] else None
            age = (measured - twin.birth).days / 365.25 if measured and twin.birth else twin.age
            normal = variable.normal_range(twin.sex, age)
            assert state["out_of_range"] == variable.out_of_range(
                state["last_value"], twin.sex, age
            )
            assert state["normal_range"] == (list(normal) if normal else None)
        twins[subject] = twin
    flagged = [(s, n) for s, t in twins.items() for n, v in t.variables.items() if v.out_of_range]
    assert len(flagged) >= 3  # Synthea's adults: overweight BMIs, high cholesterols...
    subject, name = flagged[0]
    earlier = twins[subject].to_dict()
    earlier["variables"][name]["out_of_range"] = None  # as if it had been normal before
    change = twins[subject].diff(earlier)["normal_range_changes"]
    assert change[name]["before"] is None and change[name]["after"] in ("low", "high")
    assert twins[subject].diff(twins[subject])["normal_range_changes"] == {}


def test_a_twin_lists_the_procedures_done_and_vaccines_given_latest_first(synthea_store):
    """Surgical and procedural history and immunizations: each code once, with its first and
    last date and how many times, from the events up to the date (the leakage test covers the
    rest)."""
    store, _ = synthea_store
    as_of = datetime(2019, 1, 1)
    twinned = with_history = 0
    for subject in store.subjects().tolist():
        try:
            twin = store.twin(subject, as_of)
        except KeyError:
            continue
        events = store.timeline(subject).filter(pl.col("time") <= as_of)
        for key, domain in (("procedures", "procedure"), ("immunizations", "immunization")):
            done = events.filter(pl.col("domain") == domain)
            listed = getattr(twin, key)
            assert {p["code"]: p["times"] for p in listed} == dict(
                done.group_by("code").len().iter_rows()
            )
            lasts = [p["last"] for p in listed]
            assert lasts == sorted(lasts, reverse=True)
        twinned += 1
        with_history += bool(twin.procedures or twin.immunizations)
    assert twinned >= 3 and with_history == twinned  # every Synthea patient was seen and jabbed


def test_a_twin_summarises_the_genome_and_names_its_high_impact_variants(new_store):
    """Three samples' VEP-annotated X chromosomes (real GATK calls): each twin counts its
    variants and genes and names those VEP ranks of high impact (stop gained, frameshift), with
    gene and genotype; the missense and synonymous ones are counted, not named."""
    from pathlib import Path

    from jumeau.ingest.vcf import ingest_vcf

    vcf = Path(__file__).parent.parent / "data" / "vcf" / "test-haploidX.vep.vcf"
    ingest_vcf(new_store, vcf)
    events = new_store.scan().collect()
    checked = 0
    for subject in new_store.subjects().tolist():
        own = events.filter(pl.col("subject_id") == subject)
        genomics = new_store.twin(subject, datetime(2026, 1, 1)).genomics
        assert genomics["variants"] == own["code"].n_unique()
        high = own.filter(pl.col("text_value").str.contains("stop_gained|frameshift_variant"))
        assert sorted(v["code"] for v in genomics["high_impact"]) == sorted(high["code"].to_list())
        for variant in genomics["high_impact"]:
            assert variant["gene"] and variant["genotype"]
            assert "missense" not in variant["consequence"]
        checked += len(genomics["high_impact"])
    assert checked >= 5
