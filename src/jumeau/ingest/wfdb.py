"""WFDB records (``.hea`` + ``.dat``, formats 16, 212, 80 and the rest ``wfdb`` reads) and their
annotation files, into the signal store and onto the subject's timeline.

The record becomes one ``signal`` event spanning its duration (one per sampling rate when its
channels have several samples a frame, so that none is averaged down); every annotation (beat
labels, rhythm changes, notes) becomes an ``annotation`` event at its sample's exact time; the
samples go to the signal store, digital values with their gains, baselines and the format's
missing-sample value (read back as NaN). A multi-segment record (MIMIC's waveform records) is
read through its master header, its segments one record on one scale per channel, its gaps
missing samples.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from jumeau.ingest.events import epoch_us, event, event_table, reject_file, reject_table
from jumeau.signals.store import MISSING, Channel, digitize, write_record
from jumeau.store import BatchWriter, IngestReport, Progress, Store

ANNOTATION_EXTENSIONS = ("atr", "ann", "qrs", "ecg", "pu", "pu0", "pu1", "apn", "st", "arousal")
#: The digital value each WFDB storage format reserves for a missing sample: the format's
#: minimum (WFDB signal(5)); format 8, which stores differences, has none.
MISSING_SAMPLE = {
    "80": -(2**7),
    "508": -(2**7),
    "310": -(2**9),
    "311": -(2**9),
    "212": -(2**11),
    "16": -(2**15),
    "61": -(2**15),
    "160": -(2**15),
    "516": -(2**15),
    "24": -(2**23),
    "524": -(2**23),
    "32": -(2**31),
}


class WfdbError(ValueError):
    """A WFDB record cannot be read; the message names the file."""


def _record_paths(source: Path) -> list[Path]:
    """The records to read: a folder's headers, less the segments and layouts of its
    multi-segment records (they are read through their master header)."""
    if source.is_dir():
        import wfdb

        headers = sorted(p.with_suffix("") for p in source.glob("*.hea"))
        parts: set[str] = set()
        for path in headers:
            with contextlib.suppress(Exception):  # a broken header is reported when read
                header = wfdb.rdheader(str(path))
                if isinstance(header, wfdb.MultiRecord):
                    parts.update(header.seg_name)
        return [p for p in headers if p.name not in parts]
    if source.suffix == ".hea" or source.with_suffix(".hea").exists():
        return [source.with_suffix("")]
    raise FileNotFoundError(f"{source}: no WFDB header (.hea) found")


def ingest_wfdb(
    store: Store,
    source: str | Path,
    *,
    subject: str | None = None,
    subject_source: str = "wfdb",
    start: datetime | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest WFDB records (a record path or a folder of records) as one atomic batch.

    Parameters
    ----------
    subject:
        The patient's id in ``subject_source`` (default: each record's name in the ``wfdb``
        namespace); for instance ``subject="123", subject_source="omop"`` puts the record on the
        timeline of OMOP person 123.
    start:
        The record's start time when its header has none (MIT-BIH headers carry no date).
    """
    source = Path(source)
    with BatchWriter(store, "wfdb", str(source.resolve())) as writer:
        counts = writer.report.table("wfdb/record")
        for path in _record_paths(source):
            if progress:
                progress(path.name)
            counts.read += 1
            try:
                record_events = _ingest_record(writer, path, subject, subject_source, start)
            except WfdbError as exc:
                if not source.is_dir():
                    raise
                # one unreadable record of a folder is rejected; the others are kept
                counts.rejected += 1
                reject_file(writer, "wfdb/record", f"{path}.hea", str(exc), "whole record")
                continue
            counts.accepted += 1
            counts.events += record_events
        return writer.commit()


def _ingest_record(
    writer: BatchWriter,
    path: Path,
    subject: str | None,
    subject_source: str,
    start: datetime | None,
) -> int:
    """One record's signals and annotations into ``writer``; the number of signal events. A
    :class:`WfdbError` leaves nothing of the record in the batch."""
    import wfdb

    p = writer.store.pseudonymiser
    try:
        record, channels, samples = _read_record(path)
    except Exception as exc:  # noqa: BLE001 - wfdb raises many kinds for broken files
        raise WfdbError(
            f"record {path} (its .hea header and signal files): cannot be read "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    annotations = {}  # read before anything of the record is written: a bad file stops it whole
    for ext in ANNOTATION_EXTENSIONS:
        if Path(f"{path}.{ext}").exists():
            try:
                annotations[ext] = wfdb.rdann(str(path), ext)
            except Exception as exc:  # noqa: BLE001
                raise WfdbError(f"{path}.{ext}: cannot read the annotations ({exc})") from exc
    record_start = record.base_datetime if getattr(record, "base_datetime", None) else None
    if record_start is None and record.base_date is not None and record.base_time is not None:
        record_start = datetime.combine(record.base_date, record.base_time)
    record_start = record_start or start
    if record_start is None:
        raise WfdbError(f"{path}.hea: the header has no start date/time; give one with --start")
    patient = subject or path.name
    subject_id = p.subject_id(subject_source, patient)
    shift = timedelta(microseconds=p.shift_us(subject_source, patient))
    record_start = record_start + shift
    rows = []
    for rate, members in _channels_by_rate(record):
        # one signal record per sampling rate: a multi-frequency record (an ECG at
        # 4 samples a frame beside a pressure at 1) keeps every channel's own samples
        name = path.name if rate == record.fs else f"{path.name}@{rate:g}Hz"
        # databases reuse record names (100, a01): a record is its patient's
        name = f"{subject_source}:{patient}:{name}"
        record_id = f"{p.record_key('wfdb/record', name)}"
        write_record(
            writer.signal_folder(record_id),
            subject_id=subject_id,
            start=record_start,
            fs=rate,
            channels=[channels[i] for i in members],
            digital=np.column_stack([samples[i] for i in members]),
            source=f"wfdb/{p.seal(path.name)}",  # a record may be named after its patient
        )
        duration = timedelta(seconds=record.sig_len / record.fs)
        rows.append(
            event(
                subject_id,
                epoch_us(record_start),
                "WFDB/record",
                None,
                record_id,
                epoch_us(record_start + duration),
                "signal",
                "wfdb/record",
                p.record_key("wfdb/record", name),
            )
        )
    record_events = len(rows)
    for ext, ann in annotations.items():
        acounts = writer.report.table(f"wfdb/annotation.{ext}")
        annotation_fs = float(ann.fs or record.fs)
        last_sample = round(record.sig_len * annotation_fs / record.fs)
        for k, (sample, symbol) in enumerate(zip(ann.sample, ann.symbol, strict=True)):
            acounts.read += 1
            if sample < 0 or sample > last_sample:
                acounts.rejected += 1
                reason = f"sample {sample} outside the record (0-{last_sample})"
                writer.add_rejects(
                    reject_table(
                        f"wfdb/annotation.{ext}",
                        f"{path}.{ext}",
                        [(f"annotation {k}", reason)],
                    )
                )
                continue
            note = (ann.aux_note[k] or "").strip("\x00").strip() if ann.aux_note else ""
            t = epoch_us(record_start) + int(round(sample / annotation_fs * 1_000_000))
            rhythm = symbol == "+" and note
            code = f"WFDB/rhythm/{note.lstrip('(')}" if rhythm else f"WFDB/{symbol}"
            rows.append(
                event(
                    subject_id,
                    t,
                    code,
                    None,
                    note or None,
                    None,
                    "annotation",
                    f"wfdb/annotation.{ext}",
                    p.record_key(
                        f"wfdb/annotation.{ext}",
                        f"{subject_source}:{patient}:{path.name}#{k}",
                    ),
                )
            )
            acounts.accepted += 1
            acounts.events += 1
    writer.add_events(event_table(rows))
    return record_events


def _channels_by_rate(record) -> list[tuple[float, list[int]]]:
    """The record's channel indices grouped by sampling rate (frame rate x samples per frame),
    the frame rate's group first."""
    groups: dict[float, list[int]] = {}
    for i, per_frame in enumerate(record.samps_per_frame):
        groups.setdefault(float(record.fs) * int(per_frame), []).append(i)
    return sorted(groups.items(), key=lambda item: (item[0] != record.fs, item[0]))


def _read_record(path: Path) -> tuple[Any, list[Channel], list[np.ndarray]]:
    """The record, its channels and each channel's digital samples at its own rate.

    A multi-segment record (MIMIC's waveforms) may change gain and baseline from one segment to
    the next: its physical values are stored on one scale per channel, the finest of its
    segments' (exact for that segment's samples, within half its step for the others); gaps
    between segments are missing samples. wfdb reads such records at their frame rate."""
    import wfdb

    header = wfdb.rdheader(str(path))
    if not isinstance(header, wfdb.MultiRecord):
        record = wfdb.rdrecord(str(path), physical=False, smooth_frames=False)
        channels = [
            Channel(
                record.sig_name[i],
                record.units[i] or "",
                float(record.adc_gain[i]),
                float(record.baseline[i]),
                MISSING_SAMPLE.get(str(record.fmt[i])),
            )
            for i in range(record.n_sig)
        ]
        return record, channels, list(record.e_d_signal)
    # (wfdb reads the segments of a multi-segment record at the frame rate only)
    record = wfdb.rdrecord(str(path))
    record.samps_per_frame = [1] * record.n_sig
    gains: dict[str, float] = {}
    for name, length in zip(header.seg_name, header.seg_len, strict=True):
        if name == "~" or not length or not (path.parent / f"{name}.hea").exists():
            continue  # a gap, or the layout header
        segment = wfdb.rdheader(str(path.parent / name))
        for signal, gain in zip(segment.sig_name or [], segment.adc_gain or [], strict=True):
            gains[signal] = max(gains.get(signal, 0.0), float(gain or 0.0))
    channels, samples = [], []
    for i, name in enumerate(record.sig_name):
        gain = gains.get(name) or 1.0
        channels.append(Channel(name, record.units[i] or "", gain, 0.0, MISSING))
        samples.append(digitize(record.p_signal[:, i], gain))
    return record, channels, samples
