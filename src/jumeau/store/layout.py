"""The on-disk layout of a store directory and its manifest.

::

    STORE/
      jumeau.json             store id, format version, pseudonymisation settings
      manifest.json           the committed batches, in order (replaced atomically)
      batches/<batch>/
        events.parquet        events sorted by (subject_id, time): columnar scans
        events.arrow          the same rows, uncompressed Arrow IPC: memory-mapped timelines
        subjects.parquet      subject_id -> first row and row count in the files above
        rejects.parquet       records that failed validation, with the reason
        codes.parquet         the codes the batch uses: descriptions, parent codes
        vault.bin             encrypted direct identifiers (optional)
        superseded.parquet    records of earlier batches this batch amends or withdraws (optional)
        report.json           the ingest report of the batch
      twins/<as_of>/          twin snapshots kept up to date by a registry (jumeau.twin.registry)
      twins/populations/      population models fitted for twins, by store state and cutoff
      audit/                  re-identifications and erasures, chained by keyed MACs (jumeau.store.audit)
      withdrawn.parquet       pseudonyms of the subjects erased, kept out of later ingests
      .staging/               work in progress; never read, cleared on the next write

A batch becomes visible only when ``manifest.json`` names it, and the manifest is replaced by an
atomic rename, so a killed ingest leaves the store exactly as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
STORE_FILE = "jumeau.json"
MANIFEST_FILE = "manifest.json"
BATCHES_DIR = "batches"
STAGING_DIR = ".staging"
TWINS_DIR = "twins"
POPULATIONS_DIR = "populations"

EVENTS_PARQUET = "events.parquet"
EVENTS_ARROW = "events.arrow"
SUBJECTS_INDEX = "subjects.parquet"
REJECTS_PARQUET = "rejects.parquet"
CODES_PARQUET = "codes.parquet"
#: SQL aggregate of a code's parent codes over several descriptions of it: each once, sorted.
PARENT_CODES_AGGREGATE = (
    "list_sort(list_distinct(flatten(list(parent_codes) FILTER (parent_codes IS NOT NULL))))"
)
VAULT_FILE = "vault.bin"
#: (subject_id, source, record_key) of the stored records a batch brings new versions of or the
#: source withdrew: an earlier batch's event with that source and key is hidden from the batch's
#: commit on.
SUPERSEDED_FILE = "superseded.parquet"
#: (subject_id, source, resource_key, record_key) of the batch's events that are parts of a
#: larger record (see :data:`jumeau.model.PARTS_SCHEMA`).
PARTS_FILE = "parts.parquet"
#: (subject_id, into_subject_id, time_shift_us) of the patients a batch says were merged into
#: others: a lookup of the merged patient's id finds the survivor, and later records naming the
#: merged patient are the survivor's.
MERGES_FILE = "merges.parquet"
#: Folder of a batch holding its waveform records (see :mod:`jumeau.signals.store`).
SIGNALS_DIR = "signals"
REPORT_FILE = "report.json"


class StoreError(RuntimeError):
    """A store directory is missing, malformed or cannot be written."""


def write_json_atomic(path: Path, payload: object, *, cache: bool = False) -> None:
    """Write JSON to ``path`` so that readers see either the old or the new file, never half.

    A store file is written readable and flushed to disk before and after the rename (a manifest
    must survive a crash); a ``cache`` file (a twin snapshot: thousands are written at a time,
    and one lost is rebuilt) is written compact and left to the page cache.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = (
        json.dumps(payload, default=str)
        if cache
        else json.dumps(payload, indent=2, sort_keys=True, default=str)
    )
    with open(tmp, "wb") as f:
        f.write(text.encode())
        if not cache:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not cache:
        fsync_dir(path.parent)


def lock_store(root: Path) -> int:
    """Take the store's write lock (one ingest or erasure at a time); return its descriptor
    for :func:`unlock_store`."""
    import fcntl

    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreError(f"{root}: another ingest is writing to this store") from exc
    return fd


def unlock_store(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def clear_unpublished(root: Path) -> None:
    """Remove the staging folder and the batch folders no manifest names (what a killed
    commit or erasure left); hold the store lock."""
    import shutil

    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
    batches = root / BATCHES_DIR
    if not batches.exists():
        return
    published = set(Manifest.read(root).batch_ids)
    for child in batches.iterdir():
        if child.name not in published:
            shutil.rmtree(child, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file below ``folder``, then the folder itself (before it is published)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoreConfig:
    """Settings fixed when the store is created."""

    store_id: str
    max_date_shift_days: int = 0
    key_file: str | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, root: Path) -> StoreConfig:
        path = root / STORE_FILE
        if not path.exists():
            raise StoreError(
                f"{root} is not a jumeau store (no {STORE_FILE}); run `jumeau init {root}`"
            )
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format {data.get('format_version')} is not supported "
                f"(this jumeau reads format {FORMAT_VERSION})"
            )
        return cls(**data)

    def write(self, root: Path) -> None:
        write_json_atomic(root / STORE_FILE, self.__dict__)


@dataclass
class Manifest:
    """The committed batches of a store, oldest first."""

    batches: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = root / MANIFEST_FILE
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def write(self, root: Path) -> None:
        write_json_atomic(root / MANIFEST_FILE, {"batches": self.batches})

    @property
    def batch_ids(self) -> list[str]:
        return [b["id"] for b in self.batches]
