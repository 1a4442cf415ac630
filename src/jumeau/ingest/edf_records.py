"""The true start of each data record of an EDF+D (discontinuous) file, and a reader for them.

An EDF+D file's data records need not follow each other: the first annotation of each record's
``EDF Annotations`` signal (its time-keeping TAL, ``+<onset>\\x14\\x14``) gives the record's onset in
seconds from the file's start. Readers that concatenate the records (``pyedflib.readSignal``)
put every sample after a gap at the wrong time; these onsets split the samples back into the
continuous segments they were recorded as. ``pyedflib`` refuses EDF+D files altogether, so
:class:`DiscontinuousReader` reads them through ``edfio`` behind the few ``pyedflib`` calls the
EDF ingest makes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

ANNOTATION_LABEL = "EDF Annotations"


class EdfRecordError(ValueError):
    """The data records of an EDF+D file cannot be timed; the message says why."""


def record_onsets(path: Path) -> np.ndarray | None:
    """Each data record's onset (s from the file's start) for an EDF+D file; None for EDF and
    EDF+C, whose records are contiguous by definition."""
    with open(path, "rb") as f:
        header = f.read(256)
        if header[192:197] != b"EDF+D":
            return None
        records = int(header[236:244].strip() or -1)
        signals = int(header[252:256].strip())
        fields = f.read(signals * 256)
        labels = [
            fields[i * 16 : (i + 1) * 16].decode("ascii", "replace").strip() for i in range(signals)
        ]
        at = signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
        per_record = [int(fields[at + i * 8 : at + (i + 1) * 8].strip()) for i in range(signals)]
        if ANNOTATION_LABEL not in labels:
            raise EdfRecordError(f"{path}: EDF+D without an '{ANNOTATION_LABEL}' signal")
        index = labels.index(ANNOTATION_LABEL)
        record_bytes = 2 * sum(per_record)
        before = 2 * sum(per_record[:index])
        size = 2 * per_record[index]
        onsets = []
        k = 0
        while records < 0 or k < records:
            f.seek(256 + signals * 256 + k * record_bytes + before)
            tal = f.read(size)
            if len(tal) < size:
                if records < 0:
                    break
                raise EdfRecordError(f"{path}: data record {k} is truncated")
            onsets.append(_time_keeping_onset(tal, path, k))
            k += 1
    return np.array(onsets, dtype=float)


def _time_keeping_onset(tal: bytes, path: Path, k: int) -> float:
    end = tal.find(b"\x14")
    try:
        return float(tal[:end].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise EdfRecordError(
            f"{path}: data record {k} does not start with a time-keeping annotation"
        ) from None


def segments(path: Path, duration: float) -> list[tuple[int, int | None, float]]:
    """The file's continuous runs of data records: ``(first, last)`` record range (``last`` None
    for the end) and the run's onset in seconds from the file's start; one run from 0 for EDF
    and EDF+C, a run per gap-free stretch for EDF+D (1 µs tolerance)."""
    onsets = record_onsets(path)
    if onsets is None:
        return [(0, None, 0.0)]
    if len(onsets) == 0:
        return []
    breaks = np.flatnonzero(np.abs(np.diff(onsets) - duration) > 1e-6) + 1
    edges = [0, *breaks.tolist(), len(onsets)]
    return [(a, b, float(onsets[a])) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class DiscontinuousReader:
    """An EDF+D file read with ``edfio`` (records concatenated; :func:`record_onsets` places
    them), answering the ``pyedflib.EdfReader`` calls the EDF ingest uses."""

    def __init__(self, path: Path) -> None:
        import edfio

        self._edf = edfio.read_edf(path)
        self._signals = self._edf.signals
        with open(path, "rb") as f:
            header = f.read(256)
        self._start = _header_start(header, path)
        self.signals_in_file = len(self._signals)
        self.datarecord_duration = float(self._edf.data_record_duration)

    def getStartdatetime(self) -> datetime:  # noqa: N802 - pyedflib's name
        return self._start

    def getSampleFrequency(self, i: int) -> float:  # noqa: N802
        return float(self._signals[i].sampling_frequency)

    def getLabel(self, i: int) -> str:  # noqa: N802
        return self._signals[i].label

    def getPhysicalDimension(self, i: int) -> str:  # noqa: N802
        return self._signals[i].physical_dimension

    def getDigitalMinimum(self, i: int) -> int:  # noqa: N802
        return int(self._signals[i].digital_min)

    def getDigitalMaximum(self, i: int) -> int:  # noqa: N802
        return int(self._signals[i].digital_max)

    def getPhysicalMinimum(self, i: int) -> float:  # noqa: N802
        return float(self._signals[i].physical_min)

    def getPhysicalMaximum(self, i: int) -> float:  # noqa: N802
        return float(self._signals[i].physical_max)

    def samples_in_datarecord(self, i: int) -> int:
        return round(self._signals[i].sampling_frequency * self.datarecord_duration)

    def readSignal(self, i: int, digital: bool = True) -> np.ndarray:  # noqa: N802
        signal = self._signals[i]
        return signal.digital if digital else signal.data

    def readAnnotations(self) -> tuple[list, list, list]:  # noqa: N802
        notes = self._edf.annotations
        return (
            [a.onset for a in notes],
            [a.duration if a.duration is not None else -1 for a in notes],
            [a.text for a in notes],
        )

    def close(self) -> None:
        return None


def _header_start(header: bytes, path: Path) -> datetime:
    """The header's start date and time (``dd.mm.yy``, ``hh.mm.ss``; years 85-99 are 19xx)."""
    try:
        day, month, year = (int(x) for x in header[168:176].decode("ascii").split("."))
        hour, minute, second = (int(x) for x in header[176:184].decode("ascii").split("."))
    except (ValueError, UnicodeDecodeError):
        raise EdfRecordError(f"{path}: unreadable start date/time in the header") from None
    return datetime(year + (1900 if year >= 85 else 2000), month, day, hour, minute, second)
