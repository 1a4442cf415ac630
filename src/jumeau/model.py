"""The canonical event model at the centre of jumeau.

Every connector maps its source format into this one Arrow schema, a superset of MEDS
(``subject_id``, ``time``, ``code``, ``numeric_value``, ``text_value``) with unit, end time,
domain and provenance. Nothing downstream of ingestion knows a source format.
"""

from __future__ import annotations

import re

import pyarrow as pa

#: Domains an event may belong to (OMOP-like, plus the demographic and signal scales).
DOMAINS: tuple[str, ...] = (
    "demographic",
    "observation_period",
    "visit",
    "episode",
    "condition",
    "drug",
    "measurement",
    "procedure",
    "observation",
    "device",
    "death",
    "specimen",
    "note",
    "immunization",
    "allergy",
    "report",
    "care_plan",
    "goal",
    "order",
    "alert",
    "consent",
    "survey",
    "risk",
    "adverse_event",
    "claim",
    "signal",
    "annotation",
    "mention",
    "genomic",
    "imaging",
    "other",
)

EVENT_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us")),
        pa.field("code", pa.string(), nullable=False),
        pa.field("numeric_value", pa.float64()),
        pa.field("text_value", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("end_time", pa.timestamp("us")),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record_key", pa.int64(), nullable=False),
    ]
)
"""Arrow schema of one stored event.

``time`` is null for static facts. ``source`` names the source table or resource type
(``omop/measurement``, ``fhir/Observation``); ``record_key`` is a keyed hash of the source
record id (never the id itself) that makes re-ingestion idempotent. The ingest batch that
wrote an event is the batch whose files hold it (the store's SQL view shows it as ``batch``).
"""

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)

#: The columns with few distinct values, stored dictionary-encoded in a batch's Arrow file.
DICTIONARY_COLUMNS = ("code", "unit", "domain", "source")

STORED_EVENT_SCHEMA = pa.schema(
    [
        f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in DICTIONARY_COLUMNS else f
        for f in EVENT_SCHEMA
    ]
)
"""The same events as a batch's memory-mapped Arrow file holds them: code, unit, domain and
source as dictionary indices (4 bytes a value instead of the string), which halves the file a
timeline is sliced from; the values read are the same."""
#: Columns a connector provides: the stored event, exactly.
CONNECTOR_SCHEMA = EVENT_SCHEMA

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("record", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("record_key", pa.int64()),
    ]
)
"""A record that failed validation: where it was (file and record position) and why."""

RETRACTION_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("record_key", pa.int64(), nullable=False),
    ]
)
"""A record its source has withdrawn (entered in error, deleted): its stored events are hidden
from the batch that says so on; a null ``subject_id`` stands for the subject it is stored under."""

PARTS_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("resource_key", pa.int64(), nullable=False),
        pa.field("record_key", pa.int64(), nullable=False),
    ]
)
"""An event that is one part of a larger record (a blood pressure's systolic component, a
questionnaire's answer): the key of the whole record (``resource_key``, the key its own event
would carry) beside the part's. Withdrawing the record withdraws its parts, and a new version of
it hides the stored parts it no longer has."""

MERGE_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("into_subject_id", pa.int64(), nullable=False),
        pa.field("time_shift_us", pa.int64(), nullable=False),
        pa.field("source_prefix", pa.string(), nullable=False),
        pa.field("own_source", pa.string(), nullable=False),
    ]
)
"""A stored subject found to be another (a master patient index merged two records of one
patient): its events of sources under ``source_prefix`` move to ``into_subject_id``, their times
moved by ``time_shift_us`` (from the one's date shift to the other's); those of ``own_source``,
the merged record itself (its demographics), are hidden, not moved."""

HELD_SCHEMA = pa.schema(
    [pa.field("source", pa.string(), nullable=False), pa.field("record_key", pa.int64())]
)
"""A record a batch rejected that its source still holds (a row malformed today): a full
refresh keeps its stored version (see :meth:`jumeau.store.BatchWriter.add_held`)."""

#: MEDS reserved codes used for birth and death.
BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"

#: The ``text_value`` of a result given as a bound ("< 5", FHIR's ``comparator``, OMOP's
#: ``operator_concept_id``): its ``numeric_value`` is a limit, not the measured value.
BOUND_COMPARATORS = frozenset({"<", "<=", ">", ">="})

#: The code of a relative's condition recorded as the patient's family history:
#: ``FAMILY_HISTORY//<condition code>`` (never the patient's own diagnosis), described as
#: ``Family history: <the condition's description>``.
FAMILY_HISTORY_PREFIX = "FAMILY_HISTORY//"
FAMILY_HISTORY_DESCRIPTION = "Family history: "

#: How a diagnosis's ``text_value`` says it is not established (``verification=provisional``,
#: ``unconfirmed``, ``differential``: FHIR's verificationStatus).
TENTATIVE_PREFIX = "verification="


def make_code(vocabulary: str, code: str) -> str:
    """Return a canonical code string ``VOCABULARY/code`` (e.g. ``LOINC/8480-6``)."""
    return f"{vocabulary}/{code}"


def variant_code(chromosome: str, position: int, ref: str, alt: str) -> str:
    """The canonical code of a genomic variant, ``VARIANT/<chrom>-<pos>-<ref>-<alt>`` (VCF's
    1-based position), whatever the source's naming of chromosomes: ``chr7`` and ``7`` are
    ``7``, ``chrM`` and ``M`` are ``MT`` (so a VCF's call and a FHIR report's variant meet)."""
    name = re.sub(r"^chr", "", str(chromosome).strip(), flags=re.IGNORECASE).upper()
    return f"VARIANT/{'MT' if name == 'M' else name}-{int(position)}-{ref.upper()}-{alt.upper()}"


#: FHIR code-system URIs and their vocabulary prefixes.
FHIR_SYSTEMS: dict[str, str] = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/icd-9": "ICD9CM",  # the R4 examples' name of it
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "http://unitsofmeasure.org": "UCUM",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "HL7ActCode",
    "urn:oid:2.16.840.1.113883.6.238": "CDCREC",
    "http://www.whocc.no/atc": "ATC",
    "http://terminology.hl7.org/CodeSystem/data-absent-reason": "HL7DataAbsentReason",
    "http://terminology.hl7.org/CodeSystem/consentcategorycodes": "HL7ConsentCategory",
    "http://terminology.hl7.org/CodeSystem/consentscope": "HL7ConsentScope",
    "http://terminology.hl7.org/CodeSystem/media-modality": "HL7MediaModality",
    "http://terminology.hl7.org/CodeSystem/media-type": "HL7MediaType",
    "http://www.cms.gov/Medicare/Coding/ICD10": "ICD10PCS",
    "http://terminology.hl7.org/CodeSystem/icd10PCS": "ICD10PCS",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    # the same systems by their HL7 OIDs, as CDA-derived and older exports name them
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "urn:oid:2.16.840.1.113883.6.96": "SNOMED",
    "urn:oid:2.16.840.1.113883.6.88": "RxNorm",
    "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "urn:oid:2.16.840.1.113883.6.90": "ICD10CM",
    "urn:oid:2.16.840.1.113883.6.103": "ICD9CM",
    "urn:oid:2.16.840.1.113883.6.4": "ICD10PCS",
    "urn:oid:2.16.840.1.113883.6.12": "CPT4",
    "urn:oid:2.16.840.1.113883.12.292": "CVX",
    "urn:oid:2.16.840.1.113883.6.69": "NDC",
    "urn:oid:2.16.840.1.113883.6.73": "ATC",
    "urn:oid:2.16.840.1.113883.6.8": "UCUM",
}


def fhir_vocabulary(system: str | None) -> str:
    """Map a FHIR code-system URI to a short vocabulary prefix; unknown systems keep their URI."""
    if not system:
        return "UNKNOWN"
    uri = system.strip().rstrip("/")
    known = FHIR_SYSTEMS.get(uri)
    if known is None and uri.startswith("https://"):  # the same URI, written with https
        known = FHIR_SYSTEMS.get("http://" + uri[8:])
    return known or system
