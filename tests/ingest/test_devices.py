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
