"""Twins kept up to date as data arrives: versioned snapshots, incremental updates, diffs.

The registry keeps one JSON snapshot per subject under ``STORE/twins/<as_of>/``, stamped with
the store version (number of committed batches) it was built from, and every earlier snapshot
under ``history/``; the population model its twins are built on is learnt when it is first built
and kept beside them. ``update`` rebuilds only the subjects that the batches committed since then
touched, so new data for a few patients costs a few twins, not the store; every updated twin is
diffed against its previous snapshot. Ingesting through the CLI updates every registry of the
store (:func:`update_registries`). A registry built by another version of jumeau's twin code
is rebuilt whole on its next update, on a population fitted again: its snapshots would
otherwise mix twins built by two versions of the code.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from jumeau.store import layout
from jumeau.twin.twin import PopulationModel, build_twin, twin_fingerprint

if TYPE_CHECKING:
    from jumeau.store import Store

HISTORY_DIR = "history"
POPULATION_FILE = "population.json"


class TwinRegistry:
    """Versioned twin snapshots of every subject of a store, as of one date."""

    def __init__(
        self, store: Store, as_of: datetime, population: PopulationModel | None = None
    ) -> None:
        self.store = store
        self.as_of = as_of
        self.dir = store.root / layout.TWINS_DIR / as_of.strftime("%Y%m%dT%H%M%S")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "state.json"
        self.population = population or self._population()

    def _population(self) -> PopulationModel:
        """The population model the registry's twins are built on: learnt from the store when
        the registry was first built (as ``jumeau twin`` learns it) and kept, so an update
        after new data rebuilds only the subjects it touched."""
        path = self.dir / POPULATION_FILE
        if path.exists() and not self.built_by_other_code:
            return PopulationModel.from_dict(json.loads(path.read_text()))
        model = PopulationModel.fit_cached(self.store, self.as_of)
        layout.write_json_atomic(path, model.to_dict(), cache=True)
        return model

    @property
    def version(self) -> int:
        """The store version (committed batches) the snapshots were brought to; 0 when the
        registry is new or was built by another version of the twin code."""
        if not self.state_file.exists() or self.built_by_other_code:
            return 0
        return json.loads(self.state_file.read_text())["version"]

    @property
    def built_by_other_code(self) -> bool:
        """Whether the registry's snapshots were built by another version of the twin code
        (registries from before the code was recorded count as such)."""
        if not self.state_file.exists():
            return False
        return json.loads(self.state_file.read_text()).get("code") != twin_fingerprint()

    def snapshot(self, subject_id: int, version: int | None = None) -> dict | None:
        """The subject's latest twin, or the last one built at store ``version``."""
        path = self.dir / f"{subject_id}.json"
        if version is not None:
            latest = self.snapshot(subject_id)
            if latest is None or latest["version"] != version:
                built = [p for v, _, p in self._history(subject_id) if v == version]
                if not built:
                    return None
                path = built[-1]
        return json.loads(path.read_text()) if path.exists() else None

    def versions(self, subject_id: int) -> list[int]:
        """Store versions at which this subject's twin was built, oldest first (a version twice
        when the twin was built again at it, after an upgrade of the code or an erasure)."""
        latest = self.snapshot(subject_id)
        return [v for v, _, _ in self._history(subject_id)] + (
            [latest["version"]] if latest else []
        )

    def _history(self, subject_id: int) -> list[tuple[int, int, Path]]:
        """The subject's earlier snapshots as (store version, rebuild at that version, file),
        oldest first: ``<subject>-v<version>.json``, then ``-v<version>.<k>.json``."""
        found = []
        for path in (self.dir / HISTORY_DIR).glob(f"{subject_id}-v*.json"):
            version, _, rebuild = path.name[: -len(".json")].rsplit("-v", 1)[1].partition(".")
            found.append((int(version), int(rebuild or 0), path))
        return sorted(found)

    def _archive(self, subject_id: int, snapshot: dict) -> None:
        """Keep a replaced snapshot in the history, never over an earlier one."""
        (self.dir / HISTORY_DIR).mkdir(exist_ok=True)
        version = snapshot["version"]
        path = self.dir / HISTORY_DIR / f"{subject_id}-v{version}.json"
        k = 0
        while path.exists():
            k += 1
            path = self.dir / HISTORY_DIR / f"{subject_id}-v{version}.{k}.json"
        layout.write_json_atomic(path, snapshot, cache=True)

    def _touched_since(self, version: int) -> np.ndarray:
        batches = self.store.manifest.batch_ids[version:]
        base = self.store.root / layout.BATCHES_DIR
        # a batch touches the subjects it holds events of and those whose stored records it
        # hides (a record withdrawn at the source may leave the subject no new event)
        files = [
            path
            for b in batches
            for path in (base / b / layout.SUBJECTS_INDEX, base / b / layout.SUPERSEDED_FILE)
            if path.exists()
        ]
        ids = [pq.read_table(p, columns=["subject_id"]).column(0).to_numpy() for p in files]
        return np.unique(np.concatenate(ids)) if ids else np.array([], dtype=np.int64)

    def update(self) -> dict:
        """Bring every snapshot to the store's current version; return what changed."""
        self.store.refresh()
        current = len(self.store.manifest.batches)
        since = self.version
        touched = self._touched_since(since)
        descriptions = self.store.code_descriptions()
        diffs = []
        for subject in touched.tolist():
            try:
                twin = build_twin(
                    self.store,
                    subject,
                    self.as_of,
                    population=self.population,
                    descriptions=descriptions,
                )
            except KeyError:
                continue
            previous = self.snapshot(subject)
            if previous is not None:
                diffs.append(twin.diff(previous))
                self._archive(subject, previous)
            layout.write_json_atomic(self.dir / f"{subject}.json", twin.to_dict(), cache=True)
        layout.write_json_atomic(
            self.state_file,
            {"version": current, "as_of": self.as_of.isoformat(), "code": twin_fingerprint()},
            cache=True,
        )
        return {
            "from_version": since,
            "to_version": current,
            "rebuilt": int(len(touched)),
            "diffs": diffs,
        }


def update_registries(store: Store) -> list[dict]:
    """Bring every twin registry of the store up to date (after an ingest)."""
    results = []
    for state in sorted((store.root / layout.TWINS_DIR).glob("*/state.json")):
        as_of = datetime.fromisoformat(json.loads(state.read_text())["as_of"])
        result = TwinRegistry(store, as_of).update()
        results.append({"as_of": as_of.isoformat(), **result})
    return results
