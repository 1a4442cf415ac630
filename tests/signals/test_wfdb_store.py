"""WFDB records in the signal store: exact samples, annotations on the timeline, zoomable windows."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

import jumeau
from jumeau.ingest.wfdb import WfdbError, ingest_wfdb

RECORD = Path(__file__).resolve().parents[1] / "data" / "wfdb" / "100"
START = datetime(2020, 3, 1, 8, 0, 0)


@pytest.fixture(scope="module")
def ecg_store(tmp_path_factory, key_dir):
    store = jumeau.init(tmp_path_factory.mktemp("ecg") / "store")
    report = ingest_wfdb(store, RECORD, subject="6", subject_source="omop", start=START)
    return store, report


def test_samples_equal_wfdb_physical_values(ecg_store):
    store, _ = ecg_store
    (record,) = store.signal_records()
    reference = wfdb.rdrecord(str(RECORD))
    assert record.channels == ["MLII", "V5"]
    assert record.fs == 360 and record.samples == 650_000
    for i, name in enumerate(record.channels):
        _, values = record.physical(name)
        assert np.array_equal(values, reference.p_signal[:, i])


def test_reading_a_window_decompresses_only_its_chunks(ecg_store):
    store, _ = ecg_store
    (record,) = store.signal_records()
    reference = wfdb.rdrecord(str(RECORD), sampfrom=100_000, sampto=100_720, channels=[0])
    t, values = record.physical(
        "MLII", START + timedelta(seconds=100_000 / 360), START + timedelta(seconds=100_720 / 360)
    )
    assert np.allclose(values, reference.p_signal[:, 0])
    assert t[0] == pytest.approx(100_000 / 360)


def test_record_and_beats_sit_on_the_subjects_timeline(ecg_store):
    store, report = ecg_store
    subject = store.lookup("omop", "6")
    timeline = store.timeline(subject)
    record_event = timeline.filter(pl.col("code") == "WFDB/record")
    assert record_event["time"][0] == START
    assert record_event["end_time"][0] == START + timedelta(seconds=650_000 / 360)
    ann = wfdb.rdann(str(RECORD), "atr")
    beats = timeline.filter(pl.col("domain") == "annotation")
    assert beats.height == len(ann.sample) == report.tables["wfdb/annotation.atr"].accepted
    first_n = beats.filter(pl.col("code") == "WFDB/N")["time"][0]
    first_sample = ann.sample[ann.symbol.index("N")]
    assert abs((first_n - START).total_seconds() - first_sample / 360) < 1e-6
    assert "WFDB/rhythm/N" in set(beats["code"])  # rhythm changes: '+' annotations with a note
    assert (
        ingest_wfdb(store, RECORD, subject="6", subject_source="omop", start=START).events_written
        == 0
    )


@pytest.mark.parametrize("seconds", [10, 60, 600, 1800])
def test_pyramid_windows_bound_the_true_extremes(ecg_store, seconds):
    store, _ = ecg_store
    (record,) = store.signal_records()
    t0 = START + timedelta(seconds=37.3)
    t1 = t0 + timedelta(seconds=seconds)
    window = record.window("MLII", t0, t1, points=500)
    assert 0 < len(window["t"]) <= 500
    _, truth = record.physical("MLII", t0, t1)
    assert window["min"].min() <= truth.min() + 1e-6
    assert window["max"].max() >= truth.max() - 1e-6
    assert np.all(window["min"] <= window["max"])


def test_a_truncated_dat_file_is_a_clear_error_and_nothing_is_written(tmp_path):
    for ext in ("hea", "dat", "atr"):
        shutil.copy(f"{RECORD}.{ext}", tmp_path / f"100.{ext}")
    data = (tmp_path / "100.dat").read_bytes()
    (tmp_path / "100.dat").write_bytes(data[: len(data) // 3])
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(WfdbError, match="100"):
        ingest_wfdb(store, tmp_path / "100", start=START)
    assert store.stats()["events"] == 0 and store.signal_records() == []


def test_a_header_without_a_date_needs_a_start(tmp_path):
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(WfdbError, match="--start"):
        ingest_wfdb(store, RECORD)


def test_ecg_features_bridge_to_the_timeline_and_the_twin(ecg_store):
    from jumeau.signals.features import ecg_features

    store, _ = ecg_store
    report = ecg_features(store)
    assert report.committed and report.tables["derived/ecg"].accepted == 1
    subject = store.lookup("omop", "6")
    derived = store.timeline(subject).filter(pl.col("source") == "derived/ecg")
    record_hr = derived.filter(
        (pl.col("code") == "LOINC/8867-4") & pl.col("text_value").str.starts_with("record")
    )
    reference_beats = 2273  # MIT-BIH 100: 2,273 beats in 1,805.6 s
    assert record_hr["numeric_value"][0] == pytest.approx(reference_beats / 1805.56 * 60, rel=0.01)
    windows = derived.filter(
        (pl.col("code") == "LOINC/8867-4") & pl.col("text_value").str.starts_with("5-min")
    )
    assert windows.height == 7
    sdnn = derived.filter(pl.col("code") == "JUMEAU/ECG/SDNN")["numeric_value"]
    assert (sdnn > 5).all() and (sdnn < 300).all()
    twin = store.twin(subject, START + timedelta(hours=1))
    # the record adds one observation to the heart rate series, its summary (its windows and
    # its day describe the same beats again)
    assert twin.variables["heart_rate"].estimate.n_observations == 1
    assert twin.variables["heart_rate"].last_value == pytest.approx(record_hr["numeric_value"][0])
    day = derived.filter(
        pl.col("text_value").str.starts_with("day") & (pl.col("code") == "LOINC/8867-4")
    )
    assert day["time"][0] == datetime(2020, 3, 1)
    assert day["numeric_value"][0] == pytest.approx(record_hr["numeric_value"][0])
    qtc = derived.filter(
        (pl.col("code") == "LOINC/8636-3") & pl.col("text_value").str.starts_with("record")
    )
    assert (
        350 < qtc["numeric_value"][0] < 430
    )  # a normal adult QTc (record 100: sinus rhythm, ~75/min)
    assert 350 < twin.variables["qtc"].last_value < 430
    record_intervals = derived.filter(pl.col("text_value").str.starts_with("record"))
    pr = record_intervals.filter(pl.col("code") == "LOINC/8625-6")["numeric_value"]
    qrs = record_intervals.filter(pl.col("code") == "LOINC/8633-2")["numeric_value"]
    assert 120 <= pr[0] <= 220 and 60 <= qrs[0] <= 110  # normal conduction in record 100
    features = twin.to_dict()["signal_features"]
    last_window = windows.sort("time")["numeric_value"][-1]
    assert features["ecg_hr"]["value"] == pytest.approx(last_window)  # the most recent value
    assert {"ecg_sdnn", "ecg_rmssd", "ecg_qtc_bazett"} <= set(features)
    assert twin.risks["qtc_class"].missing == [
        "age",
        "sex",
    ]  # this store has no demographics for them
    again = ecg_features(store)  # records already summarised are not computed again
    assert again.events_written == 0 and again.tables["derived/ecg"].read == 0


def test_plot_draws_a_window_with_its_annotations(ecg_store, tmp_path):
    from jumeau.signals.plot import plot_window

    store, _ = ecg_store
    (record,) = store.signal_records()
    out = plot_window(
        store,
        record,
        tmp_path / "ecg.png",
        start=START + timedelta(minutes=5),
        end=START + timedelta(minutes=5, seconds=8),
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize("fmt", ["16", "80", "212"])
def test_wfdb_storage_formats_keep_their_values(tmp_path, new_store, fmt):
    rng = np.random.default_rng(3)
    fs, n = 250, 250 * 20
    signal = np.column_stack([np.sin(np.arange(n) / fs * 2 * np.pi * 1.2), rng.normal(0, 0.2, n)])
    wfdb.wrsamp(
        f"rec{fmt}",
        fs=fs,
        units=["mV", "mV"],
        sig_name=["I", "II"],
        p_signal=signal,
        fmt=[fmt, fmt],
        write_dir=str(tmp_path),
    )
    reference = wfdb.rdrecord(str(tmp_path / f"rec{fmt}"))
    ingest_wfdb(new_store, tmp_path / f"rec{fmt}", start=START)
    (record,) = new_store.signal_records()
    for i in range(2):
        assert np.array_equal(record.physical(i)[1], reference.p_signal[:, i])


def test_a_multi_frequency_record_keeps_every_channel_at_its_own_rate(new_store):
    """A monitoring record whose ECG has 4 samples a frame (500 Hz) beside a 125 Hz pressure:
    nothing is averaged down, and each channel reads back sample for sample."""
    path = RECORD.with_name("03700181")
    ingest_wfdb(new_store, path, subject="icu-1")
    reference = wfdb.rdrecord(str(path), smooth_frames=False)
    records = {c: r for r in new_store.signal_records() for c in r.channels}
    assert {c: records[c].fs for c in records} == {"MCL1": 500.0, "ABP": 125.0, "RESP": 125.0}
    for i, name in enumerate(reference.sig_name):
        assert np.array_equal(
            records[name].physical(name)[1], reference.e_p_signal[i], equal_nan=True
        )
    assert np.isnan(records["RESP"].physical("RESP")[1]).sum() > 0  # WFDB's missing samples
    drawn = records["RESP"].window("RESP", points=300)
    assert np.nanmin(drawn["min"]) == pytest.approx(np.nanmin(reference.e_p_signal[2]), rel=1e-6)
    assert records["ABP"].units[records["ABP"].channels.index("ABP")] == "mmhg"
    assert records["MCL1"].start == records["ABP"].start == datetime(1994, 8, 15, 17, 27, 45)
    assert records["MCL1"].end == records["ABP"].end
    subject = new_store.pseudonymiser.subject_id("wfdb", "icu-1")
    timeline = new_store.timeline(subject)
    assert timeline.filter(pl.col("code") == "WFDB/record").height == 2


def test_stats_count_waveform_records(ecg_store):
    store, _ = ecg_store
    assert store.stats()["signal_records"] == 1


def test_a_multi_segment_record_keeps_each_segments_values_and_its_gaps(tmp_path, new_store):
    """MIMIC-style multi-segment records: each segment has its own gain and baseline, and a
    gap (``~``) between segments; the folder's segment headers are read through the master."""
    fs = 125
    t = np.arange(1000) / fs
    for k, scale in ((1, 1.0), (2, 3.0)):  # the second segment spans a wider range: other gains
        wfdb.wrsamp(
            f"seg{k}",
            fs=fs,
            units=["mV", "mmHg"],
            sig_name=["II", "ABP"],
            p_signal=np.column_stack([scale * np.sin(2 * np.pi * 1.2 * t), 80 + 10 * scale * t]),
            fmt=["16", "16"],
            write_dir=str(tmp_path),
        )
    # a variable-layout record, as MIMIC writes them: a layout header, then the segments
    (tmp_path / "multi_layout.hea").write_text(
        "multi_layout 2 125 0\n~ 0 1/mV 16 0 0 0 0 II\n~ 0 1/mmHg 16 0 0 0 0 ABP\n"
    )
    (tmp_path / "multi.hea").write_text(
        "multi/4 2 125 2250 12:00:00 01/02/2020\nmulti_layout 0\nseg1 1000\n~ 250\nseg2 1000\n"
    )
    report = ingest_wfdb(new_store, tmp_path)
    assert report.tables["wfdb/record"].read == 1  # the layout and segments are parts of multi
    (record,) = new_store.signal_records()
    reference = wfdb.rdrecord(str(tmp_path / "multi"))
    assert record.samples == 2250 and record.start == datetime(2020, 2, 1, 12, 0)
    for i, name in enumerate(reference.sig_name):
        _, values = record.physical(name)
        expected = reference.p_signal[:, i]
        assert np.array_equal(np.isnan(values), np.isnan(expected))  # the gap, and only it
        step = 1 / min(wfdb.rdheader(str(tmp_path / f"seg{k}")).adc_gain[i] for k in (1, 2))
        assert np.nanmax(np.abs(values - expected)) <= step / 2


def test_two_patients_records_of_the_same_name_are_both_kept(new_store):
    """Databases reuse record names (every MIT-style database has a 100): a record belongs to
    its patient, and a second patient's record 100 is not taken for the first's."""
    first = ingest_wfdb(new_store, RECORD, subject="a", subject_source="icu", start=START)
    second = ingest_wfdb(new_store, RECORD, subject="b", subject_source="icu", start=START)
    assert second.events_written == first.events_written > 2000
    for patient in ("a", "b"):
        subject = new_store.lookup("icu", patient)
        assert len(new_store.signal_records(subject)) == 1
        beats = new_store.timeline(subject, domains=["annotation"])
        assert beats.height > 2000


def test_a_folder_keeps_its_readable_records_and_rejects_a_broken_one_alone(tmp_path):
    for ext in ("hea", "dat", "atr"):
        shutil.copy(f"{RECORD}.{ext}", tmp_path / f"100.{ext}")
    # a header whose signal file is missing
    (tmp_path / "lost.hea").write_text("lost 1 360 1000\nlost.dat 212 200 11 1024 995 0 0 MLII\n")
    store = jumeau.init(tmp_path / "store")
    report = ingest_wfdb(store, tmp_path, start=START)
    counts = report.tables["wfdb/record"]
    assert (counts.read, counts.accepted, counts.rejected) == (2, 1, 1)
    ((file, reason),) = store.rejects().select("file", "reason").rows()
    assert file.endswith("lost.hea") and "cannot be read" in reason
    assert [r.channels for r in store.signal_records()] == [["MLII", "V5"]]
    assert report.tables["wfdb/annotation.atr"].accepted > 2000
