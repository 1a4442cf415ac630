"""ECG R-peak detection, its evaluation against reference beat annotations, and delineation.

The detector follows Pan & Tompkins (IEEE TBME 1985): band-pass 5-15 Hz, derivative, squaring,
150 ms moving-window integration, then adaptive signal/noise thresholds with a 200 ms refractory
period and search-back for missed beats; each detection is placed on the largest deflection of
the band-passed ECG just before the integrator's peak. Evaluation matches detections to the
reference beats one-to-one within 150 ms (the ANSI/AAMI EC57 window) and reports sensitivity,
positive predictivity and F1. :func:`delineate` finds the P, QRS and T fiducial points of the
median beat of all leads and gives PR, QRS, QT and QTc as an electrocardiograph reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import butter, find_peaks, sosfiltfilt

#: WFDB annotation symbols that mark a beat (MIT-BIH conventions).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
TOLERANCE_S = 0.150
#: Beats needed for a median beat (a standard 10-s 12-lead ECG at 50/min has 8 whole beats).
MIN_BEATS = 8


def detect_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of the R peaks of one ECG lead (physical units, any polarity; missing
    samples, NaN, are read as a flat line: no beat is found in a gap)."""
    missing = np.isnan(np.asarray(ecg, dtype=float))
    ecg = flat_gaps(ecg)
    if len(ecg) < int(fs):
        return np.zeros(0, dtype=np.int64)
    sos = butter(2, [5.0, 15.0], btype="bandpass", fs=fs, output="sos")
    band = sosfiltfilt(sos, ecg - np.median(ecg))
    slope = np.gradient(band) * fs
    width = max(1, int(round(0.150 * fs)))
    integrated = np.convolve(slope**2, np.ones(width) / width, mode="same")
    refractory = int(0.200 * fs)
    candidates, _ = find_peaks(integrated, distance=refractory)
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    heights = integrated[candidates]
    steepest = maximum_filter1d(np.abs(slope), size=width)[candidates]
    spk, npk = _initial_levels(candidates, heights, fs)
    t_wave_window = int(_T_WAVE_WINDOW_S * fs)
    beats: list[int] = []
    rr: list[int] = []
    mean_rr, lost_after, last_beat, last_steepest = 0.0, _LOST_AFTER_S * fs, 0, 0.0
    rows = zip(
        candidates.tolist(),
        heights.tolist(),
        steepest.tolist(),
        missing[candidates].tolist(),
        strict=True,
    )
    for c, h, steep, in_gap in rows:
        if in_gap:  # a filter's ringing inside a gap is neither a beat nor noise
            continue
        since = c - last_beat
        level = spk if since <= lost_after else _fallen_level(spk, npk, since - lost_after, fs)
        threshold = npk + 0.25 * (level - npk)
        if h <= threshold or (beats and since <= refractory):
            npk = 0.125 * h + 0.875 * npk
            continue
        if beats and since < t_wave_window and steep < 0.5 * last_steepest:
            npk = 0.125 * h + 0.875 * npk  # a T wave: soon after a beat, half as steep
            continue
        if rr and since > 1.66 * mean_rr:  # search back for a missed beat in the gap
            inside = candidates[
                (candidates > last_beat + refractory) & (candidates < c - refractory)
            ]
            if len(inside):
                best = int(inside[np.argmax(integrated[inside])])
                if integrated[best] > threshold / 2:
                    rr.append(best - last_beat)
                    beats.append(best)
                    last_beat = best
        if beats:
            rr.append(c - last_beat)
            mean_rr = sum(rr[-8:]) / len(rr[-8:])
            lost_after = max(_LOST_AFTER_S * fs, 2.0 * mean_rr)
        beats.append(c)
        last_beat, last_steepest = c, steep
        if level < spk:  # the first beat found again after a loss sets the level
            spk = min(h, _MAX_LEVEL_STEP * spk)
        else:  # an artifact many times a beat's size moves the level only so far
            spk = 0.125 * min(h, _MAX_LEVEL_STEP * spk) + 0.875 * spk
    placed = _place(np.array(beats, dtype=np.int64), band, fs)
    return placed[~missing[placed]]  # a filter's ringing at a gap's edge is not a beat


#: How far one detection may raise the signal level (a multiple of it).
_MAX_LEVEL_STEP = 4.0
#: Seconds without a beat after which the signal level starts to fall back (halving a second).
_LOST_AFTER_S = 2.0
#: A candidate this soon after a beat and less than half as steep is its T wave (Pan-Tompkins).
_T_WAVE_WINDOW_S = 0.36
#: The lowest the signal level falls back to, as a fraction of the last beats' (a beat a tenth
#: as tall, after a change of gain, has a hundredth of the energy; a flat gap has almost none).
_LOWEST_LEVEL = 0.005


def _initial_levels(candidates: np.ndarray, heights: np.ndarray, fs: float) -> tuple[float, float]:
    """Signal and noise levels to start from: the median of each second's largest candidate
    over the first ten seconds (a typical beat, whatever one artifact there does) and the
    median candidate."""
    first = candidates < int(10 * fs)
    seconds = candidates[first] // int(fs)
    tallest = [heights[first][seconds == k].max() for k in np.unique(seconds)]
    return float(np.median(tallest)), 0.5 * float(np.median(heights[first]))


def _fallen_level(spk: float, npk: float, lost_for: float, fs: float) -> float:
    """The signal level once no beat has been found for :data:`_LOST_AFTER_S` (or twice the
    recent RR interval) and ``lost_for`` samples more: halving each second, down to three times
    the noise level but no lower than :data:`_LOWEST_LEVEL` of the last beats' level. After an
    artifact or a change of gain the detector finds the beats again instead of waiting for one
    as large as the artifact."""
    floor = min(spk, max(3.0 * npk, _LOWEST_LEVEL * spk))
    return max(spk * 0.5 ** (lost_for / fs), floor)


def flat_gaps(leads: np.ndarray) -> np.ndarray:
    """The leads (one or rows of several) with missing samples (NaN) set to each lead's median,
    so that filters run through a gap instead of spreading NaN over the whole lead."""
    leads = np.array(leads, dtype=float)
    for row in np.atleast_2d(leads):  # views: filled in place
        gaps = np.isnan(row)
        if gaps.any():
            row[gaps] = np.median(row[~gaps]) if not gaps.all() else 0.0
    return leads


def _place(peaks: np.ndarray, band: np.ndarray, fs: float) -> np.ndarray:
    """Move each detection to the largest band-passed deflection in the QRS window before it."""
    if len(peaks) == 0:
        return peaks
    before, after = int(0.150 * fs), int(0.050 * fs)
    polarity = 1.0 if np.percentile(band, 99.5) >= -np.percentile(band, 0.5) else -1.0
    signal = polarity * band
    placed = np.empty_like(peaks)
    for i, p in enumerate(peaks):
        lo, hi = max(0, p - before), min(len(signal), p + after)
        placed[i] = lo + int(np.argmax(signal[lo:hi]))
    return _refractory(np.unique(placed), signal, int(0.200 * fs))


def _refractory(peaks: np.ndarray, signal: np.ndarray, refractory: int) -> np.ndarray:
    """No two beats within the ventricles' refractory period: of two placed detections closer
    than that (a wide or notched QRS can give two integrator peaks), keep the larger one."""
    kept: list[int] = []
    for p in peaks:
        if kept and p - kept[-1] < refractory:
            if signal[p] > signal[kept[-1]]:
                kept[-1] = int(p)
            continue
        kept.append(int(p))
    return np.array(kept, dtype=np.int64)


@dataclass
class BeatScore:
    """Detection quality against reference beats."""

    reference: int
    detected: int
    true_positives: int

    @property
    def false_negatives(self) -> int:
        return self.reference - self.true_positives

    @property
    def false_positives(self) -> int:
        return self.detected - self.true_positives

    @property
    def sensitivity(self) -> float:
        return self.true_positives / self.reference if self.reference else float("nan")

    @property
    def ppv(self) -> float:
        return self.true_positives / self.detected if self.detected else float("nan")

    @property
    def f1(self) -> float:
        denominator = self.reference + self.detected
        return 2 * self.true_positives / denominator if denominator else float("nan")

    def to_dict(self) -> dict:
        return {
            "reference_beats": self.reference,
            "detected": self.detected,
            "tp": self.true_positives,
            "fn": self.false_negatives,
            "fp": self.false_positives,
            "sensitivity": self.sensitivity,
            "ppv": self.ppv,
            "f1": self.f1,
        }


def score_beats(
    reference: np.ndarray, detected: np.ndarray, fs: float, tolerance_s: float = TOLERANCE_S
) -> BeatScore:
    """Match detections to reference beats one-to-one within ``tolerance_s``."""
    reference, detected = np.sort(reference), np.sort(detected)
    tol = tolerance_s * fs
    i = j = tp = 0
    while i < len(reference) and j < len(detected):
        d = detected[j] - reference[i]
        if abs(d) <= tol:
            tp += 1
            i += 1
            j += 1
        elif d < 0:
            j += 1
        else:
            i += 1
    return BeatScore(len(reference), len(detected), tp)


def evaluate_record(path: str, channel: int = 0, detector=detect_r_peaks) -> dict:
    """Detect R peaks in a WFDB record and score them against its reference beat annotations."""
    import time

    import wfdb

    record = wfdb.rdrecord(path, channels=[channel])
    try:
        ann = wfdb.rdann(path, "atr")
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{path}.atr: no reference annotations to evaluate against"
        ) from exc
    reference = np.array(
        [s for s, sym in zip(ann.sample, ann.symbol, strict=True) if sym in BEAT_SYMBOLS]
    )
    start = time.perf_counter()
    detected = detector(record.p_signal[:, 0], record.fs)
    seconds = time.perf_counter() - start
    score = score_beats(reference, detected, record.fs)
    duration = record.sig_len / record.fs
    return {
        "record": path,
        "channel": record.sig_name[0],
        "fs": record.fs,
        "duration_s": duration,
        **score.to_dict(),
        "seconds": seconds,
        "times_real_time": duration / seconds if seconds else None,
    }


def delineate(leads: np.ndarray, fs: float, peaks: np.ndarray) -> dict[str, float] | None:
    """Global P, QRS and T fiducial points of the median beat of one or more leads, and the
    intervals a 12-lead report gives (PR, QRS, QT, QTc), in ms.

    The median beat of each lead (0.5-40 Hz, aligned on the R peaks) is read as a whole, as an
    interpreting electrocardiograph does: QRS onset and offset are where the spatial velocity
    (the norm of all leads' slopes) falls below 5% of its QRS maximum; the P wave is the largest
    spatial deflection 30-300 ms before the QRS, its onset where the 15-Hz spatial velocity
    falls below 20% of its upstroke maximum and its offset where the deflection falls below 20%
    of its peak; T end is the median, over the leads with a clear T wave (5x the noise of the
    median beat) peaking with the clearest one, of the tangent method (the steepest T downslope
    extended to the isoelectric level of the QRS onset). Times are relative to the R peak. Returns None when
    there are too few beats or no clear QRS; PR is left out when no P wave stands out.
    """
    leads = np.atleast_2d(flat_gaps(leads))
    if len(peaks) < MIN_BEATS:
        return None
    rr = float(np.median(np.diff(peaks))) / fs
    before, after = int(min(0.4, 0.5 * rr) * fs), int(min(0.7, max(0.5, 0.9 * rr)) * fs)
    usable = [p for p in peaks if p - before >= 0 and p + after <= leads.shape[1]]
    if len(usable) < MIN_BEATS:
        return None
    clean = sosfiltfilt(butter(2, [0.5, 40.0], btype="bandpass", fs=fs, output="sos"), leads)
    beats = np.stack([clean[:, p - before : p + after] for p in usable])
    template = np.median(beats, axis=0)
    # noise of a median of n beats: 1.253 sigma / sqrt(n), sigma the beat-to-beat spread
    noise = 1.253 * np.median(beats.std(axis=0), axis=1) / np.sqrt(len(usable))
    r = before
    velocity = np.sqrt((np.gradient(template, axis=1) ** 2).sum(axis=0)) * fs
    reach, near = int(0.15 * fs), int(0.1 * fs)
    upstroke = max(r - near, 0) + int(np.argmax(velocity[max(r - near, 0) : r + 1]))
    downstroke = r + int(np.argmax(velocity[r : r + near]))
    quiet = 0.05 * max(velocity[upstroke], velocity[downstroke])
    onset = _walk_while(velocity, upstroke, -1, max(r - reach, 0), lambda v: v > quiet)
    offset = _walk_while(
        velocity, downstroke, 1, min(r + reach, len(velocity) - 1), lambda v: v > quiet
    )
    if onset <= 0 or offset - onset < 0.03 * fs:
        return None
    t_end = _t_end(template, noise, fs, onset, r, rr)
    out = {"qrs_onset": onset, "qrs_offset": offset}
    p_wave = _p_wave(template, fs, onset)
    if p_wave is not None:
        out["p_onset"], out["p_offset"] = p_wave
    if t_end is not None:
        out["t_end"] = t_end
    result = {name: (value - r) / fs * 1000 for name, value in out.items()}
    result["qrs"] = (offset - onset) / fs * 1000
    result["rr"] = rr * 1000
    if p_wave is not None:
        result["pr"] = (onset - p_wave[0]) / fs * 1000
    if t_end is not None:
        qt = (t_end - onset) / fs * 1000
        if 250 <= qt <= 650 and t_end - r < 0.9 * rr * fs:  # T ends before the next beat
            result.update(qt=qt, qtc_bazett=qt / np.sqrt(rr), qtc_fridericia=qt / np.cbrt(rr))
    return result


def _walk_while(values: np.ndarray, start: int, step: int, stop: int, keep) -> int:
    """The first index from ``start`` towards ``stop`` where ``keep`` fails."""
    k = start
    while k != stop and keep(values[k]):
        k += step
    return k


def _t_end(
    template: np.ndarray, noise: np.ndarray, fs: float, onset: int, r: int, rr: float
) -> float | None:
    """T end (sample index): the median tangent-method end over the leads with a clear T wave
    (5x the template's noise) whose T peaks within 40 ms of the clearest lead's. The T peak is
    sought from 150 ms after R to 500 ms or 70% of the RR interval (``rr``, s), whichever comes
    first, so that at a fast rate the next beat's QRS is not taken for a T wave."""
    lo = r + int(0.15 * fs)
    hi = min(r + int(min(0.5, 0.7 * rr) * fs), template.shape[1] - 2)
    if hi - lo < 3:
        return None
    found = []
    for lead, lead_noise in zip(template, noise, strict=True):
        baseline = lead[onset]
        deviation = lead[lo:hi] - baseline
        peak = lo + int(np.argmax(np.abs(deviation)))
        clarity = abs(lead[peak] - baseline) / (lead_noise or 1e-9)
        if clarity < 5:
            continue
        sign = np.sign(lead[peak] - baseline) or 1.0
        slope = np.gradient(lead) * fs
        tail = slope[peak : min(len(slope), peak + int(0.15 * fs))]
        steep = peak + int(np.argmax(-sign * tail))
        if slope[steep] != 0:
            found.append((clarity, peak, steep + (baseline - lead[steep]) / slope[steep] * fs))
    if not found:
        return None
    _, reference_peak, _ = max(found)
    ends = [end for _, peak, end in found if abs(peak - reference_peak) <= 0.04 * fs]
    return float(np.median(ends))


def _p_wave(template: np.ndarray, fs: float, onset: int) -> tuple[int, int] | None:
    """P onset and offset (sample indices) before the QRS, or None without a clear P wave."""
    lo, hi = onset - int(0.30 * fs), onset - int(0.03 * fs)
    if lo < 2:
        return None
    smooth = sosfiltfilt(butter(2, 15.0, btype="low", fs=fs, output="sos"), template, axis=1)
    magnitude = np.sqrt(((smooth - smooth[:, [onset]]) ** 2).sum(axis=0))
    qrs_size = np.sqrt(((template - template[:, [onset]]) ** 2).sum(axis=0)).max()
    peak = lo + int(np.argmax(magnitude[lo:hi]))
    if magnitude[peak] < 0.03 * qrs_size:
        return None
    velocity = np.sqrt((np.gradient(smooth, axis=1) ** 2).sum(axis=0)) * fs
    span = int(0.08 * fs)
    rise = max(peak - span, 1) + int(np.argmax(velocity[max(peak - span, 1) : peak + 1]))
    top = velocity[rise]
    start = _walk_while(velocity, rise, -1, 0, lambda v: v > 0.2 * top)
    end = _walk_while(magnitude, peak, 1, onset, lambda m: m > 0.2 * magnitude[peak])
    if not 0.08 * fs <= onset - start <= 0.4 * fs:
        return None
    return start, end
