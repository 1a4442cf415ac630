"""Connected-device streams (heart rate, steps, SpO2, glucose, blood-pressure cuffs...) from CSV,
JSON or NDJSON, at second-to-minute scale.

A stream is long-format rows ``time, metric, value[, unit][, device]``. Times carry their offset
(``2024-03-01T08:00:00+01:00``) or are read in the time zone the user names; all are stored in
UTC. Known metrics map to LOINC codes so the twin reads them like clinical measurements. Exact
duplicates (same device, metric and time) are dropped and counted; a device clock that jumps
backwards is reported (DST changes and resets show up here); rows with unreadable times or values
are rejected with their row number.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import polars as pl

from jumeau.ingest.events import epoch_us, event, event_table, reject_table
from jumeau.store import BatchWriter, IngestReport, Store

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


def _parse_time(text: str, zone: ZoneInfo | None) -> datetime:
    moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
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
    progress: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest device stream files (a file or a folder of .csv/.json/.ndjson) for one subject."""
    source = Path(source)
    files = (
        sorted(
            f
            for f in source.iterdir()
            if f.suffix.lower() in (".csv", ".json", ".ndjson", ".jsonl")
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
            rows = _read(path)
            counts = writer.report.table("device/sample")
            seen: set[tuple] = set()
            last: dict[tuple, datetime] = {}
            events, rejects, duplicates, jumps = [], [], 0, []
            for i, row in enumerate(rows, start=1):
                counts.read += 1
                metric = str(row.get("metric") or row.get("type") or "").strip().lower()
                device = str(row.get("device") or "")
                try:
                    if not metric:
                        raise ValueError("no metric")
                    when = _parse_time(row["time"], zone)
                    value = float(row["value"])
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
                sample = event(
                    subject_id,
                    us,
                    code,
                    value,
                    device or None,
                    None,
                    "device",
                    "device/sample",
                    p.record_key("device/sample", f"{device}#{metric}#{us}"),
                )
                sample["unit"] = unit
                events.append(sample)
                counts.accepted += 1
                counts.events += 1
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
