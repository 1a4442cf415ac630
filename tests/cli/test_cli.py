"""The command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

JUMEAU = [sys.executable, "-m", "jumeau.cli.app"]


def jumeau(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*JUMEAU, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, synthea_dir) -> Path:
    store = tmp_path_factory.mktemp("cli") / "store"
    jumeau("init", str(store))
    report = json.loads(
        jumeau("ingest", "fhir", str(synthea_dir), "--store", str(store), "--format", "json").stdout
    )
    assert report["committed"] and report["tables"]["fhir/Observation"]["read"] > 0
    return store


def test_stats_json(cli_store):
    stats = json.loads(jumeau("stats", "--store", str(cli_store), "--format", "json").stdout)
    assert stats["subjects"] > 0 and stats["events"] == sum(stats["events_by_domain"].values())


def test_timeline_json_uses_the_canonical_fields(cli_store):
    subject = jumeau("subjects", "--store", str(cli_store), "--limit", "1").stdout.strip()
    events = json.loads(
        jumeau(
            "timeline", subject, "--store", str(cli_store), "--code", "LOINC/", "--format", "json"
        ).stdout
    )
    assert events and all(e["code"].startswith("LOINC/") for e in events)
    assert set(events[0]) >= {
        "subject_id",
        "time",
        "code",
        "numeric_value",
        "text_value",
        "unit",
        "end_time",
        "domain",
    }
    assert all(e["subject_id"] == int(subject) for e in events)
    text = jumeau("timeline", subject, "--store", str(cli_store)).stdout
    assert "subject" in text and "LOINC/" in text


def test_reidentify_names_the_source_patient_and_needs_a_purpose(cli_store, synthea_dir):
    from jumeau.ingest.fhir import iter_resources

    bundle = sorted(synthea_dir.glob("*.json"))[0]
    patient = next(r for r in iter_resources(bundle) if r["resourceType"] == "Patient")
    store = str(cli_store)
    pseudonym = jumeau("lookup", "--store", store, "--source", "fhir", "--id", patient["id"])
    subject = pseudonym.stdout.strip()
    shown = jumeau("reidentify", subject, "--store", store, "--purpose", "recall of a device")
    assert f"fhir patient {patient['id']}" in shown.stdout
    assert patient["name"][0]["family"] in shown.stdout
    (found,) = json.loads(
        jumeau(
            "reidentify", subject, "--store", store, "--purpose", "audit", "--format", "json"
        ).stdout
    )
    assert found["source_id"] == patient["id"] and found["subject_id"] == int(subject)
    refused = jumeau("reidentify", subject, "--store", store, check=False)
    assert refused.returncode == 2 and "--purpose" in refused.stderr
    blank = jumeau("reidentify", subject, "--store", store, "--purpose", " ", check=False)
    assert blank.returncode == 2 and "purpose" in blank.stderr
    trail = json.loads(jumeau("audit", "--store", store, "--format", "json").stdout)
    assert [e["purpose"] for e in trail][-2:] == ["recall of a device", "audit"]
    assert "chain intact" in jumeau("audit", "--store", store).stdout
    log = Path(store) / "audit" / "reidentifications.jsonl"
    kept = log.read_text()
    log.write_text(kept.replace("recall of a device", "nothing to see"))
    tampered = jumeau("audit", "--store", store, check=False)
    log.write_text(kept)  # the module's store, as it was
    assert tampered.returncode == 2 and "was changed" in tampered.stderr


def test_lookup_finds_the_pseudonym(cli_store, synthea_dir):
    from jumeau.ingest.fhir import iter_resources

    bundle = sorted(synthea_dir.glob("*.json"))[0]
    patient = next(r for r in iter_resources(bundle) if r["resourceType"] == "Patient")
    found = jumeau("lookup", "--store", str(cli_store), "--source", "fhir", "--id", patient["id"])
    pseudonym = found.stdout.strip()
    assert "no events" not in found.stderr
    elsewhere = jumeau("lookup", "--store", str(cli_store), "--source", "omop", "--id", "1")
    assert "has no events" in elsewhere.stderr  # a wrong source still gives a pseudonym
    events = json.loads(
        jumeau("timeline", pseudonym, "--store", str(cli_store), "--format", "json").stdout
    )
    assert any(
        e["code"] == "MEDS_BIRTH" and e["time"].startswith(patient["birthDate"]) for e in events
    )


def test_export_meds(cli_store, tmp_path):
    result = json.loads(
        jumeau(
            "export", "meds", str(tmp_path / "m"), "--store", str(cli_store), "--format", "json"
        ).stdout
    )
    assert result["events"] > 0 and (tmp_path / "m" / "metadata" / "codes.parquet").exists()


def test_errors_are_one_clear_line(tmp_path):
    result = jumeau("stats", "--store", str(tmp_path / "nothing"), check=False)
    assert result.returncode == 2 and "not a jumeau store" in result.stderr
    jumeau("init", str(tmp_path / "s"))
    bad = jumeau(
        "ingest", "omop", str(tmp_path / "nope.csv"), "--store", str(tmp_path / "s"), check=False
    )
    assert bad.returncode == 2 and "nope.csv: no such file or folder" in bad.stderr
    (tmp_path / "notes.txt").write_text("not a CDM")
    odd = jumeau(
        "ingest", "omop", str(tmp_path / "notes.txt"), "--store", str(tmp_path / "s"), check=False
    )
    assert odd.returncode == 2 and "expected a folder of CDM tables" in odd.stderr
    missing = jumeau("timeline", "42", "--store", str(tmp_path / "s"), check=False)
    assert missing.returncode == 2 and "not in" in missing.stderr


def test_signal_reads_the_channel_asked_for_in_whichever_record_holds_it(tmp_path):
    store = tmp_path / "store"
    record = Path(__file__).resolve().parents[1] / "data" / "wfdb" / "03700181"
    jumeau("init", str(store))
    jumeau("ingest", "wfdb", str(record), "--store", str(store), "--subject", "icu-1")
    subject = jumeau("lookup", "--store", str(store), "--source", "wfdb", "--id", "icu-1")
    subject = subject.stdout.strip().split()[-1]
    for channel, fs, unit in (("MCL1", 500.0, "mV"), ("ABP", 125.0, "mmHg")):
        out = jumeau(
            "signal",
            subject,
            "--store",
            str(store),
            "--channel",
            channel,
            "--format",
            "json",
            "--points",
            "500",
        )
        window = json.loads(out.stdout)
        assert (window["channel"], window["fs"], window["unit"]) == (channel, fs, unit)
        assert 0 < len(window["t"]) <= 500
    missing = jumeau("signal", subject, "--store", str(store), "--channel", "V5", check=False)
    assert (
        missing.returncode != 0 and "channels: ABP, MCL1, RESP" in missing.stdout + missing.stderr
    )


def test_text_output_shows_bracketed_ucum_units_as_they_are(tmp_path):
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1970-05-01"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
                    "subject": {"reference": "Patient/p1"},
                    "effectiveDateTime": "2020-03-01T08:00:00Z",
                    "valueQuantity": {"value": 98.6, "unit": "degF", "code": "[degF]"},
                }
            },
        ],
    }
    (tmp_path / "b.json").write_text(json.dumps(bundle))
    store = str(tmp_path / "store")
    jumeau("init", store)
    jumeau("ingest", "fhir", str(tmp_path / "b.json"), "--store", store)
    subject = jumeau("lookup", "--store", store, "--source", "fhir", "--id", "p1").stdout.strip()
    assert "98.6 [degF]" in jumeau("timeline", subject, "--store", store).stdout
    twin = jumeau("twin", subject, "--store", store, "--as-of", "2020-06-01").stdout
    assert "37 Cel" in twin  # converted from Fahrenheit, and the unit shown


def test_forget_erases_a_subject_and_says_so(tmp_path, synthea_dir):
    store = str(tmp_path / "store")
    bundle = str(sorted(synthea_dir.glob("*.json"))[0])
    jumeau("init", store)
    jumeau("ingest", "fhir", bundle, "--store", store)
    subject = jumeau("subjects", "--store", store, "--limit", "1").stdout.strip()
    refused = jumeau("forget", subject, "--store", store, check=False)
    assert refused.returncode == 2 and "--purpose" in refused.stderr
    events = json.loads(jumeau("stats", "--store", store, "--format", "json").stdout)["events"]
    planned = json.loads(
        jumeau(
            "forget",
            subject,
            "12345",
            "--store",
            store,
            "--purpose",
            "check",
            "--dry-run",
            "--format",
            "json",
        ).stdout
    )
    assert planned["subjects"] == {"12345": 0, subject: events} and len(planned["batches"]) == 1
    assert (
        json.loads(jumeau("stats", "--store", store, "--format", "json").stdout)["events"] == events
    )
    done = json.loads(
        jumeau(
            "forget", subject, "--store", store, "--purpose", "opt-out 17", "--format", "json"
        ).stdout
    )
    assert done["subjects"] == 1 and done["events_removed"] > 0
    stats = json.loads(jumeau("stats", "--store", store, "--format", "json").stdout)
    assert stats["subjects"] == 0 and stats["events"] == 0
    again = jumeau("ingest", "fhir", bundle, "--store", store)
    assert "withdrew" in again.stdout


def test_a_full_refresh_says_what_the_source_withdrew(tmp_path, synthea_dir):
    """A bundle ingested again as a full refresh, without its Immunizations' file entries:
    the command reports the events withdrawn and the stats count them."""
    store = str(tmp_path / "store")
    bundle = sorted(synthea_dir.glob("*.json"))[0]
    document = json.loads(bundle.read_text())
    jumeau("init", store)
    jumeau("ingest", "fhir", str(bundle), "--store", store)
    kept = [e for e in document["entry"] if e["resource"]["resourceType"] != "Immunization"]
    immunizations = len(document["entry"]) - len(kept)
    assert immunizations > 0
    one_left = next(e for e in document["entry"] if e["resource"]["resourceType"] == "Immunization")
    refreshed = tmp_path / "refreshed.json"
    refreshed.write_text(json.dumps({**document, "entry": [*kept, one_left]}))
    report = json.loads(
        jumeau(
            "ingest", "fhir", str(refreshed), "--store", store, "--full-refresh", "--format", "json"
        ).stdout
    )
    assert report["events_retracted"] == immunizations - 1
    text = jumeau("stats", "--store", store).stdout
    assert f"0 record(s) amended and {immunizations - 1:,} withdrawn" in text
