"""Subjects who withdraw are erased from every file of the store and kept out afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jumeau
from jumeau.ingest.fhir import ingest_fhir, iter_resources
from jumeau.store import layout
from jumeau.twin.registry import TwinRegistry


def _patients(folder: Path) -> list[dict]:
    return [
        r
        for p in sorted(folder.glob("*.json"))
        for r in iter_resources(p)
        if r["resourceType"] == "Patient"
    ]


def _every_subject_id_stored(root: Path) -> set[int]:
    """The subject ids of every events, index, amendment, parts and vault file of the store."""
    store = jumeau.open(root)
    found: set[int] = set()
    for batch in store.manifest.batch_ids:
        folder = root / layout.BATCHES_DIR / batch
        found.update(pq.read_table(folder / layout.EVENTS_PARQUET).column("subject_id").to_pylist())
        found.update(pq.read_table(folder / layout.SUBJECTS_INDEX).column("subject_id").to_pylist())
        for name in (layout.SUPERSEDED_FILE, layout.PARTS_FILE):
            if (folder / name).exists():
                found.update(pq.read_table(folder / name).column("subject_id").to_pylist())
        arrow = pa.ipc.open_file(pa.memory_map(str(folder / layout.EVENTS_ARROW))).read_all()
        found.update(arrow.column("subject_id").to_pylist())
    vault = store.identities()
    if vault.height:
        found.update(vault["subject_id"].to_list())
    return found


def test_a_withdrawn_subject_leaves_every_file_and_stays_out(tmp_path, synthea_dir):
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, synthea_dir)
    patients = _patients(synthea_dir)
    gone = store.lookup("fhir", patients[0]["id"])
    kept = store.lookup("fhir", patients[1]["id"])
    kept_before = store.timeline(kept)
    total = store.stats()["events"]
    removed = store.timeline(gone).height
    registry = TwinRegistry(store, store.latest_time())
    registry.update()
    assert registry.snapshot(gone) is not None

    result = store.forget([gone], purpose="opt-out registered by the data office, ref 2026-117")
    assert result == {"subjects": 1, "events_removed": removed, "batches_rewritten": 1}
    assert not store.has_subject(gone) and store.timeline(gone).height == 0
    assert gone not in _every_subject_id_stored(store.root)
    assert store.timeline(kept).equals(kept_before)  # everyone else exactly as before
    assert store.stats()["events"] == total - removed
    assert store.stats()["withdrawn_subjects"] == 1
    assert store.scan().filter(pl.col("subject_id") == gone).collect().height == 0
    family = patients[0]["name"][0]["family"]
    stored = b"".join(
        p.read_bytes() for p in (store.root / layout.BATCHES_DIR).rglob("*") if p.is_file()
    )
    assert family.encode() not in stored  # the vault is encrypted, and no longer holds it
    assert all(e["subject_id"] != gone for e in store.identities().to_dicts())
    (entry,) = store.audit_trail()
    assert (entry["action"], entry["subject_id"]) == ("forget", gone)
    fresh = TwinRegistry(store, registry.as_of)
    assert fresh.snapshot(gone) is None and fresh.version == 0  # the others are rebuilt
    from jumeau.twin.registry import update_registries

    (rebuilt,) = update_registries(store)  # as after the next ingest
    assert rebuilt["rebuilt"] == len(patients) - 1
    assert TwinRegistry(store, registry.as_of).snapshot(gone) is None

    again = ingest_fhir(store, synthea_dir)  # the same export once more: the subject stays out
    assert again.events_withdrawn == removed and again.events_written == 0
    assert not jumeau.open(store.root).has_subject(gone)
    assert gone not in _every_subject_id_stored(store.root)


def test_erasure_needs_a_purpose_and_keeps_the_store_as_it_was_without_one(tmp_path, synthea_dir):
    from jumeau.store.audit import AuditError

    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, sorted(synthea_dir.glob("*.json"))[0])
    subject = int(store.subjects()[0])
    before = sorted(p.name for p in (store.root / layout.BATCHES_DIR).iterdir())
    with pytest.raises(AuditError, match="purpose"):
        store.forget([subject], purpose="")
    assert store.has_subject(subject)
    assert sorted(p.name for p in (store.root / layout.BATCHES_DIR).iterdir()) == before
    with pytest.raises(ValueError, match="at least one"):
        store.forget([], purpose="nobody")


def test_erasure_keeps_batch_order_commit_times_and_amendments_of_others(tmp_path, synthea_dir):
    """Two batches: the first holds both subjects, the second amends one record of each. After
    erasing one subject, the other's amended record still reads in its new version, the store
    as it was before the second batch still reads the old one, and the batch order and commit
    times are those of the ingests."""
    import time
    from datetime import datetime

    bundles = sorted(synthea_dir.glob("*.json"))[:2]
    source = tmp_path / "src"
    source.mkdir()
    for b in bundles:
        (source / b.name).write_bytes(b.read_bytes())
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, source)
    time.sleep(1.1)
    changed = {}
    for b in sorted(source.glob("*.json")):
        doc = json.loads(b.read_text())
        for e in doc["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Observation" and "valueQuantity" in r:
                r["valueQuantity"]["value"] = 12345.0
                changed[r["subject"]["reference"]] = r["code"]["coding"][0]["code"]
                break
        b.write_text(json.dumps(doc))
    second = ingest_fhir(store, source)
    assert second.events_amended == 2
    first_commit = datetime.strptime(
        store.manifest.batches[0]["committed_at"], "%Y-%m-%dT%H:%M:%S%z"
    )
    commits = [b["committed_at"] for b in store.manifest.batches]
    patients = _patients(source)
    gone, kept = (store.lookup("fhir", p["id"]) for p in patients)
    store.forget([gone], purpose="withdrawal")
    assert [b["committed_at"] for b in store.manifest.batches] == commits
    values = store.timeline(kept)["numeric_value"].to_list()
    assert 12345.0 in values
    then = store.timeline(kept, known_at=first_commit.replace(tzinfo=None))["numeric_value"]
    assert 12345.0 not in then.to_list()
    assert not store.has_subject(gone)
    assert np.all(store.subjects() == np.array([kept]))


def test_an_erasure_killed_before_it_is_published_leaves_the_store_readable_as_before(
    tmp_path, synthea_dir
):
    """Killed after writing the new batches but before the manifest names them, an erasure
    leaves the store reading as before (the subject still there); asked again, it finishes."""
    import os
    import signal
    import subprocess
    import sys

    source = tmp_path / "src"
    source.mkdir()
    for bundle in sorted(synthea_dir.glob("*.json"))[:2]:
        (source / bundle.name).write_bytes(bundle.read_bytes())
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, source)
    subject = int(store.subjects()[0])
    events = store.stats()["events"]
    code = "import sys, jumeau; jumeau.open(sys.argv[1]).forget([int(sys.argv[2])], purpose='x')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(store.root), str(subject)],
        env={**os.environ, "JUMEAU_PAUSE_AT": "forget-before-manifest"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "paused at forget-before-manifest"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reopened = jumeau.open(store.root)
    assert reopened.has_subject(subject) and reopened.stats()["events"] == events
    reopened.forget([subject], purpose="asked again")
    assert not reopened.has_subject(subject)
    published = set(reopened.manifest.batch_ids)
    assert {p.name for p in (store.root / layout.BATCHES_DIR).iterdir()} == published


def test_a_withdrawn_subjects_waveforms_go_and_the_others_stay(tmp_path):
    """Two patients' ECG records in one batch: erasing one removes its record folder and its
    events; the other's record is still read sample for sample."""
    from datetime import datetime

    from jumeau.ingest.wfdb import ingest_wfdb

    data = Path(__file__).resolve().parents[1] / "data" / "wfdb"
    folder = tmp_path / "records"
    folder.mkdir()
    for name in ("100.hea", "100.dat", "s0010_re_ii.hea", "s0010_re_ii.dat"):
        (folder / name).write_bytes((data / name).read_bytes())
    store = jumeau.init(tmp_path / "store")
    ingest_wfdb(store, folder, start=datetime(2020, 1, 1))  # one batch, a subject a record
    assert len(store.manifest.batches) == 1
    gone, kept = store.lookup("wfdb", "100"), store.lookup("wfdb", "s0010_re_ii")
    (kept_record,) = store.signal_records(kept)
    samples = kept_record.digital(0, 0, 1000)
    assert store.signal_records(gone)
    store.forget([gone], purpose="withdrawal")
    reopened = jumeau.open(store.root)
    assert reopened.signal_records(gone) == [] and not reopened.has_subject(gone)
    (still,) = reopened.signal_records(kept)
    assert np.array_equal(still.digital(0, 0, 1000), samples)
