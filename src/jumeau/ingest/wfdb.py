"""WFDB records (``.hea`` + ``.dat``, formats 16, 212, 80 and the rest ``wfdb`` reads) and their
annotation files, into the signal store and onto the subject's timeline.

The record becomes one ``signal`` event spanning its duration; every annotation (beat labels,
rhythm changes, notes) becomes an ``annotation`` event at its sample's exact time; the samples go
to the signal store, digital values with their gains and baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from jumeau.ingest.events import epoch_us, event, event_table, reject_table
from jumeau.signals.store import Channel, write_record
from jumeau.store import BatchWriter, IngestReport, Store

ANNOTATION_EXTENSIONS = ("atr", "ann", "qrs", "ecg", "pu", "pu0", "pu1", "apn", "st", "arousal")


class WfdbError(ValueError):
    """A WFDB record cannot be read; the message names the file."""


def _record_paths(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p.with_suffix("") for p in source.glob("*.hea"))
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
    progress: Callable[[str], None] | None = None,
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
    import wfdb

    source = Path(source)
    with BatchWriter(store, "wfdb", str(source.resolve())) as writer:
        p = store.pseudonymiser
        counts = writer.report.table("wfdb/record")
        for path in _record_paths(source):
            if progress:
                progress(path.name)
            counts.read += 1
            try:
                record = wfdb.rdrecord(str(path), physical=False)
            except Exception as exc:  # noqa: BLE001 - wfdb raises many kinds for broken files
                raise WfdbError(
                    f"{path}.hea/.dat: cannot read the record ({type(exc).__name__}: {exc})"
                ) from exc
            record_start = record.base_datetime if getattr(record, "base_datetime", None) else None
            if (
                record_start is None
                and record.base_date is not None
                and record.base_time is not None
            ):
                record_start = datetime.combine(record.base_date, record.base_time)
            record_start = record_start or start
            if record_start is None:
                raise WfdbError(
                    f"{path}.hea: the header has no start date/time; give one with --start"
                )
            patient = subject or path.name
            subject_id = p.subject_id(subject_source, patient)
            shift = timedelta(microseconds=p.shift_us(subject_source, patient))
            record_start = record_start + shift
            digital = np.asarray(record.d_signal)
            channels = [
                Channel(name, unit or "", float(gain), float(base))
                for name, unit, gain, base in zip(
                    record.sig_name, record.units, record.adc_gain, record.baseline, strict=True
                )
            ]
            record_id = f"{p.record_key('wfdb/record', path.name)}"
            write_record(
                writer.staging_dir / "signals" / record_id,
                subject_id=subject_id,
                start=record_start,
                fs=float(record.fs),
                channels=channels,
                digital=digital,
                source=f"wfdb/{path.name}",
            )
            duration = timedelta(seconds=record.sig_len / record.fs)
            rows = [
                event(
                    subject_id,
                    epoch_us(record_start),
                    "WFDB/record",
                    None,
                    record_id,
                    epoch_us(record_start + duration),
                    "signal",
                    "wfdb/record",
                    p.record_key("wfdb/record", path.name),
                )
            ]
            for ext in ANNOTATION_EXTENSIONS:
                if not Path(f"{path}.{ext}").exists():
                    continue
                try:
                    ann = wfdb.rdann(str(path), ext)
                except Exception as exc:  # noqa: BLE001
                    raise WfdbError(f"{path}.{ext}: cannot read the annotations ({exc})") from exc
                acounts = writer.report.table(f"wfdb/annotation.{ext}")
                for k, (sample, symbol) in enumerate(zip(ann.sample, ann.symbol, strict=True)):
                    acounts.read += 1
                    if sample < 0 or sample > record.sig_len:
                        acounts.rejected += 1
                        reason = f"sample {sample} outside the record (0-{record.sig_len})"
                        writer.add_rejects(
                            reject_table(
                                f"wfdb/annotation.{ext}",
                                f"{path}.{ext}",
                                [(f"annotation {k}", reason)],
                            )
                        )
                        continue
                    note = (ann.aux_note[k] or "").strip("\x00").strip() if ann.aux_note else ""
                    t = epoch_us(record_start) + int(round(sample / record.fs * 1_000_000))
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
                            p.record_key(f"wfdb/annotation.{ext}", f"{path.name}#{k}"),
                        )
                    )
                    acounts.accepted += 1
                    acounts.events += 1
            writer.add_events(event_table(rows))
            counts.accepted += 1
            counts.events += 1
        return writer.commit()
