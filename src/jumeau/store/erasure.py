"""Erasure of subjects who withdraw (the right to object of a national health data programme):
their data leave every file of the store, and later ingests keep them out.

:func:`forget` records the request in the audit trail, adds the subjects' pseudonyms to the
store's withdrawal list (``STORE/withdrawn.parquet``: pseudonyms only), writes every batch that
holds anything of them again without it and publishes the new batches with one atomic manifest
update, then removes the old batch folders and the twin snapshots of the subjects. Interrupted,
it leaves the store readable as before or as after; asked again, it finishes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jumeau.store import audit, layout

if TYPE_CHECKING:
    from jumeau.store.store import Store

WITHDRAWN_FILE = "withdrawn.parquet"
WITHDRAWN_SCHEMA = pa.schema([pa.field("subject_id", pa.int64(), nullable=False)])


def withdrawn_subjects(root: Path) -> np.ndarray:
    """The sorted pseudonyms of the subjects who withdrew from the store."""
    path = root / WITHDRAWN_FILE
    if not path.exists():
        return np.array([], dtype=np.int64)
    return pq.read_table(path).column("subject_id").to_numpy()


def _add_withdrawn(root: Path, subjects: np.ndarray) -> None:
    ids = np.union1d(withdrawn_subjects(root), subjects).astype(np.int64)
    tmp = root / f".{WITHDRAWN_FILE}.tmp"
    pq.write_table(pa.table({"subject_id": ids}, schema=WITHDRAWN_SCHEMA), tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(root / WITHDRAWN_FILE)
    layout.fsync_dir(root)


def plan(store: Store, subject_ids: list[int]) -> dict:
    """What :func:`forget` would erase, without erasing or recording anything: per subject its
    events in the store (0 for a pseudonym the store does not hold yet, which an erasure still
    keeps out of later ingests) and the batches that hold them."""
    subjects = np.unique(np.asarray(subject_ids, dtype=np.int64))
    events = dict.fromkeys(subjects.tolist(), 0)
    batches: set[str] = set()
    for batch in store._batches():
        for subject in subjects.tolist():
            i = batch.position(subject)
            if i is not None:
                events[subject] += int(batch.counts[i])
                batches.add(batch.id)
    return {
        "subjects": {str(s): n for s, n in events.items()},
        "events": sum(events.values()),
        "batches": sorted(batches),
    }


def forget(store: Store, subject_ids: list[int], *, purpose: str) -> dict:
    """Erase ``subject_ids`` from ``store`` and keep them out of later ingests (needs the key).

    Returns the subjects erased, the events removed and the batches written again.
    """
    from jumeau.store.writer import copy_batch_without, pause_for_tests

    subjects = np.unique(np.asarray(subject_ids, dtype=np.int64))
    if not len(subjects):
        raise ValueError("name at least one subject to forget")
    key = store.pseudonymiser.audit_key()
    for subject in subjects.tolist():  # the request is kept before anything is erased
        audit.record(store.root, key, subject_id=subject, purpose=purpose, action="forget")
    fd = layout.lock_store(store.root)
    try:
        _add_withdrawn(store.root, subjects)
        layout.clear_unpublished(store.root)
        staging = store.root / layout.STAGING_DIR
        store.refresh()
        manifest = layout.Manifest.read(store.root)
        base = store.root / layout.BATCHES_DIR
        removed, replaced = 0, {}
        vault_key = store.pseudonymiser.vault_key()
        for entry in manifest.batches:
            folder = base / entry["id"]
            if not _holds_any(folder, subjects, vault_key):
                continue
            new_id = f"{entry['id'].split('~')[0]}~{uuid.uuid4().hex[:8]}"
            removed += copy_batch_without(folder, staging / new_id, subjects, vault_key)
            replaced[entry["id"]] = new_id
        for new in replaced.values():
            (staging / new).rename(base / new)
        layout.fsync_dir(base)
        for entry in manifest.batches:  # committed_at is kept: known_at reads as before
            entry["id"] = replaced.get(entry["id"], entry["id"])
        pause_for_tests("forget-before-manifest")
        manifest.write(store.root)
        for old in replaced:
            shutil.rmtree(base / old, ignore_errors=True)
        _forget_twins(store.root, subjects)
    finally:
        layout.unlock_store(fd)
    store.refresh()
    return {
        "subjects": len(subjects),
        "events_removed": removed,
        "batches_rewritten": len(replaced),
    }


def _holds_any(folder: Path, subjects: np.ndarray, vault_key: bytes) -> bool:
    """Whether a batch has events, identities, amendments or waveforms of ``subjects``."""
    from jumeau.signals.store import SignalRecord
    from jumeau.store.vault import read_vault

    index = pq.read_table(folder / layout.SUBJECTS_INDEX, columns=["subject_id"])
    if np.isin(subjects, index.column(0).to_numpy()).any():
        return True
    vault = folder / layout.VAULT_FILE
    if vault.exists():
        ids = read_vault(vault, vault_key).column("subject_id").to_numpy()
        if np.isin(subjects, ids).any():
            return True
    signals = folder / layout.SIGNALS_DIR
    if signals.is_dir():
        wanted = set(subjects.tolist())
        if any(SignalRecord(r).subject_id in wanted for r in signals.iterdir()):
            return True
    return False


def _forget_twins(root: Path, subjects: np.ndarray) -> None:
    """Remove the subjects' twin snapshots and the population models fitted with their data;
    every twin registry is rebuilt whole, on a population fitted again, at its next update
    (after the next ingest, or ``jumeau twins``)."""
    twins = root / layout.TWINS_DIR
    if not twins.is_dir():
        return
    for subject in subjects.tolist():
        for path in twins.glob(f"*/{subject}.json"):
            path.unlink()
        for path in twins.glob(f"*/history/{subject}-v*.json"):
            path.unlink()
    for path in twins.glob("*/population.json"):
        path.unlink()
    for path in twins.glob("*/state.json"):  # version 0: the next update rebuilds every twin
        state = json.loads(path.read_text())
        layout.write_json_atomic(path, {**state, "version": 0}, cache=True)
    shutil.rmtree(twins / layout.POPULATIONS_DIR, ignore_errors=True)
