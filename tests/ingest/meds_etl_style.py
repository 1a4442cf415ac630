"""A small MEDS dataset written the way the MEDS ETLs (MIMIC-IV's among them) write theirs.

Codes say the event's kind and unit (``LAB//50912//mg/dL``), the codes metadata links local codes
to standard ones through ``parent_codes``, and there is no unit or domain column. The values are
made up; the shapes follow MEDS 0.3 (float32 values, train/held_out shards).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CREATININE = "LAB//50912//mg/dL"
GLUCOSE = "LAB//50931//mg/dL"
HYPERTENSION = "DIAGNOSIS//ICD//10//I10"
ATRIAL_FIBRILLATION = "DIAGNOSIS//ICD//9//42731"
ADMISSION = "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"

PARENTS = {
    CREATININE: ["LOINC/2160-0"],
    GLUCOSE: ["LOINC/2345-7"],
    HYPERTENSION: ["ICD10CM/I10"],
    ATRIAL_FIBRILLATION: ["ICD9CM/427.31"],
}


def write_dataset(root: Path, *, parents: bool = True) -> Path:
    """Write the dataset under ``root`` (``data/`` and ``metadata/``); return ``root``."""
    rows = [
        (10001, None, "GENDER//M", None),
        (10001, datetime(2080, 1, 1), "MEDS_BIRTH", None),
        (10001, datetime(2150, 3, 1, 8, 0), ADMISSION, None),
        (10001, datetime(2150, 3, 1, 9, 30), CREATININE, 1.0),
        (10001, datetime(2150, 3, 1, 9, 30), GLUCOSE, 99.0),
        (10001, datetime(2150, 3, 2, 9, 30), CREATININE, 1.2),
        (10001, datetime(2150, 3, 4, 12, 0), HYPERTENSION, None),
        (10001, datetime(2150, 3, 4, 12, 0), ATRIAL_FIBRILLATION, None),
        (10001, datetime(2150, 3, 4, 12, 0), "LAB//51221//%", 38.5),
        (10002, None, "GENDER//F", None),
        (10002, datetime(2090, 6, 1), "MEDS_BIRTH", None),
        (10002, datetime(2151, 1, 1, 10, 0), CREATININE, 0.8),
        (10002, datetime(2152, 1, 1), "MEDS_DEATH", None),
    ]
    subject, time, code, value = (list(c) for c in zip(*rows, strict=True))
    table = pa.table(
        {
            "subject_id": pa.array(subject, pa.int64()),
            "time": pa.array(time, pa.timestamp("us")),
            "code": pa.array(code, pa.string()),
            "numeric_value": pa.array(value, pa.float32()),
        }
    )
    for split, ids in (("train", [10001]), ("held_out", [10002])):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        chosen = pa.compute.is_in(table["subject_id"], pa.array(ids, pa.int64()))
        pq.write_table(table.filter(chosen), root / "data" / split / "0.parquet")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    codes = sorted(set(code))
    pq.write_table(
        pa.table(
            {
                "code": codes,
                "description": [c.split("//")[0].title() for c in codes],
                "parent_codes": pa.array(
                    [PARENTS.get(c, []) if parents else [] for c in codes], pa.list_(pa.string())
                ),
            }
        ),
        root / "metadata" / "codes.parquet",
    )
    return root
