"""``jumeau demo``, the README's first command, end to end."""

from __future__ import annotations

import re

import jumeau as api
from tests.cli.test_cli import jumeau


def test_the_demo_builds_a_multiscale_store_and_shows_a_twin(tmp_path):
    store = tmp_path / "demo-store"
    out = jumeau("demo", "--store", str(store)).stdout
    for section in (
        "OHDSI Eunomia GiBleed",
        "Synthea bundles",
        "MIT-BIH ECG",
        "The twin of subject",
    ):
        assert section in out
    opened = api.open(store)
    stats = opened.stats()
    assert stats["subjects"] == 2694 + 3 and stats["signal_records"] == 1
    subject = int(re.search(r"The twin of subject (\d+)", out).group(1))
    twin = opened.twin(subject, opened.timeline(subject)["time"].max())
    assert "qtc" in twin.variables and "heart_rate" in twin.variables  # from the ECG
    flat = " ".join(out.split())  # the console wraps long lines
    plot = re.search(r"jumeau plot (.+?) --out ecg.png", flat).group(1).split()
    jumeau("plot", *plot, "--out", str(tmp_path / "ecg.png"))
    assert (tmp_path / "ecg.png").stat().st_size > 10_000
    again = jumeau("demo", "--store", str(store)).stdout  # the demo store is replaced, not added to
    assert api.open(store).stats()["events"] == stats["events"] and "The twin" in again
