"""FHIR Observations carrying waveforms (SampledData): samples into the signal store, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import wfdb

import jumeau
from jumeau.ingest.fhir import ingest_fhir
from jumeau.ingest.fhir_sampled import SampledDataError, read_sampled_data
from jumeau.signals.store import to_physical

PTB_LEAD_II = Path(__file__).resolve().parents[1] / "data" / "wfdb" / "s0010_re_ii"


def _ecg_bundle(observations: list[dict]) -> dict:
    patient = {"resourceType": "Patient", "id": "ecg-patient", "gender": "female"}
    entries = [{"fullUrl": "urn:uuid:ecg-patient", "resource": patient}]
    entries += [{"fullUrl": f"urn:uuid:{o['id']}", "resource": o} for o in observations]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _ecg_observation(obs_id: str, when: str, digital: np.ndarray) -> dict:
    """A resting ECG as the FHIR R4 'ekg' example shapes it: one component per lead, the lead
    named by its MDC code, samples as SampledData (here PTB lead ii at 1000 Hz, 0.5 uV steps)."""
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"code": "procedure"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG"}]},
        "subject": {"reference": "urn:uuid:ecg-patient"},
        "effectiveDateTime": when,
        "component": [
            {
                "code": {
                    "coding": [
                        {
                            "system": "urn:oid:2.16.840.1.113883.6.24",
                            "code": "131330",
                            "display": "MDC_ECG_ELEC_POTL_II",
                        }
                    ]
                },
                "valueSampledData": {
                    "origin": {"value": 0, "unit": "mV", "code": "mV"},
                    "period": 1,
                    "factor": 0.0005,
                    "dimensions": 1,
                    "data": " ".join(str(int(v)) for v in digital),
                },
            }
        ],
    }


def test_an_ecg_observation_becomes_a_waveform_with_its_exact_samples(tmp_path, new_store):
    record = wfdb.rdrecord(str(PTB_LEAD_II), physical=False)
    digital = record.d_signal[:, 0]
    bundle = _ecg_bundle([_ecg_observation("ecg-1", "2021-03-04T10:15:00Z", digital)])
    (tmp_path / "ecg.json").write_text(json.dumps(bundle))
    report = ingest_fhir(new_store, tmp_path / "ecg.json")
    assert report.tables["fhir/Observation"].accepted == 1
    (signal,) = new_store.signal_records()
    assert (signal.fs, signal.channels, signal.units) == (1000.0, ["MDC_ECG_ELEC_POTL_II"], ["mv"])
    assert str(signal.start) == "2021-03-04 10:15:00"
    reference = wfdb.rdrecord(str(PTB_LEAD_II)).p_signal[:, 0]
    assert np.array_equal(signal.physical(0)[1], reference)
    subject = new_store.lookup("fhir", "ecg-patient")
    events = new_store.timeline(subject)
    waveform = events.filter(events["domain"] == "signal")
    assert waveform["code"].to_list() == ["LOINC/11524-6"]
    assert waveform["text_value"][0] == signal.id
    assert (waveform["end_time"][0] - waveform["time"][0]).total_seconds() == pytest.approx(38.4)


def test_the_waveform_reaches_the_ecg_features_and_is_not_stored_twice(tmp_path, new_store):
    from jumeau.signals.features import ecg_features

    digital = wfdb.rdrecord(str(PTB_LEAD_II), physical=False).d_signal[:, 0]
    first = _ecg_observation("ecg-1", "2021-03-04T10:15:00Z", digital)
    (tmp_path / "a.json").write_text(json.dumps(_ecg_bundle([first])))
    ingest_fhir(new_store, tmp_path / "a.json")
    second = _ecg_observation("ecg-2", "2022-03-04T10:15:00Z", digital)
    (tmp_path / "a.json").write_text(json.dumps(_ecg_bundle([first, second])))
    ingest_fhir(new_store, tmp_path / "a.json")  # the same export, grown by one ECG
    assert len(new_store.signal_records()) == 2
    report = ecg_features(new_store)
    assert report.tables["derived/ecg"].accepted == 2
    subject = new_store.lookup("fhir", "ecg-patient")
    twin = new_store.twin(subject)
    assert twin.variables["heart_rate"].estimate.n_observations == 2
    assert 70 < twin.variables["heart_rate"].last_value < 95  # 52 beats in 38.4 s


def test_sampled_data_reads_origin_factor_limits_errors_and_dimensions():
    """The shape of the FHIR R4 spec's SampledData: ``origin + factor * data``; E is a missing
    value, L and U the lower and upper limits; two dimensions interleave two channels."""
    signal = read_sampled_data(
        {
            "origin": {"value": 2048, "unit": "uV"},
            "period": 10,
            "factor": 1.612,
            "lowerLimit": -3300,
            "upperLimit": 3300,
            "dimensions": 2,
            "data": "2041 2043 2.5 E L U",
        },
        "lead",
    )
    assert signal.fs == 100.0 and [c.name for c in signal.channels] == ["lead/1", "lead/2"]
    first, second = (
        to_physical(signal.digital[:, i].astype(np.int32), vars(c))
        for i, c in enumerate(signal.channels)
    )
    assert first[:2] == pytest.approx([2048 + 1.612 * 2041, 2048 + 1.612 * 2.5])
    assert first[2] == pytest.approx(-3300, abs=0.2)  # L, to the data's 0.1 resolution
    assert second[0] == pytest.approx(2048 + 1.612 * 2043)
    assert np.isnan(second[1]) and second[2] == pytest.approx(3300, abs=0.2)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"period": 1, "data": "1 2 x"}, "value 2 ('x') is not a number"),
        ({"period": 1, "data": "1 2 3", "dimensions": 2}, "do not divide into 2 dimensions"),
        ({"data": "1 2 3"}, "no period"),
        ({"period": 0, "data": "1"}, "not positive"),
    ],
)
def test_broken_sampled_data_is_a_clear_error(data, problem):
    with pytest.raises(SampledDataError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        read_sampled_data(data, "lead")


def test_an_observation_with_broken_samples_is_rejected_and_the_rest_kept(tmp_path, new_store):
    broken = _ecg_observation("ecg-bad", "2021-03-04T10:15:00Z", np.arange(10))
    broken["component"][0]["valueSampledData"]["data"] = "1 2 oops"
    good = _ecg_observation("ecg-good", "2021-03-05T10:15:00Z", np.arange(2000) % 50)
    (tmp_path / "b.json").write_text(json.dumps(_ecg_bundle([broken, good])))
    report = ingest_fhir(new_store, tmp_path / "b.json")
    counts = report.tables["fhir/Observation"]
    assert (counts.read, counts.accepted, counts.rejected) == (2, 1, 1)
    assert len(new_store.signal_records()) == 1
    (reject,) = (
        new_store.rejects().filter(new_store.rejects()["source"] == "fhir/Observation").to_dicts()
    )
    assert "ecg-bad" in reject["record"] or "entry 1" in reject["record"]
    assert "not a number" in reject["reason"]


def test_store_opened_after_ingest_lists_the_waveform(tmp_path, new_store):
    digital = wfdb.rdrecord(str(PTB_LEAD_II), physical=False).d_signal[:2000, 0]
    (tmp_path / "c.json").write_text(
        json.dumps(_ecg_bundle([_ecg_observation("ecg-1", "2021-03-04T10:15:00Z", digital)]))
    )
    ingest_fhir(new_store, tmp_path / "c.json")
    assert len(jumeau.open(new_store.root).signal_records()) == 1
