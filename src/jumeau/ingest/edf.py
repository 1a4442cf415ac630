"""EDF and EDF+ recordings (EEG, polysomnography) and their annotations, through ``pyedflib``.

Signals are grouped by sampling rate, each group one record of the signal store, with the file's
digital samples and the gain and baseline that turn them into its physical values
(``physical = pmin + (digital - dmin) * (pmax - pmin) / (dmax - dmin)``). EDF+ annotations
(events, hypnogram stages such as ``Sleep stage W``) become ``annotation`` events at their onset,
with their duration as the end time. Annotation-only files (hypnograms) are accepted. An EDF+D
(discontinuous) file's samples are split at its gaps, each continuous segment a record at its
true start (see :mod:`jumeau.ingest.edf_records`).
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np

from jumeau.ingest.edf_records import DiscontinuousReader, EdfRecordError, segments
from jumeau.ingest.events import epoch_us, event, event_table, reject_file
from jumeau.signals.store import Channel, write_record
from jumeau.store import BatchWriter, IngestReport, Progress, Store


class EdfError(ValueError):
    """An EDF file cannot be read; the message names the file."""


def ingest_edf(
    store: Store,
    source: str | Path,
    *,
    subject: str | None = None,
    subject_source: str = "edf",
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest EDF/EDF+ and BDF/BDF+ files (a file, or a folder of ``*.edf`` and ``*.bdf``) as
    one atomic batch.

    ``subject`` is the patient's id in ``subject_source`` (default: the file name under ``edf``).
    A file of a folder that cannot be read is rejected with the reason and the others are kept;
    a single file that cannot be read is an :class:`EdfError`.
    """
    source = Path(source)
    files = (
        sorted(f for f in source.iterdir() if f.suffix.lower() in _SUFFIXES)
        if source.is_dir()
        else [source]
    )
    if not files or not all(f.exists() for f in files):
        raise FileNotFoundError(f"{source}: no EDF or BDF file found")
    with BatchWriter(store, "edf", str(source.resolve())) as writer:
        for path in files:
            if progress:
                progress(path.name)
            counts = writer.report.table("edf/file")
            counts.read += 1
            try:
                events = _ingest_file(writer, path, subject, subject_source)
            except EdfError as exc:
                if not source.is_dir():
                    raise
                # one unreadable recording of a folder is rejected; the others are kept
                counts.rejected += 1
                reject_file(writer, "edf/file", path, str(exc))
                continue
            counts.accepted += 1
            counts.events += events
        return writer.commit()


#: Recording files read from a folder: EDF/EDF+ and BioSemi's 24-bit BDF/BDF+.
_SUFFIXES = (".edf", ".bdf")


def _ingest_file(writer: BatchWriter, path: Path, subject: str | None, subject_source: str) -> int:
    """One recording's signals and annotations into ``writer``; the number of its events. On an
    :class:`EdfError`, nothing of the file is left in the batch."""
    ann_counts = writer.report.table("edf/annotation")
    p = writer.store.pseudonymiser
    try:
        reader = _open(path)
    except (OSError, ValueError) as exc:
        raise EdfError(f"{path}: not a readable EDF/EDF+ file ({exc})") from exc
    written: list[Path] = []
    try:
        patient = subject or path.stem
        subject_id = p.subject_id(subject_source, patient)
        start = reader.getStartdatetime() + timedelta(
            microseconds=p.shift_us(subject_source, patient)
        )
        rows = []
        try:  # an EDF+D file's gaps split its samples into runs, each its own record
            runs = segments(path, reader.datarecord_duration)
        except EdfRecordError as exc:
            raise EdfError(str(exc)) from exc
        groups: dict[float, list[int]] = {}
        for i in range(reader.signals_in_file):
            groups.setdefault(float(reader.getSampleFrequency(i)), []).append(i)
        for fs, indices in sorted(groups.items()):
            channels, columns = [], []
            for i in indices:
                dmin, dmax = reader.getDigitalMinimum(i), reader.getDigitalMaximum(i)
                pmin, pmax = reader.getPhysicalMinimum(i), reader.getPhysicalMaximum(i)
                if dmax == dmin or pmax == pmin:
                    raise EdfError(
                        f"{path}: signal {i} ({reader.getLabel(i)!r}) has a degenerate range"
                    )
                gain = (dmax - dmin) / (pmax - pmin)
                channels.append(
                    Channel(
                        reader.getLabel(i),
                        reader.getPhysicalDimension(i),
                        gain,
                        dmin - pmin * gain,
                    )
                )
                columns.append(reader.readSignal(i, digital=True))
            length = min(len(c) for c in columns)
            per_record = int(reader.samples_in_datarecord(indices[0]))
            for k, (first, last, offset) in enumerate(runs):
                lo = first * per_record
                hi = length if last is None else min(last * per_record, length)
                if hi <= lo:
                    continue
                key = f"{subject_source}:{patient}:{path.name}@{fs:g}" + (
                    f"#{k}" if len(runs) > 1 else ""
                )
                at = start + timedelta(seconds=offset)
                record_id = str(p.record_key("edf/record", key))
                written.append(writer.signal_folder(record_id))
                write_record(
                    written[-1],
                    subject_id=subject_id,
                    start=at,
                    fs=fs,
                    channels=channels,
                    digital=np.column_stack([c[lo:hi] for c in columns]),
                    source=f"edf/{p.seal(path.name)}",  # a file may be named after its patient
                )
                rows.append(
                    event(
                        subject_id,
                        epoch_us(at),
                        "EDF/record",
                        fs,
                        record_id,
                        epoch_us(at + timedelta(seconds=(hi - lo) / fs)),
                        "signal",
                        "edf/record",
                        p.record_key("edf/record", key),
                    )
                )
        onsets, durations, texts = reader.readAnnotations()
        for k, (onset, duration, text) in enumerate(zip(onsets, durations, texts, strict=True)):
            ann_counts.read += 1
            label, _, channel = str(text).partition("@@")
            at = start + timedelta(seconds=float(onset))
            end = at + timedelta(seconds=float(duration)) if duration and duration > 0 else None
            rows.append(
                event(
                    subject_id,
                    epoch_us(at),
                    f"EDF/{label.strip()}",
                    None,
                    channel or None,
                    epoch_us(end) if end else None,
                    "annotation",
                    "edf/annotation",
                    p.record_key("edf/annotation", f"{subject_source}:{patient}:{path.name}#{k}"),
                )
            )
            ann_counts.accepted += 1
            ann_counts.events += 1
        writer.add_events(event_table(rows))
        return len(rows)
    except (EdfError, OSError, ValueError) as exc:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, EdfError):
            raise
        raise EdfError(f"{path}: cannot be read ({exc})") from exc
    finally:
        reader.close()


def _open(path: Path):
    """pyedflib's reader, or for EDF+D (which pyedflib refuses) the edfio-backed one."""
    import pyedflib

    with open(path, "rb") as f:
        discontinuous = f.read(197)[192:197] == b"EDF+D"
    return DiscontinuousReader(path) if discontinuous else pyedflib.EdfReader(str(path))
