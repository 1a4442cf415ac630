"""R-peak detection against the MIT-BIH reference beats (150 ms), next to NeuroKit2's default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb

from jumeau.signals.ecg import BEAT_SYMBOLS, detect_r_peaks, evaluate_record, score_beats

RECORD = str(Path(__file__).resolve().parents[1] / "data" / "wfdb" / "100")


def test_detector_meets_the_f1_target_on_record_100():
    result = evaluate_record(RECORD)
    assert result["f1"] >= 0.995
    assert result["sensitivity"] >= 0.995 and result["ppv"] >= 0.995


def test_detector_is_at_least_as_good_as_neurokit2_default():
    nk = pytest.importorskip("neurokit2")
    record = wfdb.rdrecord(RECORD, channels=[0])
    ann = wfdb.rdann(RECORD, "atr")
    reference = np.array(
        [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
    )
    signal = record.p_signal[:, 0]
    _, info = nk.ecg_peaks(nk.ecg_clean(signal, sampling_rate=record.fs), sampling_rate=record.fs)
    theirs = score_beats(reference, info["ECG_R_Peaks"], record.fs)
    ours = score_beats(reference, detect_r_peaks(signal, record.fs), record.fs)
    assert ours.f1 >= theirs.f1


def test_scoring_counts_matches_misses_and_extras():
    score = score_beats(
        np.array([100, 500, 900]), np.array([110, 512, 700]), fs=100.0, tolerance_s=0.15
    )
    assert (score.true_positives, score.false_negatives, score.false_positives) == (2, 1, 1)
    assert score.f1 == pytest.approx(2 / 3)


def test_inverted_and_noisy_leads_are_still_detected():
    record = wfdb.rdrecord(RECORD, channels=[0], sampto=360 * 120)
    ann = wfdb.rdann(RECORD, "atr", sampto=360 * 120)
    reference = np.array(
        [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
    )
    noisy = -record.p_signal[:, 0] + np.random.default_rng(0).normal(0, 0.05, record.sig_len)
    assert score_beats(reference, detect_r_peaks(noisy, record.fs), record.fs).f1 >= 0.99


def test_evaluate_ecg_command_prints_per_record_scores():
    result = subprocess.run(
        [sys.executable, "-m", "jumeau.cli.app", "evaluate", "ecg", RECORD, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"f1": 1.0' in result.stdout or '"f1": 0.99' in result.stdout


def test_qt_from_a_12_lead_dicom_ecg_is_physiological():
    pydicom = pytest.importorskip("pydicom")
    from jumeau.signals.ecg import qt_interval

    ds = pydicom.dcmread(Path(RECORD).parents[1] / "dicom" / "waveform_ecg.dcm")
    leads = ds.waveform_array(0) / 1000  # µV -> mV
    peaks = detect_r_peaks(leads[:, 1], 1000)
    values = [
        q["qt"]
        for ch in range(12)
        if (q := qt_interval(leads[:, ch], 1000, peaks)) and q["t_to_noise"] >= 5
    ]
    assert len(values) >= 8
    assert 300 < float(np.median(values)) < 420
