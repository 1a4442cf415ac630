"""EDF/EDF+ recordings and hypnograms, and EEG band powers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyedflib
import pytest

import jumeau
from jumeau.ingest.edf import EdfError, ingest_edf
from jumeau.signals.features import band_powers, eeg_features

DATA = Path(__file__).resolve().parents[1] / "data" / "edf"


def _write_eeg(
    path: Path, label: str, fs: int, limit_uv: float, start: datetime, samples: np.ndarray
) -> None:
    """A one-channel EDF+ file (µV, +/- ``limit_uv``, 16-bit)."""
    writer = pyedflib.EdfWriter(str(path), 1, file_type=pyedflib.FILETYPE_EDFPLUS)
    writer.setSignalHeaders(
        [
            {
                "label": label,
                "dimension": "uV",
                "sample_frequency": fs,
                "physical_max": limit_uv,
                "physical_min": -limit_uv,
                "digital_max": 32767,
                "digital_min": -32768,
            }
        ]
    )
    writer.setStartdatetime(start)
    writer.writeSamples([samples])
    writer.close()


def test_edf_samples_equal_pyedflib_physical_values(new_store):
    report = ingest_edf(new_store, DATA / "mne_test.edf", subject="6", subject_source="omop")
    (record,) = new_store.signal_records()
    reader = pyedflib.EdfReader(str(DATA / "mne_test.edf"))
    try:
        assert record.fs == 512 and len(record.channels) == reader.signals_in_file
        assert record.start == reader.getStartdatetime()
        for i in (0, 17, reader.signals_in_file - 1):
            _, values = record.physical(i)
            assert np.allclose(values, reader.readSignal(i), rtol=0, atol=1e-9)
    finally:
        reader.close()
    assert report.tables["edf/annotation"].accepted == 5
    events = new_store.timeline(new_store.lookup("omop", "6"))
    assert set(events.filter(pl.col("domain") == "annotation")["code"]) == {
        "EDF/start",
        "EDF/type A",
        "EDF/type B",
    }


def test_a_hypnogram_becomes_sleep_stage_events(new_store):
    ingest_edf(new_store, DATA / "test_edfann.edf")
    events = (
        new_store.scan()
        .filter(pl.col("code").str.starts_with("EDF/Sleep stage"))
        .collect()
        .sort("time")
    )
    reader = pyedflib.EdfReader(str(DATA / "test_edfann.edf"))
    onsets, durations, texts = reader.readAnnotations()
    reader.close()
    expected = [t for t in texts if str(t).startswith("Sleep stage")]
    assert events.height == len(expected)
    first = events.row(0, named=True)
    assert first["time"] == datetime(2001, 1, 1, 23, 59, 30)
    assert (first["end_time"] - first["time"]).total_seconds() == 30


def test_eeg_band_powers_find_a_10_hz_rhythm(tmp_path, new_store):
    fs, seconds = 256, 60
    t = np.arange(fs * seconds) / fs
    alpha = 40 * np.sin(2 * np.pi * 10 * t) + np.random.default_rng(0).normal(0, 5, len(t))
    path = tmp_path / "alpha.edf"
    _write_eeg(path, "EEG O1-A2", fs, 200, datetime(2022, 5, 1, 22, 0, 0), alpha)
    ingest_edf(new_store, path)
    report = eeg_features(new_store)
    assert report.committed
    powers = new_store.scan().filter(pl.col("code").str.starts_with("JUMEAU/EEG/")).collect()
    assert powers.height == 2 * 5  # two 30-s epochs, five bands
    per_band = powers.group_by("code").agg(pl.col("numeric_value").mean())
    alpha_power = per_band.filter(pl.col("code") == "JUMEAU/EEG/alpha_relative_power")[
        "numeric_value"
    ][0]
    assert alpha_power > 0.8
    assert sum(band_powers(alpha[: 30 * fs], fs).values()) == pytest.approx(1.0, abs=0.02)
    assert eeg_features(new_store).tables["derived/eeg"].read == 0  # done already: skipped


def test_a_corrupt_edf_header_is_a_clear_error(tmp_path):
    data = (DATA / "mne_test.edf").read_bytes()
    broken = tmp_path / "broken.edf"
    broken.write_bytes(b"XX" + data[2:256] + b"garbage" * 10)
    store = jumeau.init(tmp_path / "store")
    with pytest.raises(EdfError, match="broken.edf"):
        ingest_edf(store, broken)
    assert store.stats()["events"] == 0


def _discontinuous_edf(path: Path, gap_after: int, gap_s: float) -> np.ndarray:
    """An EDF+ file of 10 one-second records (one 100 Hz EEG channel), turned into EDF+D with
    the records after ``gap_after`` shifted ``gap_s`` later, as an acquisition pause leaves
    them. Returns the samples."""
    samples = np.sin(np.arange(1000) / 100 * 2 * np.pi * 10) * 50
    _write_eeg(path, "EEG Fpz-Cz", 100, 100, datetime(2021, 5, 1, 22, 0, 0), samples)
    data = bytearray(path.read_bytes())
    data[192:197] = b"EDF+D"
    signals = int(data[252:256])
    at = 256 + signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    per_record = [int(data[at + i * 8 : at + (i + 1) * 8]) for i in range(signals)]
    record_bytes, before = 2 * sum(per_record), 2 * per_record[0]
    for k in range(gap_after, 10):
        offset = 256 + signals * 256 + k * record_bytes + before
        size = 2 * per_record[1]
        tal = f"+{k + gap_s:g}\x14\x14\x00".encode().ljust(size, b"\x00")
        data[offset : offset + size] = tal
    path.write_bytes(bytes(data))
    return samples


def test_an_edf_d_file_keeps_each_segment_at_its_true_time(tmp_path, new_store):
    """EDF+D: the records after a 30-s pause start 30 s later; read as one run, every sample
    after the gap would sit 30 s early."""
    samples = _discontinuous_edf(tmp_path / "pause.edf", gap_after=6, gap_s=30)
    ingest_edf(new_store, tmp_path / "pause.edf")
    first, second = new_store.signal_records()
    assert first.start == datetime(2021, 5, 1, 22, 0, 0) and first.samples == 600
    assert second.start == datetime(2021, 5, 1, 22, 0, 36) and second.samples == 400
    joined = np.concatenate([first.physical(0)[1], second.physical(0)[1]])
    assert np.allclose(joined, samples, atol=0.01)


def test_an_edf_d_file_without_gaps_is_one_record(tmp_path, new_store):
    _discontinuous_edf(tmp_path / "whole.edf", gap_after=10, gap_s=0)
    ingest_edf(new_store, tmp_path / "whole.edf")
    (record,) = new_store.signal_records()
    assert record.samples == 1000


def test_two_patients_recordings_of_the_same_file_name_are_both_kept(new_store):
    for name, domain in (("mne_test.edf", "signal"), ("test_edfann.edf", "annotation")):
        first = ingest_edf(new_store, DATA / name, subject="a", subject_source="lab")
        second = ingest_edf(new_store, DATA / name, subject="b", subject_source="lab")
        assert second.events_written == first.events_written > 0
        for patient in ("a", "b"):
            subject = new_store.lookup("lab", patient)
            assert new_store.timeline(subject, domains=[domain]).height > 0
    assert len(new_store.signal_records(new_store.lookup("lab", "b"))) >= 1


def test_a_folder_keeps_bdf_recordings_and_rejects_an_unreadable_file_alone(tmp_path, new_store):
    # a 24-bit BDF file written by pyedflib (the digital range an int16 cannot hold), an EDF+,
    # and a corrupt file in the same folder
    folder = tmp_path / "eeg"
    folder.mkdir()
    fs, t = 256, np.arange(256 * 4) / 256
    bdf = pyedflib.EdfWriter(str(folder / "p1.bdf"), 1, file_type=pyedflib.FILETYPE_BDFPLUS)
    bdf.setSignalHeaders(
        [
            {
                "label": "Cz",
                "dimension": "uV",
                "sample_frequency": fs,
                "physical_max": 262143.0,
                "physical_min": -262144.0,
                "digital_max": 8388607,
                "digital_min": -8388608,
            }
        ]
    )
    bdf.setStartdatetime(datetime(2021, 5, 3, 22, 0))
    samples = 150_000 * np.sin(2 * np.pi * 10 * t)  # beyond a 16-bit EDF's resolution
    bdf.writeSamples([samples])
    bdf.close()
    _write_eeg(folder / "p2.edf", "Fz", fs, 500.0, datetime(2021, 5, 4, 9, 0), 40 * np.sin(t))
    (folder / "p3.edf").write_bytes(b"0       " + b"garbage" * 40)

    report = ingest_edf(new_store, folder)

    counts = report.tables["edf/file"]
    assert (counts.read, counts.accepted, counts.rejected) == (3, 2, 1)
    reasons = new_store.rejects().select("file", "reason").rows()
    assert len(reasons) == 1 and reasons[0][0].endswith("p3.edf")
    assert reasons[0][1].startswith("not a readable EDF")  # the path is in the (sealed) file
    (record,) = new_store.signal_records(new_store.lookup("edf", "p1"))
    reader = pyedflib.EdfReader(str(folder / "p1.bdf"))
    try:
        _, values = record.physical("Cz")
        assert np.allclose(values, reader.readSignal(0), rtol=0, atol=1e-6)
    finally:
        reader.close()
    assert np.abs(values - samples).max() < 0.05  # 24-bit resolution kept: 0.03 µV a step
    assert len(new_store.signal_records()) == 2  # nothing of the corrupt file left behind
