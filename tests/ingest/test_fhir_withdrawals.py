"""FHIR records the source withdraws: a result later marked entered in error, a resource a
transaction deletes, the versions a history bundle lists. A withdrawn record leaves the store's
current view (and the twin) from the batch that says so on; nothing else moves."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl

from jumeau.export.meds import export_meds
from jumeau.ingest.fhir import ingest_fhir
from jumeau.twin.registry import TwinRegistry

SUBJECT = {"reference": "Patient/w1"}
PATIENT = {"resourceType": "Patient", "id": "w1", "birthDate": "1960-05-01", "gender": "female"}
LOINC = "http://loinc.org"


def blood_pressure(rid: str, day: str, sbp: float, status: str = "final") -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": SUBJECT,
        "effectiveDateTime": day,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": sbp, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 80, "unit": "mm[Hg]", "code": "mm[Hg]"},
            },
        ],
    }


def glucose(rid: str, day: str, value: float, status: str = "final") -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": "2339-0"}]},
        "subject": SUBJECT,
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": "mg/dL", "code": "mg/dL"},
    }


def write_bundle(path: Path, kind: str, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}))
    return path


def ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def codes_and_values(store, subject: int) -> list[tuple[str, float | None]]:
    frame = store.timeline(subject)
    frame = frame.filter(frame["domain"] != "demographic")
    return sorted(zip(frame["code"].to_list(), frame["numeric_value"].to_list(), strict=True))


def test_a_result_later_entered_in_error_leaves_the_store_and_the_twin(tmp_path, new_store):
    ingest_fhir(
        new_store,
        ndjson(
            tmp_path / "day1.ndjson",
            [PATIENT, blood_pressure("bp1", "2021-03-01", 190), glucose("g1", "2021-03-01", 99)],
        ),
    )
    subject = new_store.lookup("fhir", "w1")
    as_of = datetime(2021, 6, 1)
    registry = TwinRegistry(new_store, as_of)
    registry.update()
    assert registry.snapshot(subject)["variables"]["sbp"]["last_value"] == 190

    report = ingest_fhir(
        new_store,
        ndjson(
            tmp_path / "day2.ndjson", [blood_pressure("bp1", "2021-03-01", 190, "entered-in-error")]
        ),
    )
    assert report.committed and report.events_retracted == 2 and report.events_written == 0
    assert any("withdrawn at the source" in w for w in report.warnings)
    assert codes_and_values(new_store, subject) == [("LOINC/2339-0", 99.0)]
    assert "sbp" not in new_store.twin(subject, as_of).variables
    stats = new_store.stats()
    assert (stats["amended_records"], stats["withdrawn_records"]) == (0, 2)
    export_meds(new_store, tmp_path / "meds")  # what the ML ecosystem gets: the same
    exported = pl.read_parquet(tmp_path / "meds" / "data" / "**" / "*.parquet")
    assert "LOINC/8480-6" not in exported["code"].to_list()
    assert "LOINC/2339-0" in exported["code"].to_list()
    update = registry.update()
    assert update["rebuilt"] == 1 and "sbp" not in registry.snapshot(subject)["variables"]

    again = ingest_fhir(new_store, tmp_path / "day2.ndjson")  # said twice: nothing more to hide
    assert again.events_retracted == 0 and not again.committed
    assert codes_and_values(new_store, subject) == [("LOINC/2339-0", 99.0)]


def test_a_history_bundle_keeps_each_resources_newest_version_and_applies_its_deletes(
    tmp_path, new_store
):
    """A history lists versions newest first: the first one read is the record, the older ones
    are rejected as such, a deletion hides the versions before it."""
    entries = [
        {"resource": PATIENT, "request": {"method": "PUT", "url": "Patient/w1"}},
        {"resource": glucose("g1", "2021-03-01", 140), "request": {"method": "PUT", "url": "Observation/g1"}},
        {"request": {"method": "DELETE", "url": "Observation/g2/_history/2"}},
        {"resource": glucose("g1", "2021-03-01", 104), "request": {"method": "POST", "url": "Observation"}},
        {"resource": glucose("g2", "2021-04-01", 300), "request": {"method": "POST", "url": "Observation"}},
        {"resource": glucose("g3", "2021-05-01", 250, "entered-in-error")},
        {"resource": glucose("g3", "2021-05-01", 95), "request": {"method": "POST", "url": "Observation"}},
    ]  # fmt: skip
    report = ingest_fhir(new_store, write_bundle(tmp_path / "history.json", "history", entries))
    subject = new_store.lookup("fhir", "w1")
    assert codes_and_values(new_store, subject) == [("LOINC/2339-0", 140.0)]
    reasons = dict(new_store.rejects().select("record", "reason").iter_rows())
    assert reasons == {
        "entry 3 (Observation)": "an older version of a resource read earlier "
        "(a history lists the newest first)",
        "entry 4 (Observation)": "deleted at the source (a DELETE entry of this batch names it)",
        "entry 5 (Observation)": "status entered-in-error: not part of the patient's record",
        "entry 6 (Observation)": "an older version of a resource read earlier "
        "(a history lists the newest first)",
    }
    counts = report.tables["fhir/Observation"]
    assert (counts.read, counts.accepted, counts.rejected) == (5, 1, 4)


def test_a_transaction_delete_withdraws_what_an_earlier_batch_stored(tmp_path, new_store):
    ingest_fhir(
        new_store,
        ndjson(
            tmp_path / "export.ndjson",
            [PATIENT, blood_pressure("bp1", "2021-03-01", 150), glucose("g1", "2021-03-02", 99)],
        ),
    )
    subject = new_store.lookup("fhir", "w1")
    entries = [
        {"request": {"method": "DELETE", "url": "https://ehr.example.org/fhir/Observation/bp1"}},
        {"request": {"method": "DELETE", "url": "Observation?subject=Patient/w1"}},
        {"request": {"method": "DELETE", "url": "Patient/w1"}},
        {"request": {"method": "DELETE", "url": "Observation/never-stored"}},
    ]
    report = ingest_fhir(new_store, write_bundle(tmp_path / "tx.json", "transaction", entries))
    assert report.events_retracted == 2  # both pressures of the one record
    assert codes_and_values(new_store, subject) == [("LOINC/2339-0", 99.0)]
    reasons = dict(new_store.rejects().select("record", "reason").iter_rows())
    assert (
        reasons["entry 1"].startswith("DELETE 'Observation?subject=")
        and "not applied" in reasons["entry 1"]
    )
    assert "jumeau forget" in reasons["entry 2"]
    sources = dict(new_store.rejects().select("record", "source").iter_rows())
    assert (sources["entry 1"], sources["entry 2"]) == ("fhir/Observation", "fhir/Patient")
    assert new_store.lookup("fhir", "w1") == subject  # the patient is still there


def test_a_complete_export_withdraws_the_resources_the_server_no_longer_holds(tmp_path, new_store):
    """A Bulk Data export taken again lacks one Observation (deleted on the server): ingested
    as a full refresh, that Observation's events are withdrawn; the resource types the new
    export does not hold (its Conditions) and another server's records stay."""
    problem = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "subject": SUBJECT,
        "onsetDateTime": "2020-01-01",
    }
    first = [PATIENT, blood_pressure("bp1", "2021-03-01", 150), glucose("g1", "2021-03-02", 99)]
    ingest_fhir(new_store, ndjson(tmp_path / "first.ndjson", [*first, problem]))
    ingest_fhir(new_store, tmp_path / "first.ndjson", source_name="other-server")
    export = ndjson(tmp_path / "second.ndjson", [PATIENT, glucose("g1", "2021-03-02", 99)])
    assert ingest_fhir(new_store, export).events_retracted == 0  # a plain ingest only adds

    report = ingest_fhir(new_store, export, full_refresh=True)
    assert report.events_retracted == 2
    subject = new_store.lookup("fhir", "w1")
    assert codes_and_values(new_store, subject) == [
        ("LOINC/2339-0", 99.0),
        ("SNOMED/38341003", None),
    ]
    other = new_store.lookup("other-server", "w1")
    assert len(codes_and_values(new_store, other)) == 4


def test_a_full_refresh_keeps_what_the_export_still_holds_but_rejects_today(tmp_path, new_store):
    """A resource the new export holds in a shape rejected today (its value become text, its
    date gone) is still the server's: the full refresh keeps its stored version; only the
    resource gone from the export is withdrawn."""
    first = [
        PATIENT,
        glucose("g1", "2021-03-02", 99),
        glucose("g2", "2021-03-03", 101),
        glucose("g3", "2021-03-04", 103),
    ]
    ingest_fhir(new_store, ndjson(tmp_path / "first.ndjson", first))
    broken = glucose("g1", "2021-03-02", 99)
    broken["valueQuantity"]["value"] = "99,0"
    undated = glucose("g2", "2021-03-03", 101)
    del undated["effectiveDateTime"]
    report = ingest_fhir(
        new_store,
        ndjson(
            tmp_path / "second.ndjson",
            [PATIENT, broken, undated, glucose("g4", "2021-03-05", 105)],
        ),
        full_refresh=True,
    )
    assert report.tables["fhir/Observation"].rejected == 2
    assert report.events_retracted == 1  # g3, gone from the export
    subject = new_store.lookup("fhir", "w1")
    assert [v for _, v in codes_and_values(new_store, subject)] == [99.0, 101.0, 105.0]


def test_a_full_refresh_leaves_no_scratch_file_in_its_batch(tmp_path, new_store):
    ingest_fhir(
        new_store, ndjson(tmp_path / "a.ndjson", [PATIENT, glucose("g1", "2021-03-02", 99)])
    )
    broken = glucose("g1", "2021-03-02", 99) | {"effectiveDateTime": "not a date"}
    export = ndjson(tmp_path / "b.ndjson", [PATIENT, broken, glucose("g2", "2021-03-03", 98)])
    report = ingest_fhir(new_store, export, full_refresh=True)
    batch = new_store.root / "batches" / report.batch
    assert sorted(p.name for p in batch.iterdir()) == [
        "codes.parquet",
        "events.arrow",
        "events.parquet",
        "parts.parquet",
        "rejects.parquet",
        "report.json",
        "subjects.parquet",
        "vault.bin",
    ]


def questionnaire(rid: str, answers: dict[str, int]) -> dict:
    """A completed questionnaire: one item a question, its answer an integer."""
    return {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "status": "completed",
        "questionnaire": "Questionnaire/phq",
        "subject": SUBJECT,
        "authored": "2021-04-01T09:00:00Z",
        "item": [
            {"linkId": link, "answer": [{"valueInteger": value}]} for link, value in answers.items()
        ],
    }


def test_a_delete_withdraws_every_part_of_the_resource_it_names(tmp_path, new_store):
    """A DELETE names a resource, not its events: every one it was stored as goes, however
    its parts are numbered (a questionnaire's answers, deep in its items)."""
    answers = {f"q{i}": i for i in range(70)}
    ingest_fhir(
        new_store,
        ndjson(tmp_path / "a.ndjson", [PATIENT, questionnaire("qr1", answers), glucose("g1",
               "2021-03-02", 99)]),
    )  # fmt: skip
    subject = new_store.lookup("fhir", "w1")
    assert len(codes_and_values(new_store, subject)) == 71
    entries = [{"request": {"method": "DELETE", "url": "QuestionnaireResponse/qr1"}}]
    report = ingest_fhir(new_store, write_bundle(tmp_path / "tx.json", "transaction", entries))
    assert report.events_retracted == 70
    assert codes_and_values(new_store, subject) == [("LOINC/2339-0", 99.0)]


def test_a_new_version_of_a_resource_hides_the_parts_it_no_longer_has(tmp_path, new_store):
    """An update sends a resource whole: the parts its new version lacks (an answer taken
    out, a panel's component removed) leave the store, those it keeps are amended, and the
    other resources are untouched."""
    panel = blood_pressure("bp1", "2021-03-01", 150)
    first = [PATIENT, panel, questionnaire("qr1", {"q1": 1, "q2": 2, "q3": 3})]
    ingest_fhir(new_store, ndjson(tmp_path / "a.ndjson", first))
    subject = new_store.lookup("fhir", "w1")
    systolic_only = panel | {"component": panel["component"][:1]}
    update = [systolic_only, questionnaire("qr1", {"q1": 1, "q3": 4})]
    report = ingest_fhir(new_store, ndjson(tmp_path / "b.ndjson", update))
    assert report.events_retracted == 2  # the diastolic pressure, the third answer
    values = codes_and_values(new_store, subject)
    assert ("LOINC/8462-4", 80.0) not in values and ("LOINC/8480-6", 150.0) in values
    answers = [v for c, v in values if c.startswith("FHIR/Questionnaire/phq")]
    assert sorted(answers) == [1.0, 4.0]
    again = ingest_fhir(new_store, tmp_path / "b.ndjson")
    assert not again.committed and again.events_retracted == 0


def test_a_full_refresh_keeps_every_part_of_a_resource_rejected_today(tmp_path, new_store):
    """A panel the new export holds in a shape rejected today keeps all its stored parts."""
    first = [PATIENT, blood_pressure("bp1", "2021-03-01", 150), glucose("g1", "2021-03-02", 99)]
    ingest_fhir(new_store, ndjson(tmp_path / "a.ndjson", first))
    broken = blood_pressure("bp1", "2021-03-01", 150)
    broken["effectiveDateTime"] = "not a date"
    second = [PATIENT, broken, glucose("g1", "2021-03-02", 99)]
    report = ingest_fhir(new_store, ndjson(tmp_path / "b.ndjson", second), full_refresh=True)
    assert report.tables["fhir/Observation"].rejected == 1 and report.events_retracted == 0
    subject = new_store.lookup("fhir", "w1")
    assert codes_and_values(new_store, subject) == [
        ("LOINC/2339-0", 99.0),
        ("LOINC/8462-4", 80.0),
        ("LOINC/8480-6", 150.0),
    ]
