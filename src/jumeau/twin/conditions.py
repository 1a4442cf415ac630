"""Code sets for the conditions and drugs that clinical scores ask about.

SNOMED CT codes match exactly; ICD-10 and ICD-9-CM codes match by prefix, written with or
without their dot (``ICD10CM/I10`` covers I10.x, ``ICD9CM/427.31`` and ``ICD9CM/42731`` are the
same code); drugs match by ingredient name in the code's description, since product-level RxNorm
codes are too many to list.
"""

from __future__ import annotations

CONDITIONS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "hypertension": (
        frozenset({"38341003", "59621000", "1201005"}),
        ("I10", "I11", "I12", "I13", "I15"),
    ),
    "diabetes": (
        frozenset({"44054006", "46635009", "73211009", "190331003"}),
        ("E10", "E11", "E12", "E13", "E14"),
    ),
    "heart_failure": (frozenset({"84114007", "88805009", "42343007", "85232009"}), ("I50",)),
    "stroke": (
        frozenset({"230690007", "422504002", "266257000", "432504007"}),
        ("I63", "I64", "G45", "I69.3"),
    ),
    "vascular": (
        frozenset(
            {
                "22298006",
                "401303003",
                "401314000",
                "399211009",
                "53741008",
                "414545008",
                "840580004",
                "399957001",
            }
        ),
        ("I21", "I22", "I25.2", "I70", "I71", "I73.9"),
    ),
    "atrial_fibrillation": (frozenset({"49436004", "282825002", "440028005"}), ("I48",)),
    "renal": (
        frozenset(
            {
                "431855005",
                "431856006",
                "433144002",
                "431857002",
                "433146000",
                "46177005",
                "709044004",
            }
        ),
        ("N18", "Z99.2"),
    ),
    "liver": (
        frozenset({"19943007", "235856003", "197321007", "128302006"}),
        ("K70", "K71", "K72", "K73", "K74", "K76"),
    ),
    "bleeding": (
        frozenset({"74474003", "131148009", "274100004", "37372002"}),
        ("K92.2", "I60", "I61", "I62", "D62"),
    ),
    "alcohol": (frozenset({"7200002", "15167005"}), ("F10",)),
}

ANTIPLATELETS_AND_NSAIDS = (
    "aspirin",
    "clopidogrel",
    "prasugrel",
    "ticagrelor",
    "ibuprofen",
    "naproxen",
    "diclofenac",
    "celecoxib",
    "ketorolac",
    "meloxicam",
    "indomethacin",
    "piroxicam",
)


#: ICD-9-CM prefixes (no dots) of the same conditions, for warehouses and MEDS datasets whose
#: history predates ICD-10 (MIMIC-IV holds both).
ICD9_PREFIXES: dict[str, tuple[str, ...]] = {
    "hypertension": ("401", "402", "403", "404", "405"),
    "diabetes": ("250",),
    "heart_failure": (
        "428",
        "40201",
        "40211",
        "40291",
        "40401",
        "40403",
        "40411",
        "40413",
        "40491",
        "40493",
    ),
    # ischaemic stroke (occlusion with infarction), TIA, late effects
    "stroke": (
        "43301",
        "43311",
        "43321",
        "43331",
        "43381",
        "43391",
        "43401",
        "43411",
        "43491",
        "435",
        "436",
        "438",
    ),
    "vascular": ("410", "412", "440", "441", "4439"),
    "atrial_fibrillation": ("42731",),
    "renal": ("585", "V451"),
    "liver": ("571", "572", "573"),
    "bleeding": ("578", "430", "431", "432", "2851"),
    "alcohol": ("303", "3050"),
}


def matches(code: str, condition: str) -> bool:
    """Whether a canonical code belongs to a condition's code set."""
    snomed, icd_prefixes = CONDITIONS[condition]
    vocab, _, value = code.partition("/")
    if vocab == "SNOMED":
        return value in snomed
    if vocab in ("ICD10", "ICD10CM"):
        return value.replace(".", "").startswith(tuple(p.replace(".", "") for p in icd_prefixes))
    if vocab in ("ICD9", "ICD9CM"):
        return value.replace(".", "").startswith(ICD9_PREFIXES[condition])
    return False
