"""A picture of a signal window with its annotations, because people would rather look."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from jumeau.signals.store import SignalRecord
    from jumeau.store import Store


def plot_window(
    store: Store,
    record: SignalRecord,
    out: str | Path,
    *,
    channels: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    points: int = 4000,
) -> Path:
    """Draw channels from ``start`` to ``end`` (min/max envelope when zoomed out) with the
    subject's annotation events in the window, and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = start or record.start
    end = end or min(record.end, start + timedelta(seconds=10))
    channels = channels or record.channels[:3]
    fig, axes = plt.subplots(
        len(channels), 1, figsize=(12, 2.2 * len(channels)), sharex=True, squeeze=False
    )
    annotations = store.timeline(record.subject_id, start=start, end=end, domains=["annotation"])
    annotations = annotations.filter(pl.col("time").is_not_null())
    for ax, channel in zip(axes[:, 0], channels, strict=True):
        window = record.window(channel, start, end, points)
        t = window["t"] - (start - record.start).total_seconds()
        if window["level"] == 0:
            ax.plot(t, window["mean"], lw=0.8, color="black")
        else:
            ax.fill_between(t, window["min"], window["max"], color="black", lw=0, alpha=0.8)
        ax.set_ylabel(f"{channel}\n({window['unit']})")
        for when, code in annotations.select("time", "code").iter_rows():
            x = (when - start).total_seconds()
            ax.axvline(x, color="tab:red", lw=0.5, alpha=0.5)
            if ax is axes[0, 0]:
                ax.text(
                    x,
                    1.0,
                    code.split("/", 1)[-1],
                    transform=ax.get_xaxis_transform(),
                    fontsize=7,
                    color="tab:red",
                    ha="center",
                    va="bottom",
                )
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(f"seconds from {start.isoformat(sep=' ')}")
    fig.suptitle(
        f"record {record.id} ({record.fs:g} Hz), {len(annotations)} annotation(s)",
        y=1.0,
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
