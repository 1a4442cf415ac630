"""Connected-device streams (heart rate, steps, SpO2, glucose, blood-pressure cuffs...) from CSV,
JSON or NDJSON, or an Apple Health ``export.xml`` (streamed), at second-to-minute scale.

A stream is long-format rows ``time, metric, value[, unit][, device]``, or a wide export with
one column per metric (a blood-pressure cuff's ``Date, Systolic, Diastolic, Pulse``, a CGM's
``Timestamp, Glucose Value (mg/dL)``; a unit in the header's parentheses is the column's unit).
Metric names may be HealthKit identifiers (``HKQuantityTypeIdentifierHeartRate``), and the time
column ``time``, ``timestamp``, ``date``, ``startDate``... Times carry their offset
(``2024-03-01T08:00:00+01:00``), are epoch seconds or milliseconds, or are read in the time
zone the user names; all are stored in UTC. Known metrics map to LOINC codes so the twin reads
them like clinical measurements. Exact duplicates (same device, metric and time) are dropped and
counted; a device clock that jumps backwards is reported (DST changes and resets show up here);
rows with unreadable times or values are rejected with their row number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import polars as pl

from jumeau.ingest.events import epoch_us, event, event_table, reject_file, reject_table
from jumeau.store import BatchWriter, IngestReport, Progress, Store

METRICS: dict[str, tuple[str, str]] = {
    "heart_rate": ("LOINC/8867-4", "/min"),
    "hr": ("LOINC/8867-4", "/min"),
    "steps": ("LOINC/55423-8", "{steps}"),
    "spo2": ("LOINC/59408-5", "%"),
    "oxygen_saturation": ("LOINC/59408-5", "%"),
    "glucose": ("LOINC/2339-0", "mg/dL"),
    "systolic": ("LOINC/8480-6", "mm[Hg]"),
    "systolic_bp": ("LOINC/8480-6", "mm[Hg]"),
    "diastolic": ("LOINC/8462-4", "mm[Hg]"),
    "diastolic_bp": ("LOINC/8462-4", "mm[Hg]"),
    "weight": ("LOINC/29463-7", "kg"),
    "temperature": ("LOINC/8310-5", "Cel"),
    "respiratory_rate": ("LOINC/9279-1", "/min"),
}
#: Other names of the metrics above (after :func:`metric_name`).
ALIASES = {
    "pulse": "heart_rate",
    "heart_rate_bpm": "heart_rate",
    "step_count": "steps",
    "blood_glucose": "glucose",
    "glucose_value": "glucose",
    "historic_glucose": "glucose",
    "blood_pressure_systolic": "systolic",
    "blood_pressure_diastolic": "diastolic",
    "sys": "systolic",
    "dia": "diastolic",
    "body_mass": "weight",
    "body_temperature": "temperature",
    "oxygen_saturation": "spo2",
}
TIME_COLUMNS = (
    "time",
    "timestamp",
    "datetime",
    "date_time",
    "date",
    "start_date",
    "start",
    "start_time",
    "device_timestamp",
)
_NOT_METRICS = {
    "device",
    "unit",
    "source",
    "id",
    "subject",
    "patient",
    "end_date",
    "end",
    "end_time",
    "event_type",
    "index",
}
CLOCK_JUMP_S = 60


class DeviceError(ValueError):
    """A device stream cannot be read; the message names the file."""


def _read(path: Path) -> list[dict]:
    text = path.read_bytes()
    if path.suffix.lower() == ".csv":
        try:
            frame = pl.read_csv(path, infer_schema=False)
        except Exception as exc:  # noqa: BLE001 - polars raises several kinds for broken CSV
            raise DeviceError(f"{path}: not a readable CSV ({exc})") from exc
        return frame.to_dicts()
    try:
        if path.suffix.lower() in (".ndjson", ".jsonl"):
            return [orjson.loads(line) for line in text.splitlines() if line.strip()]
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DeviceError(f"{path}: invalid JSON ({exc})") from exc
    return data if isinstance(data, list) else data.get("data", [])


def metric_name(name: str) -> tuple[str, str | None]:
    """A column or metric name as a metric key, and the unit its parentheses give:
    ``"Glucose Value (mg/dL)"`` -> ``("glucose", "mg/dL")``,
    ``"HKQuantityTypeIdentifierHeartRate"`` -> ``("heart_rate", None)``."""
    text = str(name).strip()
    unit = None
    match = re.search(r"\(([^)]*)\)\s*$", text)
    if match:
        text, unit = text[: match.start()].strip(), match.group(1).strip() or None
    trailing = re.search(r"\s+(mg/dl|mmol/l|bpm|mmhg|kg|lbs?)$", text, re.IGNORECASE)
    if unit is None and trailing:  # "Historic Glucose mg/dL"
        text, unit = text[: trailing.start()].strip(), trailing.group(1)
    text = re.sub(r"^HK(Quantity|Category)TypeIdentifier", "", text)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    key = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return ALIASES.get(key, key), unit


def _long_rows(rows: list[dict], default_metric: str | None = None) -> tuple[list[dict], list[str]]:
    """Rows as ``time, metric, value, unit, device`` records, whatever the export's shape
    (``default_metric`` for a ``time, value`` file that names its metric in its file name);
    and the columns of a wide export left out (not a known metric)."""
    if not rows:
        return [], []
    names = {metric_name(c)[0]: c for c in rows[0]}
    time_col = next((names[t] for t in TIME_COLUMNS if t in names), None)
    date_col = names.get("date") if time_col == names.get("time") else None

    def when(row: dict):  # a date and a time of day in two columns (cuff exports) are one time
        if date_col is not None and row.get(date_col):
            return f"{row[date_col]} {row.get(time_col) or ''}".strip()
        return row.get(time_col) if time_col else None

    metric_col = names.get("metric") or names.get("type")
    out: list[dict] = []
    if metric_col is not None or "value" in names:
        for row in rows:
            out.append(
                {
                    "time": when(row),
                    "metric": row.get(metric_col) if metric_col else default_metric,
                    "value": row.get(names.get("value", "value")),
                    "unit": row.get(names.get("unit", "unit")),
                    "device": row.get(names.get("device", "device"))
                    or row.get(names.get("source", "source")),
                }
            )
        return out, []
    metrics, ignored = [], []
    for key, column in names.items():
        if column in (time_col, date_col) or key in _NOT_METRICS:
            continue
        (metrics if key in METRICS else ignored).append(column)
    parsed = {column: metric_name(column) for column in metrics}
    for row in rows:
        for column, (key, unit) in parsed.items():
            if row.get(column) in (None, ""):
                continue
            out.append(
                {
                    "time": when(row),
                    "metric": key,
                    "value": row[column],
                    "unit": unit,
                    "device": row.get(names.get("device", "device")),
                }
            )
    return out, ignored


#: The key of the row that ends a stream cut short, with the reason.
_CUT_SHORT = "cut_short"
#: Samples held before they are handed to the batch.
_FLUSH_EVERY = 200_000
#: An Apple Health record's device (``<<HKDevice: 0x...>, name:Apple Watch, ...>``): its name.
_HK_DEVICE_NAME = re.compile(r"name:([^,>]+)")


def _apple_health_rows(path: Path, warnings: list[str]) -> Iterator[dict]:
    """An Apple Health ``export.xml``'s ``Record`` elements as long rows, streamed (an export
    holds years of samples): quantities with their value and unit, categories (sleep analysis,
    ...) with their state and end. The record's device is named by its model (``Apple
    Watch``), never by its ``sourceName``, which carries the owner's name ("Marie's iPhone").
    Workouts, activity summaries and the owner's profile (``Me``) are not read. An export cut
    short ends with a row naming the problem (``cut_short``)."""
    from xml.etree.ElementTree import ParseError, iterparse

    skipped: dict[str, int] = {}
    try:
        context = iterparse(path, events=("start", "end"))
        _, root = next(context)
        for kind_of_event, element in context:
            if kind_of_event != "end":
                continue
            tag = element.tag
            if tag == "Record":
                kind = element.get("type", "")
                device = _HK_DEVICE_NAME.search(element.get("device") or "")
                row = {
                    "time": _healthkit_time(element.get("startDate")),
                    "metric": kind,
                    "value": element.get("value"),
                    "unit": element.get("unit"),
                    "device": device.group(1).strip() if device else None,
                }
                if kind.startswith("HKCategoryTypeIdentifier"):
                    # HKCategoryValueSleepAnalysisAsleepCore -> asleep_core
                    category = kind.removeprefix("HKCategoryTypeIdentifier")
                    state = str(element.get("value") or "")
                    state = state.removeprefix("HKCategoryValue").removeprefix(category)
                    row["state"] = metric_name(state)[0] or "recorded"
                    row["end"] = _healthkit_time(element.get("endDate"))
                yield row
            elif tag in ("Workout", "ActivitySummary", "ClinicalRecord", "Me"):
                skipped[tag] = skipped.get(tag, 0) + 1
            else:
                continue
            root.clear()  # what is read is let go: the stream's memory stays flat
    except (ParseError, StopIteration) as exc:
        yield {_CUT_SHORT: f"the export cannot be read further ({exc or 'empty file'})"}
    if skipped:
        warnings.append(
            f"{path.name}: not read: "
            + ", ".join(f"{n:,} {tag}" for tag, n in sorted(skipped.items()))
        )


def _healthkit_time(text: str | None) -> str | None:
    """``2019-01-01 10:00:00 +0100`` (HealthKit's form) as ISO 8601."""
    if not text:
        return None
    return re.sub(r"\s+([+-]\d{2}):?(\d{2})$", r"\1:\2", text.strip())


def _parse_time(text: str, zone: ZoneInfo | None) -> datetime:
    raw = str(text).strip()
    if re.fullmatch(r"\d{9,13}(\.\d+)?", raw):  # epoch seconds, or milliseconds past 1e11
        seconds = float(raw) / (1000 if float(raw) > 1e11 else 1)
        return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        if zone is None:
            raise ValueError("time has no UTC offset and no --timezone was given")
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC).replace(tzinfo=None)


def ingest_devices(
    store: Store,
    source: str | Path,
    *,
    subject: str,
    subject_source: str = "device",
    timezone: str | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest device stream files (a file or a folder of .csv/.json/.ndjson, or an Apple Health
    ``export.xml``) for one subject."""
    source = Path(source)
    files = (
        sorted(
            f
            for f in source.iterdir()
            if f.suffix.lower() in (".csv", ".json", ".ndjson", ".jsonl", ".xml")
        )
        if source.is_dir()
        else [source]
    )
    zone = ZoneInfo(timezone) if timezone else None
    with BatchWriter(store, "devices", str(source.resolve())) as writer:
        p = store.pseudonymiser
        subject_id = p.subject_id(subject_source, subject)
        shift = p.shift_us(subject_source, subject)
        for path in files:
            if progress:
                progress(path.name)
            if path.suffix.lower() == ".xml":  # an Apple Health export, read as a stream
                rows, ignored = _apple_health_rows(path, writer.report.warnings), []
            else:
                named = metric_name(path.stem)[0]  # heart_rate.csv holding time,value rows
                try:
                    read = _read(path)
                except DeviceError as exc:
                    if not source.is_dir():
                        raise
                    # one unreadable file of a folder is rejected; the others are kept
                    reject_file(writer, "device/file", path, str(exc))
                    continue
                rows, ignored = _long_rows(read, named if named in METRICS else None)
            if ignored:
                writer.report.warnings.append(
                    f"{path.name}: column(s) not read (not a known metric): {', '.join(ignored)}"
                )
            counts = writer.report.table("device/sample")
            seen: set[tuple] = set()
            last: dict[tuple, datetime] = {}
            events, rejects, duplicates, jumps = [], [], 0, []
            for i, row in enumerate(rows, start=1):
                if _CUT_SHORT in row:  # an export cut short keeps the samples before the cut
                    rejects.append((f"after sample {i - 1}", row[_CUT_SHORT]))
                    break
                counts.read += 1
                metric = metric_name(row.get("metric") or "")[0]
                device = str(row.get("device") or "")
                try:
                    if not metric:
                        raise ValueError("no metric")
                    if row["time"] in (None, ""):
                        raise ValueError("no time")
                    when = _parse_time(row["time"], zone)
                    state = row.get("state")  # a category sample (asleep, in bed...)
                    value = None if state else float(row["value"])
                    if metric == "spo2" and value is not None and value <= 1.0:
                        value *= 100  # HealthKit gives a fraction
                except (KeyError, ValueError, TypeError) as exc:
                    counts.rejected += 1
                    rejects.append((f"row {i}", f"{type(exc).__name__}: {exc}"))
                    continue
                key = (device, metric, when)
                if key in seen:
                    duplicates += 1
                    counts.accepted += 1
                    continue
                seen.add(key)
                stream = (device, metric)
                if stream in last and (last[stream] - when).total_seconds() > CLOCK_JUMP_S:
                    jumps.append(
                        f"row {i}: {metric} clock back {(last[stream] - when).total_seconds():.0f} s"
                    )
                last[stream] = when
                code, default_unit = METRICS.get(metric, (f"DEVICE/{metric}", None))
                unit = str(row.get("unit") or default_unit or "") or None
                us = epoch_us(when) + shift
                until = row.get("end")
                end_us = epoch_us(_parse_time(until, zone)) + shift if state and until else None
                sample = event(
                    subject_id,
                    us,
                    code,
                    value,
                    state or device or None,
                    end_us,
                    "device",
                    "device/sample",
                    p.record_key("device/sample", f"{subject_id}#{device}#{metric}#{us}"),
                )
                sample["unit"] = unit
                events.append(sample)
                counts.accepted += 1
                counts.events += 1
                if len(events) >= _FLUSH_EVERY:  # a phone's years of samples run to millions
                    writer.add_events(event_table(events))
                    events = []
            if events:
                writer.add_events(event_table(events))
            if rejects:
                writer.add_rejects(reject_table("device/sample", str(path), rejects))
            if duplicates:
                writer.report.warnings.append(
                    f"{path.name}: {duplicates} duplicate samples dropped"
                )
            if jumps:
                writer.report.warnings.append(
                    f"{path.name}: {len(jumps)} clock jump(s): " + "; ".join(jumps[:5])
                )
        return writer.commit()
