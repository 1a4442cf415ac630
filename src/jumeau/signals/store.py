"""A signal store built for zoom: chunked, compressed, per-channel samples and a min/max/mean pyramid.

Each record is a folder inside the batch that ingested it::

    signals/<record>/meta.json        subject, start, sampling rate, channels (unit, gain, baseline)
    signals/<record>/<ch>.chunks      digital samples, int32, zstd-compressed chunks of 65,536
    signals/<record>/<ch>.index.npy   byte offsets of the chunks
    signals/<record>/<ch>.pyramid.npz min/max/mean per level, each level 8x coarser than the last

Samples are stored as the digital values the device recorded, with the gain and baseline that turn
them into physical units (``(digital - baseline) / gain``, the WFDB definition), so physical values
are exactly those of the source. Reading a window decompresses only the chunks it covers; "this
channel from t0 to t1 in at most N points" is answered from the coarsest pyramid level that still
has N points in the window, so any zoom costs about N values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK = 65_536
FACTOR = 8
MIN_LEVEL_POINTS = 256
CODEC = "zstd"


@dataclass
class Channel:
    name: str
    unit: str
    gain: float
    baseline: float
    #: the digital value that marks a missing sample (WFDB reserves its format's minimum)
    missing: int | None = None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "channel"


def _fold(values: np.ndarray, how: str) -> np.ndarray:
    """One pyramid step: ``how`` (min, max, mean) over consecutive groups of FACTOR values,
    skipping missing (NaN) samples; a group with none left is NaN, a gap in the drawing."""
    pad = (-len(values)) % FACTOR
    groups = np.append(values, np.full(pad, np.nan)).reshape(-1, FACTOR)
    if how == "min":
        return np.fmin.reduce(groups, axis=1)
    if how == "max":
        return np.fmax.reduce(groups, axis=1)
    return _row_means(groups)


def _row_means(rows: np.ndarray) -> np.ndarray:
    """The mean of each row's present (non-NaN) values; NaN for a row with none."""
    present = ~np.isnan(rows)
    count = present.sum(axis=1)
    total = np.where(present, rows, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(len(rows), np.nan), where=count > 0)


#: The digital value of a missing sample in a channel a connector puts on its own scale.
MISSING = -(2**31)


def digitize(values: np.ndarray, gain: float) -> np.ndarray:
    """``values`` (NaN where missing) as the store's integers at ``gain`` digital units per unit
    (baseline 0), missing samples :data:`MISSING`: for sources that give physical values or
    decimals rather than a device's integers."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    digital = np.round(np.where(missing, 0.0, values) * gain)
    if np.abs(digital).max(initial=0) >= 2**31:
        raise ValueError("values too large for the signal store's 32-bit samples")
    digital = digital.astype(np.int64)
    digital[missing] = MISSING
    return digital


def to_physical(digital: np.ndarray, channel: dict) -> np.ndarray:
    """Physical values of a channel's digital samples; missing samples are NaN."""
    values = (digital - channel["baseline"]) / channel["gain"]
    missing = channel.get("missing")
    if missing is not None:
        values[digital == missing] = np.nan
    return values


def write_record(
    folder: Path,
    *,
    subject_id: int,
    start: datetime,
    fs: float,
    channels: list[Channel],
    digital: np.ndarray,
    source: str,
) -> dict:
    """Write one record (``digital``: samples x channels, integers) and its pyramids."""
    folder.mkdir(parents=True, exist_ok=False)
    n = digital.shape[0]
    files = []
    for i, ch in enumerate(channels):
        stem = f"{i:02d}_{_safe(ch.name)}"
        column = np.ascontiguousarray(digital[:, i].astype(np.int32))
        offsets = [0]
        with open(folder / f"{stem}.chunks", "wb") as out:
            for lo in range(0, n, CHUNK):
                block = pa.compress(column[lo : lo + CHUNK].tobytes(), codec=CODEC, asbytes=True)
                out.write(block)
                offsets.append(offsets[-1] + len(block))
        np.save(folder / f"{stem}.index.npy", np.array(offsets, dtype=np.int64))
        physical = to_physical(
            column, {"baseline": ch.baseline, "gain": ch.gain, "missing": ch.missing}
        )
        levels = {}
        values_min = values_max = values_mean = physical
        level = 0
        while len(values_min) > MIN_LEVEL_POINTS:
            level += 1
            values_min, values_max = _fold(values_min, "min"), _fold(values_max, "max")
            values_mean = _fold(values_mean, "mean")
            levels[f"min{level}"] = values_min.astype(np.float32)
            levels[f"max{level}"] = values_max.astype(np.float32)
            levels[f"mean{level}"] = values_mean.astype(np.float32)
        np.savez(folder / f"{stem}.pyramid.npz", **levels)
        files.append(stem)
    meta = {
        "subject_id": subject_id,
        "start": start.isoformat(),
        "fs": fs,
        "samples": int(n),
        "source": source,
        "channels": [
            {
                "name": c.name,
                "unit": c.unit,
                "gain": c.gain,
                "baseline": c.baseline,
                "missing": c.missing,
                "file": f,
            }
            for c, f in zip(channels, files, strict=True)
        ],
        "chunk": CHUNK,
        "factor": FACTOR,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


class SignalRecord:
    """A stored record, read by window or by zoom."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.id = folder.name
        self.fs = float(self.meta["fs"])
        self.samples = int(self.meta["samples"])
        self.start = datetime.fromisoformat(self.meta["start"])
        self.subject_id = int(self.meta["subject_id"])

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.samples / self.fs)

    @property
    def channels(self) -> list[str]:
        return [c["name"] for c in self.meta["channels"]]

    @property
    def units(self) -> list[str]:
        """Each channel's physical unit, lower-cased and trimmed (``uv``, ``mv``...)."""
        return [c["unit"].strip().lower() for c in self.meta["channels"]]

    def _channel(self, channel: str | int) -> dict:
        chans = self.meta["channels"]
        if isinstance(channel, int):
            return chans[channel]
        for c in chans:
            if c["name"] == channel:
                return c
        raise KeyError(
            f"record {self.id} has no channel {channel!r} (channels: {', '.join(self.channels)})"
        )

    def _sample_range(self, start: datetime | None, end: datetime | None) -> tuple[int, int]:
        # microsecond times rarely fall exactly on a sample: snap within a microsecond's worth
        eps = 1e-6 * self.fs
        lo = (
            0
            if start is None
            else int(np.floor((start - self.start).total_seconds() * self.fs + eps))
        )
        hi = (
            self.samples
            if end is None
            else int(np.ceil((end - self.start).total_seconds() * self.fs - eps))
        )
        return max(lo, 0), min(hi, self.samples)

    def digital(self, channel: str | int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Digital samples ``[lo, hi)``, decompressing only the chunks that hold them."""
        c = self._channel(channel)
        hi = self.samples if hi is None else hi
        if hi <= lo:
            return np.zeros(0, dtype=np.int32)
        offsets = np.load(self.folder / f"{c['file']}.index.npy")
        first, last = lo // CHUNK, (hi - 1) // CHUNK
        parts = []
        with open(self.folder / f"{c['file']}.chunks", "rb") as f:
            f.seek(int(offsets[first]))
            raw = f.read(int(offsets[last + 1] - offsets[first]))
        pos = 0
        for k in range(first, last + 1):
            size = int(offsets[k + 1] - offsets[k])
            count = min(CHUNK, self.samples - k * CHUNK)
            block = pa.decompress(
                raw[pos : pos + size], decompressed_size=count * 4, codec=CODEC, asbytes=True
            )
            parts.append(np.frombuffer(block, dtype=np.int32))
            pos += size
        data = np.concatenate(parts)
        return data[lo - first * CHUNK : hi - first * CHUNK]

    def physical(
        self, channel: str | int, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(times in seconds from record start, physical values) of a window, at full resolution;
        missing samples are NaN."""
        c = self._channel(channel)
        lo, hi = self._sample_range(start, end)
        return np.arange(lo, hi) / self.fs, to_physical(self.digital(channel, lo, hi), c)

    def window(
        self,
        channel: str | int,
        start: datetime | None = None,
        end: datetime | None = None,
        points: int = 2000,
    ) -> dict:
        """At most ``points`` (min, max, mean) buckets covering the window; the min/max bound the
        true extremes of every sample in each bucket."""
        c = self._channel(channel)
        lo, hi = self._sample_range(start, end)
        n = hi - lo
        if n <= 0:
            return {"t": [], "min": [], "max": [], "mean": [], "level": 0, "unit": c["unit"]}
        if n <= points:
            t, v = self.physical(channel, start, end)
            return {"t": t, "min": v, "max": v, "mean": v, "level": 0, "unit": c["unit"]}
        pyramid = np.load(self.folder / f"{c['file']}.pyramid.npz")
        level, scale = 0, 1
        while f"min{level + 1}" in pyramid and n / (scale * FACTOR) >= 1 and n / scale > points:
            level += 1
            scale *= FACTOR
        if level == 0:
            t, v = self.physical(channel, start, end)
            mins = maxs = means = v
            base_lo = lo
        else:
            a, b = lo // scale, -(-hi // scale)
            mins, maxs = pyramid[f"min{level}"][a:b], pyramid[f"max{level}"][a:b]
            means = pyramid[f"mean{level}"][a:b]
            base_lo = a * scale
        group = -(-len(mins) // points)
        if group > 1:
            pad = (-len(mins)) % group
            mins = np.fmin.reduce(np.append(mins, np.full(pad, np.nan)).reshape(-1, group), axis=1)
            maxs = np.fmax.reduce(np.append(maxs, np.full(pad, np.nan)).reshape(-1, group), axis=1)
            means = _row_means(np.append(means, np.full(pad, np.nan)).reshape(-1, group))
        step = scale * group
        t = (base_lo + np.arange(len(mins)) * step) / self.fs
        return {
            "t": t,
            "min": mins,
            "max": maxs,
            "mean": means,
            "level": level,
            "unit": c["unit"],
            "samples_per_point": step,
        }
