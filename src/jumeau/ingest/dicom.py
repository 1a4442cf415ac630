"""DICOM studies into the twin: metadata as events, pixel data left in place, waveforms stored.

A folder of mixed files is walked; files that are not DICOM are reported as rejects, never fatal.
Every instance becomes an ``imaging`` event (``DICOM/<modality>``) at its acquisition time, whose
text gives the series description, body part, the file's path and its SHA-256, so pixel data stays
in its files and can be found and verified; every study gets one ``DICOM/study`` event. Patient
names and birth dates go to the identity vault. DICOM waveform objects (12-lead ECG) go to the
signal store like any other recording.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from jumeau.ingest.events import epoch_us, event, event_table, reject_file
from jumeau.signals.store import Channel, write_record
from jumeau.store import BatchWriter, IngestReport, Progress, Store

REQUIRED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")
_WAVEFORM_DTYPES = {
    ("SS", 16): np.int16,
    ("US", 16): np.uint16,
    ("SB", 8): np.int8,
    ("UB", 8): np.uint8,
}


_INSTANCE_TIMES = (
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("AcquisitionDate", "AcquisitionTime"),
    ("StudyDate", "StudyTime"),
)


def _when(ds, pairs=_INSTANCE_TIMES, with_acquisition_datetime: bool = True) -> datetime | None:
    """The first present of the given (date, time) tag pairs, as a datetime in UTC when the
    dataset says its offset (an AcquisitionDateTime's own ``+HHMM`` suffix, else Timezone
    Offset From UTC (0008,0201)), else as written (the site's local time)."""
    stamp = (
        str(ds.get("AcquisitionDateTime", "") or "").strip() if with_acquisition_datetime else ""
    )
    dataset_offset = _utc_offset(str(ds.get("TimezoneOffsetFromUTC", "") or "").strip())
    candidates = []
    if stamp:
        own = _DT_OFFSET.search(stamp)
        offset = _utc_offset(own.group(0)) if own else dataset_offset
        candidates.append((stamp[: own.start()] if own else stamp, offset))
    for date_tag, time_tag in pairs:
        date = str(ds.get(date_tag, "") or "").strip()
        if date:
            clock = str(ds.get(time_tag, "") or "").strip().split(".")[0].ljust(6, "0")[:6]
            candidates.append((date + clock, dataset_offset))
    for text, offset in candidates:
        for fmt, size in (("%Y%m%d%H%M%S", 14), ("%Y%m%d", 8)):
            try:
                return datetime.strptime(text.split(".")[0][:size], fmt) - offset
            except ValueError:
                continue
    return None


#: A DICOM DT value's offset from UTC (``20200101083000.000+0200``).
_DT_OFFSET = re.compile(r"[+-]\d{4}$")


def _utc_offset(text: str) -> timedelta:
    """``+0200`` as a timedelta (zero when absent or malformed)."""
    if not re.fullmatch(r"[+-]\d{4}", text):
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    return sign * timedelta(hours=int(text[1:3]), minutes=int(text[3:5]))


def ingest_dicom(
    store: Store,
    source: str | Path,
    *,
    subject: str | None = None,
    subject_source: str = "dicom",
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest a DICOM file or a folder (walked recursively) as one atomic batch.

    ``subject`` overrides the files' PatientID (then looked up under ``subject_source``), and
    files without one are then read too.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(source)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"{root}: no files to read")
    base = root if root.is_dir() else root.parent
    with BatchWriter(store, "dicom", str(root.resolve())) as writer:
        p = store.pseudonymiser
        counts = writer.report.table("dicom/instance")
        rows, identities, studies = [], {}, set()
        descriptions: dict[str, str] = {}  # a report's concepts, by their code meanings
        for path in files:
            if progress:
                progress(path.name)
            try:
                ds = pydicom.dcmread(str(path), stop_before_pixels=False)
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                counts.read += 1
                counts.rejected += 1
                reject_file(
                    writer, "dicom/file", path, f"not a readable DICOM file ({type(exc).__name__})"
                )
                continue
            if _is_dicomdir(ds):  # a medium's index: its instances are in their own files
                writer.report.unhandled["DICOMDIR"] = writer.report.unhandled.get("DICOMDIR", 0) + 1
                continue
            counts.read += 1
            missing = [
                tag
                for tag in REQUIRED
                if not str(ds.get(tag, "") or "").strip() and not (tag == "PatientID" and subject)
            ]
            when = _when(ds)
            if missing or when is None:
                counts.rejected += 1
                reject_file(
                    writer,
                    "dicom/file",
                    path,
                    f"missing required tag(s) {', '.join(missing)}"
                    if missing
                    else "no study, series, acquisition or content date",
                )
                continue
            patient = subject or str(ds.PatientID)
            source_ns = subject_source if subject else "dicom"
            subject_id = p.subject_id(source_ns, patient)
            shift = timedelta(microseconds=p.shift_us(source_ns, patient))
            when += shift
            identities[subject_id] = (
                patient,
                {
                    "PatientName": str(ds.get("PatientName", "")),
                    "PatientBirthDate": str(ds.get("PatientBirthDate", "")),
                },
            )
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            details = {
                "description": str(
                    ds.get("SeriesDescription", "") or ds.get("StudyDescription", "") or ""
                ).strip(),
                "body_part": str(ds.get("BodyPartExamined", "") or "").strip(),
                "path": p.seal(str(path.relative_to(base))),  # a folder may name its patient
                "sha256": digest,
            }
            text = ";".join(f"{k}={v}" for k, v in details.items() if v)
            modality = str(ds.Modality).strip()
            rows.append(
                event(
                    subject_id,
                    epoch_us(when),
                    f"DICOM/{modality}",
                    None,
                    text,
                    None,
                    "imaging",
                    "dicom/instance",
                    p.record_key("dicom/instance", str(ds.SOPInstanceUID)),
                )
            )
            study = str(ds.StudyInstanceUID)
            if study not in studies:
                studies.add(study)
                study_time = _when(
                    ds, (("StudyDate", "StudyTime"),), with_acquisition_datetime=False
                )
                study_time = when if study_time is None else study_time + shift
                rows.append(
                    event(
                        subject_id,
                        epoch_us(study_time),
                        "DICOM/study",
                        None,
                        str(ds.get("StudyDescription", "") or "").strip() or None,
                        None,
                        "imaging",
                        "dicom/study",
                        p.record_key("dicom/study", study),
                    )
                )
            if "WaveformSequence" in ds:
                rows += _waveforms(writer, ds, path, subject_id, when, p)
            measured = _report_measurements(ds, subject_id, epoch_us(when), p, descriptions)
            rows += measured
            counts.accepted += 1
            counts.events += 1 + len(measured)
        if rows:
            writer.add_events(event_table(rows))
        if descriptions:
            writer.add_codes(
                pa.table({"code": list(descriptions), "description": list(descriptions.values())})
            )
        if identities:
            writer.add_identities(
                pa.table(
                    {
                        "subject_id": pa.array(list(identities), pa.int64()),
                        "source": ["dicom"] * len(identities),
                        "source_id": [v[0] for v in identities.values()],
                        "identifiers": [orjson.dumps(v[1]).decode() for v in identities.values()],
                    }
                )
            )
        return writer.commit()


#: DICOM coding scheme designators and the vocabularies they are (PS3.16 section 8).
_SCHEMES = {"LN": "LOINC", "SRT": "SNOMED", "SCT": "SNOMED", "DCM": "DICOM", "UCUM": "UCUM"}


def _concept(item, sequence: str = "ConceptNameCodeSequence") -> str | None:
    """``<vocabulary>/<code>`` of a content item's coded concept (None without one)."""
    codes = item.get(sequence)
    if not codes:
        return None
    scheme = str(codes[0].get("CodingSchemeDesignator", "") or "").strip()
    value = str(codes[0].get("CodeValue", "") or codes[0].get("LongCodeValue", "") or "").strip()
    return f"{_SCHEMES.get(scheme, scheme or 'DICOM')}/{value}" if value else None


def _report_measurements(
    ds, subject_id: int, when_us: int, p, descriptions: dict[str, str]
) -> list[dict]:
    """The numeric measurements of a structured report (an echocardiogram's ejection fraction,
    a lesion's diameter): each ``NUM`` content item, wherever it sits in the report's tree, as a
    ``measurement`` event coded by its concept name (``LN`` codes are LOINC) in its UCUM unit,
    at the report's content time; ``descriptions`` collects the concepts' code meanings. Text
    items are left out: a report's prose may name people."""
    if "ContentSequence" not in ds:
        return []
    out, stack = [], [(item, str(k)) for k, item in enumerate(ds.ContentSequence)]
    uid = str(ds.SOPInstanceUID)
    while stack:
        item, path = stack.pop()
        stack += [(c, f"{path}.{k}") for k, c in enumerate(item.get("ContentSequence") or [])]
        measured = item.get("MeasuredValueSequence")
        code = _concept(item)
        if str(item.get("ValueType", "")) != "NUM" or not measured or code is None:
            continue
        try:
            value = float(measured[0].get("NumericValue"))
        except (TypeError, ValueError):
            continue  # a NUM item whose value is absent (its NumericValueQualifier says why)
        unit = _concept(measured[0], "MeasurementUnitsCodeSequence")
        meaning = str(item.ConceptNameCodeSequence[0].get("CodeMeaning", "") or "").strip()
        if meaning:
            descriptions.setdefault(code, meaning)
        out.append(
            event(
                subject_id,
                when_us,
                code,
                value,
                None,
                None,
                "measurement",
                "dicom/sr",
                p.record_key("dicom/sr", f"{uid}#{path}"),
                unit.split("/", 1)[1] if unit else None,
            )
        )
    return out


def _waveforms(
    writer: BatchWriter, ds, path: Path, subject_id: int, when: datetime, p
) -> list[dict]:
    """Each waveform multiplex group becomes a signal record and a ``signal`` event."""
    rows = []
    for g, group in enumerate(ds.WaveformSequence):
        bits = int(group.WaveformBitsAllocated)
        kind = str(group.WaveformSampleInterpretation)
        dtype = _WAVEFORM_DTYPES.get((kind, bits))
        if dtype is None:
            continue
        n_ch, n = int(group.NumberOfWaveformChannels), int(group.NumberOfWaveformSamples)
        sample_type = np.dtype(dtype).newbyteorder("<")
        raw = np.frombuffer(group.WaveformData, dtype=sample_type)[: n * n_ch].reshape(n, n_ch)
        padding = None  # the value the device wrote where it had no sample
        pad_bytes = group.get("WaveformPaddingValue")
        if pad_bytes is not None and len(pad_bytes) >= sample_type.itemsize:
            padding = int(np.frombuffer(pad_bytes[: sample_type.itemsize], dtype=sample_type)[0])
        # a multiplex group may start later than the acquisition (ms offset)
        start = when + timedelta(milliseconds=float(group.get("MultiplexGroupTimeOffset", 0) or 0))
        channels = []
        for c, definition in enumerate(group.ChannelDefinitionSequence):
            label = (
                definition.ChannelSourceSequence[0].CodeMeaning
                if "ChannelSourceSequence" in definition
                else f"ch{c}"
            )
            unit = (
                definition.ChannelSensitivityUnitsSequence[0].CodeValue
                if "ChannelSensitivityUnitsSequence" in definition
                else ""
            )
            sensitivity = float(definition.get("ChannelSensitivity", 1) or 1)
            correction = float(definition.get("ChannelSensitivityCorrectionFactor", 1) or 1)
            offset = float(definition.get("ChannelBaseline", 0) or 0)
            channels.append(
                Channel(str(label), str(unit), 1.0 / (sensitivity * correction), -offset, padding)
            )
        fs = float(group.SamplingFrequency)
        key = p.record_key("dicom/waveform", f"{ds.SOPInstanceUID}#{g}")
        write_record(
            writer.signal_folder(str(key)),
            subject_id=subject_id,
            start=start,
            fs=fs,
            channels=channels,
            digital=raw.astype(np.int32),
            source=f"dicom/{p.seal(path.name)}#{g}",
        )
        rows.append(
            event(
                subject_id,
                epoch_us(start),
                "DICOM/waveform",
                fs,
                str(key),
                epoch_us(start + timedelta(seconds=n / fs)),
                "signal",
                "dicom/waveform",
                key,
            )
        )
    return rows


#: SOP Class of a DICOMDIR (Media Storage Directory Storage).
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _is_dicomdir(ds) -> bool:
    """Whether a dataset is a DICOMDIR, the index of a DICOM medium, not an instance."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    return sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds
