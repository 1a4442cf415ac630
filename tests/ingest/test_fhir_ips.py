"""FHIR R4 patient summaries (HL7's International Patient Summary, `tests/data/fhir-ips-examples`):
a summary lists what is known of a patient, often without a date (an allergy, a past surgery);
those facts are kept undated, not rejected, and reach twins only from the day they were stored."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from jumeau.ingest.fhir import ingest_fhir

EXAMPLES = Path(__file__).parent.parent / "data" / "fhir-ips-examples"
AU_MEDICATION_LIST = (
    Path(__file__).parent.parent / "data" / "fhir-au-examples" / "Bundle-example0.json"
)


def ingest_examples(store, folder: Path, *names: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or [p.name for p in EXAMPLES.glob("*.json")]:
        shutil.copy(EXAMPLES / name, folder / name)
    return ingest_fhir(store, folder)


def timeline(store, patient_id: str) -> pl.DataFrame:
    return store.timeline(store.lookup("fhir", patient_id))


def test_every_example_of_the_summary_is_kept_none_rejected(tmp_path, new_store):
    report = ingest_examples(new_store, tmp_path / "ips")
    assert report.tables["fhir/Observation"].accepted > 0
    assert new_store.rejects().height == 0
    for table in ("fhir/AllergyIntolerance", "fhir/Procedure", "fhir/ImagingStudy"):
        assert report.tables[table].accepted == report.tables[table].read > 0


def test_an_allergy_without_a_date_is_an_undated_fact_and_a_resolved_one_ends(tmp_path, new_store):
    ingest_examples(
        new_store,
        tmp_path / "ips",
        "Patient-66033.json",
        "AllergyIntolerance-allergyintolerance-with-abatement.json",
    )
    allergy = timeline(new_store, "66033").filter(pl.col("domain") == "allergy")
    assert allergy.height == 1
    ragweed = allergy.row(0, named=True)
    assert ragweed["code"] == "SNOMED/256303006"
    # onset unknown (data-absent-reason), resolved in 2010 (the abatement extension)
    assert ragweed["time"] is None
    assert ragweed["end_time"] == datetime(2010, 1, 1)


def test_a_past_procedure_of_unknown_date_is_kept_undated(tmp_path, new_store):
    ingest_examples(
        new_store,
        tmp_path / "ips",
        "Patient-eumfh-39-07.json",
        "Procedure-procedure-missing-performed.json",
    )
    stent = timeline(new_store, "eumfh-39-07").filter(pl.col("domain") == "procedure")
    assert stent["code"].to_list() == ["SNOMED/36969009"]
    assert stent["time"].to_list() == [None]


def test_a_prescription_without_authored_date_is_dated_by_its_validity_and_a_study_by_its_series(
    tmp_path, new_store
):
    ingest_examples(
        new_store,
        tmp_path / "ips",
        "Patient-eumfh-39-07.json",
        "Medication-eumfh-39-07-1.json",
        "MedicationRequest-eumfh-39-07-1-request.json",
        "ImagingStudy-TII-ImagingStudy-5-1.json",
    )
    events = timeline(new_store, "eumfh-39-07")
    simvastatin = events.filter(pl.col("domain") == "drug").row(0, named=True)
    assert simvastatin["time"] == datetime(2021, 1, 1)  # dispenseRequest.validityPeriod.start
    imaging = events.filter(pl.col("domain") == "imaging")
    # neither the study nor its series has a start: both undated, the series' modality kept
    assert sorted(imaging["code"].to_list()) == ["DICOM/NM", "DICOM/study"]
    assert imaging["time"].to_list() == [None, None]


def test_undated_facts_reach_twins_from_the_day_they_were_stored(tmp_path, new_store):
    ingest_examples(
        new_store,
        tmp_path / "ips",
        "Patient-eumfh-39-07.json",
        "Condition-eumfh-39-07-1.json",
        "AllergyIntolerance-eumfh-39-07-1.json",
        "Procedure-procedure-missing-performed.json",
    )
    subject = new_store.lookup("fhir", "eumfh-39-07")
    now = new_store.twin(subject)
    assert [p["code"] for p in now.problems] == ["SNOMED/91861009"]  # onset 2014
    # "no known allergy" is kept in the timeline but is no allergy of the patient
    assert now.allergies == [] and now.allergy_status == "No known allergy (situation)"
    assert "SNOMED/716186003" in timeline(new_store, "eumfh-39-07")["code"].to_list()
    (batch,) = new_store.manifest.batches
    stored = datetime.strptime(batch["committed_at"], "%Y-%m-%dT%H:%M:%S%z").replace(tzinfo=None)
    before = new_store.twin(subject, as_of=stored - timedelta(days=1))
    assert before.events_used < now.events_used  # the undated procedure was not known yet
    assert [p["code"] for p in before.problems] == ["SNOMED/91861009"]


def test_an_active_undated_allergy_is_listed_without_a_since_date_a_resolved_one_not(
    tmp_path, new_store
):
    ingest_examples(
        new_store,
        tmp_path / "ips",
        "Patient-66033.json",
        "AllergyIntolerance-allergyintolerance-multiple-codings.json",
        "AllergyIntolerance-allergyintolerance-with-abatement.json",
    )
    twin = new_store.twin(new_store.lookup("fhir", "66033"))
    # penicillin (active, onset unknown) is listed; ragweed pollen (resolved in 2010) is not
    assert twin.allergies == [
        {"code": "SNOMED/764146007", "description": "Penicillin", "since": None}
    ]
    assert twin.to_dict()["allergies"] == twin.allergies
    assert twin.allergy_status is None  # an allergy is listed: nothing to say of its absence


def test_entries_of_a_patient_summary_without_a_date_take_the_summarys(tmp_path, new_store):
    # IPS document Bundle: its Composition (dated 2017-12-11T14:30+01:00) lists a "no known food
    # allergy" with no onset nor recorded date
    ingest_examples(new_store, tmp_path / "ips", "Bundle-IPS-examples-Bundle-01.json")
    subject = new_store.subjects()[0]
    allergies = new_store.timeline(subject).filter(pl.col("domain") == "allergy")
    times = dict(zip(allergies["code"], allergies["time"], strict=True))
    assert times["SNOMED/429625007"] == datetime(2017, 12, 11, 13, 30)


def test_statements_of_a_medication_list_without_a_date_take_the_lists(tmp_path, new_store):
    # HL7 Australia's discharge medication list (a List dated 2019-03-19 naming eight
    # MedicationStatements, none dated); one statement says the drug is not taken
    folder = tmp_path / "au"
    folder.mkdir()
    shutil.copy(AU_MEDICATION_LIST, folder / AU_MEDICATION_LIST.name)
    report = ingest_fhir(new_store, folder)
    counts = report.tables["fhir/MedicationStatement"]
    assert (counts.read, counts.accepted, counts.rejected) == (8, 7, 1)
    assert new_store.rejects()["reason"].to_list() == [
        "status not-taken: the patient does not take it"
    ]
    drugs = new_store.timeline(new_store.subjects()[0]).filter(pl.col("domain") == "drug")
    assert drugs.height == 7 and set(drugs["time"]) == {datetime(2019, 3, 19)}


def test_a_prescription_with_no_date_anywhere_is_rejected_naming_where_it_was_looked_for(
    tmp_path, new_store
):
    folder = tmp_path / "ips"
    ingest_examples(new_store, folder, "Patient-eumfh-39-07.json", "Medication-eumfh-39-07-1.json")
    request = json.loads((EXAMPLES / "MedicationRequest-eumfh-39-07-1-request.json").read_text())
    del request["dispenseRequest"]
    (folder / "request.json").write_text(json.dumps(request))
    ingest_fhir(new_store, folder)
    assert new_store.rejects()["reason"].to_list() == [
        "no time: none of authoredOn, dispenseRequest.validityPeriod, "
        "dosageInstruction.timing.repeat.boundsPeriod is present"
    ]


def test_a_medication_a_summary_says_is_taken_is_active_on_the_summarys_date(tmp_path, new_store):
    # anastrozole, taken since March 2015 (no end), in a summary dated 2020-12-11
    ingest_examples(new_store, tmp_path / "ips", "Bundle-bundle-minimal.json")
    subject = new_store.subjects()[0]
    (drug,) = new_store.timeline(subject).filter(pl.col("domain") == "drug").iter_rows(named=True)
    assert drug["time"] == datetime(2015, 3, 1)
    assert drug["end_time"] == datetime(2020, 12, 11, 13, 30)  # known taken until then
    on_the_day = new_store.twin(subject, as_of=datetime(2020, 12, 11, 13, 30))
    assert [m["code"] for m in on_the_day.medications] == [drug["code"]]


def test_a_device_of_no_patient_is_equipment_not_a_rejected_record(tmp_path, new_store):
    report = ingest_examples(new_store, tmp_path / "ips", "Device-ips-example-imaging-1.json")
    assert new_store.rejects().height == 0
    assert report.unhandled == {"Device of no patient (equipment)": 1}


def test_a_device_the_summary_says_the_patient_uses_is_the_twins(tmp_path, new_store):
    # IPS's all-sections summary: a DeviceUseStatement (date unknown) naming a hip prosthesis,
    # a Device of no patient of its own
    ingest_examples(new_store, tmp_path / "ips", "Bundle-bundle-ips-all-sections.json")
    assert new_store.rejects().height == 0
    subject = new_store.subjects()[0]
    devices = new_store.timeline(subject).filter(pl.col("domain") == "device")
    assert devices["code"].to_list() == ["SNOMED/67270000"]
    twin = new_store.twin(subject)
    assert [d["code"] for d in twin.devices] == ["SNOMED/67270000"]
    assert twin.to_dict()["devices"] == twin.devices


def test_an_advance_directive_is_a_consent_in_force_on_the_twin(tmp_path, new_store):
    # IPS's all-sections summary: a do-not-resuscitate Consent (scope treatment) given in 2021
    ingest_examples(new_store, tmp_path / "ips", "Bundle-bundle-ips-all-sections.json")
    subject = new_store.subjects()[0]
    (consent,) = new_store.timeline(subject).filter(pl.col("domain") == "consent").to_dicts()
    assert consent["code"] == "SNOMED/304253006"  # not for resuscitation
    assert consent["time"] == datetime(2021, 9, 1)
    terms = consent["text_value"].split(";")
    assert {"scope=HL7ConsentScope/treatment", "category=HL7ConsentCategory/dnr"} <= set(terms)
    assert "status=active" in terms
    (held,) = new_store.twin(subject).consents
    assert (held["code"], held["description"]) == ("SNOMED/304253006", "Not for resuscitation")
    assert new_store.twin(subject, datetime(2021, 8, 1)).consents == []  # not yet given


def test_a_consent_ends_with_its_provision_and_a_later_record_of_it_rules(tmp_path, new_store):
    """A research consent over a period ends with it; a refusal recorded after a consent of the
    same kind is what holds; a consent never accepted (rejected, proposed) holds nothing."""
    patient = {"resourceType": "Patient", "id": "c1", "gender": "female"}
    subject = {"reference": "Patient/c1"}
    research = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "research"}]}  # fmt: skip
    lines = [
        patient,
        {"resourceType": "Consent", "id": "r1", "status": "active", "scope": research,
         "patient": subject, "dateTime": "2020-01-10",
         "provision": {"type": "permit", "period": {"start": "2020-01-10", "end": "2022-01-10"}}},
        {"resourceType": "Consent", "id": "r2", "status": "active", "scope": research,
         "patient": subject, "dateTime": "2023-03-01", "provision": {"type": "deny"}},
        {"resourceType": "Consent", "id": "p1", "status": "rejected", "patient": subject,
         "dateTime": "2020-02-01", "category": [{"text": "photography"}]},
    ]  # fmt: skip
    path = tmp_path / "consents.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = ingest_fhir(new_store, path)
    assert report.tables["fhir/Consent"].accepted == 3
    pseudonym = new_store.lookup("fhir", "c1")

    def held(on: datetime) -> list[str]:
        return [c["terms"] for c in new_store.twin(pseudonym, on).consents]

    assert held(datetime(2021, 1, 1)) == [
        "provision=permit;scope=HL7ConsentScope/research;status=active"
    ]
    assert held(datetime(2022, 6, 1)) == []  # the period is over
    assert held(datetime(2024, 1, 1)) == [
        "provision=deny;scope=HL7ConsentScope/research;status=active"
    ]
