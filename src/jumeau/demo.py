"""``jumeau demo``: a store built from real-format sample data, summarised."""

from __future__ import annotations

import shutil
from pathlib import Path

import jumeau
from jumeau.cli import render
from jumeau.data import SYNTHEA_DIR, eunomia_path
from jumeau.ingest.fhir import ingest_fhir
from jumeau.ingest.omop import ingest_omop
from jumeau.store import keys, layout


def run_demo(root: Path) -> jumeau.Store:
    """Ingest Eunomia (OMOP) and the bundled Synthea bundles (FHIR) into ``root`` and print them."""
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
    render.console.rule("The store")
    render.stats_table(store.stats())
    con = store.connect()
    subject = con.execute(
        "SELECT subject_id FROM events WHERE source = 'fhir/Observation' "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    ).fetchall()[0][0]
    con.close()
    frame = store.timeline(subject)
    recent = frame.filter(frame["time"].is_not_null()).tail(25)
    render.console.rule(f"Subject {subject}: {frame.height} events; the last 25")
    render.timeline_table(recent, store.code_descriptions(), f"subject {subject}")
    from jumeau.twin import PopulationModel

    as_of = frame["time"].max()
    population = PopulationModel.fit(store, as_of)
    twin = store.twin(subject, as_of, population=population)
    payload = twin.to_dict()
    payload["forecasts"] = {v: twin.forecast(v) for v in ("sbp", "bmi") if v in twin.variables}
    render.console.rule(f"The twin of subject {subject} as of {as_of.date()}")
    render.twin_summary(payload)
    render.console.print(
        f"\nTry: jumeau timeline {subject} --store {root} --code LOINC/ --format json\n"
        f"     jumeau twin {subject} --store {root} --as-of 2015-01-01 --forecast sbp"
    )
    return store
