"""Connected-device streams: time zones, units, duplicates, clock jumps, bad rows."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest

from jumeau.ingest.devices import ingest_devices


def test_a_wearable_stream_lands_in_utc_with_loinc_codes(tmp_path, new_store):
    stream = tmp_path / "watch.csv"
    stream.write_text(
        "time,metric,value,unit,device\n"
        "2024-03-31T01:59:00,heart_rate,61,/min,watch\n"
        "2024-03-31T03:00:00,heart_rate,64,/min,watch\n"  # Paris skips 02:00-03:00 that night
        "2024-03-31T03:00:00,heart_rate,64,/min,watch\n"  # exact duplicate
        "2024-03-31T03:01:00,spo2,97,%,watch\n"
        "2024-03-31T02:30:00+00:00,steps,120,,watch\n"
        "not a time,heart_rate,70,/min,watch\n"
        "2024-03-31T03:05:00,heart_rate,abc,/min,watch\n"
    )
    report = ingest_devices(new_store, stream, subject="p1", timezone="Europe/Paris")
    counts = report.tables["device/sample"]
    assert (counts.read, counts.accepted, counts.rejected, counts.events) == (7, 5, 2, 4)
    assert any("duplicate" in w for w in report.warnings)
    events = new_store.timeline(new_store.lookup("device", "p1")).sort("time")
    hr = events.filter(pl.col("code") == "LOINC/8867-4")
    assert hr["time"].to_list() == [
        datetime(2024, 3, 31, 0, 59),
        datetime(2024, 3, 31, 1, 0),
    ]  # CET, then CEST
    assert events.filter(pl.col("code") == "LOINC/59408-5")["unit"][0] == "%"
    assert events.filter(pl.col("code") == "LOINC/55423-8")["time"][0] == datetime(
        2024, 3, 31, 2, 30
    )
    reasons = new_store.rejects()["reason"].to_list()
    assert any("row 6" in r for r in new_store.rejects()["record"].to_list()) and reasons


def test_clock_jumps_are_reported_and_naive_times_need_a_zone(tmp_path, new_store):
    stream = tmp_path / "cgm.json"
    stream.write_text(
        json.dumps(
            [
                {
                    "time": "2024-05-01T10:00:00Z",
                    "metric": "glucose",
                    "value": 110,
                    "unit": "mg/dL",
                    "device": "cgm",
                },
                {
                    "time": "2024-05-01T10:05:00Z",
                    "metric": "glucose",
                    "value": 115,
                    "unit": "mg/dL",
                    "device": "cgm",
                },
                {
                    "time": "2024-05-01T09:10:00Z",
                    "metric": "glucose",
                    "value": 112,
                    "unit": "mg/dL",
                    "device": "cgm",
                },
            ]
        )
    )
    report = ingest_devices(new_store, stream, subject="p2")
    assert any("clock" in w for w in report.warnings)
    naive = tmp_path / "naive.csv"
    naive.write_text("time,metric,value\n2024-05-01T10:00:00,steps,10\n")
    report = ingest_devices(new_store, naive, subject="p2")
    assert report.tables["device/sample"].rejected == 1
    assert "timezone" in new_store.rejects().filter(pl.col("file") == str(naive))["reason"][0]
    twin = new_store.twin(new_store.lookup("device", "p2"), datetime(2024, 6, 1))
    assert twin.variables["glucose"].last_value == pytest.approx(115 / 18.016)


def test_a_blood_pressure_cuff_export_with_one_column_per_metric(tmp_path, new_store):
    """A cuff's wide export: date and time of day in two columns, local time, units in headers."""
    cuff = tmp_path / "cuff.csv"
    cuff.write_text(
        "Date,Time,Systolic (mmHg),Diastolic (mmHg),Pulse (bpm),Note\n"
        "2024-05-02,07:30,138,88,72,after coffee\n"
        "2024-05-03,07:31,131,84,,\n"
    )
    report = ingest_devices(new_store, cuff, subject="p2", timezone="Europe/Paris")
    counts = report.tables["device/sample"]
    assert (counts.read, counts.accepted, counts.rejected) == (5, 5, 0)
    assert any("Note" in w for w in report.warnings)  # a column it could not read, said
    events = new_store.timeline(new_store.lookup("device", "p2")).sort("time", "code")
    first = events.filter(pl.col("time") == datetime(2024, 5, 2, 5, 30))  # UTC
    assert sorted(zip(first["code"], first["numeric_value"], first["unit"], strict=True)) == [
        ("LOINC/8462-4", 88.0, "mmHg"),
        ("LOINC/8480-6", 138.0, "mmHg"),
        ("LOINC/8867-4", 72.0, "bpm"),
    ]
    twin = new_store.twin(new_store.lookup("device", "p2"))
    assert twin.variables["sbp"].last_value == 131
    assert twin.variables["heart_rate"].last_value == 72


def test_healthkit_style_samples_and_epoch_times(tmp_path, new_store):
    """HealthKit identifiers name the metrics, SpO2 comes as a fraction, times as epoch ms."""
    stream = tmp_path / "health.json"
    samples = [
        {"type": "HKQuantityTypeIdentifierHeartRate", "startDate": "1714633200000", "value": 58},
        {
            "type": "HKQuantityTypeIdentifierOxygenSaturation",
            "startDate": "1714633260000",
            "value": 0.96,
            "unit": "%",
        },
        {
            "type": "HKQuantityTypeIdentifierBloodGlucose",
            "startDate": "2024-05-02T07:02:00Z",
            "value": 5.4,
            "unit": "mmol/L",
        },
    ]
    stream.write_text(json.dumps(samples))
    report = ingest_devices(new_store, stream, subject="p3")
    assert report.tables["device/sample"].accepted == 3
    events = new_store.timeline(new_store.lookup("device", "p3")).sort("time")
    assert events["code"].to_list() == ["LOINC/8867-4", "LOINC/59408-5", "LOINC/2339-0"]
    assert events["time"][0] == datetime(2024, 5, 2, 7, 0)
    assert events["numeric_value"][1] == pytest.approx(96.0)


def test_a_cgm_export_names_its_unit_in_the_header(tmp_path, new_store):
    cgm = tmp_path / "libre.csv"
    cgm.write_text(
        "Device,Device Timestamp,Record Type,Historic Glucose mg/dL\n"
        "FreeStyle,2024-05-02 08:00,0,104\n"
        "FreeStyle,2024-05-02 08:15,0,131\n"
    )
    report = ingest_devices(new_store, cgm, subject="p4", timezone="UTC")
    assert report.tables["device/sample"].accepted == 2
    events = new_store.timeline(new_store.lookup("device", "p4"))
    assert set(events["unit"]) == {"mg/dL"} and events["numeric_value"].to_list() == [104, 131]


def test_a_single_metric_file_names_its_metric_in_its_file_name(tmp_path, new_store):
    stream = tmp_path / "HeartRate.csv"
    stream.write_text("timestamp,value\n1714633200,61\n1714633260,63\n")
    report = ingest_devices(new_store, stream, subject="p5")
    assert report.tables["device/sample"].accepted == 2
    events = new_store.timeline(new_store.lookup("device", "p5"))
    assert set(events["code"]) == {"LOINC/8867-4"}


def test_two_patients_watches_sampling_at_the_same_instants_are_both_kept(tmp_path, new_store):
    stream = tmp_path / "watch.csv"
    stream.write_text(
        "time,metric,value,unit,device\n"
        "2024-03-31T03:00:00Z,heart_rate,64,/min,watch\n"
        "2024-03-31T03:01:00Z,heart_rate,66,/min,watch\n"
    )
    first = ingest_devices(new_store, stream, subject="p1")
    second = ingest_devices(new_store, stream, subject="p2")
    assert first.events_written == second.events_written == 2
    for patient in ("p1", "p2"):
        assert new_store.timeline(new_store.lookup("device", patient)).height == 2


APPLE_HEALTH = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE HealthData [
<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>
<!ATTLIST HealthData locale CDATA #REQUIRED>
]>
<HealthData locale="fr_FR">
 <ExportDate value="2024-04-02 09:00:00 +0200"/>
 <Me HKCharacteristicTypeIdentifierDateOfBirth="1961-05-04"
     HKCharacteristicTypeIdentifierBiologicalSex="HKBiologicalSexFemale"/>
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="Montre de Marie"
  sourceVersion="10.4" device="&lt;&lt;HKDevice: 0x28>, name:Apple Watch, manufacturer:Apple Inc.,
  model:Watch, hardware:Watch6,2, software:10.4&gt;" unit="count/min"
  creationDate="2024-04-01 08:01:10 +0200" startDate="2024-04-01 08:00:05 +0200"
  endDate="2024-04-01 08:00:05 +0200" value="72">
  <MetadataEntry key="HKMetadataKeyHeartRateMotionContext" value="0"/>
 </Record>
 <Record type="HKQuantityTypeIdentifierOxygenSaturation" sourceName="Montre de Marie"
  unit="%" creationDate="2024-04-01 08:05:00 +0200" startDate="2024-04-01 08:04:00 +0200"
  endDate="2024-04-01 08:04:00 +0200" value="0.97"/>
 <Correlation type="HKCorrelationTypeIdentifierBloodPressure" sourceName="Tensiomètre"
  creationDate="2024-04-01 09:00:00 +0200" startDate="2024-04-01 09:00:00 +0200"
  endDate="2024-04-01 09:00:00 +0200">
  <Record type="HKQuantityTypeIdentifierBloodPressureSystolic" sourceName="Tensiomètre"
   unit="mmHg" startDate="2024-04-01 09:00:00 +0200" endDate="2024-04-01 09:00:00 +0200"
   value="128"/>
  <Record type="HKQuantityTypeIdentifierBloodPressureDiastolic" sourceName="Tensiomètre"
   unit="mmHg" startDate="2024-04-01 09:00:00 +0200" endDate="2024-04-01 09:00:00 +0200"
   value="82"/>
 </Correlation>
 <Record type="HKCategoryTypeIdentifierSleepAnalysis" sourceName="Montre de Marie"
  startDate="2024-03-31 23:40:00 +0200" endDate="2024-04-01 01:10:00 +0200"
  value="HKCategoryValueSleepAnalysisAsleepCore"/>
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="Montre de Marie"
  unit="count/min" startDate="yesterday" endDate="yesterday" value="70"/>
 <Workout workoutActivityType="HKWorkoutActivityTypeWalking" duration="30"
  startDate="2024-04-01 18:00:00 +0200" endDate="2024-04-01 18:30:00 +0200"/>
</HealthData>
"""


def test_an_apple_health_export_is_read_as_a_stream_in_utc(tmp_path, new_store):
    export = tmp_path / "export.xml"
    export.write_text(APPLE_HEALTH)
    report = ingest_devices(new_store, export, subject="p1")
    counts = report.tables["device/sample"]
    assert (counts.read, counts.accepted, counts.rejected) == (6, 5, 1)
    assert any("1 Workout" in w for w in report.warnings)
    events = new_store.timeline(new_store.lookup("device", "p1"))
    by_code = {r["code"]: r for r in events.iter_rows(named=True)}
    hr = by_code["LOINC/8867-4"]
    assert hr["time"] == datetime(2024, 4, 1, 6, 0, 5) and hr["numeric_value"] == 72
    assert hr["text_value"] == "Apple Watch"  # the model, never "Montre de Marie"
    assert by_code["LOINC/59408-5"]["numeric_value"] == pytest.approx(97)
    assert by_code["LOINC/8480-6"]["numeric_value"] == 128  # inside the correlation
    assert by_code["LOINC/8462-4"]["numeric_value"] == 82
    sleep = by_code["DEVICE/sleep_analysis"]
    assert sleep["text_value"] == "asleep_core"
    assert (sleep["time"], sleep["end_time"]) == (
        datetime(2024, 3, 31, 21, 40),
        datetime(2024, 3, 31, 23, 10),
    )
    stored = " ".join(new_store.scan().collect()["text_value"].drop_nulls())
    assert "Marie" not in stored


def test_a_watchs_samples_feed_the_twin_in_healthkits_units(tmp_path, new_store):
    export = tmp_path / "export.xml"
    export.write_text(APPLE_HEALTH)
    ingest_devices(new_store, export, subject="p1")
    twin = new_store.twin(new_store.lookup("device", "p1"), as_of=datetime(2024, 4, 2))
    assert twin.variables["heart_rate"].values.tolist() == [72.0]  # count/min
    assert twin.variables["spo2"].values.tolist() == [97.0]
    assert twin.variables["sbp"].values.tolist() == [128.0]


def test_an_export_cut_short_keeps_the_samples_before_the_cut(tmp_path, new_store):
    export = tmp_path / "export.xml"
    export.write_text(APPLE_HEALTH[: APPLE_HEALTH.index(" <Correlation")] + ' <Record type="HKQ')
    report = ingest_devices(new_store, export, subject="p1")
    assert report.tables["device/sample"].accepted == 2  # the heart rate and the SpO2
    (reject,) = new_store.rejects().select("record", "reason").rows()
    assert reject[0] == "after sample 2" and "cannot be read further" in reject[1]


def test_a_folder_keeps_its_readable_streams_and_rejects_a_broken_file_alone(tmp_path, new_store):
    folder = tmp_path / "streams"
    folder.mkdir()
    (folder / "heart_rate.csv").write_text("time,value\n2024-03-01T08:00:00Z,61\n")
    (folder / "broken.json").write_text('{"data": [{"time": ')
    report = ingest_devices(new_store, folder, subject="p1")
    assert report.tables["device/sample"].accepted == 1
    (reject,) = new_store.rejects().select("file", "reason").rows()
    assert reject[0].endswith("broken.json") and "invalid JSON" in reject[1]
