"""FHIR R4 to canonical events: Bundle JSON files and Bulk Data NDJSON exports.

References (``urn:uuid:…``, ``Patient/123``, absolute URLs) resolve to the patient; the patient
id becomes a keyed pseudonym and the Patient's names, addresses, telecom and identifiers go to the
encrypted vault, never to the events. Resource types without a mapping are counted in the report.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np
import orjson
import pyarrow as pa

from jumeau.ingest.documents import READABLE_TYPES, document_text, media_type, readable
from jumeau.ingest.events import columns_table
from jumeau.ingest.fhir_genomics import (
    VARIANT_CODE,
    implication_facts,
    is_variant,
    variant_event,
)
from jumeau.ingest.fhir_sampled import SampledDataError, SampledSignal, read_sampled_data
from jumeau.ingest.redact import redact, redact_patterns
from jumeau.model import (
    BIRTH_CODE,
    CONNECTOR_SCHEMA,
    DEATH_CODE,
    FAMILY_HISTORY_DESCRIPTION,
    FAMILY_HISTORY_PREFIX,
    HELD_SCHEMA,
    MERGE_SCHEMA,
    PARTS_SCHEMA,
    REJECT_SCHEMA,
    RETRACTION_SCHEMA,
    TENTATIVE_PREFIX,
    fhir_vocabulary,
)
from jumeau.signals.store import write_record
from jumeau.store import BatchWriter, IngestReport, Progress, Store

_FLUSH_EVERY = 200_000
#: What mapping a resource of a shape the standard does not allow raises (FhirError included).
_MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError)
_US_PER_DAY = 86_400_000_000
#: Resource types read ahead of the others (see :meth:`_FhirMapper.collect_references`).
_READ_AHEAD_TYPES = (
    "Patient",
    "Medication",
    "Encounter",
    "Specimen",
    "DiagnosticReport",
    "List",
    "Composition",
    "Device",
    "Questionnaire",
    "CarePlan",
    "Binary",
)
#: What an NDJSON line read ahead names (a panel's Observation lists its members): one search
#: a line, not one a name.
_READ_AHEAD = re.compile(
    b'"(?:' + b"|".join(n.encode() for n in (*_READ_AHEAD_TYPES, "hasMember", VARIANT_CODE)) + b')"'
)
#: When an Observation was made: its effective[x].
_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")
#: Panels within panels followed up to this depth for a result's time.
_LISTING_DEPTH = 8
#: Bytes of a JSON file looked at for its resource type before it is read ahead.
_HEAD_BYTES = 65_536
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')
#: Days in an age unit (UCUM code or its usual spelling).
_AGE_UNIT_DAYS = {
    **dict.fromkeys(("a", "yr", "year", "years"), 365.25),
    **dict.fromkeys(("mo", "month", "months"), 30.4375),
    **dict.fromkeys(("wk", "week", "weeks"), 7.0),
    **dict.fromkeys(("d", "day", "days"), 1.0),
}
_EPOCH = datetime(1970, 1, 1)
#: Vocabularies preferred for a drug's code, in this order.
_DRUG_VOCABULARIES = ("RxNorm", "ATC", "NDC")


class FhirError(ValueError):
    """A FHIR record cannot be mapped; the message says why."""


def parse_fhir_time(value: str | None) -> int | None:
    """A FHIR date, dateTime or instant as UTC microseconds since the epoch.

    Partial dates (``2019``, ``2019-03``) take the first instant they denote; times with an
    offset are converted to UTC; times without one are taken as given.
    """
    if not value:
        return None
    if not isinstance(value, str):
        raise FhirError(f"{value!r} is not a FHIR date/dateTime (not a string)")
    text = value.strip()
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FhirError(f"{value!r} is not a FHIR date/dateTime") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _codings(concept: dict | None) -> list[dict]:
    return (concept or {}).get("coding") or []


def _first_code(concept: dict | None) -> str | None:
    """The bare code of a CodeableConcept's first coding (a status, a severity)."""
    return next(iter(_codings(concept)), {}).get("code")


def concept_code(
    concept: dict | None, prefer: tuple[str, ...] = (), displays: dict[str, str] | None = None
) -> str | None:
    """The canonical code of a CodeableConcept: a preferred vocabulary's coding, else the first.

    ``displays`` collects the first display text seen for each code (the codes' descriptions).
    """
    codings = [c for c in _codings(concept) if c.get("code")]
    if not codings:
        return None
    chosen = codings[0]
    for vocab in prefer:
        match = next((c for c in codings if fhir_vocabulary(c.get("system")) == vocab), None)
        if match:
            chosen = match
            break
    code = f"{fhir_vocabulary(chosen.get('system'))}/{chosen['code']}"
    if displays is not None and chosen.get("display") and code not in displays:
        displays[code] = chosen["display"]
    return code


#: Longest text kept as a text-only concept's code.
_TEXT_CODE_LENGTH = 200


def text_code(concept: dict | None, displays: dict[str, str] | None = None) -> str | None:
    """``TEXT/<text>`` for a CodeableConcept with no coding, only its text (a problem or a drug
    typed in free text, as many EHR exports hold): kept as a local code rather than lost. The
    text is scrubbed of identifier patterns (a code is shared by every patient) and its spaces
    collapsed."""
    text = (concept or {}).get("text") if isinstance(concept, dict) else None
    if not isinstance(text, str):
        return None
    text = " ".join(redact_patterns(text).split())[:_TEXT_CODE_LENGTH]
    if not text:
        return None
    code = f"TEXT/{text}"
    if displays is not None:
        displays.setdefault(code, text)
    return code


class _Events:
    """Column buffers of canonical events."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {n: [] for n in CONNECTOR_SCHEMA.names}
        #: per event, the key of the resource it is a part of (None: the resource's own event)
        self.resource_keys: list[int | None] = []

    def __len__(self) -> int:
        return len(self.cols["code"])

    def __delitem__(self, rows: slice) -> None:
        """Drop rows (the events of a record that is then rejected)."""
        for column in self.cols.values():
            del column[rows]
        del self.resource_keys[rows]

    def add(self, resource_key: int | None = None, **values: Any) -> None:
        for name, column in self.cols.items():
            column.append(values.get(name))
        self.resource_keys.append(resource_key)

    def table(self) -> pa.Table:
        return columns_table(self.cols)

    def parts(self) -> pa.Table:
        """The events that are parts of a resource (``PARTS_SCHEMA``)."""
        rows = [i for i, key in enumerate(self.resource_keys) if key is not None]
        columns = {
            name: [self.cols[name][i] for i in rows]
            for name in PARTS_SCHEMA.names
            if name != "resource_key"
        }
        return (
            pa.table({**columns, "resource_key": [self.resource_keys[i] for i in rows]})
            .select(PARTS_SCHEMA.names)
            .cast(PARTS_SCHEMA)
        )


def iter_files(source: Path) -> list[Path]:
    """FHIR files under ``source``: ``*.json[.gz]`` bundles and ``*.ndjson[.gz]`` (or
    ``*.jsonl[.gz]``) exports; a folder without any is an error, not an empty batch."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such FHIR file or folder")
    patterns = ("*.json", "*.json.gz", "*.ndjson", "*.ndjson.gz", "*.jsonl", "*.jsonl.gz")
    found = sorted({p for pattern in patterns for p in source.rglob(pattern)})
    if not found:
        raise FhirError(
            f"{source}: no FHIR files (.json Bundles, .ndjson or .jsonl exports, gzipped or not)"
        )
    return found


def is_ndjson(path: Path) -> bool:
    """Whether ``path`` is a file of one resource a line (``.ndjson``, ``.jsonl``, gzipped)."""
    return ".ndjson" in path.name or ".jsonl" in path.name


def _ndjson_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """An NDJSON file's non-blank lines with their numbers, read as a stream (an export's files
    run to gigabytes), gzip-compressed or not; a byte-order mark is dropped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as lines:
        for line_no, line in enumerate(lines, start=1):
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.strip():
                yield line_no, line


def _read_text(path: Path) -> bytes:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FhirError(
            f"not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 1]!r}); FHIR JSON must be UTF-8"
        ) from exc
    return data


def ingest_fhir(
    store: Store,
    source: str | Path,
    *,
    source_name: str = "fhir",
    full_refresh: bool = False,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest FHIR R4 Bundles and/or Bulk Data NDJSON files into ``store`` as one atomic batch.

    Parameters
    ----------
    store:
        The target store (its key must be available).
    source:
        A ``.json`` Bundle, an ``.ndjson`` file, or a folder holding any number of them.
    source_name:
        The namespace of the server's patient and resource ids (``fhir`` by default). Each
        server numbers its own: give each a name (``chu-lille``) and they stay apart; the same
        name again recognises what is already stored.
    full_refresh:
        The source is the server's whole current content for the resource types it holds (a
        complete Bulk Data export): the resources of those types that earlier ingests of
        ``source_name`` stored and that it no longer holds were deleted and are withdrawn.
    progress:
        Called with each file name as it is read.

    Returns
    -------
    IngestReport
        Per resource type: resources read, accepted, rejected and events written; resource types
        without a mapping under ``unhandled``.
    """
    source = Path(source)
    files = iter_files(source)
    with BatchWriter(store, "fhir", str(source.resolve()), namespace=source_name) as writer:
        mapper = _FhirMapper(store, writer, source_name)
        mapper.hold_rejected = full_refresh
        for path in files:  # Medications and Patients first: other resources refer to them
            mapper.collect_references(path)  # (a Bundle's entries are read ahead as it is read)
        for path in files:
            if progress:
                progress(path.name)
            mapper.read_file(path)
        mapper.flush()
        writer.add_merges(mapper.merges())
        mapper.check_manifests()
        writer.add_codes(
            pa.table({"code": list(mapper.displays), "description": list(mapper.displays.values())})
        )
        if full_refresh:
            writer.refresh()
        return writer.commit()


class _FhirMapper:
    def __init__(self, store: Store, writer: BatchWriter, source_name: str = "fhir") -> None:
        #: The namespace of the server's resource ids (each server numbers its own).
        self.ns = source_name
        self.p = store.pseudonymiser
        #: patients earlier batches merged into others: pseudonym -> (survivor's, shift step)
        self.merged_before = store.merges()
        self.writer = writer
        self.report = writer.report
        self.events = _Events()
        self.rejects: dict[str, list] = {n: [] for n in REJECT_SCHEMA.names}
        self.identities: dict[str, list] = {
            "subject_id": [],
            "source": [],
            "source_id": [],
            "identifiers": [],
        }
        self.seen: set[str] = set()
        #: Resources (``Type/id``) a DELETE entry of the batch names: not stored, any stored
        #: version withdrawn.
        self.deleted: set[str] = set()
        #: (subject pseudonym or None, source, record key) of stored records the source withdrew.
        self.withdrawn: dict[str, list] = {n: [] for n in RETRACTION_SCHEMA.names}
        #: (source, record key) of the resources rejected here, which the server still holds:
        #: kept for a full refresh, which must not withdraw them (``hold_rejected``).
        self.held: dict[str, list] = {n: [] for n in HELD_SCHEMA.names}
        self.hold_rejected = False
        #: Bulk Data export manifests (the status response listing the export's files) read,
        #: and the resource lines read from each NDJSON file, by file name: a file the
        #: manifest lists and the source lacks, or holds cut short, is said.
        self.bulk_manifests: list[tuple[Path, dict]] = []
        self.lines_read: dict[str, int] = {}
        #: Display texts of the codes seen, kept as their descriptions.
        self.displays: dict[str, str] = {}
        #: Medication codes by reference (``Medication/id``, bare id, bundle fullUrl).
        self.medications: dict[str, tuple[str, ...]] = {}
        self._last_resource: tuple[str | None, int] = (None, 0)
        #: (content type, base64 data) of the readable Binary resources (a note's content)
        self.binaries: dict[str, tuple[str | None, str]] = {}
        #: Device type codes by reference (``Device/id``, bundle fullUrl): a device use
        #: statement names its device by reference.
        self.devices: dict[str, str] = {}
        #: Genomic variants by reference (``Observation/id``, bundle fullUrl): their code and
        #: gene, for the clinical significance an implication derived from one states.
        self.variants: dict[str, tuple[str, str | None]] = {}
        #: Birth times (µs, unshifted) by patient id: an onset given as an age needs them.
        self.births: dict[str, int] = {}
        #: ids of the Patients read so far (an NDJSON file's are read ahead of its other lines)
        self.patients: set[str] = set()
        #: The Patient each merged Patient record was replaced by (``link`` ``replaced-by``).
        self.replaced_by: dict[str, str] = {}
        #: Patient ids by identifier (``system|value`` and the bare value): what a conditional
        #: reference (``Patient?identifier=system|value``) names
        self.patients_by_identifier: dict[str, str] = {}
        #: Encounter periods (µs, unshifted) by reference (``Encounter/id``, bundle fullUrl):
        #: a record with no time of its own (MIMIC-IV's diagnoses) is dated by its encounter.
        self.encounters: dict[str, tuple[int | None, int | None]] = {}
        #: Each Questionnaire's items (linkId -> the item's code and its answers' weights), by
        #: reference and by canonical URL: a response names its questions only by linkId.
        self.questionnaires: dict[str, dict[str, tuple[str | None, dict[str, float]]]] = {}
        #: When the care plans listing each goal ended (µs, unshifted; None while one is
        #: open), by ``Type/id`` or uuid.
        self.plan_ends: dict[str, int | None] = {}
        #: When each Specimen was collected (µs, unshifted), by reference.
        self.specimens: dict[str, int] = {}
        #: The report or panel (``DiagnosticReport/id``, ``Observation/id``) listing each
        #: Observation among its results or members, and the lister's own time (µs,
        #: unshifted; None if it has none): a laboratory's results often carry no time of
        #: their own, their report or panel does.
        self.listed_by: dict[str, str] = {}
        self.listed_times: dict[str, int | None] = {}
        #: The earliest date of a List or patient-summary Composition naming each record (µs,
        #: unshifted), by ``Type/id`` or, for a ``urn:uuid:`` reference, the uuid: a medication
        #: list's statements, a summary's allergies were known by then.
        self.listed_on: dict[str, int] = {}
        #: Contained Patients (by the id their identifier gives them) mapped, and those named
        #: by the record being mapped (mapped once it is accepted).
        self.contained_mapped: set[str] = set()
        self.contained_pending: dict[str, dict] = {}
        #: Names and identifier values by subject pseudonym, scrubbed from the subject's texts.
        self.private: dict[int, tuple[set[str], set[str]]] = {}
        self.handlers: dict[str, Callable[[dict, str, int], None]] = {
            "Patient": self._patient,
            "Encounter": self._encounter,
            "Condition": self._condition,
            "Observation": self._observation,
            "MedicationRequest": self._medication,
            "MedicationStatement": self._medication,
            "MedicationAdministration": self._medication,
            "MedicationDispense": self._medication,
            "Procedure": self._procedure,
            "Immunization": self._immunization,
            "AllergyIntolerance": self._allergy,
            "DiagnosticReport": self._report,
            "Device": self._device,
            "CarePlan": self._care_plan,
            "Claim": self._claim,
            "ExplanationOfBenefit": self._claim,
            "ImagingStudy": self._imaging_study,
            "DocumentReference": self._document,
            "FamilyMemberHistory": self._family_history,
            "DeviceUseStatement": self._device_use,
            "Coverage": self._coverage,
            "QuestionnaireResponse": self._questionnaire_response,
            "Specimen": self._specimen,
            "AdverseEvent": self._adverse_event,
            "RiskAssessment": self._risk_assessment,
            "Goal": self._goal,
            "ServiceRequest": self._service_request,
            "SupplyDelivery": self._supply,
            "DeviceRequest": self._device_request,
            "NutritionOrder": self._nutrition_order,
            "Flag": self._flag,
            "Consent": self._consent,
            "ClinicalImpression": self._clinical_impression,
            "Media": self._media,
            "EpisodeOfCare": self._episode,
        }

    # -- files -----------------------------------------------------------------------------

    def read_file(self, path: Path) -> None:
        if is_ndjson(path):
            self._read_ndjson(path)
            return
        try:
            data = _read_text(path)
        except (FhirError, OSError, EOFError) as exc:
            self._reject("fhir/file", path, "whole file", str(exc))
            return
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._reject(
                "fhir/file", path, "whole file", f"invalid JSON (truncated or malformed): {exc}"
            )
            return
        if _is_bulk_manifest(doc):  # the export's own list of its files, checked at the end
            self.bulk_manifests.append((path, doc))
            return
        if not isinstance(doc, dict) or "resourceType" not in doc:
            self._reject("fhir/file", path, "whole file", "not a FHIR resource (no resourceType)")
            return
        if doc["resourceType"] == "Bundle":
            self._bundle(doc, path)
        else:
            self._resource(doc, path, "resource", {})

    def _bundle(
        self, bundle: dict, path: Path, where: str = "", inherited: dict[str, str] | None = None
    ) -> None:
        """Map a Bundle's entries, its Patients, Medications and Encounters read first (they are
        referred to by the others). A Bundle in an entry (a batch-response holds each search's
        results so) or on an NDJSON line is read the same way; ``where`` names its place."""
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            entries = []
        fullurls: dict[str, str] = dict(inherited or {})
        history = bundle.get("type") == "history"
        resources = []
        for i, entry in enumerate(entries):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                request = entry.get("request") if isinstance(entry, dict) else None
                if isinstance(request, dict) and request.get("method") == "DELETE":
                    self._delete(request.get("url"), path, f"{where}entry {i}")
                resources.append(None)
                continue
            full_url = entry.get("fullUrl")
            if not isinstance(full_url, str):
                full_url = None
            if not res.get("id") and full_url:  # transaction bundles: the server assigns ids
                res = {
                    **res,
                    "id": full_url.rstrip("/").rsplit("/", 1)[-1].removeprefix("urn:uuid:"),
                }
            if self._remember(res, full_url) and full_url:
                fullurls[full_url] = res["id"]
            resources.append(res)
        for i, res in enumerate(resources):
            if res is None:
                continue
            if res.get("resourceType") == "Bundle":
                self._bundle(res, path, f"{where}entry {i} / ", fullurls)
            else:
                self._resource(res, path, f"{where}entry {i}", fullurls, history=history)

    def check_manifests(self) -> None:
        """Warn of every file a Bulk Data manifest lists that the source lacks or holds with
        fewer (or more) resources than listed: an export downloaded in part."""
        for path, manifest in self.bulk_manifests:
            for entry in _objects(manifest.get("output")):
                name = PurePosixPath(urlparse(str(entry.get("url", ""))).path).name
                kind, count = entry.get("type", "resources"), entry.get("count")
                if name not in self.lines_read:
                    self.report.warnings.append(
                        f"{path.name}: the export lists {name} ({kind}"
                        + (f", {count:,} resources" if isinstance(count, int) else "")
                        + "), which this source lacks: the export is incomplete"
                    )
                elif isinstance(count, int) and count != self.lines_read[name]:
                    self.report.warnings.append(
                        f"{name}: {self.lines_read[name]:,} lines read where the export's "
                        f"manifest ({path.name}) lists {count:,} {kind} resources"
                    )
            errors = [e for e in _objects(manifest.get("error")) if e.get("url")]
            if errors:
                self.report.warnings.append(
                    f"{path.name}: the export reports {len(errors)} error file(s) "
                    "(OperationOutcome): some resources may not have been exported"
                )

    def _delete(self, url: object, path: Path, where: str) -> None:
        """A DELETE entry (a transaction's, a history's): the resource it names is not stored
        from this batch on, and any version stored earlier is withdrawn. A conditional delete
        names no resource and a Patient's deletion is an erasure: both are rejected."""
        text = url if isinstance(url, str) else ""
        found = _DELETED_URL.search(text) if "?" not in text else None
        if found is None:  # a conditional delete (Observation?code=...) or no URL at all
            named = re.match(r"(?:[^?]*/)?([A-Z][A-Za-z]+)\?", text)
            self._reject(
                f"fhir/{named.group(1) if named else 'unknown'}",
                path,
                where,
                f"DELETE {url!r} names no resource: not applied",
            )
            return
        rtype = found.group(1)
        if rtype == "Patient":
            self._reject(
                "fhir/Patient",
                path,
                where,
                "DELETE of a Patient is not applied by an ingest: erase the subject with "
                "`jumeau forget` if that is meant",
            )
            return
        identity = f"{rtype}/{found.group(2)}"
        self.deleted.add(identity)
        # the resource's own record: the store withdraws its parts with it
        self.withdrawn["subject_id"].append(None)
        self.withdrawn["source"].append(f"fhir/{rtype}")
        self.withdrawn["record_key"].append(self._record_key(rtype, identity))

    def _resource_key(self, rtype: str, identity: str) -> int:
        """The key of the resource whose parts are being emitted (computed once for all)."""
        if self._last_resource[0] != identity:
            self._last_resource = (identity, self._record_key(rtype, identity))
        return self._last_resource[1]

    def _record_key(self, rtype: str, record: str) -> int:
        """The keyed hash a record's event is stored under (``Observation/1#component[0]``)."""
        return self.p.record_key(f"{self.ns}/{rtype}", record)

    def _withdraw(self, res: dict, handler: Callable, where: str, fullurls: dict[str, str]) -> None:
        """Withdraw the stored versions of a resource the source now voids (a result entered
        in error, an order cancelled): its events, mapped as if it stood, name their records."""
        before = len(self.events)
        with contextlib.suppress(*_MALFORMED):  # what can be mapped of it is withdrawn
            handler(res, where, 1, fullurls=fullurls)
        self.contained_pending.clear()
        rtype = res["resourceType"]
        for name in RETRACTION_SCHEMA.names:
            self.withdrawn[name].extend(self.events.cols[name][before:])
        del self.events[before:]
        self.withdrawn["subject_id"].append(None)  # its own record, however it was mapped
        self.withdrawn["source"].append(f"fhir/{rtype}")
        self.withdrawn["record_key"].append(self._record_key(rtype, f"{rtype}/{res.get('id', '')}"))

    def _code(self, concept: dict | None, prefer: tuple[str, ...] = ()) -> str | None:
        """A concept's code (see :func:`concept_code`), else its text as a local code."""
        return concept_code(concept, prefer, self.displays) or text_code(concept, self.displays)

    def _remember(self, res: dict, full_url: str | None = None) -> bool:
        """Read ahead what other resources refer to (a Patient, a Medication, an Encounter);
        True for a Patient (whose ``full_url`` then stands for it)."""
        rtype = res.get("resourceType")
        if rtype == "Patient" and res.get("id"):
            self._remember_patient(res, strict=False)
            return True
        if rtype == "Medication":
            self._remember_medication(res, full_url)
        elif rtype == "Binary":
            if readable(res.get("contentType")) and isinstance(res.get("data"), str):
                _keep(self.binaries, res, full_url, (res.get("contentType"), res["data"]))
        elif rtype == "Encounter":
            self._remember_encounter(res, full_url)
        elif rtype == "Specimen":
            self._remember_specimen(res, full_url)
        elif rtype == "DiagnosticReport":
            self._remember_listed(res, "result")
        elif rtype == "Observation":
            if res.get("hasMember"):
                self._remember_listed(res, "hasMember")
            self._remember_variant(res, full_url)
        elif rtype in ("List", "Composition", "CarePlan"):
            self._remember_list(res)
        elif rtype == "Device":
            code = self._code(res.get("type"), ("SNOMED",))
            if code:
                _keep(self.devices, res, full_url, code)
        elif rtype == "Questionnaire":
            self._remember_questionnaire(res, full_url)
        return False

    def _remember_variant(self, res: dict, full_url: str | None = None) -> None:
        """A genomic variant's code and gene, kept for the implications derived from it."""
        if not is_variant(res.get("code")):
            return
        with contextlib.suppress(*_MALFORMED):  # the variant is rejected when it is mapped
            found = variant_event(_objects(res.get("component")))
            if found is not None:
                _keep(self.variants, res, full_url, (found.code, found.gene))

    def _remember_questionnaire(self, res: dict, full_url: str | None = None) -> None:
        """A Questionnaire's item codes and answer weights by linkId, kept under its reference
        and its canonical URL (with and without its version)."""
        items: dict[str, tuple[str | None, dict[str, float]]] = {}
        pending = list(_objects(res.get("item")))
        while pending:
            item = pending.pop()
            pending += _objects(item.get("item"))
            link = item.get("linkId")
            if not isinstance(link, str):
                continue
            code = self._code({"coding": _objects(item.get("code"))}, ("LOINC", "SNOMED"))
            if code and isinstance(item.get("text"), str):
                self.displays.setdefault(code, item["text"])
            weights = {}
            for option in _objects(item.get("answerOption")):
                coding = option.get("valueCoding")
                weight = _answer_weight(option)
                if weight is None:  # a score of 0 ("not at all") is a score
                    weight = _answer_weight(coding)
                answer = concept_code({"coding": [coding]}) if isinstance(coding, dict) else None
                if answer and weight is not None:
                    weights[answer] = weight
            items[link] = (code, weights)
        _keep(self.questionnaires, res, full_url, items)
        url = res.get("url")
        if isinstance(url, str):
            self.questionnaires[url] = items
            if isinstance(res.get("version"), str):
                self.questionnaires[f"{url}|{res['version']}"] = items

    def _remember_list(self, res: dict) -> None:
        """A List's items (a medication list, a problem list), a Composition's section
        entries (a patient summary) or a CarePlan's goals, known by the list's date (the plan's
        start)."""
        plan = res["resourceType"] == "CarePlan"
        try:
            listed, _ = self._period(res, *(("period", "created") if plan else ("date",)))
        except FhirError:
            return
        if listed is None:
            return
        if plan:
            references = [g.get("reference") for g in _objects(res.get("goal"))]
            self._remember_plan_end(res, references)
        elif res["resourceType"] == "List":
            references = [
                (e.get("item") or {}).get("reference") for e in _objects(res.get("entry"))
            ]
        else:
            references, sections = [], list(_objects(res.get("section")))
            while sections:  # sections within sections
                section = sections.pop()
                references += [e.get("reference") for e in _objects(section.get("entry"))]
                sections += _objects(section.get("section"))
        for reference in references:
            if isinstance(reference, str) and reference:
                key = _listed_key(reference)
                self.listed_on[key] = min(listed, self.listed_on.get(key, listed))

    def _still_taken(self, res: dict, start: int | None) -> int | None:
        """Until when an active MedicationStatement with no end is known to be taken: the
        latest of the dates it was asserted on (``dateAsserted``, a List or summary naming it,
        its record's last update), if after its start; None if none is."""
        asserted = [
            parse_fhir_time(res.get("dateAsserted")),
            self._listed_date(res),
            parse_fhir_time((res.get("meta") or {}).get("lastUpdated")),
        ]
        latest = max((t for t in asserted if t is not None), default=None)
        return latest if latest is not None and (start is None or latest > start) else None

    def _remember_plan_end(self, plan: dict, goals: list) -> None:
        """When each goal's care plans are over: the latest end of the plans listing it, or
        None while one of them is open (not ended, or active)."""
        try:
            _, end = self._period(plan, "period")
        except FhirError:
            end = None
        if plan.get("status") in ("active", "on-hold", "draft"):
            end = None
        for reference in goals:
            if isinstance(reference, str) and reference:
                key = _listed_key(reference)
                known = self.plan_ends.get(key, end)
                self.plan_ends[key] = None if known is None or end is None else max(known, end)

    def _plan_end(self, res: dict) -> int | None:
        """The end of the care plans listing ``res`` (see :meth:`_remember_plan_end`)."""
        rid = res.get("id")
        for key in (f"{res['resourceType']}/{rid}", rid) if rid else ():
            if key in self.plan_ends:
                return self.plan_ends[key]
        return None

    def _listed_date(self, res: dict) -> int | None:
        """The earliest date of a List or Composition naming ``res``, if any."""
        rid = res.get("id")
        if not rid or not self.listed_on:
            return None
        dates = [self.listed_on.get(f"{res['resourceType']}/{rid}"), self.listed_on.get(rid)]
        return min((d for d in dates if d is not None), default=None)

    def _remember_specimen(self, res: dict, full_url: str | None = None) -> None:
        collection = res.get("collection")
        try:
            start, _ = self._period(
                collection if isinstance(collection, dict) else {},
                "collectedDateTime",
                "collectedPeriod",
            )
        except FhirError:
            return
        if start is not None:
            _keep(self.specimens, res, full_url, start)

    def _remember_listed(self, res: dict, field: str) -> None:
        """A report's results (``field`` ``result``) or a panel's members (``hasMember``)."""
        if not res.get("id"):
            return
        try:
            start, _ = self._period(res, *_EFFECTIVE, "issued")
        except FhirError:
            start = None  # the lister itself is rejected, with the reason, when it is mapped
        lister = f"{res['resourceType']}/{res['id']}"
        self.listed_times[lister] = start
        for listed in _objects(res.get(field)):
            reference = listed.get("reference")
            if isinstance(reference, str) and reference:
                self.listed_by.setdefault(_observation_key(reference), lister)

    def _remember_medication(self, res: dict, full_url: str | None = None) -> None:
        codes = self._medication_codes(res)
        if not codes:
            return
        _keep(self.medications, res, full_url, codes)
        if res.get("id"):
            self.medications[res["id"]] = codes  # a request may name it by its bare id

    def _medication_codes(self, medication: dict) -> tuple[str, ...]:
        """A Medication's code; without one (a compounded infusion), its ingredients' codes."""
        code = self._code(medication.get("code"), _DRUG_VOCABULARIES)
        if code:
            return (code,)
        codes = []
        for ingredient in _objects(medication.get("ingredient")):
            item = ingredient.get("itemCodeableConcept") or (ingredient.get("item") or {}).get(
                "concept"  # R5: a CodeableReference
            )
            code = self._code(item, _DRUG_VOCABULARIES)
            if code:
                codes.append(code)
        return tuple(codes)

    def _remember_encounter(self, res: dict, full_url: str | None = None) -> None:
        try:
            period = self._period(res, "period", "actualPeriod")
        except FhirError:
            return  # the Encounter itself is rejected, with the reason, when it is mapped
        _keep(self.encounters, res, full_url, period)

    def _remember_patient(self, res: dict, *, strict: bool = True) -> int:
        """Keep a Patient's birth date (for onsets given as ages) and its names and identifier
        values (to scrub from free text, see :mod:`jumeau.ingest.redact`); return its
        pseudonym. Read ahead (not ``strict``), a bad birth date is left for the Patient's own
        mapping to reject."""
        try:
            birth = parse_fhir_time(res.get("birthDate"))
        except FhirError:
            if strict:
                raise
            birth = None
        if birth is not None:
            self.births[res["id"]] = birth
        names = set()
        for name in _objects(res.get("name")):
            for part in [name.get("family"), *_strings(name.get("given"))]:
                if isinstance(part, str):
                    names.update(part.split())
        numbers = set()
        for identifier in _objects(res.get("identifier")):
            key = _identifier_key(identifier)
            if key is None:
                continue
            numbers.add(identifier["value"])  # a reference may name the value alone
            self.patients_by_identifier.setdefault(identifier["value"], res["id"])
            self.patients_by_identifier.setdefault(key, res["id"])
        numbers.add(res["id"])
        scrubbed = self.p.subject_id(self.ns, res["id"])
        for link in _objects(res.get("link")):
            other = (link.get("other") or {}).get("reference")
            path = _reference_path(other) if isinstance(other, str) else []
            if link.get("type") == "replaced-by" and path[-2:-1] == ["Patient"]:
                self.replaced_by[res["id"]] = path[-1]
                # a merged record's names and numbers are scrubbed from the survivor's texts
                scrubbed = self.p.subject_id(self.ns, self._surviving(res["id"]))
        scrubbed = self.merged_before.get(scrubbed, (scrubbed, 0))[0]
        known_names, known_numbers = self.private.setdefault(scrubbed, (set(), set()))
        known_names.update(names)
        known_numbers.update(numbers)
        self.patients.add(res["id"])
        return self.p.subject_id(self.ns, res["id"])

    def collect_references(self, path: Path) -> None:
        """Read the Medication, Patient, Encounter, Specimen and DiagnosticReport resources of
        an NDJSON file ahead of the rest: requests point to medications by reference, an onset
        given as an age needs the patient's birth date, a note written before its Patient line
        must still be scrubbed of the patient's names, a diagnosis without a date is dated by
        its encounter and a result without one by its specimen or its report. Only lines naming
        those types are parsed. A file of one such resource (a folder of single resources,
        as some servers export) is read ahead whole; a Bundle file is left to its reading."""
        if not is_ndjson(path):
            self._collect_resource(path)
            return
        try:
            for _, line in _ndjson_lines(path):
                if _READ_AHEAD.search(line) is None:
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(resource, dict):
                    self._remember(resource)
        except (OSError, EOFError):
            return  # the file is read again, and its errors reported, in the main pass

    def _collect_resource(self, path: Path) -> None:
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as stream:
                head = stream.read(_HEAD_BYTES)
        except (OSError, EOFError):
            return  # reported when the file is read
        first = _RESOURCE_TYPE.search(head)  # a resource's own type comes before its parts'
        if first is None:
            return
        rtype = first.group(1).decode()
        if rtype not in _READ_AHEAD_TYPES and not (
            rtype == "Observation" and (b"hasMember" in head or VARIANT_CODE.encode() in head)
        ):
            return
        try:
            doc = orjson.loads(_read_text(path))
        except (FhirError, OSError, EOFError, orjson.JSONDecodeError):
            return
        if isinstance(doc, dict) and doc.get("resourceType") != "Bundle":
            self._remember(doc)

    def _read_ndjson(self, path: Path) -> None:
        """Map an NDJSON file line by line: a bad line is rejected with its number, a file cut
        short keeps the lines read before the cut."""
        line_no = lines = 0
        try:
            for line_no, line in _ndjson_lines(path):
                lines += 1
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    self._reject("fhir/unknown", path, f"line {line_no}", f"invalid JSON: {exc}")
                    continue
                if not isinstance(resource, dict):
                    self._reject(
                        "fhir/unknown",
                        path,
                        f"line {line_no}",
                        "not a FHIR resource (a JSON object)",
                    )
                    continue
                if resource.get("resourceType") == "Bundle":
                    self._bundle(resource, path, f"line {line_no} / ")
                else:
                    self._resource(resource, path, f"line {line_no}", {})
        except (OSError, EOFError) as exc:
            where = f"after line {line_no}" if line_no else "whole file"
            self._reject("fhir/file", path, where, f"cannot be read further: {exc}")
        finally:  # the lines of a file cut short are the lines before the cut
            self.lines_read[path.name] = self.lines_read.get(path.name, 0) + lines

    def _resource(
        self,
        res: dict,
        path: Path,
        where: str,
        fullurls: dict[str, str],
        *,
        history: bool = False,
    ) -> None:
        """Map one resource (``history``: read from a history bundle, which lists a resource's
        versions newest first)."""
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            self._reject("fhir/unknown", path, where, "resource has no resourceType")
            return
        handler = self.handlers.get(rtype)
        if rtype in _NOT_OF_A_PATIENT and not res.get("patient"):
            rtype, handler = f"{rtype} of no patient ({_NOT_OF_A_PATIENT[rtype]})", None
        elif rtype == "Binary":  # its text is stored with the document naming it
            rtype = "Binary (a document's content)"
        if handler is None:
            self.report.unhandled[rtype] = self.report.unhandled.get(rtype, 0) + 1
            return
        counts = self.report.table(f"fhir/{rtype}")
        counts.read += 1
        identity = f"{rtype}/{res.get('id')}" if res.get("id") else None
        if identity and (identity in self.seen or identity in self.deleted):
            counts.rejected += 1
            if identity in self.deleted:
                reason = "deleted at the source (a DELETE entry of this batch names it)"
            elif history:
                reason = (
                    "an older version of a resource read earlier (a history lists the newest first)"
                )
            else:
                reason = "duplicate of a resource read earlier in this batch"
            self._reject(f"fhir/{rtype}", path, f"{where} ({rtype})", reason)
            return
        void = _void_reason(res)
        if void:
            counts.rejected += 1
            self._reject(f"fhir/{rtype}", path, f"{where} ({rtype})", void)
            self._withdraw(res, handler, where, fullurls)
            if identity:  # its older versions (further down a history) are not the record
                self.seen.add(identity)
            return
        before = len(self.events)
        try:
            handler(res, where, 0 if rtype == "Patient" else 1, fullurls=fullurls)  # type: ignore[call-arg]
        except _MALFORMED as exc:
            # a shape the standard does not allow (a string where an object belongs, text where
            # a number does) rejects the resource, never the file
            del self.events[before:]
            self.contained_pending.clear()
            counts.rejected += 1
            if identity and self.hold_rejected:  # still the server's: kept by a full refresh
                self.held["source"].append(f"fhir/{rtype}")  # with its parts
                self.held["record_key"].append(self._record_key(rtype, identity))
            reason = (
                str(exc)
                if isinstance(exc, FhirError)
                else f"malformed resource ({type(exc).__name__}: {exc})"
            )
            self._reject(f"fhir/{rtype}", path, f"{where} ({rtype})", reason)
            return
        if identity:
            self.seen.add(identity)
        counts.accepted += 1
        counts.events += len(self.events) - before
        if self.contained_pending:
            self._map_contained_patients(path, where)
        if len(self.events) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if len(self.events):
            self.writer.add_events(self.events.table())
            self.writer.add_parts(self.events.parts())
            self.events = _Events()
        if self.rejects["source"]:
            self.writer.add_rejects(pa.table(self.rejects, schema=REJECT_SCHEMA))
            self.rejects = {n: [] for n in REJECT_SCHEMA.names}
        if self.identities["subject_id"]:
            self.writer.add_identities(pa.table(self.identities))
            self.identities = {k: [] for k in self.identities}
        if self.withdrawn["source"]:
            self.writer.add_retractions(pa.table(self.withdrawn, schema=RETRACTION_SCHEMA))
            self.withdrawn = {n: [] for n in RETRACTION_SCHEMA.names}
        if self.held["source"]:
            self.writer.add_held(pa.table(self.held, schema=HELD_SCHEMA))
            self.held = {n: [] for n in HELD_SCHEMA.names}

    def _reject(self, source: str, path: Path, record: str, reason: str) -> None:
        for name, value in (
            ("source", source),
            ("file", str(path)),
            ("record", record),
            ("reason", reason),
            ("record_key", None),
        ):
            self.rejects[name].append(value)

    # -- helpers ---------------------------------------------------------------------------

    def _subject(self, res: dict, fullurls: dict[str, str]) -> tuple[int, int]:
        patient_id = self._surviving(self._patient_id(res, fullurls))
        subject, shift = (
            self.p.subject_id(self.ns, patient_id),
            self.p.shift_us(self.ns, patient_id),
        )
        if subject in self.merged_before:  # a source still naming a patient merged earlier
            survivor, step = self.merged_before[subject]
            return survivor, shift + step
        return subject, shift

    def merges(self) -> pa.Table:
        """The Patients merged into others (``link`` replaced-by), as the store must merge what
        it holds of them from earlier batches: their events move to the survivor, from the one's
        date shift to the other's."""
        rows: dict[str, list] = {name: [] for name in MERGE_SCHEMA.names}
        for merged in self.replaced_by:
            survivor = self._surviving(merged)
            if survivor == merged:
                continue  # a cycle of links names no survivor
            into = self.p.subject_id(self.ns, survivor)
            shift = self.p.shift_us(self.ns, survivor) - self.p.shift_us(self.ns, merged)
            if into in self.merged_before:  # the survivor was itself merged by an earlier batch
                into, step = self.merged_before[into]
                shift += step
            rows["subject_id"].append(self.p.subject_id(self.ns, merged))
            rows["into_subject_id"].append(into)
            rows["time_shift_us"].append(shift)
            rows["source_prefix"].append("fhir/")
            rows["own_source"].append("fhir/Patient")
        return pa.table(rows, schema=MERGE_SCHEMA)

    def _surviving(self, patient_id: str) -> str:
        """The Patient a merged record was replaced by (``link`` of type ``replaced-by``, as a
        master patient index merges duplicates), followed to the end; else ``patient_id``."""
        seen = {patient_id}
        while patient_id in self.replaced_by and self.replaced_by[patient_id] not in seen:
            patient_id = self.replaced_by[patient_id]
            seen.add(patient_id)
        return patient_id

    def _patient_id(self, res: dict, fullurls: dict[str, str]) -> str:
        target = res.get("subject") or res.get("patient") or res.get("beneficiary") or {}
        if not isinstance(target, dict):
            raise FhirError("subject/patient is not a Reference (an object with a reference)")
        ref = target.get("reference")
        if (not isinstance(ref, str) or not ref) and isinstance(target.get("identifier"), dict):
            return self._identified_patient(target["identifier"])  # a logical reference
        if not isinstance(ref, str) or not ref:
            raise FhirError("no subject/patient reference")
        if "?" in ref:  # a conditional reference: the Patient with that identifier
            return self._conditional_patient(ref)
        if ref.startswith("#"):
            return self._contained_patient(res, ref[1:])
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            patient_id = fullurls.get(ref)
            if patient_id is None and ref[9:] in self.patients:
                # NDJSON exports (Synthea's among them) keep bundle-style references to the
                # uuid that is the Patient's id
                patient_id = ref[9:]
            if patient_id is None:
                raise FhirError(
                    "subject reference does not resolve to a Patient in this bundle or export"
                )
        else:
            parts = _reference_path(ref)
            if len(parts) < 2 or parts[-2] != "Patient":
                raise FhirError(
                    f"subject is a {parts[-2] if len(parts) > 1 else 'bare'} reference, not a Patient"
                )
            patient_id = parts[-1]
        return patient_id

    def _identified_patient(self, identifier: dict) -> str:
        """The id of the Patient carrying ``identifier`` (a logical reference)."""
        key = _identifier_key(identifier)
        found = self.patients_by_identifier.get(key) if key else None
        if found is None:
            raise FhirError(
                "subject is a logical reference by an identifier no Patient of this bundle or "
                "export carries"
            )
        return found

    def _contained_patient(self, res: dict, local_id: str) -> str:
        """The patient of a Patient contained in ``res`` (``subject: {reference: "#p1"}``).

        A contained Patient has no id of its own on the server: it is the Patient of this
        bundle or export carrying one of its identifiers, else the patient its first identifier
        names (so the same newborn's records, each containing it, stay one patient), mapped as
        a Patient the first time it is met. Without an identifier it cannot be told apart from
        anyone and the record is rejected."""
        contained = next(
            (
                c
                for c in _objects(res.get("contained"))
                if c.get("resourceType") == "Patient" and c.get("id") == local_id
            ),
            None,
        )
        if contained is None:
            raise FhirError(f"subject #{local_id} names no Patient contained in the resource")
        keys = [k for k in map(_identifier_key, _objects(contained.get("identifier"))) if k]
        for key in keys:
            if key in self.patients_by_identifier:
                return self.patients_by_identifier[key]
        if not keys:
            raise FhirError(
                f"subject is a contained Patient (#{local_id}) without an identifier: it cannot "
                "be told apart from other patients"
            )
        patient_id = f"identifier:{keys[0]}"
        if patient_id not in self.patients:  # its names scrub the record's texts at once
            self._remember_patient({**contained, "id": patient_id}, strict=False)
        if patient_id not in self.contained_mapped:
            self.contained_pending[patient_id] = {**contained, "id": patient_id}
        return patient_id

    def _map_contained_patients(self, path: Path, where: str) -> None:
        """Map the contained Patients the record just accepted named for the first time."""
        counts = self.report.table("fhir/Patient")
        for patient_id, patient in self.contained_pending.items():
            counts.read += 1
            before = len(self.events)
            try:
                self._patient(patient, where, 0, {})
            except FhirError as exc:
                del self.events[before:]
                counts.rejected += 1
                self._reject("fhir/Patient", path, f"{where} (contained Patient)", str(exc))
                continue
            self.contained_mapped.add(patient_id)
            counts.accepted += 1
            counts.events += len(self.events) - before
        self.contained_pending.clear()

    def _conditional_patient(self, ref: str) -> str:
        """The id of the Patient a conditional reference names by its identifier."""
        from urllib.parse import parse_qsl

        rtype, _, query = ref.partition("?")
        params = dict(parse_qsl(query))
        if rtype.rsplit("/", 1)[-1] != "Patient" or set(params) != {"identifier"}:
            raise FhirError(
                "subject is a conditional reference other than Patient?identifier=...: "
                "it cannot be resolved"
            )
        patient_id = self.patients_by_identifier.get(params["identifier"])
        if patient_id is None:
            raise FhirError(
                "subject's conditional reference names an identifier no Patient of this bundle "
                "or export carries"
            )
        return patient_id

    def _onset(
        self,
        res: dict,
        fullurls: dict[str, str],
        prefix: str,
        *fallbacks: str,
        required: bool = True,
    ) -> int | None:
        """When something began: ``<prefix>DateTime`` or ``<prefix>Period``, else an age
        (``<prefix>Age``, or the low end of ``<prefix>Range``) after the patient's birth date,
        else a date written in ``<prefix>String`` (``January 2012``), else the first of
        ``fallbacks``; else None for a fact that may be undated (``required=False``)."""
        start, _ = self._period(res, f"{prefix}DateTime", f"{prefix}Period")
        if start is not None:
            return start
        days = _age_days(res, prefix)
        if days is not None:
            birth = self.births.get(self._patient_id(res, fullurls))
            if birth is None:
                raise FhirError(
                    f"{prefix} is an age but the patient's birth date is not in this batch"
                )
            return birth + round(days * _US_PER_DAY)
        in_words = _date_in_words(res.get(f"{prefix}String"))  # "January 2012"
        if in_words is not None:
            return in_words
        start, _ = self._timed(
            res,
            f"{prefix}DateTime",
            f"{prefix}Period",
            f"{prefix}Age",
            *fallbacks,
            also=f", a date in {prefix}String",
            required=required,
        )
        return start

    def _emit(
        self,
        res: dict,
        subject: tuple[int, int],
        *,
        code: str | None,
        domain: str,
        time: int | None,
        end: int | None = None,
        part: str = "",
        numeric: float | None = None,
        text: str | None = None,
        unit: str | None = None,
    ) -> None:
        if not code:
            raise FhirError("no code")
        rtype = res["resourceType"]
        subject_id, shift = subject
        identity = f"{rtype}/{res.get('id', '')}"
        record = identity + part
        names, numbers = self.private.get(subject_id, ((), ()))
        if text:
            text = redact(text, names, numbers)
        if code.startswith("TEXT/"):  # a concept typed in free text may name the patient
            scrubbed = redact(code, names, numbers)
            if scrubbed != code:
                code = scrubbed
                self.displays.setdefault(code, code.removeprefix("TEXT/"))
        self.events.add(
            subject_id=subject_id,
            time=None if time is None else time + shift,
            code=code,
            numeric_value=numeric,
            text_value=text,
            unit=unit,
            end_time=None if end is None else end + shift,
            domain=domain,
            source=f"fhir/{rtype}",
            record_key=self._record_key(rtype, record),
            resource_key=self._resource_key(rtype, identity) if part else None,
        )

    @staticmethod
    def _period(res: dict, *names: str) -> tuple[int | None, int | None]:
        """The first present of ``names`` (``xDateTime``, ``xPeriod``, ``x``) as (start, end)."""
        for name in names:
            value = res.get(name)
            if value is None:
                continue
            if isinstance(value, dict):
                start = parse_fhir_time(value.get("start"))
                end = parse_fhir_time(value.get("end"))
                if (
                    start is not None
                    and end is not None
                    and end // _US_PER_DAY < start // _US_PER_DAY
                ):
                    raise FhirError(f"{name} ends before it starts (FHIR invariant per-1)")
                if start is not None or end is not None:
                    return (start if start is not None else end), end
                continue
            if isinstance(value, str):
                return parse_fhir_time(value), None
            raise FhirError(f"{name} {value!r} is not a FHIR date, dateTime or Period")
        return None, None

    def _collected(self, res: dict) -> int | None:
        """When an Observation without an effective time was sampled: its specimen's
        collection, else the time of the panel or report listing it (the nearest that has
        one)."""
        specimen = (res.get("specimen") or {}).get("reference")
        if isinstance(specimen, str):
            collected = _referenced(self.specimens, specimen, "Specimen")
            if collected is not None:
                return collected
        key = f"Observation/{res.get('id')}"
        for _ in range(_LISTING_DEPTH):  # a result of a panel of a report...
            lister = self.listed_by.get(key)
            if lister is None:
                return None
            if self.listed_times.get(lister) is not None:
                return self.listed_times[lister]
            key = lister
        return None

    def _timed(
        self, res: dict, *names: str, also: str = "", required: bool = True
    ) -> tuple[int | None, int | None]:
        """The first present of ``names`` as (start, end); else, for a record made during an
        encounter, the encounter's end (its start if it has none): such a record is known for
        certain only once the encounter is over, and dating it earlier would let a twin see a
        discharge diagnosis at admission. Without any of them, ``(None, None)`` if the record
        may be undated and names no encounter, else an error (a record of an encounter this
        export lacks has a date, only not known here: undated, it would reach the twins of the
        days before it)."""
        start, end = self._period(res, *names)
        if start is not None:
            return start, end
        reference = (res.get("encounter") or res.get("context") or {}).get("reference")
        begun, ended = self._encounter_period(reference) if reference else (None, None)
        if ended is not None or begun is not None:
            return (ended if ended is not None else begun), None
        listed = self._listed_date(res)
        if listed is not None:  # known when a list or summary naming it was made
            return listed, None
        if not required and not reference:
            return None, None
        known = " or its encounter's period" if reference else ""
        raise FhirError(f"no time: none of {', '.join(names)}{also}{known} is present")

    def _encounter_period(self, reference: str) -> tuple[int | None, int | None]:
        """The period of the Encounter a reference names (``(None, None)`` if unknown)."""
        return _referenced(self.encounters, reference, "Encounter") or (None, None)

    # -- resources -------------------------------------------------------------------------

    def _patient(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        patient_id = res.get("id")
        if not patient_id:
            raise FhirError("Patient has no id")
        survivor = self._surviving(patient_id)
        if survivor != patient_id:  # a duplicate record merged away: its facts are the other's
            raise FhirError(
                f"merged into Patient/{survivor} (link replaced-by): its records are that patient's"
            )
        if self.p.subject_id(self.ns, patient_id) in self.merged_before:
            raise FhirError(
                "merged into another patient by an earlier batch (link replaced-by): its records "
                "are that patient's"
            )
        subject = (self._remember_patient(res), self.p.shift_us(self.ns, patient_id))
        birth = self.births.get(patient_id)
        if birth is not None:
            self._emit(
                res, subject, code=BIRTH_CODE, domain="demographic", time=birth, part="#birth"
            )
        gender = {"male": "M", "female": "F", "other": "O", "unknown": "U"}.get(
            res.get("gender", "")
        )
        if gender:
            self._emit(
                res,
                subject,
                code=f"Gender/{gender}",
                domain="demographic",
                time=None,
                part="#gender",
            )
        for ext in res.get("extension") or []:
            url = ext.get("url", "")
            kind = (
                url.rsplit("-", 1)[-1]
                if "us-core-race" in url or "us-core-ethnicity" in url
                else None
            )
            if kind:
                for sub in ext.get("extension") or []:
                    coding = sub.get("valueCoding")
                    if sub.get("url") == "ombCategory" and coding and coding.get("code"):
                        code = f"{fhir_vocabulary(coding.get('system'))}/{coding['code']}"
                        self._emit(
                            res,
                            subject,
                            code=code,
                            domain="demographic",
                            time=None,
                            part=f"#{kind}:{code}",
                        )
        birth_sex = next(
            (
                e.get("valueCode")
                for e in res.get("extension") or []
                if isinstance(e, dict) and e.get("url", "").endswith("us-core-birthsex")
            ),
            None,
        )
        if isinstance(birth_sex, str) and birth_sex:  # sex assigned at birth, beside gender
            self._emit(
                res,
                subject,
                code=f"BirthSex/{birth_sex}",
                domain="demographic",
                time=None,
                part="#birthsex",
            )
        language = _preferred_language(res.get("communication"))
        if language:
            self._emit(
                res,
                subject,
                code=f"Language/{language}",
                domain="demographic",
                time=None,
                part="#language",
            )
        marital = self._code(res.get("maritalStatus"))
        if marital:
            self._emit(
                res,
                subject,
                code=f"MaritalStatus/{marital.rsplit('/', 1)[-1]}",
                domain="demographic",
                time=None,
                part="#marital",
            )
        death = res.get("deceasedDateTime")
        if death or res.get("deceasedBoolean") is True:
            # a death without its date is still a fact of the patient's: a static one
            self._emit(
                res,
                subject,
                code=DEATH_CODE,
                domain="death",
                time=parse_fhir_time(death) if death else None,
                part="#death",
            )
        self.identities["subject_id"].append(subject[0])
        self.identities["source"].append(self.ns)
        self.identities["source_id"].append(patient_id)
        self.identities["identifiers"].append(
            orjson.dumps(
                {
                    k: res.get(k)
                    for k in (
                        "name",
                        "telecom",
                        "address",
                        "identifier",
                        "birthDate",
                        "photo",
                        "contact",
                    )
                }
                | {
                    "extension": [
                        e
                        for e in res.get("extension") or []
                        if "mothersMaidenName" in e.get("url", "")
                        or "birthPlace" in e.get("url", "")
                    ]
                }
            ).decode()
        )

    def _encounter(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "period", "actualPeriod", "plannedStartDate")
        code = None
        for t in res.get("type") or []:
            code = self._code(t, ("SNOMED",))
            if code:
                break
        # R4: class is a Coding; R5: a list of CodeableConcepts
        classes = res.get("class")
        for concept in classes if isinstance(classes, list) else [classes]:
            if code is None:
                code = self._code(_as_concept(concept))
        self._emit(res, subject, code=code, domain="visit", time=start, end=end)

    def _condition(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start = self._onset(res, fullurls, "onset", "recordedDate", required=False)
        end, _ = self._period(res, "abatementDateTime", "abatementPeriod")
        tentative = _TENTATIVE.intersection(
            c.get("code") for c in _codings(res.get("verificationStatus"))
        )
        self._emit(
            res,
            subject,
            code=self._code(res.get("code"), ("SNOMED", "ICD10", "ICD10CM")),
            domain="condition",
            time=start,
            end=_ended(res, start, end),
            # a working or differential diagnosis is in the record, not established
            text=f"{TENTATIVE_PREFIX}{min(tentative)}" if tentative else None,
        )

    def _observation(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._period(res, *_EFFECTIVE)
        if start is None:
            start = self._collected(res)
        if start is None:
            start, end = self._timed(
                res, *_EFFECTIVE, "issued", also=", its specimen's collection, its report's time"
            )
        categories = {c.get("code") for cat in res.get("category") or [] for c in _codings(cat)}
        domain = "measurement" if categories & {"vital-signs", "laboratory"} else "observation"
        code = self._code(res.get("code"), ("LOINC", "SNOMED"))
        components = res.get("component") or []
        variant = variant_event(components) if is_variant(res.get("code")) else None
        if variant is not None:  # one event for the variant, not one a component
            self._emit(
                res,
                subject,
                code=variant.code,
                domain="genomic",
                time=start,
                numeric=variant.frequency,
                text=variant.text,
            )
            return
        implication = self._implication(res, components)
        if implication is not None:  # what a variant means, under the variant's code
            code, text = implication
            self._emit(res, subject, code=code, domain="genomic", time=start, text=text)
            return
        waveforms = self._waveforms(res, components)
        if waveforms:
            components = [c for c in components if "valueSampledData" not in c]
        has_value = any(k.startswith("value") and k != "valueSampledData" for k in res)
        if has_value or not (components or waveforms):  # a bare Observation still counts
            numeric, text, unit = _value(res, subject[1])
            self._emit(
                res,
                subject,
                code=code,
                domain=domain,
                time=start,
                end=end,
                numeric=numeric,
                text=text,
                unit=unit,
            )
        for i, comp in enumerate(components):
            numeric, text, unit = _value(comp, subject[1])
            self._emit(
                res,
                subject,
                code=self._code(comp.get("code"), ("LOINC", "SNOMED")),
                domain=domain,
                time=start,
                end=end,
                part=f"#component[{i}]",
                numeric=numeric,
                text=text,
                unit=unit,
            )
        for k, signal in enumerate(waveforms):
            self._signal(res, subject, code, start, signal, k)

    def _implication(self, res: dict, components: list[dict]) -> tuple[str, str] | None:
        """The code of the variant a Genomics Reporting implication is derived from, and what
        it states (its clinical significance, the condition it bears on); None when it states
        no significance or names no variant this batch holds."""
        facts = implication_facts(components)
        if facts is None:
            return None
        for derived in _objects(res.get("derivedFrom")):
            reference = derived.get("reference")
            found = (
                _referenced(self.variants, reference, "Observation")
                if isinstance(reference, str)
                else None
            )
            if found is not None:
                code, gene = found
                return code, ";".join(filter(None, (facts, gene and f"GENE={gene}")))
        return None

    def _waveforms(self, res: dict, components: list[dict]) -> list[SampledSignal]:
        """The Observation's SampledData (its value and its components'), one signal per
        sampling rate and length."""
        found: list[SampledSignal] = []
        named = [(res, self._label(res.get("code")) or "signal")] + [
            (c, self._label(c.get("code")) or f"component {i}") for i, c in enumerate(components)
        ]
        for element, name in named:
            if "valueSampledData" not in element:
                continue
            try:
                signal = read_sampled_data(element["valueSampledData"], name)
            except SampledDataError as exc:
                raise FhirError(str(exc)) from exc
            same = next(
                (
                    f
                    for f in found
                    if f.fs == signal.fs and f.digital.shape[0] == signal.digital.shape[0]
                ),
                None,
            )
            if same is None:
                found.append(signal)
            else:
                same.channels += signal.channels
                same.digital = np.column_stack([same.digital, signal.digital])
        return found

    @staticmethod
    def _label(concept: dict | None) -> str | None:
        """A channel's name: the concept's text, or its first coding's display or code."""
        if not concept:
            return None
        if concept.get("text"):
            return concept["text"]
        for coding in concept.get("coding") or []:
            if coding.get("display") or coding.get("code"):
                return coding.get("display") or coding.get("code")
        return None

    def _signal(
        self,
        res: dict,
        subject: tuple[int, int],
        code: str | None,
        start: int,
        signal: SampledSignal,
        k: int,
    ) -> None:
        """A waveform into the signal store, and its ``signal`` event on the timeline."""
        subject_id, shift = subject
        part = f"#signal{k}"
        record_id = str(self._record_key("Observation", f"Observation/{res.get('id', '')}{part}"))
        duration = int(round(signal.seconds * 1_000_000))
        self._emit(
            res,
            subject,
            code=code,
            domain="signal",
            time=start,
            end=start + duration,
            part=part,
            text=record_id,
        )
        # written last: nothing after this can reject the resource and leave the files behind
        write_record(
            self.writer.signal_folder(record_id),
            subject_id=subject_id,
            start=_EPOCH + timedelta(microseconds=start + shift),
            fs=signal.fs,
            channels=signal.channels,
            digital=signal.digital,
            source=f"fhir/Observation/{res.get('id', '')}",
        )

    def _medication(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        if res["resourceType"] == "MedicationRequest":
            # without authoredOn, when the prescription may first be dispensed, else when its
            # dosage starts
            validity = (res.get("dispenseRequest") or {}).get("validityPeriod")
            bounds = [
                ((d.get("timing") or {}).get("repeat") or {}).get("boundsPeriod")
                for d in res.get("dosageInstruction") or []
                if isinstance(d, dict)
            ]
            dated = {
                **res,
                _VALIDITY: validity,
                _DOSAGE_BOUNDS: next(filter(None, bounds), None),
            }
            start, end = self._timed(dated, "authoredOn", _VALIDITY, _DOSAGE_BOUNDS)
        elif res["resourceType"] == "MedicationDispense":
            start, end = self._timed(res, "whenHandedOver", "whenPrepared")
        else:
            start, end = self._timed(res, "effectiveDateTime", "effectivePeriod", "dateAsserted")
            if end is None and res.get("status") == "active":
                end = self._still_taken(res, start)
        medication = res.get("medication") or {}  # R5: a CodeableReference
        code = self._code(
            res.get("medicationCodeableConcept") or medication.get("concept"), _DRUG_VOCABULARIES
        )
        codes: tuple[str, ...] = (code,) if code else ()
        reference = (res.get("medicationReference") or medication.get("reference") or {}).get(
            "reference", ""
        )
        if not codes and reference.startswith("#"):
            for contained in _objects(res.get("contained")):
                if (
                    contained.get("resourceType") == "Medication"
                    and contained.get("id") == reference[1:]
                ):
                    codes = self._medication_codes(contained)
        if not codes and reference:
            codes = _referenced(self.medications, reference, "Medication") or ()
        if not codes:
            raise FhirError(
                "no code: the medication has no code, no coded ingredient and no reference to "
                "a Medication of this bundle or export"
            )
        numeric = unit = None
        dose = (
            (res.get("dosage") or {}).get("dose")
            if res["resourceType"] == "MedicationAdministration"
            else res.get("quantity")
            if res["resourceType"] == "MedicationDispense"
            else None
        )
        if isinstance(dose, dict) and len(codes) == 1:  # a dose is of the whole medication
            numeric, unit = dose.get("value"), dose.get("code") or dose.get("unit")
        for i, code in enumerate(codes):
            self._emit(
                res,
                subject,
                code=code,
                domain="drug",
                time=start,
                end=end,
                part=f"#ingredient[{i}]" if len(codes) > 1 else "",
                numeric=numeric,
                unit=unit,
                text=res.get("status"),
            )

    def _procedure(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._period(res, "performedDateTime", "performedPeriod")
        if start is None:  # an age, or R5's occurrence[x]
            start = self._onset(
                res,
                fullurls,
                "performed",
                "occurrenceDateTime",
                "occurrencePeriod",
                required=False,  # a patient summary's past surgery, its date unknown
            )
            end = self._period(res, "occurrencePeriod")[1]
        # the code is optional: a procedure recorded without one (a genomic study's analysis
        # step) is still an act done, named by its category, else as a procedure
        category = next(iter(_objects(res.get("category"))), None)
        self._emit(
            res,
            subject,
            code=self._code(res.get("code"), ("SNOMED", "CPT4"))
            or self._code(category, ("SNOMED",))
            or "FHIR/Procedure",
            domain="procedure",
            time=start,
            end=end,
        )

    def _immunization(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start = self._onset(res, fullurls, "occurrence", "recorded")
        self._emit(
            res,
            subject,
            code=self._code(res.get("vaccineCode"), ("CVX",)),
            domain="immunization",
            time=start,
            text=res.get("status"),
        )

    def _allergy(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """An allergy or intolerance, undated if nothing dates it (a patient summary's allergy
        list), ending when it is resolved (the abatement extension's date, else the record's
        last update)."""
        subject = self._subject(res, fullurls)
        start = self._onset(res, fullurls, "onset", "recordedDate", required=False)
        abatement = next(
            (x for x in res.get("extension") or [] if x.get("url") == _ALLERGY_ABATEMENT), {}
        )
        end, _ = self._period(abatement, "valueDateTime", "valuePeriod", "valueDate")
        self._emit(
            res,
            subject,
            code=self._code(res.get("code"), ("SNOMED", "RxNorm")),
            domain="allergy",
            time=start,
            end=_ended(res, start, end),
            text=res.get("criticality"),
        )

    def _report(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "effectiveDateTime", "effectivePeriod", "issued")
        self._emit(
            res,
            subject,
            code=self._code(res.get("code"), ("LOINC",)),
            domain="report",
            time=start,
            end=end,
            text=res.get("conclusion") or _attachment_text(res.get("presentedForm"), self.binaries),
        )

    def _document(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A clinical note: its type (LOINC), its date and its text when an attachment carries
        it inline (plain text, base64), scrubbed like every stored text."""
        subject = self._subject(res, fullurls)
        context = res.get("context")
        start, end = self._period(context, "period") if isinstance(context, dict) else (None, None)
        if start is None:
            start, end = self._period(res, "date")
        if start is None:
            raise FhirError("no time: neither context.period nor date is present")
        self._emit(
            res,
            subject,
            code=self._code(res.get("type"), ("LOINC",)),
            domain="note",
            time=start,
            end=end,
            text=_attachment_text(
                [c.get("attachment") for c in res.get("content") or []], self.binaries
            ),
        )

    def _family_history(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """Each condition of a relative as a ``FAMILY_HISTORY//<condition code>`` observation
        of the patient (never the patient's own diagnosis), dated when it was recorded (else
        undated), with the relative's age at onset in years and who the relative is (never
        their name)."""
        subject = self._subject(res, fullurls)
        start, _ = self._timed(res, "date", required=False)
        conditions = list(_objects(res.get("condition")))
        if not conditions:
            raise FhirError("no condition of the relative is recorded")
        # the relationship as coded (RoleCode FTH, "father"): a typed text may name the relative
        relative = next(iter(_codings(res.get("relationship"))), {})
        details = _details(
            {"relative": relative.get("code"), "relationship": relative.get("display")}
        )
        for k, condition in enumerate(conditions):
            code = self._code(condition.get("code"), ("SNOMED", "ICD10", "ICD10CM"))
            if not code:
                raise FhirError(f"condition {k + 1} of the relative has no code")
            family = f"{FAMILY_HISTORY_PREFIX}{code}"
            self.displays.setdefault(
                family, f"{FAMILY_HISTORY_DESCRIPTION}{self.displays.get(code, code)}"
            )
            days = _age_days(condition, "onset")
            years = None if days is None else days / _AGE_UNIT_DAYS["a"]
            died = "contributed_to_death" if condition.get("contributedToDeath") is True else None
            self._emit(
                res,
                subject,
                code=family,
                domain="observation",
                time=start,
                part=f"#condition[{k}]",
                numeric=years,
                unit="a" if years is not None else None,
                text=";".join(filter(None, (details, died))) or None,
            )

    def _questionnaire_response(
        self, res: dict, where: str, _k: int, fullurls: dict[str, str]
    ) -> None:
        """Each answer of a completed (or partly completed) questionnaire as a ``survey`` event
        at its authoring time: coded by its question's code in the Questionnaire when this
        batch holds it, else by the questionnaire and the question's linkId; a coded answer is
        the text value, with its weight (a Glasgow coma score's ordinal) as the number."""
        subject = self._subject(res, fullurls)
        start, _ = self._timed(res, "authored")
        reference = res.get("questionnaire")
        reference = reference if isinstance(reference, str) else None
        known = self.questionnaires.get(reference or "") or self.questionnaires.get(
            (reference or "").split("|")[0], {}
        )
        local = (reference or "").split("|")[0].removeprefix("Questionnaire/")
        answered = 0
        pending = [(item, f"#item[{i}]") for i, item in enumerate(_objects(res.get("item")))]
        while pending:
            item, part = pending.pop()
            link = item.get("linkId")
            code, weights = known.get(link, (None, {})) if isinstance(link, str) else (None, {})
            if code is None and isinstance(link, str):
                code = f"FHIR/Questionnaire/{local}#{link}" if local else None
                code = code or text_code({"text": item.get("text")}, self.displays)
                code = code or f"FHIR/QuestionnaireResponse#{link}"
                if isinstance(item.get("text"), str):
                    self.displays.setdefault(code, " ".join(item["text"].split()))
            for j, answer in enumerate(_objects(item.get("answer"))):
                numeric, text, unit = _answer_value(answer, subject[1])
                if text in weights and numeric is None:
                    numeric = weights[text]
                if code is None:
                    raise FhirError(f"{part}: the question has no linkId")
                if numeric is not None or text is not None:
                    self._emit(
                        res,
                        subject,
                        code=code,
                        domain="survey",
                        time=start,
                        part=f"{part}#answer[{j}]",
                        numeric=numeric,
                        text=text,
                        unit=unit,
                    )
                    answered += 1
                pending += [
                    (sub, f"{part}#answer[{j}]#item[{k}]")
                    for k, sub in enumerate(_objects(answer.get("item")))
                ]
            pending += [
                (sub, f"{part}#item[{k}]") for k, sub in enumerate(_objects(item.get("item")))
            ]
        if not answered:
            raise FhirError("no question is answered")

    def _goal(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A care goal of the patient (an HbA1c below 7.0, a blood pressure below 140/90), from
        its start, else from the start of the care plan naming it (Synthea's goals have no date
        of their own), else undated; it ends when it is completed, or when the care plans
        listing it are over. A goal cancelled, rejected or entered in error is rejected."""
        status = res.get("lifecycleStatus")
        if status in _VOID_GOALS:
            raise FhirError(f"lifecycleStatus {status}: {_VOID_GOALS[status]}")
        subject = self._subject(res, fullurls)
        start, _ = self._timed(res, "startDate", "statusDate", required=False)
        end = self._plan_end(res)  # a goal of a plan that is over is no longer pursued
        if status == "completed":
            end, _ = self._period(res, "statusDate")
        achievement = _first_code(res.get("achievementStatus"))
        self._emit(
            res,
            subject,
            code=self._code(res.get("description"), ("SNOMED", "LOINC")),
            domain="goal",
            time=start,
            end=end if end is not None and start is not None and end >= start else None,
            text=_details({"status": status, "achievement": achievement}),
        )

    def _specimen(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A specimen taken from the patient (as the CDM's specimen table holds it): its type
        when it was collected (else received), with the quantity collected."""
        subject = self._subject(res, fullurls)
        collection = res.get("collection") if isinstance(res.get("collection"), dict) else {}
        start, end = self._period(collection, "collectedDateTime", "collectedPeriod")
        if start is None:
            start, end = self._timed(res, "receivedTime", also=" or collection.collected[x]")
        quantity = (
            collection.get("quantity") if isinstance(collection.get("quantity"), dict) else {}
        )
        self._emit(
            res,
            subject,
            code=self._code(res.get("type"), ("SNOMED",)),
            domain="specimen",
            time=start,
            end=end,
            numeric=_number(quantity.get("value"), "collection.quantity.value"),
            unit=_unit(quantity) if quantity else None,
            text=concept_code((collection.get("bodySite") or {}), ("SNOMED",)),
        )

    def _adverse_event(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """What happened to the patient (a drug rash, a fall), with its seriousness and severity;
        a potential event (a near miss) did not happen to the patient and is rejected."""
        if res.get("actuality") == "potential":
            raise FhirError("actuality potential: a near miss, it did not happen to the patient")
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "date", "occurrenceDateTime", "occurrencePeriod", "detected")
        outcome = {
            "seriousness": _first_code(res.get("seriousness")),
            "severity": _first_code(res.get("severity")),
        }
        self._emit(
            res,
            subject,
            code=self._code(res.get("event") or res.get("code"), ("SNOMED", "MedDRA")),
            domain="adverse_event",
            time=start,
            end=end,
            text=_details(outcome),
        )

    def _risk_assessment(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """Each predicted outcome of a risk assessment (a 10-year cardiac risk, a genetic
        cancer risk) as a ``risk`` event when it was assessed: the outcome's code (its text
        where it has none), the probability as the number (a fraction, or its range as text)
        and the qualitative risk; the period or ages it covers are in the text."""
        subject = self._subject(res, fullurls)
        start, _ = self._timed(res, "occurrenceDateTime", "occurrencePeriod")
        assessed = self._code(res.get("code"), ("SNOMED", "LOINC"))
        predictions = list(_objects(res.get("prediction")))
        if not predictions:
            raise FhirError("no prediction")
        for k, prediction in enumerate(predictions):
            code = self._code(prediction.get("outcome"), ("SNOMED", "ICD10")) or assessed
            probability = _number(prediction.get("probabilityDecimal"), "probabilityDecimal")
            ranged = when = until = None
            if isinstance(prediction.get("probabilityRange"), dict):
                _, ranged, _ = _value({"valueRange": prediction["probabilityRange"]})
            if isinstance(prediction.get("whenRange"), dict):  # ages, as a Range of years
                _, ages, unit = _value({"valueRange": prediction["whenRange"]})
                when = f"{ages} {unit}" if ages and unit else ages
            period = prediction.get("whenPeriod")
            if isinstance(period, dict) and isinstance(period.get("end"), str):
                until = _shifted_date_text(period["end"], subject[1])
            details = {
                "risk": concept_code(prediction.get("qualitativeRisk")),
                "probability": ranged,
                "relative_risk": prediction.get("relativeRisk"),
                "when": when,
                "until": until,
            }
            if not code:
                raise FhirError(f"prediction {k + 1} names no outcome")
            self._emit(
                res,
                subject,
                code=code,
                domain="risk",
                time=start,
                part=f"#prediction[{k}]",
                numeric=probability,
                text=_details(details),
            )

    def _coverage(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A health insurance cover of the patient (a sociodemographic fact): its type over its
        period, undated when it has none; subscriber ids and payors are never kept."""
        subject = self._subject(res, fullurls)  # the beneficiary
        start, end = self._period(res, "period")
        code = self._code(res.get("type")) or "FHIR/Coverage"
        relationship = next(iter(_codings(res.get("relationship"))), {})
        self._emit(
            res,
            subject,
            code=code,
            domain="demographic",
            time=start,
            end=end,
            text=_details({"subscriber": relationship.get("code")}),
        )

    def _device(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, _ = self._period(res, "manufactureDate")
        self._emit(
            res,
            subject,
            code=self._code(res.get("type"), ("SNOMED",)),
            domain="device",
            time=start,
        )

    def _device_use(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A device the patient uses (an implant, a pacemaker: a patient summary's devices),
        coded by the Device it names, over its timing; undated when nothing dates it."""
        subject = self._subject(res, fullurls)
        start, end = self._timed(
            res, "timingPeriod", "timingDateTime", "recordedOn", required=False
        )
        reference = (res.get("device") or {}).get("reference")
        code = (
            _referenced(self.devices, reference, "Device") if isinstance(reference, str) else None
        )
        if code is None:
            raise FhirError("the device it names is not in this batch or has no type")
        self._emit(res, subject, code=code, domain="device", time=start, end=end)

    def _supply(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A supply delivered for the patient (a nebuliser, test strips, gloves during a
        procedure), as the CDM's device exposures hold Synthea's supplies: the item and its
        quantity, when delivered; used up then, not worn (a twin never lists it as in use)."""
        subject = self._subject(res, fullurls)
        start, _ = self._timed(res, "occurrenceDateTime", "occurrencePeriod")
        item = res.get("suppliedItem") if isinstance(res.get("suppliedItem"), dict) else {}
        quantity = item.get("quantity") if isinstance(item.get("quantity"), dict) else {}
        self._emit(
            res,
            subject,
            code=self._code(item.get("itemCodeableConcept"), ("SNOMED",)),
            domain="device",
            time=start,
            end=start,
            numeric=_number(quantity.get("value"), "suppliedItem.quantity.value"),
            unit=_unit(quantity) if quantity else None,
        )

    def _care_plan(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "period", "created")
        code = None
        for category in res.get("category") or []:
            code = self._code(category, ("SNOMED",))
            if code and code.startswith("SNOMED/"):
                break
        self._emit(  # a plan without a category is still a plan, for its period
            res,
            subject,
            code=code or "FHIR/CarePlan",
            domain="care_plan",
            time=start,
            end=end,
            text=res.get("status"),
        )

    def _service_request(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """An order or referral (a test, a procedure, physiotherapy): see :meth:`_order`."""
        self._order(res, fullurls, [res.get("code")], "authoredOn")

    def _device_request(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """An order for a device (an insulin pump, a lens), coded by itself or by the Device it
        names: see :meth:`_order`."""
        reference = (res.get("codeReference") or {}).get("reference")
        named = (
            _referenced(self.devices, reference, "Device") if isinstance(reference, str) else None
        )
        self._order(res, fullurls, [named or res.get("codeCodeableConcept")], "authoredOn")

    def _nutrition_order(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A diet, supplement or tube feeding ordered (a cardiac diet, a protein supplement):
        each diet type, supplement and formula an order of its own (see :meth:`_order`)."""
        diet = res.get("oralDiet") if isinstance(res.get("oralDiet"), dict) else {}
        formula = res.get("enteralFormula") if isinstance(res.get("enteralFormula"), dict) else {}
        concepts = [
            *_objects(diet.get("type")),
            *(s.get("type") for s in _objects(res.get("supplement"))),
            formula.get("baseFormulaType"),
        ]
        self._order(res, fullurls, [c for c in concepts if c], "dateTime")

    def _order(self, res: dict, fullurls: dict[str, str], concepts: list, placed: str) -> None:
        """Orders and referrals: each of ``concepts`` (a code, or a CodeableConcept) an ``order``
        event, placed when ``placed`` says (else when the act is to be done; undated if neither
        is given), due by the occurrence period's end, with the order's intent and status as
        ``key=value`` text (an order to *not* do a thing says ``do_not_perform=true``). An order
        is not its act, which comes as its own record."""
        subject = self._subject(res, fullurls)
        codes = [c if isinstance(c, str) else self._code(c, ("SNOMED", "LOINC")) for c in concepts]
        if not any(codes):
            raise FhirError("no code: nothing says what is ordered")
        _, until = self._period(res, "occurrencePeriod")
        start, _ = self._timed(
            res, placed, "occurrenceDateTime", "occurrencePeriod", required=False
        )
        facts = [f"intent={res.get('intent')}", f"status={res.get('status')}"]
        if res.get("doNotPerform") is True:
            facts.append("do_not_perform=true")
        for i, code in enumerate(codes):
            self._emit(
                res,
                subject,
                code=code,
                domain="order",
                time=start,
                end=until if until is not None and (start is None or until >= start) else None,
                part=f"#item[{i}]" if len(codes) > 1 else "",
                text=";".join(facts),
            )

    def _flag(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """An alert about the patient (immunocompromised, a fall risk, a violent dog at home)
        over its period (undated: known from its batch on), over when its period ends or, once
        inactive, when its record last changed; its category as text."""
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "period", required=False)
        if end is None and res.get("status") == "inactive":
            end = _last_changed(res, start)
        category = next(
            (concept_code(c) or text_code(c) for c in _objects(res.get("category"))), None
        )
        self._emit(
            res,
            subject,
            code=self._code(res.get("code"), ("SNOMED",)),
            domain="alert",
            time=start,
            end=end,
            text=category,
        )

    def _clinical_impression(
        self, res: dict, where: str, _k: int, fullurls: dict[str, str]
    ) -> None:
        """A clinician's assessment: each coded finding and prognosis an ``observation`` event
        (what was found, not a confirmed diagnosis), its basis and the assessment's status as
        text; its summary (else its description) a ``note`` coded by the assessment's code,
        else ``FHIR/ClinicalImpression``; at its effective time, else its date."""
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "effectiveDateTime", "effectivePeriod", "date")
        status = res.get("status") if isinstance(res.get("status"), str) else None
        emitted = 0
        for i, finding in enumerate(_objects(res.get("finding"))):
            concept = finding.get("itemCodeableConcept") or _as_concept(finding.get("item"))
            code = self._code(concept, ("SNOMED", "ICD10")) if isinstance(concept, dict) else None
            if code:
                basis = finding.get("basis") if isinstance(finding.get("basis"), str) else None
                self._emit(res, subject, code=code, domain="observation", time=start, end=end,
                           part=f"#finding[{i}]",
                           text=_details({"assessment": status, "basis": basis}))  # fmt: skip
                emitted += 1
        for i, prognosis in enumerate(_objects(res.get("prognosisCodeableConcept"))):
            code = self._code(prognosis, ("SNOMED",))
            if code:
                self._emit(res, subject, code=code, domain="observation", time=start, end=end,
                           part=f"#prognosis[{i}]", text=_details({"prognosis": status}))  # fmt: skip
                emitted += 1
        summary = next(
            (t for t in (res.get("summary"), res.get("description")) if isinstance(t, str) and t),
            None,
        )
        if summary or not emitted:
            code = self._code(res.get("code")) if isinstance(res.get("code"), dict) else None
            self._emit(res, subject, code=code or "FHIR/ClinicalImpression", domain="note",
                       time=start, end=end, part="#summary", text=summary)  # fmt: skip

    def _consent(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """The patient's consent or refusal (an advance directive such as do-not-resuscitate, a
        research consent, a privacy preference) from when it was given over its provision's
        period (once inactive, until its record last changed), coded by what it provides for
        (else its category, else its scope); what it says as text: ``provision=permit|deny``,
        ``action`` (access, disclose...), ``scope``, ``category``, ``status``, ``policy``."""
        subject = self._subject(res, fullurls)
        provision = res.get("provision") if isinstance(res.get("provision"), dict) else {}
        given = parse_fhir_time(res.get("dateTime"))
        start, end = self._period(provision, "period")
        start = given if given is not None else start
        if end is None and res.get("status") == "inactive":
            end = _last_changed(res, start)
        categories = [concept_code(c) or text_code(c) for c in _objects(res.get("category"))]
        scope = concept_code(res.get("scope")) if isinstance(res.get("scope"), dict) else None
        policy = next(
            (concept_code(p) for p in _objects([res.get("policyRule")]) if concept_code(p)), None
        )
        provided = next((self._code(c, ("SNOMED",)) for c in _objects(provision.get("code"))), None)
        code = provided or next(filter(None, categories), None) or scope or "FHIR/Consent"
        actions = [concept_code(a) for a in _objects(provision.get("action"))]
        facts = {
            "provision": provision.get("type"),
            "action": ",".join(a.rsplit("/", 1)[-1] for a in actions if a) or None,
            "scope": scope,
            "category": ",".join(c for c in categories if c and c != code) or None,
            "status": res.get("status"),
            "policy": policy,
        }
        self._emit(
            res,
            subject,
            code=code,
            domain="consent",
            time=start,
            # a consent recorded after its period ended (a retrospective record) holds no more
            end=end if end is None or start is None or end >= start else start,
            text=";".join(f"{k}={v}" for k, v in facts.items() if isinstance(v, str) and v),
        )

    def _episode(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """An episode of care (a home care programme, a cancer treatment course) over its
        period, as the CDM's episode table holds one; its status as text. A planned episode
        has not begun: it starts when its period does."""
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "period")
        self._emit(
            res,
            subject,
            code=self._code(next(iter(_objects(res.get("type"))), None)) or "FHIR/EpisodeOfCare",
            domain="episode",
            time=start,
            end=end,
            text=res.get("status"),
        )

    def _claim(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "billablePeriod", "created")
        kind = self._code(res.get("type")) or "claim"
        amount = res.get("total")
        if isinstance(amount, list):
            amount = next((t.get("amount") for t in amount if t.get("amount")), None)
        if res["resourceType"] == "ExplanationOfBenefit" and (res.get("payment") or {}).get(
            "amount"
        ):
            amount = res["payment"]["amount"]
        numeric = unit = None
        if isinstance(amount, dict):
            numeric, unit = amount.get("value"), amount.get("currency")
        code = f"FHIR/{res['resourceType']}/{kind.rsplit('/', 1)[-1]}"
        self._emit(
            res, subject, code=code, domain="claim", time=start, end=end, numeric=numeric, unit=unit
        )

    def _media(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A photograph, a scan, a recording of the patient (R4 Media) as an ``imaging`` event
        coded by its modality (a DICOM modality as the DICOM ingest codes it), else its type,
        else ``FHIR/Media``, when it was made; its view, body site, kind and size as text. Its
        content stays where the source keeps it."""
        subject = self._subject(res, fullurls)
        start, end = self._timed(res, "createdDateTime", "createdPeriod", "issued")
        modality = res.get("modality") if isinstance(res.get("modality"), dict) else None
        dicom = next(
            (c["code"] for c in _codings(modality) if "dicom.nema.org" in str(c.get("system"))
             and c.get("code")), None,
        )  # fmt: skip
        code = f"DICOM/{dicom}" if dicom else self._code(modality, ("SNOMED",))
        media_type = res.get("type") if isinstance(res.get("type"), dict) else None
        content = res.get("content") if isinstance(res.get("content"), dict) else {}
        details = {
            "type": concept_code(media_type) if media_type else None,
            "view": self._code(res.get("view")) if isinstance(res.get("view"), dict) else None,
            "body_site": self._code(res.get("bodySite"))
            if isinstance(res.get("bodySite"), dict)
            else None,
            "content_type": content.get("contentType"),
            "frames": res.get("frames"),
            "duration_s": res.get("duration"),
        }
        self._emit(
            res,
            subject,
            code=code or (concept_code(media_type) if media_type else None) or "FHIR/Media",
            domain="imaging",
            time=start,
            end=end,
            text=_details(details),
        )

    def _imaging_study(self, res: dict, where: str, _k: int, fullurls: dict[str, str]) -> None:
        """A study and each of its series, as the DICOM ingest writes them: a ``DICOM/study``
        event and one ``DICOM/<modality>`` event a series (body site, description and instance
        count as text); the images stay where the study's endpoint keeps them."""
        subject = self._subject(res, fullurls)
        start, _ = self._period(res, "started")
        if start is None:  # a study begins with its first series
            series_starts = (self._period(x, "started")[0] for x in res.get("series") or [])
            start = min((t for t in series_starts if t is not None), default=None)
        if start is None:  # its encounter, a list naming it; else undated (a summary's past study)
            start, _ = self._timed(res, "started", required=False)
        procedures = [self._code(_as_concept(c)) for c in res.get("procedureCode") or []]
        study = {
            "procedure": next((c for c in procedures if c), None),
            "description": res.get("description"),
            "series": res.get("numberOfSeries"),
            "instances": res.get("numberOfInstances"),
        }
        self._emit(
            res, subject, code="DICOM/study", domain="imaging", time=start, text=_details(study)
        )
        for k, series in enumerate(res.get("series") or []):
            modality = _as_concept(series.get("modality"))
            codes = [c.get("code") for c in _codings(modality) if c.get("code")]
            if not codes:
                raise FhirError(f"series {k + 1} has no modality")
            code = f"DICOM/{codes[0]}"
            display = _codings(modality)[0].get("display")
            if display and code not in self.displays:
                self.displays[code] = display
            when, _ = self._period(series, "started")
            details = {
                "description": series.get("description"),
                "body_site": self._code(_as_concept(series.get("bodySite"))),
                "instances": series.get("numberOfInstances"),
            }
            self._emit(
                res,
                subject,
                code=code,
                domain="imaging",
                time=start if when is None else when,
                part=f"#series:{series.get('uid') or k}",
                text=_details(details),
            )


def _reference_path(reference: str) -> list[str]:
    """A relative or absolute reference's path up to its version: ``[..., "Patient", "1"]`` of
    ``https://server/fhir/Patient/1/_history/2``."""
    parts = reference.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts


def _referenced(known: dict[str, Any], reference: str, rtype: str) -> Any:
    """What ``known`` keeps of the ``rtype`` resource a reference names: by a bundle's fullUrl
    as it is, by the uuid that is the resource's id in an NDJSON export (``urn:uuid:<id>``),
    else by ``rtype/<id>`` of a relative or absolute reference, its version dropped (a bare
    id matches where ``known`` keeps one). None if it keeps nothing."""
    found = known.get(reference)
    if found is not None or reference.startswith("urn:oid:"):
        return found
    if reference.startswith("urn:uuid:"):
        return known.get(f"{rtype}/{reference[9:]}")
    return known.get("/".join(_reference_path(reference)[-2:]))


_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            "january janvier jan",
            "february février fevrier feb fév fev",
            "march mars mar",
            "april avril apr avr",
            "may mai",
            "june juin jun",
            "july juillet jul juil",
            "august août aout aug",
            "september septembre sep sept",
            "october octobre oct",
            "november novembre nov",
            "december décembre decembre dec déc",
        ),
        start=1,
    )
    for name in names.split()
}
_DATE_IN_WORDS = re.compile(r"^(?:(\d{1,2})(?:st|nd|rd|th|er)?\s+)?([^\W\d_]+)\.?\s+(\d{4})$")


def _date_in_words(text: Any) -> int | None:
    """The first instant of a date written in words (``January 2012``, ``3 mars 2019``) or as
    a FHIR date (``2012``, ``2012-01``); None for anything vaguer (``in childhood``)."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", text):
        return parse_fhir_time(text)
    match = _DATE_IN_WORDS.match(text.lower())
    if not match or match.group(2) not in _MONTHS:
        return None
    day = int(match.group(1) or 1)
    try:
        moment = datetime(int(match.group(3)), _MONTHS[match.group(2)], day)
    except ValueError:
        return None
    return parse_fhir_time(moment.date().isoformat())


def _identifier_key(identifier: dict) -> str | None:
    """``system|value`` of an Identifier (its bare value when it names no system), as a
    conditional reference writes it; None without a value."""
    value, system = identifier.get("value"), identifier.get("system")
    if not isinstance(value, str) or not value:
        return None
    return f"{system}|{value}" if isinstance(system, str) else value


def _keep(known: dict, res: dict, full_url: str | None, value: Any) -> None:
    """Keep what is read ahead of a resource under the references that may name it: its
    ``Type/id`` and its bundle fullUrl (see :func:`_referenced`)."""
    if res.get("id"):
        known[f"{res['resourceType']}/{res['id']}"] = value
    if full_url:
        known[full_url] = value


def _age_days(res: dict, prefix: str) -> float | None:
    """``<prefix>Age`` (or the low end of ``<prefix>Range``) in days; None without one."""
    age = res.get(f"{prefix}Age") or (res.get(f"{prefix}Range") or {}).get("low")
    if not isinstance(age, dict) or age.get("value") is None:
        return None
    unit = str(age.get("code") or age.get("unit") or "").lower()
    days = _AGE_UNIT_DAYS.get(unit)
    if days is None:
        raise FhirError(f"{prefix} age unit {unit!r} is not a, mo, wk or d")
    return float(age["value"]) * days


def _listed_key(reference: str) -> str:
    """``Type/id`` of a relative or absolute reference; the uuid of a ``urn:uuid:`` one."""
    if reference.startswith("urn:uuid:"):
        return reference[9:]
    return "/".join(_reference_path(reference)[-2:])


def _observation_key(reference: str) -> str:
    """``Observation/<id>`` of a reference to an Observation (relative, absolute or a
    ``urn:uuid:`` that is its id)."""
    if reference.startswith("urn:uuid:"):
        return f"Observation/{reference[9:]}"
    return "/".join(_reference_path(reference)[-2:])


def _attachment_text(attachments: list | None, binaries: dict) -> str | None:
    """The text of a document's attachments: inline (base64 ``data``) or in the Binary of
    the export its ``url`` names, plain text preferred to HTML, HTML to RTF (renditions of
    one document), decoded by its charset, without markup; None if none has text to read."""
    found = []
    for attachment in attachments or []:
        if not isinstance(attachment, dict):
            continue
        kind, data = attachment.get("contentType"), attachment.get("data")
        url = attachment.get("url")
        if not data and isinstance(url, str):
            kind, data = _referenced(binaries, url, "Binary") or (kind, None)
        if not isinstance(data, str) or not data or not readable(kind):
            continue
        rank = media_type(kind)
        found.append((READABLE_TYPES.index(rank) if rank in READABLE_TYPES else 2, kind, data))
    if not found:
        return None
    _, kind, data = min(found, key=lambda f: f[0])
    try:
        raw = base64.b64decode(data, validate=False)
    except (ValueError, TypeError) as exc:
        raise FhirError(f"attachment data is not base64: {exc}") from exc
    return document_text(raw, kind)


def _as_concept(value: dict | None) -> dict | None:
    """A Coding (R4 ``ImagingStudy.series.modality``) or a CodeableReference (R5) as the
    CodeableConcept the code helpers read."""
    if not isinstance(value, dict):
        return None
    if "concept" in value:
        return value["concept"]
    if "code" in value and "coding" not in value:
        return {"coding": [value]}
    return value


def _details(values: dict) -> str | None:
    """``key=value`` pairs (the present ones) joined by ``;``, as imaging events carry them."""
    text = ";".join(f"{k}={v}" for k, v in values.items() if v not in (None, ""))
    return text or None


#: Where a prescription without authoredOn is dated: when it may first be dispensed, else when
#: its dosage starts (the paths, as an error names them).
_VALIDITY = "dispenseRequest.validityPeriod"
_DOSAGE_BOUNDS = "dosageInstruction.timing.repeat.boundsPeriod"
#: Condition clinical statuses of a problem that is over.
_ENDED_STATUSES = frozenset({"resolved", "inactive", "remission"})
_ALLERGY_ABATEMENT = "http://hl7.org/fhir/StructureDefinition/allergyintolerance-abatement"


def _ended(res: dict, start: int | None, end: int | None) -> int | None:
    """When a condition or allergy ended: its abatement ``end``; else, once its clinical status
    says it is over, the time the record last changed (an EHR's problem list: not known to be
    over before); else None (still active)."""
    if end is not None or not _ENDED_STATUSES.intersection(
        c.get("code") for c in _codings(res.get("clinicalStatus"))
    ):
        return end
    return _last_changed(res, start)


def _is_bulk_manifest(doc: object) -> bool:
    """Whether a JSON document is a Bulk Data export's manifest (its status response)."""
    return (
        isinstance(doc, dict)
        and "resourceType" not in doc
        and isinstance(doc.get("output"), list)
        and "transactionTime" in doc
    )


def _preferred_language(communication: Any) -> str | None:
    """The language a patient prefers to be spoken to in (its BCP-47 code, ``fr``): the one
    marked preferred, else the first given."""
    languages = [c for c in _objects(communication) if isinstance(c.get("language"), dict)]
    languages.sort(key=lambda c: c.get("preferred") is not True)
    for entry in languages:
        for coding in _objects(entry["language"].get("coding")):
            if isinstance(coding.get("code"), str) and coding["code"]:
                return coding["code"]
    return None


def _last_changed(res: dict, start: int | None) -> int | None:
    """When a record last changed (``meta.lastUpdated``), if not before ``start``."""
    updated = parse_fhir_time((res.get("meta") or {}).get("lastUpdated"))
    if updated is None or (start is not None and updated < start):
        return None
    return updated


#: The type and id a DELETE entry's URL names (relative or absolute, a version or not).
_DELETED_URL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")
#: Statuses saying a resource is not a fact of the patient's record, and why it is kept out.
_VOID_STATUSES = {
    "entered-in-error": "not part of the patient's record",
    "cancelled": "it did not take place",
    "not-done": "it did not take place",
    "not-taken": "the patient does not take it",  # a MedicationStatement's
    "revoked": "the order was withdrawn",  # a ServiceRequest's
    "abandoned": "it was not delivered",  # a SupplyDelivery's
}
#: Resource types that may be of no patient, and what they are then: counted, never mapped.
_NOT_OF_A_PATIENT = {"Device": "equipment", "SupplyDelivery": "stock"}
#: Goal lifecycle statuses saying the goal is not the patient's.
_VOID_GOALS = {
    "cancelled": "it was abandoned before it was pursued",
    "rejected": "it was not accepted",
    "entered-in-error": "not part of the patient's record",
}
#: Verification statuses (Condition, AllergyIntolerance) saying the patient does not have it.
_VOID_VERIFICATIONS = {
    "entered-in-error": "not part of the patient's record",
    "refuted": "the patient does not have it",
}
#: Verification statuses of a diagnosis not established (a working or differential diagnosis):
#: kept, its ``text_value`` saying so (``verification=provisional``).
_TENTATIVE = frozenset({"unconfirmed", "provisional", "differential"})


def _void_reason(res: dict) -> str | None:
    """Why a resource must not become events (an entry in error, an act that did not take
    place, a refuted diagnosis), or None: such a resource is rejected with that reason, never
    stored as if it were a fact."""
    status = res.get("status")
    if isinstance(status, str) and status in _VOID_STATUSES:
        return f"status {status}: {_VOID_STATUSES[status]}"
    verification = res.get("verificationStatus")
    codes = (
        [c.get("code") for c in _codings(verification)] if isinstance(verification, dict) else []
    )
    for code in codes:
        if code in _VOID_VERIFICATIONS:
            return f"verificationStatus {code}: {_VOID_VERIFICATIONS[code]}"
    return None


def _number(value: Any, what: str) -> float | None:
    """A JSON number as a float; anything else (``"12,5"``, a list) is the record's error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FhirError(f"{what} {value!r} is not a number")
    return float(value)


def _objects(value: Any) -> list[dict]:
    """The JSON objects of a repeated element (a lone object counts as one)."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _strings(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str)]


def _value(element: dict, shift: int = 0) -> tuple[float | None, str | None, str | None]:
    """(numeric_value, text_value, unit) of an Observation or component value[x]; a date
    value moved by the subject's date ``shift`` (µs), as the event's own time is.

    A value FHIR gives as an interval (a Range, a Period) is kept as its text (``1-3``,
    ``2020-01-01/2020-02-01``) with no number: neither bound is the value. A value absent for
    a reason (``dataAbsentReason``) carries that reason's code as its text.
    """
    if "valueQuantity" in element:
        q = element["valueQuantity"]
        comparator = q.get("comparator")
        return _number(q.get("value"), "valueQuantity.value"), comparator, _unit(q)
    if "valueCodeableConcept" in element:
        cc = element["valueCodeableConcept"]
        return None, concept_code(cc) or cc.get("text"), None
    if "valueString" in element:
        return None, element["valueString"], None
    if "valueBoolean" in element:
        return float(element["valueBoolean"]), None, None
    if "valueInteger" in element:
        return _number(element["valueInteger"], "valueInteger"), None, None
    if "valueRange" in element:
        low, high = (element["valueRange"].get(k) or {} for k in ("low", "high"))
        bounds = [
            _number(q.get("value"), f"valueRange.{k}.value")
            for k, q in (("low", low), ("high", high))
        ]
        if bounds[0] is None and bounds[1] is None:
            return None, None, None
        text = "-".join(_plain(b) for b in bounds if b is not None)
        if bounds[1] is None:
            text = ">=" + text
        elif bounds[0] is None:
            text = "<=" + text
        return None, text, _unit(low) or _unit(high)
    if "valueRatio" in element:  # a titre 1:64, a ratio of two quantities
        top = element["valueRatio"].get("numerator") or {}
        bottom = element["valueRatio"].get("denominator") or {}
        n = _number(top.get("value"), "valueRatio.numerator.value")
        d = _number(bottom.get("value"), "valueRatio.denominator.value")
        numeric = n / d if n is not None and d not in (None, 0) else None
        unit = _unit(top)
        if unit and _unit(bottom) and _unit(bottom) != "1":
            unit = f"{unit}/{_unit(bottom)}"
        return numeric, f"{_plain(n)}:{_plain(d)}", unit
    if "valuePeriod" in element:
        period = element["valuePeriod"] if isinstance(element["valuePeriod"], dict) else {}
        start, end = (
            _shifted_date_text(period[k], shift) if isinstance(period.get(k), str) else ""
            for k in ("start", "end")
        )
        return None, f"{start}/{end}", None
    if "valueDateTime" in element:
        return None, _shifted_date_text(str(element["valueDateTime"]), shift), None
    if "valueTime" in element:
        return None, str(element["valueTime"]), None
    if "dataAbsentReason" in element:
        return None, concept_code(element["dataAbsentReason"]), None
    return None, None, None


#: Where a coded answer carries its score: R4's ordinalValue extension, R5's itemWeight.
_WEIGHT_EXTENSIONS = (
    "http://hl7.org/fhir/StructureDefinition/ordinalValue",
    "http://hl7.org/fhir/StructureDefinition/itemWeight",
)


def _answer_weight(element: dict | None) -> float | None:
    """The score an answer option or a coding carries, if any."""
    for extension in _objects((element or {}).get("extension")):
        if extension.get("url") in _WEIGHT_EXTENSIONS:
            return _number(extension.get("valueDecimal"), "ordinalValue")
    return None


#: What a free-text answer is stored as: a form's free text names people (a relative, a child,
#: an emergency contact) that no scrubbing of the patient's own names can catch.
FREE_TEXT_ANSWER = "[TEXT]"


def _answer_value(answer: dict, shift: int = 0) -> tuple[float | None, str | None, str | None]:
    """(numeric_value, text_value, unit) of a QuestionnaireResponse answer's value[x]; a date
    moved by the subject's date ``shift`` (µs), a free text as :data:`FREE_TEXT_ANSWER`."""
    if isinstance(answer.get("valueCoding"), dict):
        coding = answer["valueCoding"]
        text = concept_code({"coding": [coding]}) or coding.get("display")
        return _answer_weight(coding), text, None
    if "valueDecimal" in answer:
        return _number(answer["valueDecimal"], "valueDecimal"), None, None
    if "valueString" in answer or "valueText" in answer:
        return None, FREE_TEXT_ANSWER, None
    if "valueDate" in answer:
        return None, _shifted_date_text(answer["valueDate"], shift), None
    if "valueUri" in answer:
        return None, str(answer["valueUri"]), None
    if "valueAttachment" in answer or "valueReference" in answer:
        return None, None, None  # a file, another resource: nothing to store as a value
    return _value(answer, shift)


def _shifted_date_text(value: str, shift: int) -> str:
    """A FHIR date or dateTime moved by ``shift`` microseconds, written at its own precision
    (a year stays a year); unchanged without a shift."""
    if not shift:
        return value
    moment = _EPOCH + timedelta(microseconds=parse_fhir_time(value) + shift)
    written = value.strip()
    return moment.isoformat()[: len(written)] if len(written) <= 10 else moment.isoformat()


def _unit(quantity: dict) -> str | None:
    """A Quantity's UCUM code, else its human-readable unit."""
    return quantity.get("code") or quantity.get("unit")


def _plain(number: float | None) -> str:
    """A number as a person writes it: ``64``, not ``64.0``."""
    if number is None:
        return ""
    return str(int(number)) if number.is_integer() else repr(number)


def iter_resources(path: Path) -> Iterator[dict]:
    """Every resource of a Bundle or NDJSON file (for tests and tools)."""
    if is_ndjson(path):
        for _, line in _ndjson_lines(path):
            yield orjson.loads(line)
        return
    doc = orjson.loads(_read_text(path))
    if doc.get("resourceType") == "Bundle":
        for entry in doc.get("entry") or []:
            if isinstance(entry.get("resource"), dict):
                yield entry["resource"]
    else:
        yield doc
