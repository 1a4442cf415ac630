"""Sleep staging of polysomnography, its agreement with a scored hypnogram, and night summaries.

Two stagers share one interface, ``stage(eeg, fs, ...) -> one stage per 30-s epoch``:

- ``spectral``: jumeau's own transparent stager. N3 follows the AASM rule (0.5-2 Hz waves of
  75 µV or more over a fifth of the epoch); the other stages follow their signatures in the
  EEG band powers and EOG/EMG power, z-scored within the night (alpha over theta or muscle tone
  for wake, spindle-band power for N2, eye movements with the lowest muscle tone for REM, the
  rest N1); a 3-epoch majority filter removes flicker.
- ``yasa``: YASA's pretrained LightGBM stager (Vallat & Walker, eLife 2021), the peer from PyPI,
  used when ``yasa`` is installed (``pip install 'jumeau[sleep]'``).

Stages are ``W``, ``N1``, ``N2``, ``N3`` and ``R`` (R&K stages 3 and 4 are N3); hypnogram labels in
Sleep-EDF's (``Sleep stage 1``…``Sleep stage R``) or AASM wording are understood, and epochs
scored ``?`` or ``Movement time`` are left out of the agreement.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np

from jumeau.signals.features import BANDS, EPOCH_S, epoch_band_powers

STAGES = ("W", "N1", "N2", "N3", "R")
METHODS = ("spectral", "yasa")
_BANDS = {"slow": (0.5, 2.0), **BANDS}
_LABEL = re.compile(r"^(?:sleep\s*stage\s*|stage\s*)?(w|wake|n?1|n?2|n?3|n?4|r|rem)$")
#: EEG channels in order of preference for staging (central, then frontal, then parietal).
_EEG_PREFERENCE = (
    "C4-M1",
    "C4-A1",
    "C3-M2",
    "C3-A2",
    "C4",
    "C3",
    "Fpz-Cz",
    "F4-M1",
    "F3-M2",
    "Pz-Oz",
)


def stage_label(text: str) -> str | None:
    """The AASM stage of a hypnogram label, or None for unscored / movement epochs."""
    match = _LABEL.match(text.strip().lower())
    if not match:
        return None
    value = match.group(1).lstrip("n")
    return {"w": "W", "wake": "W", "1": "N1", "2": "N2", "3": "N3", "4": "N3"}.get(value, "R")


def hypnogram_epochs(
    onsets: np.ndarray,
    durations: np.ndarray,
    labels: list[str],
    n_epochs: int | None = None,
    offset_s: float = 0.0,
) -> np.ndarray:
    """One stage (or None) per 30-s epoch from scored intervals (onset and duration in seconds,
    ``offset_s`` added to the onsets to align them with the signal's start)."""
    scored = [
        (float(o) + offset_s, float(d), stage_label(str(label)))
        for o, d, label in zip(onsets, durations, labels, strict=True)
        if stage_label(str(label)) is not None
    ]
    end = max((o + max(d, EPOCH_S) for o, d, _ in scored), default=0.0)
    n = n_epochs if n_epochs is not None else int(round(end / EPOCH_S))
    out = np.full(n, None, dtype=object)
    for onset, duration, stage in scored:
        first = int(round(onset / EPOCH_S))
        count = max(int(round(duration / EPOCH_S)), 1)
        lo, hi = max(first, 0), min(first + count, n)
        if lo < hi:
            out[lo:hi] = stage
    return out


@contextmanager
def _edf(path: str | Path):
    """An open pyedflib reader, closed after use; unreadable files name themselves."""
    import pyedflib

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        detail = str(exc).replace(f"{path}: ", "")
        raise ValueError(f"{path}: not a readable EDF/EDF+ file ({detail})") from exc
    try:
        yield reader
    finally:
        reader.close()


def read_hypnogram(path: str | Path) -> tuple:
    """Start time and scored intervals (onsets, durations, labels) of an EDF+ hypnogram."""
    with _edf(path) as reader:
        onsets, durations, labels = reader.readAnnotations()
        start = reader.getStartdatetime()
    labels = [str(x) for x in labels]
    if not any(stage_label(x) for x in labels):
        raise ValueError(f"{path}: no sleep-stage annotations (e.g. 'Sleep stage W') found")
    return start, np.asarray(onsets, float), np.asarray(durations, float), labels


def agreement(reference, predicted) -> dict:
    """Accuracy, Cohen's kappa, per-stage F1 and the confusion matrix over epochs both scored."""
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

    ref = np.asarray(reference, dtype=object)
    pred = np.asarray(predicted, dtype=object)
    n = min(len(ref), len(pred))
    ref, pred = ref[:n], pred[:n]
    keep = np.array([r is not None and p is not None for r, p in zip(ref, pred, strict=True)])
    ref, pred = ref[keep].astype(str), pred[keep].astype(str)
    if len(ref) == 0:
        raise ValueError("no epoch is scored in both the hypnogram and the staging")
    f1 = f1_score(ref, pred, labels=list(STAGES), average=None, zero_division=0)
    return {
        "epochs": int(len(ref)),
        "accuracy": float(np.mean(ref == pred)),
        "kappa": float(cohen_kappa_score(ref, pred, labels=list(STAGES))),
        "f1": {s: float(v) for s, v in zip(STAGES, f1, strict=True)},
        "confusion": {
            "labels": list(STAGES),
            "matrix": confusion_matrix(ref, pred, labels=list(STAGES)).tolist(),
        },
    }


def slow_wave_fraction(signal: np.ndarray, fs: float) -> np.ndarray:
    """Per 30-s epoch, the fraction of time covered by 0.5-2 Hz waves of at least 75 µV peak to
    peak: the AASM definition of N3 is a fraction of 20% or more."""
    from scipy.signal import butter, sosfiltfilt

    per = int(round(EPOCH_S * fs))
    n = len(signal) // per
    if n == 0:
        return np.zeros(0)
    slow = sosfiltfilt(butter(2, [0.5, 2.0], btype="band", fs=fs, output="sos"), signal[: n * per])
    falling = np.flatnonzero((slow[:-1] >= 0) & (slow[1:] < 0))
    covered = np.zeros(n * per, dtype=bool)
    for a, b in zip(falling[:-1], falling[1:], strict=True):
        duration = (b - a) / fs
        if 0.5 <= duration <= 2.0 and np.ptp(slow[a:b]) >= 75.0:
            covered[a:b] = True
    return covered.reshape(n, per).mean(axis=1)


def _robust_z(values: np.ndarray) -> np.ndarray:
    """Log values centred on the night's median, in units of their spread over the night
    (standard deviation after clipping the 1% tails: the spread between stages, which a
    median absolute deviation dominated by the commonest stage would miss)."""
    x = np.log(np.maximum(values, 1e-12))
    low, high = np.percentile(x, [1, 99])
    spread = float(np.std(np.clip(x, low, high))) or 1.0
    return (x - np.median(x)) / spread


def _smooth(z: np.ndarray) -> np.ndarray:
    """Centred 3-epoch mean (epochs are scored in context, as a scorer reads the page)."""
    if len(z) < 3:
        return z
    padded = np.concatenate([z[:1], z, z[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3


def stage_spectral(
    eeg: np.ndarray,
    fs: float,
    eog: np.ndarray | None = None,
    emg: np.ndarray | None = None,
    emg_fs: float | None = None,
) -> list[str]:
    """jumeau's spectral stager: one stage per whole 30-s epoch of ``eeg`` (see the module)."""
    bands = epoch_band_powers(eeg, fs, bands=_BANDS)
    n = len(bands["total"])
    if n == 0:
        return []
    total = np.maximum(bands["total"], 1e-12)
    z = {name: _smooth(_robust_z(bands[name] / total)) for name in _BANDS}
    z["slow_abs"] = _smooth(_robust_z(bands["slow"]))
    muscle = np.zeros(n)
    if emg is not None and len(emg):
        per = int(round(EPOCH_S * (emg_fs or fs)))
        m = min(n, len(emg) // per)
        if m:
            power = emg[: m * per].reshape(m, per).var(axis=1)
            muscle[:m] = _smooth(_robust_z(power))
    eyes = np.zeros(n)
    if eog is not None and len(eog):
        slow_eye = epoch_band_powers(eog, fs)["delta"]
        eyes[: len(slow_eye)] = _smooth(_robust_z(slow_eye))[:n]
    alpha_theta = _smooth(_robust_z(bands["alpha"] / np.maximum(bands["theta"], 1e-12)))
    spindle = _smooth(
        _robust_z(bands["sigma"] / np.maximum(bands["theta"] + bands["alpha"], 1e-12))
    )
    stages = np.full(n, "N1", dtype=object)
    stages[(muscle < -0.5) & (eyes > 0.5)] = "R"
    stages[(spindle > 0.0) & (z["slow"] > -0.5)] = "N2"
    deep = slow_wave_fraction(eeg, fs) >= 0.2
    stages[deep | ((z["slow"] > 0.25) & (z["slow_abs"] > 1.25))] = "N3"
    stages[(alpha_theta > 1.0) | (muscle > 1.5)] = "W"
    return _majority(stages).tolist()


def _majority(stages: np.ndarray) -> np.ndarray:
    """Replace an epoch that differs from two agreeing neighbours (3-epoch majority filter)."""
    out = stages.copy()
    for i in range(1, len(stages) - 1):
        if stages[i - 1] == stages[i + 1] != stages[i]:
            out[i] = stages[i - 1]
    return out


def stage_yasa(
    eeg: np.ndarray,
    fs: float,
    eog: np.ndarray | None = None,
    emg: np.ndarray | None = None,
    *,
    age: float | None = None,
    male: bool | None = None,
) -> list[str]:
    """YASA's pretrained stager on the same epochs (signals in µV, all at ``fs``)."""
    try:
        import mne
        import yasa
    except ImportError as exc:
        raise ImportError("the 'yasa' stager needs: pip install 'jumeau[sleep]'") from exc
    n = int(len(eeg) // round(EPOCH_S * fs))
    if n < 10:
        raise ValueError("YASA needs at least 5 minutes of EEG")
    names, types, data = ["eeg"], ["eeg"], [eeg]
    for name, kind, signal in (("eog", "eog", eog), ("emg", "emg", emg)):
        if signal is not None and len(signal) >= len(eeg):
            names.append(name)
            types.append(kind)
            data.append(signal[: len(eeg)])
    import warnings

    mne.set_log_level("ERROR")
    raw = mne.io.RawArray(np.vstack(data) * 1e-6, mne.create_info(names, fs, types))
    metadata = {}
    if age is not None and male is not None:
        metadata = {"age": float(age), "male": bool(male)}
    staging = yasa.SleepStaging(
        raw,
        eeg_name="eeg",
        eog_name="eog" if "eog" in names else None,
        emg_name="emg" if "emg" in names else None,
        metadata=metadata or None,
    )
    with warnings.catch_warnings():  # YASA's classifiers were pickled by an older scikit-learn
        warnings.simplefilter("ignore")
        predicted = staging.predict()
    values = getattr(predicted, "hypno", predicted)  # YASA >= 0.7 returns a Hypnogram
    return [stage_label(str(v)) or str(v) for v in values][:n]


def stage(method: str, eeg, fs, eog=None, emg=None, emg_fs=None, **metadata) -> list[str]:
    """Stage with ``method`` (``spectral`` or ``yasa``)."""
    if method == "spectral":
        return stage_spectral(eeg, fs, eog, emg, emg_fs)
    if method == "yasa":
        same_rate_emg = emg if emg_fs in (None, fs) else None
        return stage_yasa(eeg, fs, eog, same_rate_emg, **metadata)
    raise ValueError(f"unknown staging method {method!r}: use one of {', '.join(METHODS)}")


def yasa_available() -> bool:
    try:
        import yasa  # noqa: F401
    except ImportError:
        return False
    return True


def pick_channels(names: list[str]) -> dict[str, int | None]:
    """Indices of the EEG channel to stage on and of an EOG and a chin EMG channel, if any."""

    def norm(name: str) -> str:
        return re.sub(r"^(eeg|eog|emg)\s+", "", name.strip(), flags=re.I).replace(" ", "").upper()

    normalised = [norm(n) for n in names]
    eeg = next(
        (normalised.index(p.upper()) for p in _EEG_PREFERENCE if p.upper() in normalised), None
    )
    for pattern in (r"^C[34Z]-[AM][12]$", r"^(FP?|P|O)[0-9Z]+-[AM][12]$"):  # CZ-A1, FP1-A2...
        if eeg is None:
            eeg = next((i for i, n in enumerate(normalised) if re.match(pattern, n)), None)
    if eeg is None:
        eeg = next((i for i, n in enumerate(names) if n.strip().upper().startswith("EEG")), None)
    eog = next((i for i, n in enumerate(names) if re.search(r"EOG|LOC|E1-|ROC", n, re.I)), None)
    emg = next((i for i, n in enumerate(names) if re.search(r"EMG|CHIN", n, re.I)), None)
    return {"eeg": eeg, "eog": eog, "emg": emg}


def night_summary(stages: list[str | None]) -> dict[str, float]:
    """Standard sleep measures from a staged night: total sleep time, sleep efficiency, sleep
    onset latency, wake after sleep onset (minutes) and each stage's share of sleep (%)."""
    minutes = EPOCH_S / 60
    scored = [s for s in stages if s is not None]
    asleep = [i for i, s in enumerate(stages) if s in ("N1", "N2", "N3", "R")]
    tst = len(asleep) * minutes
    out = {
        "time_in_bed_min": len(scored) * minutes,
        "total_sleep_time_min": tst,
        "sleep_efficiency_pct": 100 * tst / (len(scored) * minutes) if scored else float("nan"),
    }
    if asleep:
        onset, last = asleep[0], asleep[-1]
        out["sleep_onset_latency_min"] = onset * minutes
        out["waso_min"] = sum(1 for s in stages[onset : last + 1] if s == "W") * minutes
        for s in ("N1", "N2", "N3", "R"):
            out[f"{s}_pct"] = 100 * sum(1 for x in stages if x == s) / len(asleep)
    return out


def trim_to_sleep(stages: np.ndarray, margin_min: float = 30.0) -> slice:
    """The epochs from ``margin_min`` before the first to after the last scored sleep epoch (the
    usual way to leave out the hours of wake around a home recording)."""
    asleep = [i for i, s in enumerate(stages) if s in ("N1", "N2", "N3", "R")]
    if not asleep:
        return slice(0, len(stages))
    margin = int(margin_min * 60 / EPOCH_S)
    return slice(max(asleep[0] - margin, 0), min(asleep[-1] + margin + 1, len(stages)))


def to_microvolts(signal: np.ndarray, unit: str) -> np.ndarray:
    """A signal recorded in V, mV or µV, in µV (what the stagers' thresholds assume)."""
    return signal * {"v": 1e6, "mv": 1e3}.get(unit.strip().lower(), 1.0)


def read_psg(path: str | Path) -> dict:
    """The staging channels of a polysomnography EDF: EEG, EOG and EMG in µV, with their rates."""
    with _edf(path) as reader:
        names = reader.getSignalLabels()
        picked = pick_channels(names)
        if picked["eeg"] is None:
            raise ValueError(f"{path}: no EEG channel among {names}")
        out = {"start": reader.getStartdatetime(), "channels": {}}
        for role, index in picked.items():
            if index is None:
                continue
            fs = float(reader.getSampleFrequency(index))
            signal = to_microvolts(reader.readSignal(index), reader.getPhysicalDimension(index))
            out["channels"][role] = {"name": names[index], "fs": fs, "signal": signal}
        return out


def evaluate_night(
    psg: str | Path,
    hypnogram: str | Path,
    methods: tuple[str, ...] = METHODS,
    trim_wake_min: float | None = 30.0,
) -> dict:
    """Stage a polysomnography EDF with each method and score it against its hypnogram."""
    import time

    record = read_psg(psg)
    channels = record["channels"]
    eeg = channels["eeg"]
    n = int(len(eeg["signal"]) // round(EPOCH_S * eeg["fs"]))
    hyp_start, onsets, durations, labels = read_hypnogram(hypnogram)
    offset = (hyp_start - record["start"]) / timedelta(seconds=1)
    reference = hypnogram_epochs(onsets, durations, labels, n, offset)
    window = trim_to_sleep(reference, trim_wake_min) if trim_wake_min is not None else slice(0, n)
    eog, emg = channels.get("eog"), channels.get("emg")
    result = {
        "record": str(psg),
        "hypnogram": str(hypnogram),
        "channels": {role: c["name"] for role, c in channels.items()},
        "epochs_in_record": n,
        "window": [window.start, window.stop],
        "trim_wake_min": trim_wake_min,
        "reference": night_summary(list(reference[window])),
        "methods": {},
    }
    for method in methods:
        if method == "yasa" and not yasa_available():
            result["methods"][method] = {"error": "not installed (pip install 'jumeau[sleep]')"}
            continue
        started = time.perf_counter()
        stages = stage(
            method,
            eeg["signal"],
            eeg["fs"],
            eog["signal"] if eog and eog["fs"] == eeg["fs"] else None,
            emg["signal"] if emg else None,
            emg["fs"] if emg else None,
        )
        seconds = time.perf_counter() - started
        predicted = np.array(stages + [None] * (n - len(stages)), dtype=object)
        result["methods"][method] = {
            **agreement(reference[window], predicted[window]),
            "seconds": seconds,
            "summary": night_summary(list(predicted[window])),
        }
    return result
