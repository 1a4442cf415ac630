"""Pseudonymisation at the door: no name or source id reaches the store files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jumeau
from jumeau.ingest.fhir import ingest_fhir, iter_resources
from jumeau.ingest.omop import ingest_omop
from jumeau.store.keys import StoreKeyError


def identifying_strings(folder: Path) -> set[str]:
    """Patient ids, names, identifier values, phones and address lines of a set of bundles."""
    found: set[str] = set()
    for path in folder.glob("*.json"):
        for r in iter_resources(path):
            if r["resourceType"] != "Patient":
                continue
            found.add(r["id"])
            for name in r.get("name", []):
                found.update(name.get("given", []))
                found.add(name.get("family", ""))
            for ident in r.get("identifier", []):
                found.add(ident["value"])
            for tel in r.get("telecom", []):
                found.add(tel["value"])
            for addr in r.get("address", []):
                found.update(addr.get("line", []))
    return {s for s in found if len(s) >= 4}


def decoded_texts(store_root: Path) -> list[str]:
    """Every string cell of every Parquet/Arrow file, and every JSON file, of a store."""
    texts: list[str] = []
    for path in store_root.rglob("*"):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        elif path.suffix == ".arrow":
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        elif path.suffix == ".json":
            texts.append(path.read_text())
            continue
        else:
            continue
        for column in table.columns:
            texts.extend(str(v) for v in column.to_pylist() if v is not None)
    return texts


def test_no_name_or_source_id_appears_in_any_store_file(synthea_store, synthea_dir):
    store, _ = synthea_store
    secrets = identifying_strings(synthea_dir)
    patients = sum(
        1
        for p in synthea_dir.glob("*.json")
        for r in iter_resources(p)
        if r["resourceType"] == "Patient"
    )
    assert len(secrets) >= 5 * patients
    blob = "\n".join(decoded_texts(store.root))
    raw = b"".join(_stored_bytes(p) for p in store.root.rglob("*") if p.is_file())
    leaked = [s for s in secrets if s in blob or s.encode() in raw]
    assert leaked == []


def _stored_bytes(path: Path) -> bytes:
    """A file's bytes as stored; the encrypted vault's as its ciphertext (a Fernet token is
    base64 text, in which any four letters, a first name among them, turn up by chance)."""
    import base64

    data = path.read_bytes()
    return base64.urlsafe_b64decode(data) if path.name == "vault.bin" else data


def test_omop_person_ids_and_source_values_stay_out(eunomia_store, eunomia):
    store, _ = eunomia_store
    con = duckdb.connect(str(eunomia), read_only=True)
    people = con.execute("SELECT person_id, person_source_value FROM person").fetchall()
    con.close()
    subjects = set(store.subjects().tolist())
    assert not subjects & {pid for pid, _ in people}
    assert subjects == {store.lookup("omop", str(pid)) for pid, _ in people}
    cells = set(decoded_texts(store.root))
    values = {v for _, v in people if v}
    assert values and not values & cells


def test_identity_vault_reidentifies_only_with_the_key(synthea_store, synthea_dir, tmp_path):
    store, _ = synthea_store
    vault = store.identities()
    patients = [
        r
        for p in synthea_dir.glob("*.json")
        for r in iter_resources(p)
        if r["resourceType"] == "Patient"
    ]
    assert vault.height == len(patients)
    names = json.loads(vault["identifiers"][0])["name"]
    assert names[0]["family"]
    assert vault["subject_id"].to_list() == [store.lookup("fhir", s) for s in vault["source_id"]]
    wrong = tmp_path / "wrong.key"
    wrong.write_text("00" * 32)
    with pytest.raises(PermissionError, match="does not open"):
        jumeau.open(store.root, key_file=wrong).identities()


def _bundled_store(tmp_path: Path, synthea_dir: Path) -> tuple[jumeau.Store, dict]:
    """A store of one Synthea bundle, and that bundle's Patient resource."""
    bundle = sorted(synthea_dir.glob("*.json"))[0]
    store = jumeau.init(tmp_path / "store")
    ingest_fhir(store, bundle)
    patient = next(r for r in iter_resources(bundle) if r["resourceType"] == "Patient")
    return store, patient


def test_reidentification_names_the_patient_and_is_recorded_first(tmp_path, synthea_dir):
    from jumeau.store.audit import AuditError

    store, patient = _bundled_store(tmp_path, synthea_dir)
    subject = store.lookup("fhir", patient["id"])
    (found,) = store.reidentify(subject, purpose="CHU data office: consent withdrawal #42")
    assert (found["source"], found["source_id"]) == ("fhir", patient["id"])
    assert found["identifiers"]["name"][0]["family"] == patient["name"][0]["family"]
    assert store.reidentify(12345, purpose="a pseudonym nobody has") == []
    grown = tmp_path / "grown.json"  # the same patient again, with one more observation
    bundle = json.loads(next(iter(sorted(synthea_dir.glob("*.json")))).read_text())
    extra = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    extra = json.loads(json.dumps(extra).replace(extra["resource"]["id"], "late-observation"))
    bundle["entry"].append(extra)
    grown.write_text(json.dumps(bundle))
    assert ingest_fhir(store, grown).events_written >= 1
    assert len(store.manifest.batches) == 2
    assert len(store.reidentify(subject, purpose="after a second batch")) == 1
    (first, second, _) = store.audit_trail()
    assert first["subject_id"] == subject and first["identities_found"] == 1
    assert first["purpose"] == "CHU data office: consent withdrawal #42" and first["user"]
    assert second["subject_id"] == 12345 and second["identities_found"] == 0
    trail = (store.root / "audit" / "reidentifications.jsonl").read_text()
    assert patient["id"] not in trail and patient["name"][0]["family"] not in trail
    with pytest.raises(AuditError, match="purpose"):
        store.reidentify(subject, purpose="  ")
    assert len(store.audit_trail()) == 3


def test_a_reidentification_that_cannot_be_recorded_is_refused(tmp_path, synthea_dir):
    from jumeau.store.audit import AuditError

    store, patient = _bundled_store(tmp_path, synthea_dir)
    (store.root / "audit").write_text("a file where the audit folder belongs")
    with pytest.raises(AuditError, match="refused"):
        store.reidentify(store.lookup("fhir", patient["id"]), purpose="audit")


def test_a_changed_or_removed_audit_entry_is_detected(tmp_path, synthea_dir):
    from jumeau.store.audit import AuditError

    store, patient = _bundled_store(tmp_path, synthea_dir)
    subject = store.lookup("fhir", patient["id"])
    for purpose in ("first request", "second request", "third request"):
        store.reidentify(subject, purpose=purpose)
    path = store.root / "audit" / "reidentifications.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")  # the first request removed
    with pytest.raises(AuditError, match="line 1"):
        store.audit_trail()
    path.write_text("\n".join([lines[0], lines[1].replace("second", "other"), lines[2]]) + "\n")
    with pytest.raises(AuditError, match="line 2"):
        store.audit_trail()
    path.write_text("\n".join(lines) + "\n")
    assert [e["purpose"] for e in store.audit_trail()] == [
        "first request",
        "second request",
        "third request",
    ]
    wrong = tmp_path / "wrong.key"
    wrong.write_text("00" * 32)
    with pytest.raises(AuditError, match="line 1"):  # another key cannot vouch for the trail
        jumeau.open(store.root, key_file=wrong).audit_trail()


def test_the_key_lives_outside_the_store_and_is_required_to_ingest(tmp_path, synthea_dir):
    store = jumeau.init(tmp_path / "store")
    assert not store.key_path.is_relative_to(store.root)
    with pytest.raises(jumeau.StoreError, match="outside the store"):
        jumeau.init(tmp_path / "s2", key_file=tmp_path / "s2" / "k.key")
    store.key_path.unlink()
    with pytest.raises(StoreKeyError, match="store key not found"):
        ingest_fhir(jumeau.open(store.root), synthea_dir)


def test_date_shifting_is_consistent_per_patient(tmp_path, eunomia):
    plain = jumeau.init(tmp_path / "plain")
    shifted = jumeau.init(tmp_path / "shifted", max_date_shift_days=365)
    key = shifted.key_path.read_text()
    plain.key_path.write_text(key)  # same key: same pseudonyms, only the shift differs
    plain = jumeau.open(plain.root)
    ingest_omop(plain, eunomia)
    ingest_omop(shifted, eunomia)
    cols = ["subject_id", "record_key", "time"]
    a = plain.scan().select(cols).collect()
    b = shifted.scan().select(cols).collect()
    joined = a.join(b, on=["subject_id", "record_key"], suffix="_shifted").drop_nulls()
    joined = joined.with_columns(delta=(pl.col("time_shifted") - pl.col("time")).dt.total_days())
    per_subject = joined.group_by("subject_id").agg(
        pl.col("delta").n_unique().alias("n"), pl.col("delta").first()
    )
    assert per_subject["n"].max() == 1
    assert per_subject["delta"].abs().max() <= 365
    assert per_subject["delta"].n_unique() > 100


def test_a_rejected_file_named_after_its_patient_leaves_no_name_in_the_store(
    tmp_path, synthea_dir, new_store
):
    """Synthea names each bundle after its patient (``Elsa_Vargas_<patient id>.json``): the
    rejects keep the file's path sealed, the reasons name no path, and a key holder reads the
    path back."""
    folder = tmp_path / "Dupont_cohort"
    folder.mkdir()
    bundle = sorted(synthea_dir.glob("*.json"))[0]
    broken = folder / bundle.name
    broken.write_bytes(bundle.read_bytes()[:4000])  # cut short: not JSON
    report = ingest_fhir(new_store, folder)
    assert report.rejects_written == 1
    (path,) = new_store.rejects()["file"].to_list()
    assert path == str(broken)
    stem, patient_id = bundle.stem, bundle.stem.rsplit("_", 1)[-1]
    raw = b"".join(p.read_bytes() for p in new_store.root.rglob("*") if p.is_file())
    for secret in (stem, patient_id, "Dupont_cohort"):
        assert secret.encode() not in raw


def test_paths_a_store_kept_plain_before_are_sealed_at_the_next_commit(
    tmp_path, synthea_dir, new_store
):
    folder = tmp_path / "Dupont_cohort"
    folder.mkdir()
    bundle = sorted(synthea_dir.glob("*.json"))[0]
    (folder / bundle.name).write_bytes(bundle.read_bytes()[:4000])
    ingest_fhir(new_store, folder)
    # the batch as the writer left it before paths were sealed
    unseal = new_store.pseudonymiser.unseal
    (batch,) = new_store.root.glob("batches/*")
    rejects = pq.read_table(batch / "rejects.parquet")
    plain = pa.array([unseal(f) for f in rejects.column("file").to_pylist()])
    pq.write_table(rejects.set_column(1, "file", plain), batch / "rejects.parquet")
    manifest = json.loads((new_store.root / "manifest.json").read_text())
    manifest["batches"][0]["source"] = str(folder)
    (new_store.root / "manifest.json").write_text(json.dumps(manifest))
    report = json.loads((batch / "report.json").read_text())
    (batch / "report.json").write_text(json.dumps({**report, "source": str(folder)}))
    assert b"Dupont_cohort" in (new_store.root / "manifest.json").read_bytes()

    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(sorted(synthea_dir.glob("*.json"))[1], second / "b.json")
    ingest_fhir(jumeau.open(new_store.root), second)

    raw = b"".join(p.read_bytes() for p in new_store.root.rglob("*") if p.is_file())
    assert b"Dupont_cohort" not in raw and bundle.stem.encode() not in raw
    assert jumeau.open(new_store.root).rejects()["file"].to_list() == [str(folder / bundle.name)]
