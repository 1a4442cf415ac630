"""Sleep staging: hypnograms, agreement, the stagers on a simulated night, and the store bridge."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import jumeau
from jumeau.ingest.edf import ingest_edf
from jumeau.signals.features import sleep_features
from jumeau.signals.sleep import (
    agreement,
    evaluate_night,
    hypnogram_epochs,
    night_summary,
    pick_channels,
    read_hypnogram,
    slow_wave_fraction,
    stage_label,
    yasa_available,
)
from tests.cli.test_cli import jumeau as run_cli
from tests.signals.night import simulate, write_psg

HYPNOGRAM = Path(__file__).resolve().parents[1] / "data" / "edf" / "test_edfann.edf"


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    """A simulated PSG following the real hypnogram, starting when the hypnogram starts."""
    start, onsets, durations, labels = read_hypnogram(HYPNOGRAM)
    stages = hypnogram_epochs(onsets, durations, labels)
    path = tmp_path_factory.mktemp("psg") / "night-PSG.edf"
    return write_psg(path, simulate(list(stages)), start)


@pytest.mark.parametrize(
    ("label", "stage"),
    [
        ("Sleep stage W", "W"),
        ("Sleep stage 1", "N1"),
        ("Sleep stage N2", "N2"),
        ("Sleep stage 3", "N3"),
        ("Sleep stage 4", "N3"),
        ("Sleep stage R", "R"),
        ("REM", "R"),
        ("Wake", "W"),
        ("Sleep stage ?", None),
        ("Movement time", None),
        ("Lights off", None),
    ],
)
def test_hypnogram_labels_map_to_aasm_stages(label, stage):
    assert stage_label(label) == stage


def test_a_real_hypnogram_becomes_one_stage_per_epoch():
    _, onsets, durations, labels = read_hypnogram(HYPNOGRAM)
    stages = hypnogram_epochs(onsets, durations, labels)
    assert len(stages) == 854
    assert Counter(stages) == {"N2": 430, "W": 151, "R": 141, "N1": 109, "N3": 23}
    summary = night_summary(list(stages))
    assert summary["total_sleep_time_min"] == (854 - 151) / 2
    assert summary["N2_pct"] == pytest.approx(100 * 430 / 703)


def test_a_file_without_stages_is_not_a_hypnogram():
    with pytest.raises(ValueError, match="no sleep-stage annotations"):
        read_hypnogram(HYPNOGRAM.parent / "mne_test.edf")


def test_agreement_is_accuracy_and_cohens_kappa():
    result = agreement(["W", "W", "N2", "N2", None], ["W", "N2", "N2", "N2", "W"])
    assert result["epochs"] == 4  # the unscored epoch is left out
    assert result["accuracy"] == 0.75
    assert result["kappa"] == pytest.approx(0.5)  # po 0.75, pe 0.5*0.25 + 0.5*0.75 = 0.5


def test_slow_waves_follow_the_aasm_amplitude_rule():
    fs = 100
    t = np.arange(30 * fs) / fs
    big = np.where(t < 10, 50 * np.sin(2 * np.pi * t), 0.0)  # 100 µV peak to peak for 10 s
    small = 30 * np.sin(2 * np.pi * t)  # 60 µV: too small for N3
    assert slow_wave_fraction(big, fs)[0] == pytest.approx(1 / 3, abs=0.05)
    assert slow_wave_fraction(small, fs)[0] == 0


def test_the_spectral_stager_agrees_with_the_hypnogram_of_a_simulated_night(night):
    result = evaluate_night(night, HYPNOGRAM, ("spectral",))
    scored = result["methods"]["spectral"]
    assert result["channels"] == {
        "eeg": "EEG Fpz-Cz",
        "eog": "EOG horizontal",
        "emg": "EMG submental",
    }
    assert scored["epochs"] == 854
    assert scored["accuracy"] > 0.85 and scored["kappa"] > 0.8
    assert all(scored["f1"][s] > 0.6 for s in ("W", "N1", "N2", "N3", "R"))


@pytest.mark.skipif(not yasa_available(), reason="yasa not installed")
def test_yasa_is_scored_as_the_peer_in_the_same_run(night):
    result = evaluate_night(night, HYPNOGRAM, ("spectral", "yasa"))
    peer = result["methods"]["yasa"]
    assert peer["epochs"] == 854
    assert peer["accuracy"] > 0.5 and peer["kappa"] > 0.3  # a real stager, far above chance


def test_evaluate_sleep_cli(night):
    out = run_cli(
        "evaluate", "sleep", str(night), str(HYPNOGRAM), "--method", "spectral", "--format", "json"
    )
    summary = json.loads(out.stdout)
    assert summary["mean"]["spectral"]["nights"] == 1
    assert summary["nights"][0]["methods"]["spectral"]["kappa"] > 0.8
    bad = run_cli("evaluate", "sleep", str(night), str(night), "--format", "json", check=False)
    assert bad.returncode == 2
    assert "no sleep-stage annotations" in json.loads(bad.stdout)["nights"][0]["error"]


def test_staged_nights_join_the_timeline(new_store, night):
    ingest_edf(new_store, night, subject="p1")
    ingest_edf(new_store, HYPNOGRAM, subject="p1")
    report = sleep_features(new_store, method="spectral")
    assert report.tables["derived/sleep"].accepted == 1
    (line,) = [w for w in report.warnings if "vs the scored hypnogram" in w]
    assert "over 854 epochs" in line
    subject = new_store.lookup("edf", "p1")
    events = jumeau.open(new_store.root).timeline(subject)
    staged = events.filter(pl.col("code") == "JUMEAU/SLEEP/stage")
    assert len(staged) == 854
    assert set(staged["text_value"]) <= {"W", "N1", "N2", "N3", "R"}
    scored = events.filter(pl.col("code").str.starts_with("EDF/Sleep stage"))
    assert len(scored) > 0  # the hypnogram sits beside the staging on the same timeline
    kappa = events.filter(pl.col("code") == "JUMEAU/SLEEP/agreement_kappa")["numeric_value"]
    direct = evaluate_night(night, HYPNOGRAM, ("spectral",), trim_wake_min=None)
    assert kappa[0] == pytest.approx(direct["methods"]["spectral"]["kappa"])
    tst = events.filter(pl.col("code") == "JUMEAU/SLEEP/total_sleep_time")
    assert tst["unit"].to_list() == ["min"] and 300 < tst["numeric_value"][0] < 400
    again = sleep_features(new_store, method="spectral")  # the night is staged already
    assert again.events_written == 0 and again.tables["derived/sleep"].read == 0


@pytest.mark.parametrize(
    ("montage", "expected"),
    [
        (
            ["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "EMG submental"],
            ("EEG Fpz-Cz", "EOG horizontal", "EMG submental"),
        ),  # Sleep-EDF
        (
            ["F4-M1", "C4-M1", "O2-M1", "E1-M2", "E2-M1", "Chin1-Chin2"],
            ("C4-M1", "E1-M2", "Chin1-Chin2"),
        ),  # AASM
        (["Fp2-F4", "C4-A1", "ROC-LOC", "EMG1-EMG2"], ("C4-A1", "ROC-LOC", "EMG1-EMG2")),  # CAP
        (["FP1-A2", "CZ-A1", "EMG1", "EOG1", "O1-A2"], ("CZ-A1", "EOG1", "EMG1")),  # DREAMS
        (["EKG", "EOG-L", "EOG-R", "EMG", "EEG1", "EEG2"], ("EEG1", "EOG-L", "EMG")),  # MESA
    ],
)
def test_the_staging_channels_are_found_in_the_usual_montages(montage, expected):
    picked = pick_channels(montage)
    assert tuple(montage[picked[role]] for role in ("eeg", "eog", "emg")) == expected
