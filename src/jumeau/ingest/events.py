"""Building canonical event and reject rows: the one place connectors turn values into Arrow."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from jumeau.model import CONNECTOR_SCHEMA, REJECT_SCHEMA

if TYPE_CHECKING:
    from jumeau.store import BatchWriter

EPOCH = datetime(1970, 1, 1)


def epoch_us(moment: datetime) -> int:
    """A naive UTC datetime as microseconds since the epoch (the store's time unit)."""
    return int((moment - EPOCH).total_seconds() * 1_000_000)


def event(
    subject_id: int,
    time_us: int | None,
    code: str,
    value: float | None,
    text: str | None,
    end_us: int | None,
    domain: str,
    source: str,
    key: int,
    unit: str | None = None,
) -> dict:
    """One canonical event as a dict (times in epoch microseconds)."""
    return {
        "subject_id": subject_id,
        "time": time_us,
        "code": code,
        "numeric_value": value,
        "text_value": text,
        "unit": unit,
        "end_time": end_us,
        "domain": domain,
        "source": source,
        "record_key": key,
    }


def columns_table(columns: dict[str, list]) -> pa.Table:
    """Column lists (``CONNECTOR_SCHEMA`` names, times in epoch microseconds) as an Arrow table."""
    arrays = []
    for field in CONNECTOR_SCHEMA:
        values = columns[field.name]
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=CONNECTOR_SCHEMA)


def event_table(rows: list[dict]) -> pa.Table:
    """Rows made by :func:`event` as an Arrow table of ``CONNECTOR_SCHEMA``."""
    return columns_table({name: [r[name] for r in rows] for name in CONNECTOR_SCHEMA.names})


def reject_table(source: str, file: str, rejects: list[tuple[str, str]]) -> pa.Table:
    """``(record, reason)`` pairs of one file as an Arrow table of ``REJECT_SCHEMA``."""
    return pa.table(
        {
            "source": [source] * len(rejects),
            "file": [file] * len(rejects),
            "record": [r for r, _ in rejects],
            "reason": [_without_path(m, file) for _, m in rejects],
            "record_key": pa.nulls(len(rejects), pa.int64()),
        },
        schema=REJECT_SCHEMA,
    )


def reject_file(
    writer: BatchWriter, source: str, path: str | Path, reason: str, record: str = "whole file"
) -> None:
    """Reject a whole file (or record) of a source that could not be read at all: the batch
    keeps the rest."""
    writer.add_rejects(reject_table(source, str(path), [(record, reason)]))


def _without_path(reason: str, file: str) -> str:
    """A reason without the file's path (the reject's ``file`` holds it, sealed: a path may
    carry a patient's name, a reason is kept readable)."""
    stem = file.rsplit(".", 1)[0] if "." in file.rsplit("/", 1)[-1] else file
    for named in (f"{file}: ", f"{stem}: "):
        reason = reason.removeprefix(named)
    return reason.replace(file, "the file").replace(stem, "the record")
