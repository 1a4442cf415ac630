"""Shared fixtures: real sample data and stores built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import jumeau
from jumeau.data import SYNTHEA_DIR, eunomia_path
from jumeau.ingest.fhir import ingest_fhir
from jumeau.ingest.omop import ingest_omop

SHARED_SYNTHEA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fhir" / "synthea-r4"


@pytest.fixture(scope="session", autouse=True)
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep every test store's secret key in a temporary key folder."""
    path = tmp_path_factory.mktemp("keys")
    os.environ["JUMEAU_KEY_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def eunomia() -> Path:
    return eunomia_path()


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    """All 20 Synthea bundles of ../shared when present, else the 3 bundled with jumeau."""
    return SHARED_SYNTHEA if SHARED_SYNTHEA.is_dir() else SYNTHEA_DIR


@pytest.fixture(scope="session")
def eunomia_store(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, eunomia: Path):
    store = jumeau.init(tmp_path_factory.mktemp("eunomia") / "store")
    report = ingest_omop(store, eunomia)
    return store, report


@pytest.fixture(scope="session")
def synthea_store(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, synthea_dir: Path):
    store = jumeau.init(tmp_path_factory.mktemp("synthea") / "store")
    report = ingest_fhir(store, synthea_dir)
    return store, report


@pytest.fixture(scope="session")
def synthea_full_store(synthea_store, synthea_dir):
    """The store of all 20 shared Synthea bundles: statistical tests need that many patients."""
    if synthea_dir != SHARED_SYNTHEA:
        pytest.skip("needs the 20 Synthea bundles of ../shared/data/fhir/synthea-r4 (CI has them)")
    return synthea_store


@pytest.fixture
def new_store(tmp_path: Path) -> jumeau.Store:
    return jumeau.init(tmp_path / "store")
