"""FHIR R4 ingest of exports shaped otherwise than Synthea's, specified on HL7's own R4 examples
(``tests/data/fhir-r4-examples``): laboratory results dated by their panel, report or specimen,
medications defined in their own files or by their ingredients, and concepts given only as text."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import polars as pl

from jumeau.ingest.fhir import ingest_fhir

EXAMPLES = Path(__file__).parent.parent / "data" / "fhir-r4-examples"


def copy_examples(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def timeline(store, patient_id: str) -> pl.DataFrame:
    return store.timeline(store.lookup("fhir", patient_id))


def test_results_without_a_time_of_their_own_take_their_panels_time(tmp_path, new_store):
    # a General Health Profile report of three panels, whose 40 results carry no time: each is
    # measured when its panel's specimen was drawn, which the panel states
    folder = copy_examples(tmp_path / "src", "Bundle-ghp.json", "Patient-pat2.json")
    bundle = json.loads((folder / "Bundle-ghp.json").read_text())
    observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    untimed = [o for o in observations if not any(k.startswith("effective") for k in o)]
    assert len(untimed) >= 30

    report = ingest_fhir(new_store, folder)

    counts = report.tables["fhir/Observation"]
    assert counts.read == len(observations)
    assert counts.rejected == len([o for o in observations if "subject" not in o])
    events = timeline(new_store, "pat2")
    haemoglobin = events.filter(pl.col("code") == "LOINC/718-7").row(0, named=True)
    assert haemoglobin["time"] == datetime(2015, 8, 16, 6, 40, 17)  # panel p2's effective time
    assert haemoglobin["numeric_value"] == 176 and haemoglobin["unit"] == "g/L"


def test_results_listed_by_a_panel_of_a_report_take_the_reports_time(tmp_path, new_store):
    # a microbiology report: the organism panel has no time, nor do its members (organism,
    # susceptibilities); the report was issued at 2009-08-10T08:25:44+10:00
    folder = copy_examples(tmp_path / "src", "Bundle-micro.json", "Patient-example.json")
    report = ingest_fhir(new_store, folder)
    counts = report.tables["fhir/Observation"]
    assert counts.read == counts.accepted > 20
    organism = timeline(new_store, "example").filter(pl.col("code").str.ends_with("/ORGANISM"))
    assert organism["time"].to_list() == [datetime(2009, 8, 9, 22, 25, 44)]
    assert organism["text_value"].to_list() == ["http://acme.org/lab/codes/organisms/Staaur"]


def test_a_medication_in_its_own_file_names_the_request_whatever_the_file_order(
    tmp_path, new_store
):
    folder = copy_examples(tmp_path / "src", "MedicationRequest-medrx002.json", "Patient-pat1.json")
    # named to be read after the request that refers to it
    shutil.copy(EXAMPLES / "Medication-med0316.json", folder / "z-Medication-med0316.json")
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/MedicationRequest"].accepted == 1
    assert timeline(new_store, "pat1").filter(pl.col("domain") == "drug")["code"].to_list() == [
        "SNOMED/317935006"
    ]


def test_a_compounded_medication_without_a_code_becomes_its_ingredients(tmp_path, new_store):
    # dopamine 400 mg in 500 mL D5W: a contained Medication with two coded ingredients
    folder = copy_examples(tmp_path / "src", "MedicationRequest-medrx0336.json")
    report = ingest_fhir(new_store, folder)
    counts = report.tables["fhir/MedicationRequest"]
    assert (counts.accepted, counts.events) == (1, 2)
    drugs = timeline(new_store, "pat1").filter(pl.col("domain") == "drug")
    assert sorted(drugs["code"]) == ["NDC/0264751010", "RxNorm/1114879"]
    assert drugs["time"].to_list() == [datetime(2015, 1, 15)] * 2


def test_a_medication_naming_nothing_is_rejected_with_the_reason(tmp_path, new_store):
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2020-01-01",
        "medicationReference": {"reference": "Medication/unknown"},
    }
    (tmp_path / "r.ndjson").write_text(json.dumps(request) + "\n")
    report = ingest_fhir(new_store, tmp_path / "r.ndjson")
    assert report.tables["fhir/MedicationRequest"].rejected == 1
    reason = new_store.rejects()["reason"].to_list()[0]
    assert "no reference to a Medication of this bundle or export" in reason


def test_a_concept_given_only_as_text_is_kept_as_a_text_code(tmp_path, new_store):
    folder = copy_examples(tmp_path / "src", "Observation-eye-color.json")
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/example"},
        "onsetDateTime": "2016-05-18",
        "code": {"text": "  Chest   pain, call 01 23 45 67 89 "},
    }
    (folder / "Condition-c1.json").write_text(json.dumps(condition))
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/Observation"].accepted == 1
    events = timeline(new_store, "example")
    eye = events.filter(pl.col("code") == "TEXT/eye color").row(0, named=True)
    assert eye["text_value"] == "blue" and eye["time"] == datetime(2016, 5, 18)
    # spaces collapsed, an identifier's shape scrubbed: the code is shared by every patient
    assert events.filter(pl.col("domain") == "condition")["code"].to_list() == [
        "TEXT/Chest pain, call [PHONE]"
    ]
    assert new_store.code_descriptions()["TEXT/eye color"] == "eye color"


def test_an_export_dates_results_by_specimen_and_by_panels_listed_later(tmp_path, new_store):
    loinc = "http://loinc.org"

    def observation(oid: str, code: str, **extra) -> dict:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": loinc, "code": code}]},
            **extra,
        }

    lines = [
        observation(
            "k", "2823-3", specimen={"reference": "Specimen/s1"}, valueQuantity={"value": 4.1}
        ),
        observation("na", "2951-2", valueQuantity={"value": 140}),  # its panel comes later
        observation(
            "bmp",
            "51990-0",
            effectiveDateTime="2021-03-04T08:00:00Z",
            hasMember=[{"reference": "Observation/na"}],
        ),
        observation("lost", "2345-7", valueQuantity={"value": 5.2}),  # nothing dates it
    ]
    specimen = {
        "resourceType": "Specimen",
        "id": "s1",
        "subject": {"reference": "Patient/p1"},
        "collection": {"collectedDateTime": "2021-03-01T07:30:00Z"},
    }
    (tmp_path / "Observation.ndjson").write_text("".join(json.dumps(o) + "\n" for o in lines))
    (tmp_path / "Specimen.ndjson").write_text(json.dumps(specimen) + "\n")

    report = ingest_fhir(new_store, tmp_path)

    assert report.tables["fhir/Observation"].accepted == 3
    times = dict(timeline(new_store, "p1").select("code", "time").iter_rows())
    assert times["LOINC/2823-3"] == datetime(2021, 3, 1, 7, 30)
    assert times["LOINC/2951-2"] == datetime(2021, 3, 4, 8)
    reason = new_store.rejects()["reason"].to_list()[0]
    assert "its specimen's collection, its report's time" in reason


def test_a_contained_patient_is_one_patient_across_records_by_its_identifier(tmp_path, new_store):
    # two Apgar scores, each containing the newborn (MRN 12345) as its subject ("#newborn")
    folder = copy_examples(
        tmp_path / "src",
        "Observation-1minute-apgar-score.json",
        "Observation-5minute-apgar-score.json",
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/Observation"].accepted == 2
    patients = report.tables["fhir/Patient"]
    assert (patients.read, patients.accepted) == (1, 1)  # mapped once
    newborn = new_store.lookup("fhir", "identifier:http://acmehealthcare/org/mrns|12345")
    events = new_store.timeline(newborn)
    assert events.filter(pl.col("code") == "LOINC/9272-6")["numeric_value"].to_list() == [0.0]
    assert set(events.filter(pl.col("domain") == "demographic")["code"]) >= {"Gender/M"}
    assert events.filter(pl.col("code") == "MEDS_BIRTH")["time"].to_list() == [
        datetime(2016, 5, 18)
    ]


def test_logical_and_contained_references_resolve_by_identifier_or_are_rejected(
    tmp_path, new_store
):
    mrn = {"system": "urn:oid:1.2.3", "value": "A-0042"}
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [mrn], "gender": "female"}

    def condition(cid: str, subject: dict, **extra) -> dict:
        return {
            "resourceType": "Condition",
            "id": cid,
            "subject": subject,
            "onsetDateTime": "2020-01-01",
            "code": {"text": "Asthma"},
            **extra,
        }

    lines = [
        patient,
        condition("logical", {"identifier": mrn}),
        # a contained copy of a Patient the export holds is that Patient
        condition(
            "copy",
            {"reference": "#me"},
            contained=[{"resourceType": "Patient", "id": "me", "identifier": [mrn]}],
        ),
        condition("unknown", {"identifier": {"system": "urn:oid:9", "value": "nobody"}}),
        condition(
            "anonymous",
            {"reference": "#x"},
            contained=[{"resourceType": "Patient", "id": "x", "name": [{"family": "Doe"}]}],
        ),
    ]
    (tmp_path / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = ingest_fhir(new_store, tmp_path / "export.ndjson")
    counts = report.tables["fhir/Condition"]
    assert (counts.accepted, counts.rejected) == (2, 2)
    assert timeline(new_store, "p1").filter(pl.col("domain") == "condition").height == 2
    reasons = dict(new_store.rejects().select("record", "reason").iter_rows())
    assert "logical reference by an identifier no Patient" in reasons["line 4 (Condition)"]
    assert "contained Patient (#x) without an identifier" in reasons["line 5 (Condition)"]


def test_an_immunization_dated_in_words_takes_that_date(tmp_path, new_store):
    def immunization(iid: str, when: str) -> dict:
        return {
            "resourceType": "Immunization",
            "id": iid,
            "status": "completed",
            "patient": {"reference": "Patient/p1"},
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "141"}]},
            "occurrenceString": when,
        }

    lines = [
        immunization("a", "January 2012"),  # as HL7's "historical" example writes it
        immunization("b", "3 mars 2019"),
        immunization("c", "2015"),
        immunization("d", "in childhood"),
    ]
    (tmp_path / "i.ndjson").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = ingest_fhir(new_store, tmp_path / "i.ndjson")
    assert report.tables["fhir/Immunization"].rejected == 1
    assert timeline(new_store, "p1")["time"].to_list() == [
        datetime(2012, 1, 1),
        datetime(2015, 1, 1),
        datetime(2019, 3, 3),
    ]
    assert "a date in occurrenceString" in new_store.rejects()["reason"][0]


def test_a_problem_begun_in_words_takes_that_date(tmp_path, new_store):
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "Asthma"},
        "onsetString": "March 2003",
    }
    (tmp_path / "c.ndjson").write_text(json.dumps(condition) + "\n")
    ingest_fhir(new_store, tmp_path / "c.ndjson")
    assert timeline(new_store, "p1")["time"].to_list() == [datetime(2003, 3, 1)]


def test_a_text_concept_naming_its_patient_is_scrubbed_of_the_name(tmp_path, new_store):
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Dupont", "given": ["Marie"]}],
    }
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2020-01-01",
        "code": {"text": "Chest pain, Marie Dupont's own words"},
    }
    (tmp_path / "e.ndjson").write_text(json.dumps(condition) + "\n" + json.dumps(patient) + "\n")
    ingest_fhir(new_store, tmp_path / "e.ndjson")
    codes = timeline(new_store, "p1").filter(pl.col("domain") == "condition")["code"].to_list()
    assert codes == ["TEXT/Chest pain, [NAME] [NAME]'s own words"]
    stored = " ".join(new_store.code_descriptions().values()) + " ".join(codes)
    assert "Dupont" not in stored and "Marie" not in stored


def test_a_relatives_condition_is_family_history_never_the_patients_own(tmp_path, new_store):
    # HL7's father example: a myocardial infarction at 74, recorded 2011-03-18; the mother's
    # stroke at 56 is undated
    folder = copy_examples(
        tmp_path / "src",
        "Patient-example.json",
        "FamilyMemberHistory-father.json",
        "FamilyMemberHistory-mother.json",
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/FamilyMemberHistory"].accepted == 2
    events = timeline(new_store, "example")
    (father,) = events.filter(pl.col("code").str.starts_with("FAMILY_HISTORY//")).iter_rows(
        named=True
    )
    assert father["code"] == "FAMILY_HISTORY//SNOMED/315619001"
    assert father["domain"] == "observation" and father["time"] == datetime(2011, 3, 18)
    assert father["numeric_value"] == 74 and father["unit"] == "a"
    assert "SNOMED/315619001" not in events["code"].to_list()  # not the patient's infarction
    twin = new_store.twin(new_store.lookup("fhir", "example"))
    assert twin.problems == [] and not twin.condition_flags()["vascular"]
    assert twin.family_history == [
        {
            "code": "SNOMED/315619001",
            "description": "Myocardial Infarction",
            "relative": "father",
            "onset_age": 74.0,
            "recorded": "2011-03-18T00:00:00",
        }
    ]
    mother = timeline(new_store, "100").filter(pl.col("domain") == "observation")
    assert mother["code"].to_list() == ["FAMILY_HISTORY//SNOMED/371041009"]
    assert mother["time"].to_list() == [None]
    # the mother's patient is known by that undated history alone: a twin of it, from the day
    # the store learnt it (not before)
    only_history = new_store.twin(new_store.lookup("fhir", "100"))
    assert [h["relative"] for h in only_history.family_history] == ["mother"]
    assert only_history.age is None and only_history.variables == {}


def test_an_insurance_cover_is_a_sociodemographic_fact_over_its_period(tmp_path, new_store):
    folder = copy_examples(tmp_path / "src", "Coverage-9876B1.json")
    ingest_fhir(new_store, folder)
    (cover,) = timeline(new_store, "4").iter_rows(named=True)
    assert cover["domain"] == "demographic"
    assert (cover["time"], cover["end_time"]) == (datetime(2011, 5, 23), datetime(2012, 5, 23))
    assert cover["text_value"] == "subscriber=self"
    kept = f"{cover['code']} {cover['text_value']}"
    assert not any(v in kept for v in ("12345", "CB135", "B37FC"))  # ids never kept


def test_a_relative_named_in_free_text_is_not_stored(tmp_path, new_store):
    history = json.loads((EXAMPLES / "FamilyMemberHistory-father.json").read_text())
    history["relationship"] = {"text": "Uncle Bartholomew"}
    history["name"] = "Bartholomew Patient"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "uncle.json").write_text(json.dumps(history))
    ingest_fhir(new_store, tmp_path / "src")
    (event,) = timeline(new_store, "example").iter_rows(named=True)
    assert event["code"] == "FAMILY_HISTORY//SNOMED/315619001"
    assert "Bartholomew" not in str(event["text_value"])
    stored = b"".join(p.read_bytes() for p in new_store.root.rglob("*") if p.is_file())
    assert b"Bartholomew" not in stored


QUESTIONNAIRES = (
    "QuestionnaireResponse-gcs.json",
    "Questionnaire-gcs.json",
    "QuestionnaireResponse-f201.json",
    "QuestionnaireResponse-bb.json",
    "QuestionnaireResponse-3141.json",
    "QuestionnaireResponse-ussg-fht-answers.json",
)


def test_a_questionnaire_answer_is_coded_by_its_question_and_scored(tmp_path, new_store):
    """A Glasgow coma scale response names its questions by linkId only: the Questionnaire
    read in the same batch gives each its LOINC code, and each coded answer keeps its score."""
    folder = copy_examples(tmp_path / "src", *QUESTIONNAIRES)
    report = ingest_fhir(new_store, folder)
    counts = report.tables["fhir/QuestionnaireResponse"]
    assert (counts.read, counts.accepted, counts.rejected) == (5, 5, 0)
    assert report.unhandled.get("Questionnaire") == 1  # read for its codes, not an event
    gcs = timeline(new_store, "example").filter(pl.col("domain") == "survey")
    answers = {r["code"]: (r["numeric_value"], r["text_value"]) for r in gcs.iter_rows(named=True)}
    assert answers == {
        "LOINC/9268-4": (5.0, "LOINC/LA6566-9"),  # motor: localizing pain
        "LOINC/9267-6": (4.0, "LOINC/LA6556-0"),  # eyes open spontaneously
        "LOINC/9270-0": (4.0, "LOINC/LA6560-2"),  # verbal: confused
    }
    assert set(gcs["time"]) == {datetime(2014, 12, 11, 4, 44, 16)}


def test_questions_without_a_questionnaire_are_named_by_their_text_or_linkid(tmp_path, new_store):
    folder = copy_examples(tmp_path / "src", *QUESTIONNAIRES)
    ingest_fhir(new_store, folder)
    intake = timeline(new_store, "f201").filter(pl.col("domain") == "survey")
    by_code = dict(zip(intake["code"], intake["text_value"], strict=True))
    assert by_code["TEXT/Do you smoke?"] == "[TEXT]"
    assert by_code["TEXT/What is your date of birth?"] == "1960-03-13"
    assert intake["time"].to_list() == [datetime(2013, 6, 17, 23)] * 7  # +01:00 in UTC
    # a questionnaire named by reference only, nested answers included
    family = (
        new_store.scan()
        .filter(pl.col("code").str.starts_with("FHIR/Questionnaire/ussg-fht#"))
        .collect()
    )
    ages = family.filter(pl.col("code") == "FHIR/Questionnaire/ussg-fht#2.1.1.4.2.2")
    assert family.height > 100 and ages["numeric_value"].min() == 15.0
    # neither a questionnaire nor a question text: the linkId, answers within answers too
    codes = set(new_store.scan().select("code").collect()["code"])
    assert {"FHIR/QuestionnaireResponse#1.1", "FHIR/QuestionnaireResponse#1.1.1.3"} <= codes


def test_free_text_answers_keep_no_name_a_form_holds(tmp_path, new_store):
    """A family history form names the patient and two dozen relatives; a birth form, the
    child: none of them reaches the store (a free-text answer is kept as answered, not as
    its text)."""
    from tests.store.test_privacy import decoded_texts

    folder = copy_examples(tmp_path / "src", *QUESTIONNAIRES)
    ingest_fhir(new_store, folder)
    names = ["Annie Proband", "Brian", "Harriet", "Gladys", "Karren", "Cathy Jones", "Roel"]
    blob = "\n".join(decoded_texts(new_store.root))
    raw = b"".join(p.read_bytes() for p in new_store.root.rglob("*") if p.is_file())
    assert [n for n in names if n in blob or n.encode() in raw] == []
    texts = new_store.scan().filter(pl.col("domain") == "survey").collect()["text_value"]
    assert (texts == "[TEXT]").sum() >= 25


def test_a_date_answer_moves_with_the_patients_date_shift(tmp_path):
    import jumeau

    folder = copy_examples(tmp_path / "src", "QuestionnaireResponse-f201.json")
    plain, shifted = (
        jumeau.init(tmp_path / name, max_date_shift_days=days)
        for name, days in (("plain", 0), ("shifted", 365))
    )
    for store in (plain, shifted):
        ingest_fhir(store, folder)
    question = pl.col("code") == "TEXT/What is your date of birth?"
    (a,) = timeline(plain, "f201").filter(question).iter_rows(named=True)
    (b,) = timeline(shifted, "f201").filter(question).iter_rows(named=True)
    moved = b["time"] - a["time"]
    assert moved.days != 0
    assert datetime.fromisoformat(b["text_value"]) - datetime(1960, 3, 13) == moved


def test_specimens_adverse_events_and_risk_assessments_become_events(tmp_path, new_store):
    folder = copy_examples(
        tmp_path / "src",
        "Patient-example.json",
        "Patient-pat2.json",
        "Specimen-101.json",
        "Specimen-sst.json",
        "Specimen-pooled-serum.json",
        "AdverseEvent-example.json",
        "RiskAssessment-cardiac.json",
        "RiskAssessment-genetic.json",
        "RiskAssessment-prognosis.json",
        "RiskAssessment-population.json",
    )
    report = ingest_fhir(new_store, folder)
    read = {t: report.tables[f"fhir/{t}"] for t in ("Specimen", "AdverseEvent", "RiskAssessment")}
    assert (read["Specimen"].read, read["Specimen"].rejected) == (3, 1)  # a herd's pooled serum
    assert (read["AdverseEvent"].accepted, read["RiskAssessment"].accepted) == (1, 3)
    reasons = set(new_store.rejects()["reason"])
    assert "subject is a Group reference, not a Patient" in reasons
    rows = {
        (r["domain"], r["code"]): r
        for r in timeline(new_store, "example").iter_rows(named=True)
        if r["domain"] in ("specimen", "adverse_event", "risk")
    }
    blood = rows["specimen", "SNOMED/122555007"]  # venous blood, 6 mL from the right arm
    assert blood["time"] == datetime(2011, 5, 30, 6, 15)
    assert (blood["numeric_value"], blood["unit"]) == (6.0, "mL")
    rash = rows["adverse_event", "SNOMED/304386008"]
    assert rash["text_value"] == "seriousness=Non-serious;severity=mild"
    assert rash["time"] == datetime(2017, 1, 29, 12, 34, 56)
    stroke = rows["risk", "SNOMED/249943000:363698007=72098002,260868000=6934004"]
    assert stroke["text_value"].endswith("risk-probability/moderate")
    cardiac = timeline(new_store, "pat2").filter(pl.col("domain") == "risk").row(0, named=True)
    assert (cardiac["code"], cardiac["numeric_value"]) == ("TEXT/Heart Attack", 0.02)
    assert cardiac["text_value"] == "when=39-49 a"
    genetic = new_store.scan().filter(pl.col("code") == "TEXT/Breast Cancer").collect()
    assert genetic.height == 8 and genetic["numeric_value"].max() == 0.001663


def test_an_answer_scored_zero_in_its_questionnaire_keeps_its_score(tmp_path, new_store):
    """PHQ-9's "not at all" scores 0: a weight given on the Questionnaire's answer option (not
    on the answer) is still the answer's number, zero included."""
    not_at_all = {"system": "http://loinc.org", "code": "LA6568-5", "display": "Not at all"}
    several = {"system": "http://loinc.org", "code": "LA6569-3", "display": "Several days"}
    ordinal = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": "phq-2",
        "url": "http://example.org/Questionnaire/phq-2",
        "status": "active",
        "item": [
            {
                "linkId": link,
                "code": [{"system": "http://loinc.org", "code": code}],
                "type": "choice",
                "answerOption": [
                    {  # R5's itemWeight sits on the option, R4's ordinalValue on its coding
                        "valueCoding": not_at_all,
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/itemWeight",
                                "valueDecimal": 0,
                            }
                        ],
                    },
                    {
                        "valueCoding": {
                            **several,
                            "extension": [{"url": ordinal, "valueDecimal": 1}],
                        }
                    },
                ],
            }
            for link, code in (("1", "44250-9"), ("2", "44255-8"))
        ],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "phq-2-answers",
        "questionnaire": "http://example.org/Questionnaire/phq-2",
        "status": "completed",
        "subject": {"reference": "Patient/example"},
        "authored": "2020-02-03",
        "item": [
            {"linkId": "1", "answer": [{"valueCoding": not_at_all}]},
            {"linkId": "2", "answer": [{"valueCoding": several}]},
        ],
    }
    folder = copy_examples(tmp_path / "src", "Patient-example.json")
    (folder / "Questionnaire-phq-2.json").write_text(json.dumps(questionnaire))
    (folder / "QuestionnaireResponse-phq-2.json").write_text(json.dumps(response))
    ingest_fhir(new_store, folder)
    answers = timeline(new_store, "example").filter(pl.col("domain") == "survey")
    scores = dict(zip(answers["code"], answers["numeric_value"], strict=True))
    assert scores == {"LOINC/44250-9": 0.0, "LOINC/44255-8": 1.0}


def test_orders_and_alerts_are_kept_and_a_twin_lists_those_in_force(tmp_path, new_store):
    """An order is not its act: it is an ``order`` event, placed when authored, due by its
    occurrence's end, its intent kept (and an order *not* to do a thing says so). A Flag is an
    ``alert`` over its period. One naming its patient only by name, or dated only by an
    encounter the export lacks, is rejected with why."""
    folder = copy_examples(
        tmp_path / "src",
        "Patient-example.json",
        "ServiceRequest-colonoscopy.json",
        "ServiceRequest-do-not-turn.json",
        "ServiceRequest-myringotomy.json",
        "ServiceRequest-appendectomy-narrative.json",
        "Flag-example.json",
        "Flag-example-encounter.json",
    )
    report = ingest_fhir(new_store, folder)
    orders, flags = report.tables["fhir/ServiceRequest"], report.tables["fhir/Flag"]
    assert (orders.read, orders.accepted, flags.read, flags.accepted) == (4, 3, 2, 1)
    reasons = sorted(new_store.rejects()["reason"].to_list())
    assert reasons == [
        "no subject/patient reference",
        "no time: none of period or its encounter's period is present",
    ]
    events = timeline(new_store, "example")
    by_code = {r["code"]: r for r in events.iter_rows(named=True)}
    colonoscopy = by_code["SNOMED/73761001"]
    assert colonoscopy["domain"] == "order" and colonoscopy["time"] == datetime(2017, 3, 5)
    assert colonoscopy["text_value"] == "intent=order;status=completed"
    assert "do_not_perform=true" in by_code["SNOMED/359962006"]["text_value"]
    dog = by_code["http://example.org/local/bigdog"]
    assert (dog["domain"], dog["time"], dog["end_time"]) == (
        "alert",
        datetime(2015, 1, 17),
        datetime(2016, 12, 1),
    )
    myringotomy = timeline(new_store, "77662").row(0, named=True)  # the Patient is not there
    assert (myringotomy["time"], myringotomy["end_time"]) == (
        datetime(2014, 2, 14),
        datetime(2014, 3, 14),
    )

    subject = new_store.lookup("fhir", "example")
    during = new_store.twin(subject, datetime(2016, 6, 1))
    assert [a["code"] for a in during.alerts] == ["http://example.org/local/bigdog"]
    after = new_store.twin(subject, datetime(2017, 3, 20))
    assert after.alerts == []
    listed = {o["code"]: o for o in after.orders}
    assert set(listed) == {"SNOMED/73761001", "SNOMED/359962006"}
    assert listed["SNOMED/359962006"]["do_not_perform"] == "true"
    assert all("status" not in o for o in after.orders)  # its latest status: later knowledge
    assert after.diff(during)["ended_alerts"] == ["http://example.org/local/bigdog"]


def test_a_patients_supplies_are_device_exposures_used_up_and_stock_is_not_a_patients(
    tmp_path, new_store
):
    """Synthea's supplies (SupplyDelivery) are device exposures, as the CDM holds them: the
    item, its quantity, the day delivered; a twin never lists them as devices in use. A ward's
    restock names no patient: counted, not mapped."""
    folder = copy_examples(
        tmp_path / "src", "Patient-example.json", "SupplyDelivery-simpledelivery.json"
    )
    gloves = {
        "resourceType": "SupplyDelivery",
        "id": "s1",
        "status": "completed",
        "patient": {"reference": "Patient/example"},
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/supply-item-type", "code": "device"}]},
        "suppliedItem": {
            "quantity": {"value": 2},
            "itemCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "706724001", "display": "Nitrile examination/treatment glove"}]},
        },
        "occurrenceDateTime": "2020-02-03T10:00:00Z",
    }  # fmt: skip
    (folder / "supply.json").write_text(json.dumps(gloves))
    report = ingest_fhir(new_store, folder)
    assert report.unhandled == {"SupplyDelivery of no patient (stock)": 1}
    event = timeline(new_store, "example").filter(pl.col("domain") == "device").row(0, named=True)
    assert (event["code"], event["numeric_value"]) == ("SNOMED/706724001", 2.0)
    assert event["time"] == event["end_time"] == datetime(2020, 2, 3, 10)
    twin = new_store.twin(new_store.lookup("fhir", "example"), datetime(2020, 6, 1))
    assert twin.devices == []


def test_diets_and_devices_ordered_are_orders_each_item_its_own(tmp_path, new_store):
    """A cardiac diet ordered as two diet types is two ``order`` events; a supplement and an
    insulin pump ordered are one each; an order naming a Device that says nothing of its type
    orders nothing known, and is rejected with why."""
    folder = copy_examples(
        tmp_path / "src",
        "Patient-example.json",
        "NutritionOrder-cardiacdiet.json",
        "NutritionOrder-diabeticsupplement.json",
        "DeviceRequest-insulinpump.json",
        "DeviceRequest-example.json",
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/NutritionOrder"].events == 3
    devices = report.tables["fhir/DeviceRequest"]
    assert (devices.read, devices.accepted, devices.rejected) == (2, 1, 1)
    assert new_store.rejects()["reason"].to_list() == ["no code: nothing says what is ordered"]
    diets = timeline(new_store, "example").filter(pl.col("domain") == "order")
    assert sorted(diets["code"].to_list()) == [
        "SNOMED/226208002",
        "SNOMED/386619000",
        "SNOMED/443051000124104",
    ]
    assert set(diets["time"].to_list()) == {datetime(2014, 9, 17)}
    assert set(diets["text_value"].to_list()) == {"intent=order;status=active"}
    pump = timeline(new_store, "dicom").row(0, named=True)
    assert (pump["code"], pump["domain"]) == ("LOINC/43148-6", "order")
    assert pump["time"] == datetime(2013, 5, 8, 2, 33, 27)  # authored at 09:33:27+07:00


def test_an_episode_of_care_is_an_episode_the_twin_lists_while_under_way(tmp_path, new_store):
    folder = copy_examples(tmp_path / "src", "Patient-example.json", "EpisodeOfCare-example.json")
    ingest_fhir(new_store, folder)
    (episode,) = (
        timeline(new_store, "example").filter(pl.col("domain") == "episode").iter_rows(named=True)
    )
    assert episode["time"] == datetime(2014, 9, 1) and episode["end_time"] is None
    assert episode["text_value"] == "active"
    subject = new_store.lookup("fhir", "example")
    assert [e["since"] for e in new_store.twin(subject, datetime(2015, 1, 1)).episodes] == [
        "2014-09-01T00:00:00"
    ]
    assert new_store.twin(subject, datetime(2014, 8, 1)).episodes == []


def test_a_clinical_impression_gives_its_findings_and_its_summary(tmp_path, new_store):
    """HL7's emergency assessment after a road accident: its finding (ICD-9 850.0, a
    concussion) is an observation at the assessment's time, not a confirmed diagnosis, and its
    summary a note."""
    folder = copy_examples(
        tmp_path / "ex", "ClinicalImpression-example.json", "Patient-example.json"
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/ClinicalImpression"].events == 2
    events = timeline(new_store, "example").filter(pl.col("source") == "fhir/ClinicalImpression")
    finding, summary = sorted(events.iter_rows(named=True), key=lambda e: e["domain"] == "note")
    assert (finding["code"], finding["domain"]) == ("ICD9CM/850.0", "observation")
    assert finding["text_value"] == "assessment=completed"
    assert finding["time"] == datetime(2014, 12, 6, 9)  # 20:00 at +11:00
    assert summary["domain"] == "note" and summary["text_value"].startswith("provisional diagnoses")


def test_consents_recorded_after_their_period_hold_nothing(tmp_path, new_store):
    """HL7's privacy consents of patient f001: one recorded in 2016 for a period that ended
    before (it never holds once recorded), one of 2015 on a nurse's access and correction,
    the consent in force until the later record replaces it."""
    folder = copy_examples(
        tmp_path / "ex",
        "Consent-consent-example-basic.json",
        "Consent-consent-example-notThem.json",
    )
    report = ingest_fhir(new_store, folder)
    assert report.tables["fhir/Consent"].accepted == 2
    subject = new_store.lookup("fhir", "f001")
    (held,) = new_store.twin(subject, datetime(2016, 1, 1)).consents
    assert held["code"] == "LOINC/59284-0" and held["since"].startswith("2015-11-18")
    assert "action=access,correct" in held["terms"] and "policy=HL7ActCode/OPTIN" in held["terms"]
    assert new_store.twin(subject, datetime(2016, 6, 1)).consents == []


def test_a_media_is_an_imaging_event_and_an_undated_one_is_rejected(tmp_path, new_store):
    """HL7's hand X-ray photograph: an imaging event coded by its modality on the day it was
    taken, the hand and the image's kind as text; the recording the example leaves undated is
    rejected saying so."""
    folder = copy_examples(
        tmp_path / "ex", "Media-xray.json", "Media-sound.json", "Patient-example.json"
    )
    report = ingest_fhir(new_store, folder)
    counts = report.tables["fhir/Media"]
    assert (counts.read, counts.accepted, counts.rejected) == (2, 1, 1)
    (photo,) = timeline(new_store, "example").filter(pl.col("source") == "fhir/Media").to_dicts()
    assert (photo["code"], photo["domain"]) == ("SNOMED/39714003", "imaging")
    assert photo["time"] == datetime(2016, 3, 15)
    assert photo["text_value"] == "body_site=SNOMED/85151006;content_type=image/jpeg"
    (reason,) = new_store.rejects()["reason"]
    assert reason.startswith("no time: none of createdDateTime")
