"""``jumeau demo``: a store built from real-format sample data, summarised."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import jumeau
from jumeau.cli import render
from jumeau.data import ECG_RECORD, SYNTHEA_DIR, eunomia_path
from jumeau.ingest.fhir import ingest_fhir
from jumeau.ingest.omop import ingest_omop
from jumeau.ingest.wfdb import ingest_wfdb
from jumeau.signals.features import ecg_features
from jumeau.store import keys, layout


def run_demo(root: Path) -> jumeau.Store:
    """Ingest Eunomia (OMOP), the bundled Synthea bundles (FHIR) and an MIT-BIH ECG into ``root``
    and print the store, one patient's timeline and twin."""
    if (root / layout.STORE_FILE).exists():
        old = jumeau.open(root)
        old_key = old.key_path
        shutil.rmtree(root)
        if old_key.is_relative_to(keys.default_key_dir()):
            old_key.unlink(missing_ok=True)
    elif root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} exists and is not a jumeau store; choose another --store")
    store = jumeau.init(root)
    render.console.rule("OMOP CDM: OHDSI Eunomia GiBleed")
    render.report_table(ingest_omop(store, eunomia_path()))
    render.console.rule("FHIR R4: Synthea bundles")
    render.report_table(ingest_fhir(store, SYNTHEA_DIR))
    subject = _richest_fhir_subject(store)
    source_id = _fhir_source_id(store, subject)
    as_of = store.timeline(subject)["time"].max()
    render.console.rule("Milliseconds: an MIT-BIH ECG attached to that patient, and its features")
    render.report_table(
        ingest_wfdb(
            store,
            ECG_RECORD,
            subject=source_id,
            subject_source="fhir",
            start=as_of - timedelta(days=1),
        )
    )
    render.report_table(ecg_features(store))
    render.console.rule("The store")
    render.stats_table(store.stats())
    frame = store.timeline(subject)
    recent = frame.filter(frame["time"].is_not_null()).tail(25)
    render.console.rule(f"Subject {subject}: {frame.height} events; the last 25")
    render.timeline_table(recent, store.code_descriptions(), f"subject {subject}")
    from jumeau.twin import PopulationModel

    population = PopulationModel.fit(store, as_of)
    twin = store.twin(subject, as_of, population=population)
    payload = twin.to_dict()
    payload["forecasts"] = {
        v: twin.forecast(v)
        for v in ("sbp", "bmi", "qtc")
        if v in twin.variables and twin.deceased is None
    }
    render.console.rule(f"The twin of subject {subject} as of {as_of.date()}")
    render.twin_summary(payload)
    window = as_of - timedelta(days=1) + timedelta(minutes=5)
    render.console.print(
        f"\nTry: jumeau timeline {subject} --store {root} --code LOINC/ --format json\n"
        f"     jumeau twin {subject} --store {root} --as-of 2015-01-01 --forecast sbp\n"
        f"     jumeau plot {subject} --store {root} --start {window:%Y-%m-%dT%H:%M:%S} "
        f"--end {window + timedelta(seconds=8):%Y-%m-%dT%H:%M:%S} --out ecg.png"
    )
    return store


def _richest_fhir_subject(store: jumeau.Store) -> int:
    """The FHIR patient with the most observations (the most to show)."""
    con = store.connect()
    try:
        return con.execute(
            "SELECT subject_id FROM events WHERE source = 'fhir/Observation' "
            "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchall()[0][0]
    finally:
        con.close()


def _fhir_source_id(store: jumeau.Store, subject: int) -> str:
    """The FHIR Patient id behind a pseudonym, from the identity vault (the demo holds the key)."""
    vault = store.identities()
    found = vault.filter((vault["subject_id"] == subject) & (vault["source"] == "fhir"))
    if found.is_empty():
        raise LookupError(f"subject {subject} has no FHIR identity in the vault")
    return found["source_id"][0]
