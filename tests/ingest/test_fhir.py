"""FHIR R4 ingest, specified on real Synthea bundles and on broken copies of them."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

import jumeau
from jumeau.ingest.fhir import ingest_fhir, iter_resources, parse_fhir_time


def bundle_resources(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("*.json")) for r in iter_resources(path)]


def write_ndjson(path: Path, resources) -> Path:
    """Write ``resources`` one a line, as a Bulk Data export file does; return ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def rejected(store) -> dict[str, str]:
    """The store's rejects: record -> reason."""
    return dict(store.rejects().select("record", "reason").iter_rows())


def expected_observation_events(resources: list[dict]) -> int:
    total = 0
    for r in resources:
        if r["resourceType"] != "Observation":
            continue
        has_value = any(k.startswith("value") for k in r)
        components = r.get("component") or []
        total += (1 if has_value or not components else 0) + len(components)
    return total


def test_observation_counts_equal_the_bundles(synthea_store, synthea_dir):
    store, report = synthea_store
    resources = bundle_resources(synthea_dir)
    n_obs = sum(r["resourceType"] == "Observation" for r in resources)
    counts = report.tables["fhir/Observation"]
    assert counts.read == counts.accepted == n_obs
    assert counts.rejected == 0
    stored = store.scan().filter(pl.col("source") == "fhir/Observation").collect()
    assert stored.height == expected_observation_events(resources) == counts.events


def test_every_mapped_resource_type_reconciles(synthea_store, synthea_dir):
    _, report = synthea_store
    by_type = Counter(r["resourceType"] for r in bundle_resources(synthea_dir))
    for name, counts in report.tables.items():
        rtype = name.split("/", 1)[1]
        assert counts.read == by_type[rtype] == counts.accepted + counts.rejected
    for rtype in ("Organization", "Practitioner"):
        assert report.unhandled[rtype] == by_type[rtype]


def test_blood_pressure_becomes_systolic_and_diastolic_events(synthea_store, synthea_dir):
    store, _ = synthea_store
    panels = [
        r
        for r in bundle_resources(synthea_dir)
        if r["resourceType"] == "Observation"
        and any(c["code"]["coding"][0]["code"] == "8480-6" for c in r.get("component", []))
    ]
    assert panels
    events = store.scan().filter(pl.col("code").is_in(["LOINC/8480-6", "LOINC/8462-4"])).collect()
    systolic = events.filter(pl.col("code") == "LOINC/8480-6")
    diastolic = events.filter(pl.col("code") == "LOINC/8462-4")
    assert systolic.height == diastolic.height == len(panels)
    assert set(systolic["unit"]) == {"mm[Hg]"}
    expected = sorted(
        c["valueQuantity"]["value"]
        for p in panels
        for c in p["component"]
        if c["code"]["coding"][0]["code"] == "8480-6"
    )
    assert sorted(systolic["numeric_value"].to_list()) == pytest.approx(expected)


def test_references_resolve_to_the_bundle_patient(synthea_store, synthea_dir):
    store, _ = synthea_store
    patients = [r for r in bundle_resources(synthea_dir) if r["resourceType"] == "Patient"]
    expected = sorted(store.lookup("fhir", p["id"]) for p in patients)
    assert sorted(store.subjects().tolist()) == expected


def test_one_patient_timeline_matches_its_bundle(synthea_store, synthea_dir):
    store, _ = synthea_store
    path = sorted(synthea_dir.glob("*.json"))[0]
    resources = list(iter_resources(path))
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    timeline = store.timeline(store.lookup("fhir", patient["id"]))
    encounters = [r for r in resources if r["resourceType"] == "Encounter"]
    got = timeline.filter(pl.col("source") == "fhir/Encounter")
    starts = sorted(parse_fhir_time(e["period"]["start"]) for e in encounters)
    assert sorted(
        t.timestamp() * 1e6 for t in got["time"].dt.replace_time_zone("UTC")
    ) == pytest.approx(starts)
    birth = timeline.filter(pl.col("code") == "MEDS_BIRTH")["time"][0]
    assert birth.date().isoformat() == patient["birthDate"]


def test_fhir_times_are_utc():
    assert parse_fhir_time("2019-04-23T02:29:21+02:00") == parse_fhir_time("2019-04-23T00:29:21Z")
    assert parse_fhir_time("2019") == parse_fhir_time("2019-01-01")
    assert parse_fhir_time("2019-03") == parse_fhir_time("2019-03-01T00:00:00")


def _as_ndjson(bundle: Path, out: Path, *, keep_urn_references: bool = False) -> int:
    """Write a bundle as Bulk Data NDJSON, one file per type, with ``Patient/<id>`` references
    or, as Synthea's own NDJSON export does, the bundle's ``urn:uuid:<id>`` ones."""
    doc = json.loads(bundle.read_text())
    ids = {
        e["fullUrl"]: e["resource"]["id"]
        for e in doc["entry"]
        if e["resource"]["resourceType"] == "Patient"
    }
    by_type: dict[str, list[str]] = {}
    for entry in doc["entry"]:
        text = json.dumps(entry["resource"])
        for url, pid in ids.items():
            if not keep_urn_references:
                text = text.replace(f'"{url}"', f'"Patient/{pid}"')
        by_type.setdefault(entry["resource"]["resourceType"], []).append(text)
    out.mkdir()
    for rtype, lines in by_type.items():
        (out / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    return len(doc["entry"])


@pytest.mark.parametrize("keep_urn_references", [False, True])
def test_bulk_ndjson_gives_the_same_events_as_the_bundle(
    tmp_path, synthea_dir, keep_urn_references
):
    """References to ``urn:uuid:<id>`` outside a bundle (Synthea's NDJSON export) resolve to
    the Patient whose id that is."""
    bundle = sorted(synthea_dir.glob("*.json"))[0]
    _as_ndjson(bundle, tmp_path / "bulk", keep_urn_references=keep_urn_references)
    observations = (tmp_path / "bulk" / "Observation.ndjson").read_text()
    assert ('"Patient/' in observations) != keep_urn_references
    a = jumeau.init(tmp_path / "a")
    ingest_fhir(a, bundle)
    b = jumeau.open(a.root)  # same store: re-reading the same resources as NDJSON adds nothing
    report = ingest_fhir(b, tmp_path / "bulk")
    assert report.events_written == 0 and report.rejects_written == 0
    assert report.events_already_present == a.stats()["events"]


def test_broken_files_are_rejected_and_the_rest_is_kept(tmp_path, synthea_dir):
    src = sorted(synthea_dir.glob("*.json"))
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "good.json"
    good.write_bytes(src[0].read_bytes())
    text = src[1].read_text()
    (folder / "truncated.json").write_text(text[: len(text) // 2])
    (folder / "latin1.json").write_bytes('{"resourceType": "Patient", "id": "é"}'.encode("latin-1"))
    lines = [
        json.dumps(
            {
                "resourceType": "Observation",
                "id": "o1",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "effectiveDateTime": "2020-01-01T10:00:00Z",
                "valueQuantity": {"value": 72, "code": "/min"},
            }
        ),
        '{"resourceType": "Observation", "id": "o2", "subject": ',
        json.dumps(
            {
                "resourceType": "Observation",
                "id": "o3",
                "code": {"coding": [{"code": "x"}]},
                "effectiveDateTime": "2020-01-01",
            }
        ),
        json.dumps(
            {
                "resourceType": "Observation",
                "id": "o4",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "effectiveDateTime": "not a date",
            }
        ),
    ]
    (folder / "Observation.ndjson").write_text("\n".join(lines) + "\n")
    store = jumeau.init(tmp_path / "store")
    report = ingest_fhir(store, folder)
    rejects = {(Path(r["file"]).name, r["record"]): r["reason"] for r in store.rejects().to_dicts()}
    assert "invalid JSON" in rejects[("truncated.json", "whole file")]
    assert "not UTF-8" in rejects[("latin1.json", "whole file")]
    assert "invalid JSON" in rejects[("Observation.ndjson", "line 2")]
    assert "no subject" in rejects[("Observation.ndjson", "line 3 (Observation)")]
    assert "not a FHIR date" in rejects[("Observation.ndjson", "line 4 (Observation)")]
    assert (
        report.tables["fhir/Observation"].accepted
        == sum(r["resourceType"] == "Observation" for r in iter_resources(good)) + 1
    )
    heart_rate = store.timeline(store.lookup("fhir", "p1"))
    assert heart_rate["numeric_value"].to_list() == [72.0]


def test_a_transaction_bundle_without_resource_ids_resolves_by_full_url(tmp_path, new_store):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:8f1c",
                "resource": {
                    "resourceType": "Patient",
                    "birthDate": "1970-05-01",
                    "gender": "female",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:77aa",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "subject": {"reference": "urn:uuid:8f1c"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "effectiveDateTime": "2021-02-03T10:00:00+01:00",
                    "valueQuantity": {"value": 64, "code": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(bundle))
    report = ingest_fhir(new_store, path)
    assert report.tables["fhir/Observation"].accepted == 1
    timeline = new_store.timeline(new_store.lookup("fhir", "8f1c"))
    assert set(timeline["code"]) == {"MEDS_BIRTH", "Gender/F", "LOINC/8867-4"}
    assert ingest_fhir(new_store, path).events_written == 0


def test_medication_requests_resolve_referenced_and_contained_medications(tmp_path, new_store):
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    folder = tmp_path / "bulk"
    folder.mkdir()
    (folder / "Medication.ndjson").write_text(
        json.dumps(
            {
                "resourceType": "Medication",
                "id": "m1",
                "code": {"coding": [{"system": rxnorm, "code": "197361"}]},
            }
        )
        + "\n"
    )
    requests = [
        {
            "resourceType": "MedicationRequest",
            "id": "r1",
            "subject": {"reference": "Patient/p9"},
            "authoredOn": "2020-01-01",
            "medicationReference": {"reference": "Medication/m1"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "r2",
            "subject": {"reference": "Patient/p9"},
            "authoredOn": "2020-02-01",
            "medicationReference": {"reference": "#c1"},
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "c1",
                    "code": {"coding": [{"system": rxnorm, "code": "310965"}]},
                }
            ],
        },
        *(
            {
                "resourceType": "MedicationRequest",
                "id": f"r{3 + k}",
                "subject": {"reference": "Patient/p9"},
                "authoredOn": f"2020-0{3 + k}-01",
                "medicationReference": {"reference": reference},
            }
            for k, reference in enumerate(
                ["Medication/m1/_history/3", "https://ehr.example/fhir/Medication/m1/_history/3"]
            )
        ),
    ]
    (folder / "MedicationRequest.ndjson").write_text(
        "\n".join(json.dumps(r) for r in requests) + "\n"
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/MedicationRequest"].accepted == 4  # versioned references too
    codes = new_store.timeline(new_store.lookup("fhir", "p9"))["code"].to_list()
    assert codes == ["RxNorm/197361", "RxNorm/310965", "RxNorm/197361", "RxNorm/197361"]
    assert report.unhandled["Medication"] == 1


def test_synthea_goals_are_dated_by_the_care_plan_naming_them(
    synthea_full_store, synthea_dir, tmp_path
):
    """Synthea's goals (an HbA1c below 7.0) carry no date: each is a goal of the patient from
    the start of the care plan that lists it, and the NDJSON export of the same resources
    (goals before their plans) dates them alike."""
    store, report = synthea_full_store
    resources = bundle_resources(synthea_dir)
    goals = [r for r in resources if r["resourceType"] == "Goal"]
    assert goals and report.tables["fhir/Goal"].accepted == len(goals)
    plan_start: dict[str, int] = {}
    for plan in (r for r in resources if r["resourceType"] == "CarePlan"):
        for goal in plan.get("goal", []):
            key = goal["reference"].removeprefix("urn:uuid:")
            start = parse_fhir_time(plan["period"]["start"])
            plan_start[key] = min(start, plan_start.get(key, start))
    stored = store.scan().filter(pl.col("domain") == "goal").collect()
    assert stored.height == len(goals)
    assert sorted(stored["time"].dt.epoch("us")) == sorted(plan_start[g["id"]] for g in goals)
    assert "TEXT/Hemoglobin A1c total in Blood < 7.0" in set(stored["code"])
    export = tmp_path / "export"
    export.mkdir()
    for rtype in ("Goal", "Patient", "CarePlan"):
        write_ndjson(
            export / f"{rtype}.ndjson", [r for r in resources if r["resourceType"] == rtype]
        )
    bulk = jumeau.init(tmp_path / "bulk")
    ingest_fhir(bulk, export)
    bulk_goals = bulk.scan().filter(pl.col("domain") == "goal").collect()
    assert sorted(bulk_goals["time"]) == sorted(stored["time"])


def test_a_goal_ends_when_the_care_plans_listing_it_are_over(synthea_dir, tmp_path):
    with_goals = [p for p in sorted(synthea_dir.glob("*.json")) if '"Goal"' in p.read_text()]
    if not with_goals:
        pytest.skip("needs the Synthea bundles of ../shared, which hold goals (CI has them)")
    source = with_goals[0]
    bundle = json.loads(source.read_text())
    plans = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "CarePlan" and e["resource"].get("goal")
    ]
    for plan in plans:
        plan["status"] = "completed"
        plan["period"]["end"] = "2015-06-01T00:00:00+00:00"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / source.name).write_text(json.dumps(bundle))
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, tmp_path / "src")
    goals = store.scan().filter(pl.col("domain") == "goal").collect()
    assert goals.height and set(goals["end_time"]) == {datetime(2015, 6, 1)}
    subject = goals["subject_id"][0]
    assert store.twin(subject, datetime(2015, 5, 1)).goals
    assert store.twin(subject, datetime(2015, 7, 1)).goals == []


def test_a_ratio_value_keeps_its_ratio_and_its_quotient():
    from jumeau.ingest.fhir import _value

    titre = {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 64}}}
    assert _value(titre) == (1 / 64, "1:64", None)
    assert _value({"valueRatio": {"numerator": {"value": 3}}})[0] is None  # no denominator
    per_volume = {
        "valueRatio": {
            "numerator": {"value": 5, "code": "mg"},
            "denominator": {"value": 2, "code": "mL"},
        }
    }
    assert _value(per_volume) == (2.5, "5:2", "mg/mL")


def test_interval_values_keep_their_bounds_as_text_and_absent_values_their_reason():
    from jumeau.ingest.fhir import FhirError, _value

    both = {"valueRange": {"low": {"value": 1, "unit": "mg"}, "high": {"value": 3.5, "unit": "mg"}}}
    assert _value(both) == (None, "1-3.5", "mg")
    assert _value({"valueRange": {"low": {"value": 10, "code": "/[HPF]"}}}) == (
        None,
        ">=10",
        "/[HPF]",
    )
    assert _value({"valueRange": {"high": {"value": 5}}}) == (None, "<=5", None)
    period = {"valuePeriod": {"start": "2020-01-01", "end": "2020-02-01"}}
    assert _value(period) == (None, "2020-01-01/2020-02-01", None)
    absent = {
        "dataAbsentReason": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "asked-declined",
                }
            ]
        }
    }
    assert _value(absent) == (None, "HL7DataAbsentReason/asked-declined", None)
    with pytest.raises(FhirError, match="valueRange.low.value"):
        _value({"valueRange": {"low": {"value": "1"}}})


def test_a_date_value_moves_with_the_date_shift_at_its_own_precision():
    from jumeau.ingest.fhir import _value

    day = 86_400_000_000
    assert _value({"valueDateTime": "2020-01-31"}, 2 * day) == (None, "2020-02-02", None)
    assert _value({"valueDateTime": "2020-01-31T10:00:00Z"}, -day)[1] == "2020-01-30T10:00:00"
    assert _value({"valueDateTime": "2020"}, 400 * day)[1] == "2021"
    assert _value({"valueDateTime": "2020-01-31"})[1] == "2020-01-31"  # no shift: as written
    period = {"valuePeriod": {"start": "2020-01-01", "end": "2020-02-01"}}
    assert _value(period, day)[1] == "2020-01-02/2020-02-02"
    assert _value({"valueTime": "10:30:00"}, day)[1] == "10:30:00"  # a time of day


def test_imaging_studies_become_a_study_and_a_series_event_like_dicom(
    synthea_full_store, synthea_dir
):
    store, report = synthea_full_store  # the one ImagingStudy is in a shared bundle
    studies = [r for r in bundle_resources(synthea_dir) if r["resourceType"] == "ImagingStudy"]
    assert studies
    n_series = sum(len(s.get("series", [])) for s in studies)
    assert report.tables["fhir/ImagingStudy"].events == len(studies) + n_series
    stored = store.scan().filter(pl.col("source") == "fhir/ImagingStudy").collect()
    assert (stored["domain"] == "imaging").all()
    assert (stored["code"] == "DICOM/study").sum() == len(studies)
    series = studies[0]["series"][0]
    shown = stored.filter(pl.col("code") == f"DICOM/{series['modality']['code']}")
    assert f"body_site=SNOMED/{series['bodySite']['code']}" in shown["text_value"][0]
    assert shown["time"][0] == parse_fhir_time_as_datetime(series["started"])


def parse_fhir_time_as_datetime(text: str):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(parse_fhir_time(text) / 1e6, UTC).replace(tzinfo=None)


def test_an_r5_imaging_study_and_a_series_without_modality(tmp_path, new_store):
    study = {
        "resourceType": "ImagingStudy",
        "id": "s1",
        "subject": {"reference": "Patient/p1"},
        "started": "2024-01-02T03:04:05Z",
        "description": "CT chest",
        "series": [
            {
                "uid": "1.2.3",
                "modality": {
                    "coding": [
                        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
                    ]
                },
                "bodySite": {
                    "concept": {
                        "coding": [{"system": "http://snomed.info/sct", "code": "51185008"}]
                    }
                },
            }
        ],
    }
    broken = {**study, "id": "s2", "series": [{"uid": "9.9"}]}
    path = tmp_path / "studies.ndjson"
    write_ndjson(path, (study, broken))
    report = ingest_fhir(new_store, path)
    counts = report.tables["fhir/ImagingStudy"]
    assert (counts.read, counts.accepted, counts.rejected, counts.events) == (2, 1, 1, 2)
    assert "series 1 has no modality" in new_store.rejects()["reason"][0]
    events = new_store.timeline(new_store.lookup("fhir", "p1"))
    assert sorted(events["code"]) == ["DICOM/CT", "DICOM/study"]
    assert (
        "body_site=SNOMED/51185008" in events.filter(pl.col("code") == "DICOM/CT")["text_value"][0]
    )


def test_an_onset_given_as_an_age_is_dated_from_the_birth_date(tmp_path, new_store):
    folder = tmp_path / "bulk"
    folder.mkdir()
    patients = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1970-05-01"},
        {"resourceType": "Patient", "id": "p2"},  # no birth date
    ]
    snomed = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}
    conditions = [
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "code": snomed,
            "onsetAge": {
                "value": 40,
                "unit": "years",
                "system": "http://unitsofmeasure.org",
                "code": "a",
            },
        },
        {
            "resourceType": "Condition",
            "id": "c2",
            "subject": {"reference": "Patient/p1"},
            "code": snomed,
            "onsetRange": {"low": {"value": 6, "code": "mo"}, "high": {"value": 12, "code": "mo"}},
        },
        {
            "resourceType": "Condition",
            "id": "c3",
            "subject": {"reference": "Patient/p2"},
            "code": snomed,
            "onsetAge": {"value": 40, "code": "a"},
        },
    ]
    procedure = {
        "resourceType": "Procedure",
        "id": "x1",
        "subject": {"reference": "Patient/p1"},
        "code": snomed,
        "performedAge": {"value": 3, "code": "wk"},
    }
    # Bulk Data files named by number (one resource type a file): conditions come first
    write_ndjson(folder / "output_1.ndjson", conditions)
    write_ndjson(folder / "output_2.ndjson", patients)
    (folder / "Procedure.ndjson").write_text(json.dumps(procedure))
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/Condition"].accepted == 2
    (reason,) = new_store.rejects().filter(pl.col("source") == "fhir/Condition")["reason"]
    assert "birth date is not in this batch" in reason
    events = new_store.timeline(new_store.lookup("fhir", "p1"), domains=["condition", "procedure"])
    birth = parse_fhir_time_as_datetime("1970-05-01")
    days = sorted((t - birth).days for t in events["time"])
    assert days == [21, int(6 * 30.4375), int(40 * 365.25)]


def test_names_and_identifiers_written_in_free_text_are_scrubbed(tmp_path, new_store):
    patient = {
        "resourceType": "Patient",
        "id": "p9",
        "name": [{"family": "Martin-Legrand", "given": ["Zoé", "Anne"]}],
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "285052A00608436"},
            {"system": "http://hospital/mrn", "value": "MRN778899"},
        ],
        "birthDate": "1985-05-02",
    }
    note = {
        "resourceType": "Observation",
        "id": "o9",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8251-1"}]},
        "subject": {"reference": "Patient/p9"},
        "effectiveDateTime": "2023-04-05T10:00:00Z",
        "valueString": "Mme ZOÉ MARTIN-LEGRAND (MRN778899, NIR 2 85 05 2A 006 084 36) "
        "joignable au 06 12 34 56 78, zoe.martin@example.fr; Anne-Sophie absente; douleur 3/10.",
    }
    path = tmp_path / "b.json"
    path.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": note}, {"resource": patient}],
            }
        )
    )
    ingest_fhir(new_store, path)
    (text,) = new_store.timeline(new_store.lookup("fhir", "p9"), codes=["LOINC/8251-1"])[
        "text_value"
    ]
    assert text == (
        "Mme [NAME] [NAME] ([ID], NIR [NIR]) joignable au [PHONE], [EMAIL]; "
        "[NAME]-Sophie absente; douleur 3/10."
    )


def test_clinical_notes_keep_their_text_scrubbed(tmp_path, new_store):
    import base64

    def inline(text: str) -> dict:
        return {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(text.encode()).decode(),
        }

    patient = {
        "resourceType": "Patient",
        "id": "p7",
        "name": [{"family": "Kuhn", "given": ["Jose"]}],
    }
    document = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "subject": {"reference": "Patient/p7"},
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
        "date": "2022-05-06T07:08:09Z",
        "context": {"period": {"start": "2022-05-06T07:00:00Z", "end": "2022-05-06T08:00:00Z"}},
        "content": [{"attachment": inline("Jose is a 45 year-old man. Asthma, well controlled.")}],
    }
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "subject": {"reference": "Patient/p7"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "effectiveDateTime": "2022-05-06T07:00:00Z",
        "presentedForm": [inline("Progress note: Mr Kuhn improving.")],
    }
    path = tmp_path / "notes.ndjson"
    write_ndjson(path, (document, report, patient))
    result = ingest_fhir(new_store, path)
    assert result.tables["fhir/DocumentReference"].accepted == 1
    events = new_store.timeline(new_store.lookup("fhir", "p7"))
    note = events.filter(pl.col("code") == "LOINC/34117-2").row(0, named=True)
    assert note["domain"] == "note"
    assert note["text_value"] == "[NAME] is a 45 year-old man. Asthma, well controlled."
    assert (note["end_time"] - note["time"]).total_seconds() == 3600
    (progress,) = events.filter(pl.col("code") == "LOINC/11506-3")["text_value"]
    assert progress == "Progress note: Mr [NAME] improving."


def test_dispenses_and_r5_shaped_encounters_and_requests(tmp_path, new_store):
    rxnorm = {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]
    }
    resources = [
        {"resourceType": "Patient", "id": "p5", "birthDate": "1950-01-01"},
        {  # R5: actualPeriod, class as a list of CodeableConcepts
            "resourceType": "Encounter",
            "id": "e1",
            "subject": {"reference": "Patient/p5"},
            "class": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "IMP",
                        }
                    ]
                }
            ],
            "actualPeriod": {"start": "2023-01-01T08:00:00Z", "end": "2023-01-04T12:00:00Z"},
        },
        {
            "resourceType": "MedicationDispense",
            "id": "md1",
            "status": "completed",
            "subject": {"reference": "Patient/p5"},
            "medicationCodeableConcept": rxnorm,
            "whenHandedOver": "2023-01-04T13:00:00Z",
            "quantity": {"value": 30, "unit": "tablet", "code": "{tbl}"},
        },
        {  # R5: medication as a CodeableReference
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "status": "active",
            "subject": {"reference": "Patient/p5"},
            "medication": {"concept": rxnorm},
            "authoredOn": "2023-01-04T11:00:00Z",
        },
    ]
    path = tmp_path / "r5.ndjson"
    write_ndjson(path, resources)
    report = ingest_fhir(new_store, path)
    assert all(c.rejected == 0 for c in report.tables.values())
    events = new_store.timeline(new_store.lookup("fhir", "p5")).filter(pl.col("time").is_not_null())
    rows = {r["source"]: r for r in events.iter_rows(named=True)}
    visit = rows["fhir/Encounter"]
    assert visit["code"].endswith("/IMP") and (visit["end_time"] - visit["time"]).days == 3
    dispense = rows["fhir/MedicationDispense"]
    assert (dispense["code"], dispense["numeric_value"], dispense["unit"]) == (
        "RxNorm/197361",
        30,
        "{tbl}",
    )
    assert rows["fhir/MedicationRequest"]["code"] == "RxNorm/197361"


def test_two_fhir_servers_resource_ids_stay_apart(tmp_path, new_store):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "1", "birthDate": "1960-01-01"}},
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "1",
                    "subject": {"reference": "Patient/1"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                    "onsetDateTime": "2010-01-01",
                }
            },
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    for server in ("site-a", "site-b"):
        assert ingest_fhir(new_store, path, source_name=server).events_written == 2
    assert ingest_fhir(new_store, path, source_name="site-a").events_written == 0
    a, b = new_store.lookup("site-a", "1"), new_store.lookup("site-b", "1")
    assert a != b and new_store.timeline(b)["code"].to_list()[-1] == "SNOMED/38341003"


def _heart_rate(i: int) -> bytes:
    return json.dumps(
        {
            "resourceType": "Observation",
            "id": f"hr{i}",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": f"2020-01-{i + 1:02d}T10:00:00Z",
            "valueQuantity": {"value": 60 + i, "code": "/min"},
        }
    ).encode()


def test_an_ndjson_line_in_another_encoding_is_rejected_alone(tmp_path, new_store):
    patient = json.dumps({"resourceType": "Patient", "id": "p1", "birthDate": "1970"}).encode()
    latin1 = '{"resourceType": "Observation", "id": "é", "subject": {"reference": "Patient/p1"}}'
    lines = [patient, _heart_rate(0), latin1.encode("latin-1"), _heart_rate(1)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "export.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest_fhir(new_store, tmp_path / "in")
    assert report.tables["fhir/Observation"].accepted == 2
    (reject,) = new_store.rejects().to_dicts()
    assert reject["record"] == "line 3" and "invalid JSON" in reject["reason"]


def test_a_gzip_export_cut_short_keeps_the_lines_before_the_cut(tmp_path, new_store):
    import gzip

    patient = json.dumps({"resourceType": "Patient", "id": "p1", "birthDate": "1970"}).encode()
    whole = gzip.compress(b"\n".join([patient, *(_heart_rate(i) for i in range(20))]) + b"\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Observation.ndjson.gz").write_bytes(whole[: len(whole) * 2 // 3])
    report = ingest_fhir(new_store, tmp_path / "in")
    kept = report.tables["fhir/Observation"].accepted
    assert 0 < kept < 20
    (reject,) = new_store.rejects().to_dicts()
    assert (
        reject["record"] == f"after line {kept + 1}"
        and "cannot be read further" in reject["reason"]
    )


def test_diagnoses_dated_only_by_their_encounter_take_its_end(tmp_path, new_store):
    """MIMIC-IV on FHIR: a Condition has no onset nor recorded date, only its encounter (in
    a file read after the conditions'); it is dated when the stay ends, as billing codes are
    assigned, so a twin during the stay does not see it. A bundle's urn:uuid references too."""
    patient = {"resourceType": "Patient", "id": "p9", "birthDate": "2100-01-01"}
    stay = {
        "resourceType": "Encounter",
        "id": "e9",
        "subject": {"reference": "Patient/p9"},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "period": {"start": "2180-07-23T21:45:00-04:00", "end": "2180-07-25T17:55:00-04:00"},
    }
    diagnosis = {
        "resourceType": "Condition",
        "id": "c9",
        "subject": {"reference": "Patient/p9"},
        "encounter": {"reference": "Encounter/e9"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-9-cm", "code": "4019"}]},
    }
    surgery = {
        "resourceType": "Procedure",
        "id": "pr9",
        "subject": {"reference": "Patient/p9"},
        "encounter": {"reference": "Encounter/e9"},
        "code": {
            "coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "0DTJ4ZZ"}]
        },
        "performedDateTime": "2180-07-24T10:00:00-04:00",
    }
    lost = {**diagnosis, "id": "c10", "encounter": {"reference": "Encounter/unknown"}}
    export = tmp_path / "mimic"
    export.mkdir()
    for name, rows in (
        ("MimicPatient", [patient]),
        ("MimicCondition", [diagnosis, lost]),
        ("MimicEncounter", [stay]),
        ("MimicProcedure", [surgery]),
    ):
        write_ndjson(export / f"{name}.ndjson", rows)
    report = ingest_fhir(new_store, export)
    assert report.tables["fhir/Condition"].accepted == 1
    assert report.tables["fhir/Condition"].rejected == 1
    reasons = new_store.rejects()["reason"].to_list()
    assert reasons == [
        "no time: none of onsetDateTime, onsetPeriod, onsetAge, recordedDate, a date in "
        "onsetString or its encounter's period is present"
    ]
    rows = {
        r["source"]: r
        for r in new_store.timeline(new_store.lookup("fhir", "p9")).iter_rows(named=True)
    }
    assert rows["fhir/Condition"]["code"] == "ICD9CM/4019"
    assert rows["fhir/Condition"]["time"] == datetime(2180, 7, 25, 21, 55)  # the end, in UTC
    assert rows["fhir/Procedure"]["code"] == "ICD10PCS/0DTJ4ZZ"

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:c1",
                "resource": {
                    **diagnosis,
                    "id": None,
                    "subject": {"reference": "urn:uuid:p1"},
                    "encounter": {"reference": "urn:uuid:e1"},
                },
            },
            {"fullUrl": "urn:uuid:p1", "resource": {**patient, "id": None}},
            {
                "fullUrl": "urn:uuid:e1",
                "resource": {
                    **stay,
                    "id": None,
                    "subject": {"reference": "urn:uuid:p1"},
                    "period": {"start": "2181-01-01T00:00:00Z"},
                },
            },
        ],
    }
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    ingest_fhir(new_store, tmp_path / "bundle.json", source_name="other")
    condition = new_store.timeline(new_store.lookup("other", "p1")).filter(
        pl.col("source") == "fhir/Condition"
    )
    assert condition["time"].to_list() == [datetime(2181, 1, 1)]  # no end: the start


def test_code_systems_named_by_oid_or_https_map_to_their_vocabulary():
    from jumeau.model import fhir_vocabulary

    assert fhir_vocabulary("urn:oid:2.16.840.1.113883.6.1") == "LOINC"
    assert fhir_vocabulary("urn:oid:2.16.840.1.113883.6.96") == "SNOMED"
    assert fhir_vocabulary("https://loinc.org/") == "LOINC"
    assert fhir_vocabulary("http://example.org/local-labs") == "http://example.org/local-labs"


def test_resources_of_a_shape_fhir_does_not_allow_are_rejected_one_by_one(tmp_path, new_store):
    """Text where a number belongs, a list where an object does, a bad birth date read ahead:
    each rejects its own resource, by line, and the export's other resources are kept."""
    heart_rate = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    good = {
        "resourceType": "Observation",
        "id": "ok",
        "code": heart_rate,
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-01-01",
        "valueQuantity": {"value": 70},
    }
    lines = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"},
        {**good, "id": "comma", "valueQuantity": {"value": "12,5"}},
        {**good, "id": "listed", "valueQuantity": [{"value": 1}]},
        {**good, "id": "bare", "subject": "Patient/p1"},
        {**good, "id": "number-date", "effectiveDateTime": 20200101},
        ["not", "a", "resource"],
        {"resourceType": "Patient", "id": "p2", "birthDate": "1970-13-45"},
        good,
    ]
    path = tmp_path / "export.ndjson"
    write_ndjson(path, lines)
    report = ingest_fhir(new_store, path)
    assert report.committed
    reasons = rejected(new_store)
    assert reasons == {
        "line 2 (Observation)": "valueQuantity.value '12,5' is not a number",
        "line 3 (Observation)": "malformed resource (AttributeError: 'list' object has no attribute 'get')",
        "line 4 (Observation)": "subject/patient is not a Reference (an object with a reference)",
        "line 5 (Observation)": "effectiveDateTime 20200101 is not a FHIR date, dateTime or Period",
        "line 6": "not a FHIR resource (a JSON object)",
        "line 7 (Patient)": "'1970-13-45' is not a FHIR date/dateTime",
    }
    kept = new_store.timeline(new_store.lookup("fhir", "p1"))
    assert kept.filter(pl.col("code") == "LOINC/8867-4")["numeric_value"].to_list() == [70.0]


def test_bundles_inside_bundles_and_on_ndjson_lines_are_read_entry_by_entry(tmp_path, new_store):
    """A batch-response holds each search's results as a Bundle; some exports write a Bundle
    per NDJSON line. Their resources are mapped (not counted as one unhandled Bundle), and a
    rejected one is named by its place."""
    patient = {"resourceType": "Patient", "id": "p7", "birthDate": "1960-01-01"}
    weight = {
        "resourceType": "Observation",
        "id": "w1",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p7"},
        "effectiveDateTime": "2020-05-01",
        "valueQuantity": {"value": 81.5, "unit": "kg", "code": "kg"},
    }
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": weight}, {"resource": {**weight, "id": "w2", "subject": {}}}],
    }
    response = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": patient}],
                }
            },
            {"resource": searchset},
        ],
    }
    (tmp_path / "response.json").write_text(json.dumps(response))
    report = ingest_fhir(new_store, tmp_path / "response.json")
    assert "Bundle" not in report.unhandled
    assert report.tables["fhir/Observation"].accepted == 1
    rejects = new_store.rejects()
    assert rejects["record"].to_list() == ["entry 1 / entry 1 (Observation)"]
    subject = new_store.lookup("fhir", "p7")
    weights = new_store.timeline(subject).filter(pl.col("code") == "LOINC/29463-7")
    assert weights["numeric_value"].to_list() == [81.5]

    lines = tmp_path / "bundles.ndjson"
    line = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {**patient, "id": "p8"}},
            {"resource": {**weight, "id": "w8", "subject": {"reference": "Patient/p8"}}},
        ],
    }
    lines.write_text(json.dumps(line) + "\n")
    ingest_fhir(new_store, lines)
    eighth = new_store.timeline(new_store.lookup("fhir", "p8"))
    assert eighth.filter(pl.col("code") == "LOINC/29463-7")["numeric_value"].to_list() == [81.5]


def test_jsonl_exports_are_read_and_a_folder_without_fhir_files_is_an_error(tmp_path, new_store):
    from jumeau.ingest.fhir import FhirError

    patient = {"resourceType": "Patient", "id": "j1", "birthDate": "1980-02-03"}
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "Patient.jsonl").write_text(json.dumps(patient) + "\n")
    report = ingest_fhir(new_store, tmp_path / "export")
    assert report.tables["fhir/Patient"].accepted == 1
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("not FHIR")
    with pytest.raises(FhirError, match="no FHIR files"):
        ingest_fhir(new_store, tmp_path / "nothing")


def test_entries_in_error_acts_not_done_and_refuted_diagnoses_are_not_stored_as_facts(
    tmp_path, new_store
):
    """A lab value entered in error, a cancelled visit, a procedure not done, a refuted
    diagnosis: each is rejected with its reason (counted, kept in the rejects), never an event
    a twin would read as the patient's; a confirmed diagnosis is kept."""
    subject = {"reference": "Patient/v1"}
    diabetes = {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}
    verified = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    lines = [
        {"resourceType": "Patient", "id": "v1", "birthDate": "1950-01-01", "gender": "male"},
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "entered-in-error",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": subject,
            "effectiveDateTime": "2020-01-01",
            "valueQuantity": {"value": 250, "code": "mm[Hg]"},
        },
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "cancelled",
            "class": {"code": "AMB"},
            "subject": subject,
            "period": {"start": "2020-01-02"},
        },
        {
            "resourceType": "Procedure",
            "id": "p1",
            "status": "not-done",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "73761001"}]},
            "subject": subject,
            "performedDateTime": "2020-01-03",
        },
        {
            "resourceType": "Condition",
            "id": "c1",
            "verificationStatus": {"coding": [{"system": verified, "code": "refuted"}]},
            "code": diabetes,
            "subject": subject,
            "onsetDateTime": "2019-01-01",
        },
        {
            "resourceType": "Condition",
            "id": "c2",
            "verificationStatus": {"coding": [{"system": verified, "code": "confirmed"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            "subject": subject,
            "onsetDateTime": "2019-01-01",
        },
    ]
    path = tmp_path / "export.ndjson"
    write_ndjson(path, lines)
    report = ingest_fhir(new_store, path)
    reasons = rejected(new_store)
    assert reasons == {
        "line 2 (Observation)": "status entered-in-error: not part of the patient's record",
        "line 3 (Encounter)": "status cancelled: it did not take place",
        "line 4 (Procedure)": "status not-done: it did not take place",
        "line 5 (Condition)": "verificationStatus refuted: the patient does not have it",
    }
    assert report.tables["fhir/Condition"].accepted == 1
    twin = new_store.twin(new_store.lookup("fhir", "v1"), datetime(2020, 6, 1))
    assert [p["code"] for p in twin.problems] == ["SNOMED/38341003"]
    assert "sbp" not in twin.variables


def test_a_problem_resolved_without_a_date_ends_when_its_record_last_changed(tmp_path, new_store):
    """An EHR problem list says `resolved` without an abatement date: the problem was over by
    meta.lastUpdated, so a twin before then still lists it and one after does not."""
    status = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    lines = [
        {"resourceType": "Patient", "id": "r1", "birthDate": "1960-01-01"},
        {
            "resourceType": "Condition",
            "id": "c1",
            "meta": {"lastUpdated": "2021-03-01T10:00:00Z"},
            "clinicalStatus": {"coding": [{"system": status, "code": "resolved"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195662009"}]},
            "subject": {"reference": "Patient/r1"},
            "onsetDateTime": "2020-11-01",
        },
        {
            "resourceType": "Condition",
            "id": "c2",
            "clinicalStatus": {"coding": [{"system": status, "code": "resolved"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "10509002"}]},
            "subject": {"reference": "Patient/r1"},
            "onsetDateTime": "2020-11-01",
        },
    ]
    path = tmp_path / "problems.ndjson"
    write_ndjson(path, lines)
    ingest_fhir(new_store, path)
    subject = new_store.lookup("fhir", "r1")
    ends = dict(
        new_store.timeline(subject)
        .filter(pl.col("domain") == "condition")
        .select("code", "end_time")
        .rows()
    )
    assert ends == {"SNOMED/195662009": datetime(2021, 3, 1, 10), "SNOMED/10509002": None}
    before = [p["code"] for p in new_store.twin(subject, datetime(2021, 1, 1)).problems]
    after = [p["code"] for p in new_store.twin(subject, datetime(2021, 6, 1)).problems]
    assert "SNOMED/195662009" in before and "SNOMED/195662009" not in after


def test_a_death_without_its_date_is_kept_as_a_static_fact(tmp_path, new_store):
    """``deceasedBoolean: true`` says the patient died, not when: a death event with no time
    (it was dropped); the twin, which needs a date, does not take it for one."""
    patients = [
        {"resourceType": "Patient", "id": "d1", "birthDate": "1940-01-01", "deceasedBoolean": True},
        {
            "resourceType": "Patient",
            "id": "a1",
            "birthDate": "1950-01-01",
            "deceasedBoolean": False,
        },
        {
            "resourceType": "Patient",
            "id": "d2",
            "birthDate": "1945-01-01",
            "deceasedDateTime": "2015-03-04",
        },
    ]
    ingest_fhir(new_store, write_ndjson(tmp_path / "Patient.ndjson", patients))
    deaths = {}
    for source_id in ("d1", "a1", "d2"):
        subject = new_store.lookup("fhir", source_id)
        timeline = new_store.timeline(subject)
        deaths[source_id] = timeline.filter(timeline["code"] == "MEDS_DEATH")["time"].to_list()
    assert deaths == {"d1": [None], "a1": [], "d2": [datetime(2015, 3, 4)]}
    twin = new_store.twin(new_store.lookup("fhir", "d1"), as_of=datetime(2020, 1, 1))
    assert twin.deceased is None and twin.age is not None


def test_a_period_that_ends_a_day_before_it_starts_is_rejected(tmp_path, new_store):
    def encounter(rid: str, start: str, end: str) -> dict:
        return {
            "resourceType": "Encounter",
            "id": rid,
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p1"},
            "period": {"start": start, "end": end},
        }

    lines = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"},
        encounter("late", "2020-03-02T10:00:00Z", "2020-03-01T09:00:00Z"),
        encounter("same-day", "2020-03-02T10:00:00Z", "2020-03-02"),  # a date: the whole day
        encounter("fine", "2020-03-02T10:00:00Z", "2020-03-02T11:00:00Z"),
    ]
    path = tmp_path / "Encounter.ndjson"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    report = ingest_fhir(new_store, path)
    counts = report.tables["fhir/Encounter"]
    assert (counts.read, counts.accepted, counts.rejected) == (3, 2, 1)
    (reject,) = new_store.rejects().filter(pl.col("source") == "fhir/Encounter").to_dicts()
    assert reject["record"].startswith("line 2") and "ends before it starts" in reject["reason"]


def test_conditional_references_resolve_to_the_patient_with_that_identifier(tmp_path, new_store):
    """A transaction bundle may name its patient by identifier (``Patient?identifier=
    system|value``): resolved to the Patient of the bundle that carries it; one that matches
    no Patient, or names another search, is rejected, and no reason repeats the identifier."""
    mrn = "http://hospital.example/mrn|MRN-778812"

    def observation(rid: str, subject: str) -> dict:
        return {
            "resource": {
                "resourceType": "Observation",
                "id": rid,
                "status": "final",
                "subject": {"reference": subject},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "effectiveDateTime": "2020-01-01T10:00:00Z",
                "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            observation("o1", f"Patient?identifier={mrn}"),
            {
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "identifier": [
                        {"system": "http://hospital.example/mrn", "value": "MRN-778812"}
                    ],
                    "birthDate": "1950-02-03",
                },
                "request": {"method": "PUT", "url": "Patient/p1"},
            },
            observation("o2", "Patient?identifier=MRN-778812"),
            observation("o3", "Patient?identifier=http://hospital.example/mrn|MRN-000001"),
            observation("o4", "Patient?name=Smith"),
        ],
    }
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(bundle))
    report = ingest_fhir(new_store, path)
    counts = report.tables["fhir/Observation"]
    assert (counts.read, counts.accepted, counts.rejected) == (4, 2, 2)
    subject = new_store.lookup("fhir", "p1")
    assert new_store.timeline(subject, codes=["LOINC/8480-6"]).height == 2
    reasons = new_store.rejects()["reason"].to_list()
    assert any("names an identifier no Patient" in r for r in reasons)
    assert any("other than Patient?identifier" in r for r in reasons)
    assert not any("MRN" in r for r in reasons)


def test_sex_at_birth_and_preferred_language_are_demographic_facts(synthea_store, synthea_dir):
    """US Core's birth sex and the language a patient speaks (Synthea gives both) are static
    demographic facts beside the gender."""
    store, _ = synthea_store
    patients = [r for r in bundle_resources(synthea_dir) if r["resourceType"] == "Patient"]
    checked = 0
    for patient in patients:
        codes = set(store.timeline(store.lookup("fhir", patient["id"]))["code"].to_list())
        birth_sex = [
            e["valueCode"] for e in patient.get("extension", []) if e["url"].endswith("birthsex")
        ]
        languages = [c["language"]["coding"][0]["code"] for c in patient.get("communication", [])]
        assert {c for c in codes if c.startswith(("BirthSex/", "Language/"))} == {
            *(f"BirthSex/{s}" for s in birth_sex),
            *(f"Language/{lang}" for lang in languages[:1]),
        }
        checked += bool(birth_sex) and bool(languages)
    assert checked >= 3


def test_a_bulk_export_is_checked_against_its_manifest(tmp_path, new_store):
    """The Bulk Data status response saved beside the files (``manifest.json``) lists what the
    export holds: it is no resource to reject, and a file it lists that the download lacks, or
    holds with fewer resources, is said."""
    export = tmp_path / "export"
    export.mkdir()
    patients = [{"resourceType": "Patient", "id": f"b{i}", "gender": "female"} for i in range(2)]
    write_ndjson(export / "Patient.ndjson", patients)
    write_ndjson(export / "Observation.ndjson", [json.loads(_heart_rate(i)) for i in range(3)])
    base = "https://ehr.example.org/fhir/bulk/42"
    manifest = {
        "transactionTime": "2026-11-30T02:00:00Z",
        "request": "https://ehr.example.org/fhir/Group/7/$export",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": f"{base}/Patient.ndjson", "count": 2},
            {"type": "Observation", "url": f"{base}/Observation.ndjson?part=1", "count": 4},
            {"type": "Condition", "url": f"{base}/Condition.ndjson", "count": 1},
        ],
        "error": [{"type": "OperationOutcome", "url": f"{base}/errors.ndjson"}],
    }
    (export / "manifest.json").write_text(json.dumps(manifest))
    report = ingest_fhir(new_store, export)
    assert report.committed and report.rejects_written == 0
    warnings = " | ".join(report.warnings)
    assert "Observation.ndjson: 3 lines read where the export's manifest" in warnings
    assert "lists 4 Observation resources" in warnings
    assert "Condition.ndjson (Condition, 1 resources), which this source lacks" in warnings
    assert "1 error file(s)" in warnings
    assert "Patient.ndjson" not in warnings


def test_a_patient_merged_into_another_gives_it_its_records(tmp_path, new_store):
    """A master patient index merged a duplicate record (``link`` replaced-by): the records
    naming the duplicate are the surviving patient's, the duplicate is no subject of its own
    (rejected, with why), and its name is scrubbed from the survivor's notes."""
    import base64

    duplicate = {
        "resourceType": "Patient",
        "id": "dup",
        "active": False,
        "name": [{"family": "Lefebvre", "given": ["Anne"]}],
        "link": [{"other": {"reference": "Patient/kept"}, "type": "replaced-by"}],
    }
    kept = {
        "resourceType": "Patient",
        "id": "kept",
        "gender": "female",
        "birthDate": "1961-04-02",
        "name": [{"family": "Martin", "given": ["Anne"]}],
        "link": [{"other": {"reference": "Patient/dup"}, "type": "replaces"}],
    }
    note = {
        "resourceType": "DocumentReference",
        "id": "n1",
        "subject": {"reference": "Patient/kept"},
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
        "date": "2022-05-06T07:08:09Z",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(b"Seen before as Lefebvre. Stable.").decode(),
                }
            }
        ],
    }
    lines = [note, json.loads(_heart_rate(0)) | {"subject": {"reference": "Patient/dup"}}]
    write_ndjson(tmp_path / "export.ndjson", [*lines, duplicate, kept])
    report = ingest_fhir(new_store, tmp_path / "export.ndjson")
    patients = report.tables["fhir/Patient"]
    assert (patients.read, patients.accepted, patients.rejected) == (2, 1, 1)
    assert rejected(new_store) == {
        "line 3 (Patient)": "merged into Patient/kept (link replaced-by): its records are that "
        "patient's"
    }
    events = new_store.timeline(new_store.lookup("fhir", "kept"))
    assert {"LOINC/8867-4", "LOINC/34117-2", "Gender/F"} <= set(events["code"].to_list())
    (text,) = events.filter(pl.col("code") == "LOINC/34117-2")["text_value"]
    assert text == "Seen before as [NAME]. Stable."
    duplicate_pseudonym = new_store.pseudonymiser.subject_id("fhir", "dup")
    assert new_store.timeline(duplicate_pseudonym).height == 0
    assert new_store.lookup("fhir", "dup") == new_store.lookup("fhir", "kept")  # its records


def _patient_and_pulse(patient: str, pulse: int, **patient_fields) -> list[dict]:
    pulse_line = json.loads(_heart_rate(0)) | {
        "id": f"hr-{patient}",
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": pulse, "code": "/min"},
    }
    return [{"resourceType": "Patient", "id": patient, **patient_fields}, pulse_line]


@pytest.mark.parametrize(("shift_days", "range_events"), [(0, 10_000_000), (30, 1)])
def test_a_patient_merged_after_it_was_stored_moves_its_records_to_the_survivor(
    tmp_path, monkeypatch, shift_days, range_events
):
    """A master patient index merges a duplicate already stored: a later export says so
    (``link`` replaced-by) and the duplicate's stored records become the survivor's, on the
    survivor's date shift, the duplicate's own demographics hidden, not added; the store as it
    was still shows the duplicate, and the same export again changes nothing (whether the batch
    is sorted in one subject range or several)."""
    import time

    from jumeau.store import writer

    monkeypatch.setattr(writer, "SORT_RANGE_EVENTS", range_events)
    store = jumeau.init(tmp_path / "store", max_date_shift_days=shift_days)
    first = write_ndjson(
        tmp_path / "first.ndjson",
        [*_patient_and_pulse("dup", 70, gender="male"), *_patient_and_pulse("kept", 80,
         gender="female")],
    )  # fmt: skip
    ingest_fhir(store, first)
    dup, kept = store.lookup("fhir", "dup"), store.lookup("fhir", "kept")
    assert dup != kept
    then = datetime.strptime(store.manifest.batches[-1]["committed_at"], "%Y-%m-%dT%H:%M:%S%z")
    time.sleep(1.1)  # commit times have a resolution of a second
    merge = {
        "resourceType": "Patient",
        "id": "dup",
        "active": False,
        "link": [{"other": {"reference": "Patient/kept"}, "type": "replaced-by"}],
    }
    report = ingest_fhir(store, write_ndjson(tmp_path / "merge.ndjson", [merge]))
    assert report.committed and report.events_merged == 2  # the pulse moved, the gender hidden
    assert report.events_written == 1 and report.events_amended == 0
    store = jumeau.open(tmp_path / "store")
    assert store.timeline(dup).height == 0
    assert store.lookup("fhir", "dup") == kept  # the duplicate's id finds the survivor now
    events = store.timeline(kept)
    pulses = events.filter(pl.col("code") == "LOINC/8867-4").sort("numeric_value")
    assert pulses["numeric_value"].to_list() == [70.0, 80.0]
    assert pulses["time"].n_unique() == 1  # both taken on the same day, on one date shift
    assert events.filter(pl.col("domain") == "demographic")["code"].to_list() == ["Gender/F"]
    assert store.stats()["merged_records"] == 2
    assert store.scan().filter(pl.col("subject_id") == dup).collect().height == 0
    earlier = store.timeline_arrow(dup, known_at=then)
    assert earlier.num_rows == 2
    again = ingest_fhir(store, tmp_path / "merge.ndjson")
    assert not again.committed and again.events_merged == 0
    # a system that still knows the duplicate sends its record, and its Patient, later on
    late = _patient_and_pulse("dup", 75, gender="male")
    late[1]["id"] = "hr-dup-later"
    report = ingest_fhir(
        jumeau.open(tmp_path / "store"), write_ndjson(tmp_path / "late.ndjson", late)
    )
    store = jumeau.open(tmp_path / "store")
    (reason,) = store.rejects().filter(pl.col("source") == "fhir/Patient")["reason"].tail(1)
    assert reason.startswith("merged into another patient by an earlier batch")
    assert store.timeline(dup).height == 0
    pulses = store.timeline(kept).filter(pl.col("code") == "LOINC/8867-4")
    assert sorted(pulses["numeric_value"].to_list()) == [70.0, 75.0, 80.0]
    assert pulses["time"].n_unique() == 1  # on the survivor's date shift
    store.forget([kept], purpose="the patient's objection, ref 7")  # and the merge into them
    assert store.merges() == {} and store.lookup("fhir", "dup") == dup


def test_a_merge_that_sends_the_duplicates_records_again_stores_each_once(tmp_path, new_store):
    """The export that merges a stored duplicate also holds its records (now the survivor's):
    each is stored once, under the survivor, and hides its stored version."""
    ingest_fhir(
        new_store,
        write_ndjson(
            tmp_path / "first.ndjson",
            [*_patient_and_pulse("dup", 70), *_patient_and_pulse("kept", 80)],
        ),
    )
    merged = _patient_and_pulse("dup", 71) + _patient_and_pulse("kept", 80)
    merged[0]["link"] = [{"other": {"reference": "Patient/kept"}, "type": "replaced-by"}]
    report = ingest_fhir(new_store, write_ndjson(tmp_path / "second.ndjson", merged))
    assert report.events_merged == 1 and report.events_written == 1
    store = jumeau.open(new_store.root)
    pulses = store.timeline(store.lookup("fhir", "kept")).filter(pl.col("code") == "LOINC/8867-4")
    assert sorted(pulses["numeric_value"].to_list()) == [71.0, 80.0]  # as the export now has it
    assert store.timeline(store.pseudonymiser.subject_id("fhir", "dup")).height == 0


def test_a_procedure_recorded_without_a_code_is_named_by_its_category(tmp_path, new_store):
    """Procedure.code is optional in R4: a procedure without one (a genomic study's analysis
    step) is still an act done, coded by its category, else ``FHIR/Procedure``."""
    subject = {"reference": "Patient/np"}
    surgical = {"coding": [{"system": "http://snomed.info/sct", "code": "387713003"}]}
    lines = [
        {"resourceType": "Patient", "id": "np", "gender": "male"},
        {"resourceType": "Procedure", "id": "a", "status": "completed", "subject": subject,
         "category": surgical, "performedDateTime": "2021-01-01"},
        {"resourceType": "Procedure", "id": "b", "status": "completed", "subject": subject,
         "performedDateTime": "2021-02-01"},
    ]  # fmt: skip
    report = ingest_fhir(new_store, write_ndjson(tmp_path / "p.ndjson", lines))
    assert report.tables["fhir/Procedure"].accepted == 2
    events = new_store.timeline(new_store.lookup("fhir", "np")).filter(
        pl.col("domain") == "procedure"
    )
    assert events["code"].to_list() == ["SNOMED/387713003", "FHIR/Procedure"]
