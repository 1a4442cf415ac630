"""FHIR ``SampledData`` (a waveform inside an Observation: an ECG lead, a pleth curve) read as
the signal store's digital samples.

R4 gives the time between samples in ms (``period``); R5 as ``interval`` in ``intervalUnit``.
Each value is ``origin + factor * data``; ``E`` (error) is a missing sample, ``L`` and ``U`` (below
and above the detection limits) the limit itself where one is given. ``dimensions`` > 1
interleaves several channels. The data's decimals (up to six) are kept exactly: they are stored as
integers scaled by a power of ten, with the gain and baseline that give the physical values
back (a limit standing for ``L`` or ``U`` to the data's resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jumeau.signals.store import MISSING, Channel, digitize

_INTERVAL_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "min": 60_000.0}


class SampledDataError(ValueError):
    """A SampledData cannot be read; the message says which part is wrong."""


@dataclass
class SampledSignal:
    """One or more channels sampled at ``fs`` Hz: digital samples (samples x channels)."""

    fs: float
    channels: list[Channel]
    digital: np.ndarray

    @property
    def seconds(self) -> float:
        return self.digital.shape[0] / self.fs


def read_sampled_data(data: dict, name: str) -> SampledSignal:
    """The samples of one ``SampledData`` element, its channels named ``name`` (``name/2``...
    when it has several dimensions)."""
    period_ms = _period_ms(data)
    origin = data.get("origin") or {}
    unit = origin.get("code") or origin.get("unit") or ""
    offset = float(origin.get("value") or 0.0)
    factor = float(data.get("factor") or 1.0)
    dims = int(data.get("dimensions") or 1)
    tokens = str(data.get("data") or "").split()
    if not tokens:
        raise SampledDataError(f"{name}: SampledData has no data")
    if len(tokens) % dims:
        raise SampledDataError(f"{name}: {len(tokens)} values do not divide into {dims} dimensions")
    decimals = max((len(t) - t.index(".") - 1 for t in tokens if "." in t), default=0)
    scale = 10 ** min(decimals, 6)
    text = np.array(tokens)
    numbers = np.full(len(text), np.nan)  # E stays missing
    plain = ~np.isin(text, ["E", "L", "U"])
    try:
        numbers[plain] = text[plain].astype(float)
    except ValueError:
        bad = next(i for i, t in enumerate(tokens) if plain[i] and not _is_number(t))
        raise SampledDataError(f"{name}: value {bad} ({tokens[bad]!r}) is not a number") from None
    for token, key in (("L", "lowerLimit"), ("U", "upperLimit")):
        limit = data.get(key)  # a physical value: back to the data's units
        if limit is not None:
            numbers[text == token] = (limit - offset) / factor
    try:
        digital = digitize(numbers, scale)
    except ValueError as exc:
        raise SampledDataError(f"{name}: {exc}") from None
    gain = scale / factor
    channels = [
        Channel(name if dims == 1 else f"{name}/{d + 1}", unit, gain, -offset * gain, MISSING)
        for d in range(dims)
    ]
    return SampledSignal(1000.0 / period_ms, channels, digital.reshape(-1, dims))


def _period_ms(data: dict) -> float:
    if data.get("period") is not None:
        period = float(data["period"])
    elif data.get("interval") is not None:
        unit = data.get("intervalUnit", "ms")
        if unit not in _INTERVAL_MS:
            raise SampledDataError(f"SampledData interval unit {unit!r} is not a time unit")
        period = float(data["interval"]) * _INTERVAL_MS[unit]
    else:
        raise SampledDataError("SampledData has no period (time between samples)")
    if period <= 0:
        raise SampledDataError(f"SampledData period {period} ms is not positive")
    return period


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
