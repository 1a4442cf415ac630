"""From milliseconds to the clinical timeline: ECG features as derived events.

For every ECG record in the store, R peaks are detected on its first ECG lead and summarised per
5-minute window, per record and per day: heart rate, HRV in the time domain (SDNN, RMSSD, pNN50)
and the frequency domain (LF, HF power and LF/HF from the RR series resampled at 4 Hz), rhythm
flags (bradycardia, tachycardia, irregular rhythm, possible atrial fibrillation), and the
intervals of the median beat of all ECG leads (PR, QRS, QT, QTc;
:func:`jumeau.signals.ecg.delineate`). They are written as
``measurement`` events under their LOINC codes where one exists (heart rate 8867-4, PR 8625-6,
QRS 8633-2, QT 8634-8, QTc 8636-3), so that the twin tracks them like measured values.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import numpy as np
from scipy.interpolate import interp1d
from scipy.ndimage import median_filter
from scipy.signal import welch

from jumeau.ingest.events import epoch_us, event, event_table
from jumeau.signals.codes import DAY_SCOPE, ECG_SOURCE, FEATURE_CODES, RECORD_SCOPE, WINDOW_SCOPE
from jumeau.signals.ecg import delineate, detect_r_peaks
from jumeau.store import BatchWriter, IngestReport, Progress, Store

WINDOW_S = 300
#: ECG lead names: limb and chest leads (also the European DI-DIII), modified leads of Holter
#: and monitoring records (MLII, MCL1, CM5), and anything named ECG/EKG/Lead.
ECG_LEAD = re.compile(
    r"^(?:I{1,3}|D(?:I{1,3}|[1-3])|A?V[RLF]|V[1-9]R?|V|ML(?:I{1,3}|[1-3])|MCL[1-6]?|CM[1-6]?"
    r"|LEAD.*|.*ECG.*|.*EKG.*)$"
)


def normal_intervals(rr_ms: np.ndarray) -> np.ndarray:
    """Which RR intervals join two normal beats: those within 20% of the median of the five
    around them. An ectopic beat's short coupling interval and the pause after it are left out,
    as the HRV standards ask (Task Force of the ESC and NASPE, 1996: NN, not RR, intervals)."""
    rr_ms = np.asarray(rr_ms, dtype=float)
    if len(rr_ms) < 5:
        return np.ones(len(rr_ms), dtype=bool)
    local = median_filter(rr_ms, size=5, mode="nearest")
    return np.abs(rr_ms - local) <= 0.2 * local


def hrv(rr_ms: np.ndarray) -> dict[str, float]:
    """Time- and frequency-domain HRV of an RR series (ms), computed on its normal-to-normal
    intervals (see :func:`normal_intervals`); the heart rate counts every beat."""
    out: dict[str, float] = {}
    rr_ms = np.asarray(rr_ms, dtype=float)
    if len(rr_ms) < 3:
        return out
    normal = normal_intervals(rr_ms)
    nn = rr_ms[normal]
    out["hr"] = 60_000.0 / float(np.mean(rr_ms))
    if len(nn) < 3:
        return out
    successive = np.diff(rr_ms)[normal[:-1] & normal[1:]]
    out["sdnn"] = float(np.std(nn, ddof=1))
    if len(successive):
        out["rmssd"] = float(np.sqrt(np.mean(successive**2)))
        out["pnn50"] = float(np.mean(np.abs(successive) > 50) * 100)
    if len(nn) >= 30:
        times = (np.cumsum(rr_ms) / 1000.0)[normal]  # the excluded intervals are interpolated
        grid = np.arange(times[0], times[-1], 0.25)
        if len(grid) >= 64:
            series = interp1d(times, nn, kind="cubic")(grid)
            freqs, power = welch(series - series.mean(), fs=4.0, nperseg=min(256, len(grid)))
            lf = np.trapezoid(
                power[(freqs >= 0.04) & (freqs < 0.15)], freqs[(freqs >= 0.04) & (freqs < 0.15)]
            )
            hf = np.trapezoid(
                power[(freqs >= 0.15) & (freqs < 0.40)], freqs[(freqs >= 0.15) & (freqs < 0.40)]
            )
            out["lf"], out["hf"] = float(lf), float(hf)
            out["lf_hf"] = float(lf / hf) if hf > 0 else float("nan")
    return out


def rhythm_flags(rr_ms: np.ndarray, p_wave: bool | None = None) -> list[str]:
    """Rate and rhythm flags of an RR series; with ``p_wave`` (whether the median beat has a
    P wave), an irregular rhythm without P waves is flagged as possible atrial fibrillation (a
    screening flag for review, not a diagnosis)."""
    if len(rr_ms) < 3:
        return []
    flags = []
    hr = 60_000.0 / np.mean(rr_ms)
    if hr < 50:
        flags.append("bradycardia")
    if hr > 100:
        flags.append("tachycardia")
    if np.median(np.abs(np.diff(rr_ms))) / np.mean(rr_ms) > 0.08:
        flags.append("irregular rhythm")
        if p_wave is False:
            flags.append("possible atrial fibrillation")
    return flags


def is_ecg_lead(name: str) -> bool:
    """Whether a channel name looks like an ECG lead (MLII, V5, Lead II, MCL1, DII, ECG1...)."""
    return ECG_LEAD.match(name.upper().replace(" ", "")) is not None


def interval_features(
    signals: np.ndarray, fs: float, peaks: np.ndarray, lo: int, hi: int
) -> dict[str, float]:
    """PR, QRS, QT and QTc of the median beat of all ECG leads (rows of ``signals``) in
    samples [lo, hi)."""
    chosen = peaks[(peaks >= lo) & (peaks < hi)] - lo
    found = delineate(signals[:, lo:hi], fs, chosen)
    if not found:
        return {}
    return {k: found[k] for k in ("pr", "qrs", "qt", "qtc_bazett", "qtc_fridericia") if k in found}


def _feature_rows(
    p, record, lead: str, values: dict, start: datetime, end: datetime, scope: str, key: str
) -> list[dict]:
    rows = []
    for name, value in values.items():
        if not np.isfinite(value):
            continue
        code, unit = FEATURE_CODES[name]
        row = event(
            record.subject_id,
            epoch_us(start),
            code,
            float(value),
            f"{scope}; {lead}",
            epoch_us(end),
            "measurement",
            ECG_SOURCE,
            p.record_key(ECG_SOURCE, f"{record.id}#{key}#{name}"),
        )
        row["unit"] = unit
        rows.append(row)
    return rows


def _written(store: Store, source: str, code: str | None = None) -> dict[tuple, set]:
    """(subject, time) -> texts of the events a feature source already put on the timeline: how
    a feature run knows the records it has done, so a growing store pays only for new ones."""
    import polars as pl

    wanted = pl.col("source") == source
    if code is not None:
        wanted &= pl.col("code") == code
    done: dict[tuple, set] = {}
    frame = store.scan().filter(wanted).select("subject_id", "time", "text_value").unique()
    for subject, time, text in frame.collect().iter_rows():
        done.setdefault((subject, time), set()).add(text)
    return done


def ecg_features(store: Store, progress: Progress | None = None) -> IngestReport:
    """Derive ECG feature events for every ECG record of the store; records whose summary is
    already on the timeline are skipped, so a store that grows pays only for its new records."""
    done = _written(store, ECG_SOURCE)
    with BatchWriter(store, "features", "ecg") as writer:
        p = store.pseudonymiser
        counts = writer.report.table(ECG_SOURCE)
        for record in store.signal_records():
            leads = [c for c in record.channels if is_ecg_lead(c)]
            lead = leads[0] if leads else None
            if lead is None:
                continue
            if f"{RECORD_SCOPE}; {lead}" in done.get((record.subject_id, record.start), ()):
                continue
            if progress:
                progress(record.id)
            counts.read += 1
            signals = np.vstack([record.physical(name)[1] for name in leads])  # read once
            signal = signals[0]
            peaks = detect_r_peaks(signal, record.fs)
            rows = []

            peak_times = peaks / record.fs
            rr = np.diff(peak_times) * 1000
            rr_at = peak_times[1:]
            for w, lo in enumerate(np.arange(0, record.samples / record.fs, WINDOW_S)):
                sel = (rr_at >= lo) & (rr_at < lo + WINDOW_S) & (rr > 250) & (rr < 2500)
                start = record.start + timedelta(seconds=float(lo))
                end = min(record.end, start + timedelta(seconds=WINDOW_S))
                values = hrv(rr[sel])
                values.update(
                    interval_features(
                        signals,
                        record.fs,
                        peaks,
                        int(lo * record.fs),
                        int((lo + WINDOW_S) * record.fs),
                    )
                )
                rows += _feature_rows(p, record, lead, values, start, end, WINDOW_SCOPE, f"w{w}")
            valid = (rr > 250) & (rr < 2500)
            clean = rr[valid]
            values = hrv(clean)
            intervals = interval_features(signals, record.fs, peaks, 0, record.samples)
            values.update(intervals)
            rows += _feature_rows(
                p, record, lead, values, record.start, record.end, RECORD_SCOPE, "record"
            )
            day = datetime.combine(record.start.date(), datetime.min.time())
            while day < record.end:
                lo = (day - record.start).total_seconds()
                sel = valid & (rr_at >= lo) & (rr_at < lo + 86_400)
                rows += _feature_rows(
                    p,
                    record,
                    lead,
                    hrv(rr[sel]),
                    day,
                    day + timedelta(days=1),
                    DAY_SCOPE,
                    f"day{day.date()}",
                )
                day += timedelta(days=1)
            p_wave = ("pr" in intervals) if "qrs" in intervals else None
            for flag in rhythm_flags(clean, p_wave):
                us = epoch_us(record.start)
                rows.append(
                    event(
                        record.subject_id,
                        us,
                        f"JUMEAU/ECG/{flag.replace(' ', '_')}",
                        None,
                        lead,
                        epoch_us(record.end),
                        "observation",
                        ECG_SOURCE,
                        p.record_key(ECG_SOURCE, f"{record.id}#flag#{flag}"),
                    )
                )
            if rows:
                writer.add_events(event_table(rows))
            counts.accepted += 1
            counts.events += len(rows)
        return writer.commit()


BANDS = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 12.0),
    "sigma": (12.0, 15.0),
    "beta": (15.0, 30.0),
}
EPOCH_S = 30.0
EEG_UNITS = ("uv", "µv", "μv", "mv", "v")


def epoch_band_powers(
    signal: np.ndarray,
    fs: float,
    epoch_s: float = EPOCH_S,
    bands: dict[str, tuple[float, float]] | None = None,
) -> dict[str, np.ndarray]:
    """Absolute power (signal unit²) in each band and in 0.5-30 Hz (``total``), one value per
    whole epoch of ``epoch_s`` seconds (Welch, 4-s segments)."""
    bands = BANDS if bands is None else bands
    per = int(round(epoch_s * fs))
    n = len(signal) // per if per else 0
    if n == 0:
        return {name: np.zeros(0) for name in (*bands, "total")}
    epochs = signal[: n * per].reshape(n, per)
    freqs, power = welch(
        epochs - epochs.mean(axis=1, keepdims=True), fs=fs, nperseg=min(per, int(4 * fs)), axis=1
    )
    out = {}
    for name, (lo, hi) in {**bands, "total": (0.5, 30.0)}.items():
        mask = (freqs >= lo) & (freqs < hi)
        out[name] = np.trapezoid(power[:, mask], freqs[mask], axis=1) if mask.any() else np.zeros(n)
    return out


def band_powers(signal: np.ndarray, fs: float) -> dict[str, float]:
    """Relative power (0-1) of each EEG band in 0.5-30 Hz over the whole ``signal``."""
    powers = epoch_band_powers(signal, fs, len(signal) / fs)
    total = powers["total"][0]
    return {b: float(powers[b][0] / total) if total > 0 else float("nan") for b in BANDS}


def eeg_features(store: Store, progress: Progress | None = None) -> IngestReport:
    """Per 30-s epoch and channel, relative delta/theta/alpha/sigma/beta power as timeline events
    (records shorter than an epoch give one epoch of their length, if at least 4 s)."""
    done = _written(store, "derived/eeg")
    with BatchWriter(store, "features", "eeg") as writer:
        p = store.pseudonymiser
        counts = writer.report.table("derived/eeg")
        for record in store.signal_records():
            units = record.units
            chosen = [i for i, u in enumerate(units) if u in EEG_UNITS]
            if not chosen or record.fs < 60:
                continue
            if record.channels[chosen[0]] in done.get((record.subject_id, record.start), ()):
                continue
            if progress:
                progress(record.id)
            counts.read += 1
            duration = record.samples / record.fs
            epoch = EPOCH_S if duration >= EPOCH_S else duration
            if epoch < 4:
                continue
            rows = []
            for i in chosen:
                _, signal = record.physical(i)
                name = record.channels[i]
                powers = epoch_band_powers(signal, record.fs, epoch)
                for k, total in enumerate(powers["total"]):
                    if not total > 0:
                        continue
                    start = record.start + timedelta(seconds=k * epoch)
                    for band in BANDS:
                        rows.append(
                            event(
                                record.subject_id,
                                epoch_us(start),
                                f"JUMEAU/EEG/{band}_relative_power",
                                float(powers[band][k] / total),
                                name,
                                epoch_us(start + timedelta(seconds=epoch)),
                                "measurement",
                                "derived/eeg",
                                p.record_key("derived/eeg", f"{record.id}#{name}#{k}#{band}"),
                                "1",
                            )
                        )
            if rows:
                writer.add_events(event_table(rows))
            counts.accepted += 1
            counts.events += len(rows)
        return writer.commit()


SLEEP_MIN_S = 30 * 60


def sleep_features(
    store: Store, method: str | None = None, progress: Progress | None = None
) -> IngestReport:
    """Stage every EEG record of at least 30 minutes: one ``JUMEAU/SLEEP/stage`` event per 30-s
    epoch and the night's summary (total sleep time, efficiency, onset latency, WASO, stage
    shares) as ``measurement`` events over the record; where the subject's timeline holds a
    scored hypnogram over the record (EDF+ ``Sleep stage`` annotations), the staging's accuracy
    and Cohen's kappa against it too (events, and a line of the report). ``method`` defaults to
    YASA when installed, else jumeau's spectral stager (the method is kept as the text)."""
    from jumeau.signals import sleep

    method = method or ("yasa" if sleep.yasa_available() else "spectral")
    done = _written(store, f"derived/sleep/{method}", "JUMEAU/SLEEP/stage")
    with BatchWriter(store, "features", f"sleep/{method}") as writer:
        p = store.pseudonymiser
        counts = writer.report.table("derived/sleep")
        for record in store.signal_records():
            if (record.subject_id, record.start) in done:
                continue
            units = record.units
            picked = sleep.pick_channels(record.channels)
            eeg = picked["eeg"]
            if (
                eeg is None
                or units[eeg] not in EEG_UNITS
                or record.samples < SLEEP_MIN_S * record.fs
            ):
                continue
            if progress:
                progress(record.id)
            counts.read += 1
            signals = {
                role: sleep.to_microvolts(record.physical(i)[1], units[i])
                for role, i in picked.items()
                if i is not None
            }
            stages = sleep.stage(
                method, signals["eeg"], record.fs, signals.get("eog"), signals.get("emg")
            )
            source = f"derived/sleep/{method}"
            rows = []
            for k, stage in enumerate(stages):
                start = record.start + timedelta(seconds=k * sleep.EPOCH_S)
                rows.append(
                    event(
                        record.subject_id,
                        epoch_us(start),
                        "JUMEAU/SLEEP/stage",
                        None,
                        stage,
                        epoch_us(start + timedelta(seconds=sleep.EPOCH_S)),
                        "observation",
                        source,
                        p.record_key(source, f"{record.id}#{k}"),
                    )
                )
            reference = _scored_hypnogram(store, record, len(stages))
            if reference is not None:
                scored = sleep.agreement(reference, stages)
                writer.report.warnings.append(
                    f"{record.id}: {method} staging vs the scored hypnogram over "
                    f"{scored['epochs']} epochs: accuracy {scored['accuracy']:.1%}, "
                    f"kappa {scored['kappa']:.3f}"
                )
                for measure in ("accuracy", "kappa"):
                    rows.append(
                        event(
                            record.subject_id,
                            epoch_us(record.start),
                            f"JUMEAU/SLEEP/agreement_{measure}",
                            scored[measure],
                            method,
                            epoch_us(record.end),
                            "observation",
                            source,
                            p.record_key(source, f"{record.id}#agreement_{measure}"),
                            "1",
                        )
                    )
            for name, value in sleep.night_summary(stages).items():
                if not np.isfinite(value):
                    continue
                measure, _, unit = name.rpartition("_")
                rows.append(
                    event(
                        record.subject_id,
                        epoch_us(record.start),
                        f"JUMEAU/SLEEP/{measure}",
                        float(value),
                        method,
                        epoch_us(record.end),
                        "measurement",
                        source,
                        p.record_key(source, f"{record.id}#{name}"),
                        {"min": "min", "pct": "%"}[unit],
                    )
                )
            writer.add_events(event_table(rows))
            counts.accepted += 1
            counts.events += len(rows)
        return writer.commit()


def _scored_hypnogram(store: Store, record, n_epochs: int) -> np.ndarray | None:
    """The subject's scored stages over ``record``, one per epoch, or None if there are none."""
    import polars as pl

    from jumeau.signals import sleep

    scored = (
        store.timeline(record.subject_id, start=record.start, end=record.end)
        .filter(pl.col("code").str.starts_with("EDF/") & pl.col("end_time").is_not_null())
        .with_columns(label=pl.col("code").str.strip_prefix("EDF/"))
    )
    scored = scored.filter(
        pl.col("label").map_elements(lambda x: sleep.stage_label(x) is not None, pl.Boolean)
    )
    if scored.is_empty():
        return None
    onsets = [(t - record.start).total_seconds() for t in scored["time"]]
    durations = [
        (e - t).total_seconds() for t, e in zip(scored["time"], scored["end_time"], strict=True)
    ]
    return sleep.hypnogram_epochs(onsets, durations, scored["label"].to_list(), n_epochs)
