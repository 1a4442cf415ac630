"""A simulated polysomnography night that follows a real hypnogram, written as EDF+.

Each 30-s epoch carries its stage's textbook signature (AASM manual): wake has posterior alpha
(8-12 Hz) and muscle tone, N1 low-amplitude theta, N2 sleep spindles (12-14 Hz bursts) on a theta
background, N3 high-amplitude slow waves (0.5-2 Hz), REM low-amplitude theta with rapid eye
movements and the lowest muscle tone. Real PSG is not in the shared data; this night exercises
the whole staging pipeline on a known truth.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyedflib

FS = 100
EPOCH = 30 * FS


def _band_noise(rng, n, lo, hi, amplitude):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / FS)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, n)
    return amplitude * x / (x.std() or 1)


def simulate(stages: list[str | None], seed: int = 0) -> dict[str, np.ndarray]:
    """EEG, EOG and EMG (µV, 100 Hz) for one stage per epoch (None is scored as wake)."""
    rng = np.random.default_rng(seed)
    eeg, eog, emg = [], [], []
    t = np.arange(EPOCH) / FS
    for stage in stages:
        stage = stage or "W"
        background = _band_noise(rng, EPOCH, 0.5, 30, 6)
        if stage == "W":
            e = background + _band_noise(rng, EPOCH, 8, 12, 18) + _band_noise(rng, EPOCH, 15, 30, 6)
            m, o = 30, _band_noise(rng, EPOCH, 0.3, 2, 20)
        elif stage == "N1":
            e = background + _band_noise(rng, EPOCH, 4, 8, 12)
            m, o = 15, _band_noise(rng, EPOCH, 0.1, 0.5, 15)
        elif stage == "N2":
            e = background + _band_noise(rng, EPOCH, 4, 8, 10) + _band_noise(rng, EPOCH, 0.5, 2, 12)
            for start in rng.uniform(0, 28, 4):
                burst = (t >= start) & (t < start + 1.0)
                e[burst] += 25 * np.sin(2 * np.pi * 13 * t[burst]) * np.hanning(burst.sum())
            m, o = 10, _band_noise(rng, EPOCH, 0.3, 2, 5)
        elif stage == "N3":
            e = background + _band_noise(rng, EPOCH, 0.5, 2, 60) + _band_noise(rng, EPOCH, 4, 8, 10)
            m, o = 8, _band_noise(rng, EPOCH, 0.3, 2, 5)
        else:  # R
            e = background + _band_noise(rng, EPOCH, 4, 8, 12)
            m, o = 3, _band_noise(rng, EPOCH, 0.3, 2, 45)
        eeg.append(e)
        eog.append(o)
        emg.append(m * rng.standard_normal(EPOCH))
    return {
        "EEG Fpz-Cz": np.concatenate(eeg),
        "EOG horizontal": np.concatenate(eog),
        "EMG submental": np.concatenate(emg),
    }


def write_psg(path: Path, signals: dict[str, np.ndarray], start: datetime) -> Path:
    """Write the signals as an EDF+ file (µV, 100 Hz)."""
    writer = pyedflib.EdfWriter(str(path), len(signals), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        headers = []
        for label, values in signals.items():
            bound = float(np.ceil(np.abs(values).max() + 1))
            headers.append(
                {
                    "label": label,
                    "dimension": "uV",
                    "sample_frequency": FS,
                    "physical_max": bound,
                    "physical_min": -bound,
                    "digital_max": 32767,
                    "digital_min": -32768,
                }
            )
        writer.setSignalHeaders(headers)
        writer.setStartdatetime(start)
        writer.writeSamples(list(signals.values()))
    finally:
        writer.close()
    return path
