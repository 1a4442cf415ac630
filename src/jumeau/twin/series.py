"""Every subject's series of each catalogued variable, read in one columnar pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from jumeau.model import BIRTH_CODE, BOUND_COMPARATORS
from jumeau.signals.codes import series_observations
from jumeau.twin.variables import Variable, code_index

if TYPE_CHECKING:
    from jumeau.store import Store


def measurement_frame(
    store: Store,
    catalogue: dict[str, Variable],
    cutoff: datetime | None = None,
    known_at: datetime | None = None,
) -> pl.DataFrame:
    """All plausible, unit-converted observations: subject_id, variable, day, value (sorted)."""
    index = code_index(catalogue, store.code_ancestors())
    frame = (
        store.scan(known_at=known_at)
        .filter(
            pl.col("code").is_in(list(index))
            & pl.col("numeric_value").is_not_null()
            & pl.col("time").is_not_null()
            & ~pl.col("text_value").is_in(list(BOUND_COMPARATORS)).fill_null(False)
            & series_observations()
        )
        .select("subject_id", "time", "code", "numeric_value", "unit")
    )
    if cutoff is not None:
        frame = frame.filter(pl.col("time") <= cutoff)
    frame = frame.collect()
    parts = []
    for name, var in catalogue.items():
        sub = frame.filter(pl.col("code").is_in([c for c, v in index.items() if v == name]))
        if sub.is_empty():
            continue
        values = var.to_canonical_array(
            sub["numeric_value"].to_numpy().astype(float), sub["unit"].to_list()
        )
        sub = sub.with_columns(
            pl.Series("value", values, dtype=pl.Float64), pl.lit(name).alias("variable")
        )
        sub = sub.filter(
            pl.col("value").is_not_nan() & pl.col("value").is_between(var.low, var.high)
        )
        parts.append(sub)
    if not parts:
        return pl.DataFrame(
            schema={
                "subject_id": pl.Int64,
                "variable": pl.String,
                "day": pl.Float64,
                "value": pl.Float64,
            }
        )
    out = pl.concat(parts).with_columns(day=(pl.col("time").dt.epoch("us") / 86_400_000_000))
    # same-day values in value order: the data's order, not the store key's (which orders
    # events of the same time), so the same patients give the same series in any store
    return out.select("subject_id", "variable", "day", "value", "time").sort(
        "subject_id", "variable", "day", "value"
    )


def birth_days(store: Store, known_at: datetime | None = None) -> dict[int, float]:
    """subject_id -> day of birth (days since the epoch), for subjects whose birth is known."""
    births = (
        store.scan(known_at=known_at)
        .filter(pl.col("code") == BIRTH_CODE)
        .group_by("subject_id")
        .agg(pl.col("time").min())
        .with_columns(day=pl.col("time").dt.epoch("us") / 86_400_000_000)
        .collect()
    )
    return dict(zip(births["subject_id"].to_list(), births["day"].to_list(), strict=True))


def each_series(frame: pl.DataFrame) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """``(variable, subject_id, days, values)`` for every subject's series of each variable in a
    :func:`measurement_frame`, subjects in id order: views into one array per variable, cut
    where the subject changes (a million subjects' series are cut in a second, not built group
    by group)."""
    for (variable,), part in frame.partition_by(
        "variable", as_dict=True, maintain_order=True
    ).items():
        subjects = part["subject_id"].to_numpy()
        days, values = part["day"].to_numpy(), part["value"].to_numpy()
        cuts = np.flatnonzero(subjects[1:] != subjects[:-1]) + 1
        starts, ends = np.concatenate(([0], cuts)), np.concatenate((cuts, [len(subjects)]))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            yield variable, int(subjects[a]), days[a:b], values[a:b]


def variable_series(
    store: Store,
    catalogue: dict[str, Variable],
    cutoff: datetime | None = None,
    known_at: datetime | None = None,
) -> dict[str, list[tuple[np.ndarray, np.ndarray, float | None]]]:
    """variable -> [(days, values, birth day or None) per subject], subjects in id order."""
    frame = measurement_frame(store, catalogue, cutoff, known_at)
    births = birth_days(store, known_at)
    out: dict[str, list] = {}
    for variable, subject, days, values in each_series(frame):
        out.setdefault(variable, []).append((days, values, births.get(subject)))
    return out
