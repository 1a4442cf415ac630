"""The patient store: an embedded, directory-based event store.

Columnar scans go through DuckDB over the batches' Parquet files; a single subject's timeline is
read from memory-mapped Arrow files through a subject index, so it costs a binary search and a
zero-copy slice, not a scan.
"""

from __future__ import annotations

import bisect
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from jumeau._duck import connect, run, sql_string
from jumeau.model import DICTIONARY_COLUMNS, EVENT_SCHEMA, REJECT_SCHEMA, STORED_EVENT_SCHEMA
from jumeau.store import keys, layout
from jumeau.store.erasure import withdrawn_subjects
from jumeau.store.vault import read_vault


@dataclass
class _MappedBatch:
    """One committed batch opened for random access.

    The Arrow file is memory-mapped and kept as its record batches with their row offsets, so a
    subject's rows are found by two binary searches and sliced from the one record batch (rarely
    two) that holds them, whatever the size of the file.
    """

    id: str
    batches: list[pa.RecordBatch]
    batch_starts: np.ndarray
    subject_ids: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    #: whether the file has the current layout (a batch written before the dictionaries were
    #: stored is read as plain strings and encoded on the way out)
    current: bool = True
    #: the records of earlier batches this batch amends, sorted by subject (None: none)
    superseded: pa.Table | None = None

    def __post_init__(self) -> None:
        # the binary searches run on memoryviews of the same int64 buffers: ``bisect`` reads
        # them as Python ints directly, a third of a read's cost saved over NumPy scalars
        self._ids, self._starts, self._counts, self._batch_starts = (
            memoryview(np.ascontiguousarray(a, dtype=np.int64))
            for a in (self.subject_ids, self.starts, self.counts, self.batch_starts)
        )

    @classmethod
    def open(cls, folder: Path) -> _MappedBatch:
        reader = pa.ipc.open_file(pa.memory_map(str(folder / layout.EVENTS_ARROW), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = np.array([b.num_rows for b in batches], dtype=np.int64)
        index = pq.read_table(folder / layout.SUBJECTS_INDEX)
        amended = folder / layout.SUPERSEDED_FILE
        ids, starts, counts = _joined_runs(
            index.column("subject_id").to_numpy(),
            index.column("start").to_numpy(),
            index.column("count").to_numpy(),
        )
        return cls(
            id=folder.name,
            batches=batches,
            batch_starts=np.concatenate(([0], np.cumsum(sizes)[:-1])) if len(sizes) else sizes,
            subject_ids=ids,
            starts=starts,
            counts=counts,
            current=reader.schema.equals(STORED_EVENT_SCHEMA),
            superseded=pq.read_table(amended).combine_chunks() if amended.exists() else None,
        )

    def amends(self, subject_id: int) -> set[tuple[str, int]]:
        """The (source, record key) of the subject's records of earlier batches this batch
        brings new versions of or withdraws."""
        if self.superseded is None:
            return set()
        ids = self.superseded.column("subject_id").to_numpy()
        lo, hi = np.searchsorted(ids, subject_id, "left"), np.searchsorted(ids, subject_id, "right")
        part = self.superseded.slice(lo, hi - lo)
        return set(
            zip(
                part.column("source").to_pylist(),
                part.column("record_key").to_pylist(),
                strict=True,
            )
        )

    def position(self, subject_id: int) -> int | None:
        """The subject's row in the batch's index, or None when the batch has none of its events."""
        i = bisect.bisect_left(self._ids, subject_id)
        return i if i < len(self._ids) and self._ids[i] == subject_id else None

    def slice(self, subject_id: int) -> pa.Table | None:
        i = self.position(subject_id)
        if i is None:
            return None
        start, remaining = self._starts[i], self._counts[i]
        b = bisect.bisect_right(self._batch_starts, start) - 1
        parts = []
        while remaining > 0:
            offset = start - self._batch_starts[b]
            take = min(remaining, self.batches[b].num_rows - offset)
            parts.append(self.batches[b].slice(offset, take))
            remaining -= take
            start += take
            b += 1
        if self.current:
            return pa.Table.from_batches(parts, schema=STORED_EVENT_SCHEMA)
        return pa.Table.from_batches(parts).cast(STORED_EVENT_SCHEMA)


def _joined_runs(
    ids: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A subject index with each subject's consecutive runs joined into one. Writers before
    2026-12-02 split the run of a subject whose events spanned three or more of the commit's
    chunks (a year of a watch's samples), and a read then found only the first part."""
    if len(ids) < 2 or not (ids[1:] == ids[:-1]).any():
        return ids, starts, counts
    first = np.concatenate(([True], ids[1:] != ids[:-1]))
    totals = np.add.reduceat(counts, np.flatnonzero(first))
    return ids[first], starts[first], totals.astype(np.int64)


_PA_MAJOR = int(pa.__version__.split(".")[0])


def plain_strings(events: pa.Table) -> pa.Table:
    """Events with their dictionary-encoded columns decoded (:data:`EVENT_SCHEMA`): what Polars
    and Python rows want. Decoding a column costs microseconds where ``Table.cast`` costs tens
    and a dictionary's ``to_pylist`` a hundred."""
    columns = events.columns
    for i in _DICTIONARY_POSITIONS:
        column = columns[i]
        columns[i] = (
            column.chunk(0).dictionary_decode()
            if column.num_chunks == 1
            else pa.chunked_array([c.dictionary_decode() for c in column.chunks], pa.string())
        )
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


_DICTIONARY_POSITIONS = [STORED_EVENT_SCHEMA.get_field_index(c) for c in DICTIONARY_COLUMNS]


def _latest_versions(batches: list[_MappedBatch], subject_id: int) -> list[pa.Table]:
    """The subject's events of each batch (oldest first), less those a later batch brings a new
    version of: the batches are read newest first, gathering what each amends."""
    parts: list[pa.Table] = []
    replaced: set[tuple[str, int]] = set()
    for batch in reversed(batches):
        part = batch.slice(subject_id)
        if part is not None and replaced:
            record_keys = part.column("record_key").to_pylist()
            sources = part.column("source").to_pylist()
            keep = [
                (source, key) not in replaced
                for source, key in zip(sources, record_keys, strict=True)
            ]
            part = part.filter(pa.array(keep))
        if part is not None and part.num_rows:
            parts.append(part)
        replaced |= batch.amends(subject_id)
    return parts[::-1]


def _sort_by_time(table: pa.Table) -> pa.Table:
    """Order events by time (static facts first), then code."""
    if _PA_MAJOR >= 25:
        return table.sort_by([("time", "ascending", "at_start"), ("code", "ascending", "at_start")])
    return table.sort_by([("time", "ascending"), ("code", "ascending")], null_placement="at_start")


def init(
    root: str | Path,
    *,
    key_file: str | Path | None = None,
    max_date_shift_days: int = 0,
) -> Store:
    """Create an empty store at ``root`` and its secret key (outside the store directory).

    Parameters
    ----------
    root:
        The store directory; created if absent, must be empty otherwise.
    key_file:
        Where to write the secret; default ``$JUMEAU_KEY_DIR/<store id>.key``.
    max_date_shift_days:
        Shift every subject's dates by a consistent, keyed number of days in
        ``[-N, N]`` (0 keeps true dates).
    """
    root = Path(root)
    if (root / layout.STORE_FILE).exists():
        raise layout.StoreError(f"{root} is already a jumeau store")
    if root.exists() and any(root.iterdir()):
        raise layout.StoreError(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    config = layout.StoreConfig(
        store_id=uuid.uuid4().hex,
        max_date_shift_days=max_date_shift_days,
        key_file=str(Path(key_file).resolve()) if key_file else None,
    )
    key_path = Path(key_file) if key_file else keys.default_key_dir() / f"{config.store_id}.key"
    if key_path.resolve().is_relative_to(root.resolve()):
        raise layout.StoreError("the key file must live outside the store directory")
    keys.create_key(key_path)
    config.write(root)
    layout.Manifest().write(root)
    return Store(root)


def open(root: str | Path, *, key_file: str | Path | None = None) -> Store:  # noqa: A001
    """Open an existing store."""
    return Store(root, key_file=key_file)


class Store:
    """A jumeau store directory.

    Parameters
    ----------
    root:
        The store directory created by :func:`init`.
    key_file:
        The secret key, when not at its default place; needed only to ingest or look up ids.
    """

    def __init__(self, root: str | Path, *, key_file: str | Path | None = None) -> None:
        self.root = Path(root)
        self.config = layout.StoreConfig.read(self.root)
        self._key_file = Path(key_file) if key_file else None
        self._pseudonymiser: keys.Pseudonymiser | None = None
        self.refresh()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, batches={len(self.manifest.batches)})"

    def refresh(self) -> None:
        """Re-read the manifest (after a commit by this or another process)."""
        self.manifest = layout.Manifest.read(self.root)
        self._mapped: list[_MappedBatch] | None = None
        self._ancestors: dict[str, tuple[str, ...]] | None = None

    @property
    def key_path(self) -> Path:
        if self._key_file:
            return self._key_file
        if self.config.key_file:
            return Path(self.config.key_file)
        return keys.default_key_dir() / f"{self.config.store_id}.key"

    @property
    def pseudonymiser(self) -> keys.Pseudonymiser:
        """Keyed pseudonyms for this store; needs the secret key."""
        if self._pseudonymiser is None:
            self._pseudonymiser = keys.Pseudonymiser(
                keys.load_key(self.key_path), self.config.max_date_shift_days
            )
        return self._pseudonymiser

    def batch_files(self, filename: str, *, known_at: datetime | None = None) -> list[Path]:
        """One file of every committed batch (e.g. ``events.parquet``), oldest batch first; with
        ``known_at``, of the batches committed by then."""
        base = self.root / layout.BATCHES_DIR
        ids = self.manifest.batch_ids
        if known_at is not None:
            allowed = self.batches_known_at(known_at)
            ids = [b for b in ids if b in allowed]
        return [base / b / filename for b in ids]

    # ---- reading -------------------------------------------------------------------------

    def _batches(self) -> list[_MappedBatch]:
        if self._mapped is None:
            base = self.root / layout.BATCHES_DIR
            self._mapped = [_MappedBatch.open(base / b) for b in self.manifest.batch_ids]
        return self._mapped

    def batches_known_at(self, known_at: datetime) -> set[str]:
        """The batches committed at or before ``known_at`` (naive times are UTC)."""
        if known_at.tzinfo is None:
            known_at = known_at.replace(tzinfo=UTC)
        return {
            b["id"]
            for b in self.manifest.batches
            if datetime.strptime(b["committed_at"], "%Y-%m-%dT%H:%M:%S%z") <= known_at
        }

    def timeline_arrow(
        self, subject_id: int, *, known_at: datetime | None = None, plain: bool = False
    ) -> pa.Table:
        """All events of one subject as Arrow, in time order (static facts first): a zero-copy
        slice of the memory-mapped batch, with code, unit, domain and source dictionary-encoded
        (:data:`~jumeau.model.STORED_EVENT_SCHEMA`), or with ``plain`` as strings
        (:data:`~jumeau.model.EVENT_SCHEMA`, what Polars and Python rows want).

        With ``known_at``, only events from batches committed by then: the store as it was.
        """
        batches = self._batches()
        if known_at is not None:
            allowed = self.batches_known_at(known_at)
            batches = [b for b in batches if b.id in allowed]
        if len(batches) == 1:  # the usual store: one read, nothing to merge
            part = batches[0].slice(subject_id)
            if part is not None:
                return plain_strings(part) if plain else part
        parts = _latest_versions(batches, subject_id)
        if not parts:
            return (EVENT_SCHEMA if plain else STORED_EVENT_SCHEMA).empty_table()
        if len(parts) == 1:
            return plain_strings(parts[0]) if plain else parts[0]
        # batches have their own dictionaries, and Arrow sorts strings, not dictionaries
        table = _sort_by_time(pa.concat_tables([plain_strings(part) for part in parts]))
        return table if plain else table.cast(STORED_EVENT_SCHEMA)

    def timeline(
        self,
        subject_id: int,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        codes: list[str] | None = None,
        domains: list[str] | None = None,
        known_at: datetime | None = None,
    ) -> pl.DataFrame:
        """One subject's events as a Polars frame, in time order.

        Parameters
        ----------
        subject_id:
            The subject's pseudonym.
        start, end:
            Keep timed events with ``start <= time <= end``; static facts are kept always.
        codes:
            Keep events whose code equals one of these or starts with one ending in ``/``
            (``LOINC/`` keeps every LOINC code).
        domains:
            Keep events of these domains.
        known_at:
            Read the store as it was then: only batches committed by ``known_at``.
        """
        frame = polars_frame(self.timeline_arrow(subject_id, known_at=known_at))
        if start is not None:
            frame = frame.filter(pl.col("time").is_null() | (pl.col("time") >= start))
        if end is not None:
            frame = frame.filter(pl.col("time").is_null() | (pl.col("time") <= end))
        if codes:
            exact = [c for c in codes if not c.endswith("/")]
            prefixes = [c for c in codes if c.endswith("/")]
            cond = pl.col("code").is_in(exact)
            for p in prefixes:
                cond = cond | pl.col("code").str.starts_with(p)
            frame = frame.filter(cond)
        if domains:
            frame = frame.filter(pl.col("domain").is_in(domains))
        return frame

    def latest_time(self, *, known_at: datetime | None = None) -> datetime | None:
        """The time of the store's latest timed event (with ``known_at``: as the store was)."""
        frame = self.scan(known_at=known_at).select(pl.col("time").max()).collect()
        return frame["time"][0] if frame.height else None

    def has_subject(self, subject_id: int) -> bool:
        """Whether any batch of the store holds events of ``subject_id``."""
        return any(batch.position(subject_id) is not None for batch in self._batches())

    def subjects(self) -> np.ndarray:
        """Every subject id in the store, sorted."""
        ids = [b.subject_ids for b in self._batches()]
        if not ids:
            return np.array([], dtype=np.int64)
        return np.unique(np.concatenate(ids))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with views ``events`` and ``rejects`` over the committed batches
        (each row with the ``batch`` that wrote it)."""
        con = connect()
        for view, filename, schema in (
            ("events", layout.EVENTS_PARQUET, EVENT_SCHEMA),
            ("rejects", layout.REJECTS_PARQUET, REJECT_SCHEMA),
        ):
            files = self.batch_files(filename)
            if files:
                parts = (
                    self.current_events_sql(with_batch=True)
                    if view == "events"
                    else " UNION ALL BY NAME ".join(
                        f"SELECT *, '{f.parent.name}' AS batch FROM read_parquet({sql_string(f)})"
                        for f in files
                    )
                )
                run(con, f"CREATE VIEW {view} AS {parts}")
            else:
                con.register(f"_{view}_empty", schema.empty_table())
                run(
                    con,
                    f"CREATE VIEW {view} AS SELECT *, NULL::VARCHAR AS batch FROM _{view}_empty",
                )
        return con

    def scan(self, *, known_at: datetime | None = None) -> pl.LazyFrame:
        """Every event as a lazy Polars frame, for columnar queries (with ``known_at``, only the
        batches committed by then: the store as it was)."""
        batches = self.current_batch_files(known_at=known_at)
        if not batches:
            return pl.LazyFrame(schema=pl.from_arrow(EVENT_SCHEMA.empty_table()).schema)
        if not any(amended for _, amended in batches):
            return pl.scan_parquet([str(events) for events, _ in batches])
        frames = []
        for events, amended in batches:
            frame = pl.scan_parquet(events)
            if amended:
                replaced = pl.scan_parquet(amended).select("source", "record_key")
                frame = frame.join(
                    replaced, on=["source", "record_key"], how="anti", maintain_order="left"
                )
            frames.append(frame)
        return pl.concat(frames)

    def current_batch_files(
        self, *, known_at: datetime | None = None
    ) -> list[tuple[Path, list[Path]]]:
        """Every committed batch's events file (oldest first; with ``known_at``, of the batches
        committed by then) with the amendment files of the later batches: the batch's current
        events are its events less the records those files name. Every reader of the store
        (Polars, DuckDB, Spark) applies this one rule."""
        events = self.batch_files(layout.EVENTS_PARQUET, known_at=known_at)
        amended = self.batch_files(layout.SUPERSEDED_FILE, known_at=known_at)
        present = [p if p.exists() else None for p in amended]
        return [(e, [p for p in present[i + 1 :] if p]) for i, e in enumerate(events)]

    def current_events_sql(
        self, *, with_batch: bool = False, batches: set[str] | None = None
    ) -> str | None:
        """A DuckDB query of the store's current events: every batch's (or those of the
        ``batches`` named), less the records a later batch amends (each row with its ``batch``
        id if asked); None when there are none."""
        parts = []
        for events, amended in self.current_batch_files():
            if batches is not None and events.parent.name not in batches:
                continue
            # one read per batch with its id as a constant: free, where a per-row file name
            # would slow every scan
            batch = f", '{events.parent.name}' AS batch" if with_batch else ""
            part = f"SELECT *{batch} FROM read_parquet({sql_string(events)})"
            if amended:
                part = (
                    f"SELECT e.* FROM ({part}) e ANTI JOIN (SELECT source, record_key FROM "
                    f"read_parquet({[str(p) for p in amended]!r})) a ON a.source = e.source "
                    "AND a.record_key = e.record_key"
                )
            parts.append(part)
        return " UNION ALL BY NAME ".join(parts) if parts else None

    def signal_records(self, subject_id: int | None = None) -> list:
        """Waveform records in the store (of one subject, if given), by start time."""
        from jumeau.signals.store import SignalRecord

        records = [
            SignalRecord(meta.parent)
            for batch in self.manifest.batch_ids
            for meta in (self.root / layout.BATCHES_DIR / batch / layout.SIGNALS_DIR).glob(
                "*/meta.json"
            )
        ]
        if subject_id is not None:
            records = [r for r in records if r.subject_id == subject_id]
        return sorted(records, key=lambda r: (r.start, r.id))

    def codes_sql(self) -> str:
        """A DuckDB query giving ``code, description, parent_codes`` for every described code in
        the store (a code described by several batches: one description, every parent once)."""
        files = [str(p) for p in self.batch_files(layout.CODES_PARQUET) if p.exists()]
        if not files:
            return (
                "SELECT NULL::VARCHAR AS code, NULL::VARCHAR AS description, "
                "NULL::VARCHAR[] AS parent_codes WHERE false"
            )
        # batches written before codes had parents have no such column
        with_parents = [f for f in files if "parent_codes" in pq.read_schema(f).names]
        parents = (
            f"SELECT code, parent_codes FROM read_parquet({with_parents!r})"
            if with_parents
            else "SELECT NULL::VARCHAR AS code, NULL::VARCHAR[] AS parent_codes WHERE false"
        )
        return f"""SELECT d.code, d.description, p.parent_codes FROM
            (SELECT code, any_value(description ORDER BY description NULLS LAST) AS description
             FROM read_parquet({files!r}) GROUP BY code) d
            LEFT JOIN (SELECT code, {layout.PARENT_CODES_AGGREGATE} AS parent_codes
                       FROM ({parents}) GROUP BY code) p USING (code)"""

    def code_descriptions(self) -> dict[str, str]:
        """Every described code of the store and its description."""
        return {code: desc for code, desc, _ in self._code_metadata() if desc}

    def code_parents(self) -> dict[str, tuple[str, ...]]:
        """Every code the store knows parents of (e.g. a local lab code's LOINC code) and them."""
        return {code: tuple(parents) for code, _, parents in self._code_metadata() if parents}

    def code_ancestors(self) -> dict[str, tuple[str, ...]]:
        """Every code with parents and all the codes above it, nearest first (read once per
        state of the store): what lets a twin read ``LAB//50912//mg/dL`` as ``LOINC/2160-0``."""
        if self._ancestors is None:
            self._ancestors = code_ancestors(self.code_parents())
        return self._ancestors

    def _code_metadata(self) -> list[tuple]:
        con = duckdb.connect()
        try:
            return run(con, self.codes_sql())
        finally:
            con.close()

    def rejects(self) -> pl.DataFrame:
        """Every rejected record with its reason and its file (the store keeps file paths sealed;
        reading them back needs the store's key)."""
        files = [str(p) for p in self.batch_files(layout.REJECTS_PARQUET)]
        if not files:
            return pl.from_arrow(REJECT_SCHEMA.empty_table())  # type: ignore[return-value]
        rejects = pl.read_parquet(files)
        # the file paths are sealed in the store (a file may be named after its patient); without
        # the key they stay sealed
        try:
            unseal = self.pseudonymiser.unseal
        except keys.StoreKeyError:
            return rejects
        paths = {f: unseal(f) for f in rejects["file"].unique().to_list()}
        return rejects.with_columns(pl.col("file").replace_strict(paths, return_dtype=pl.String))

    def stats(self) -> dict:
        """Subjects, events, events by domain and source, rejects, batches, records amended and
        records withdrawn at the source since first stored, and subjects erased on their
        withdrawal."""
        con = self.connect()
        try:
            n_events, n_subjects = run(
                con, "SELECT count(*), count(DISTINCT subject_id) FROM events"
            )[0]
            by_domain = dict(
                run(con, "SELECT domain, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC")
            )
            by_source = dict(run(con, "SELECT source, count(*) FROM events GROUP BY 1 ORDER BY 1"))
            time_range = run(con, "SELECT min(time), max(time) FROM events")[0]
            rejects = dict(run(con, "SELECT source, count(*) FROM rejects GROUP BY 1 ORDER BY 1"))
        finally:
            con.close()
        return {
            "store": str(self.root),
            "subjects": n_subjects,
            "events": n_events,
            "events_by_domain": by_domain,
            "events_by_source": by_source,
            "first_time": time_range[0].isoformat() if time_range[0] else None,
            "last_time": time_range[1].isoformat() if time_range[1] else None,
            "rejects": sum(rejects.values()),
            "rejects_by_source": rejects,
            "batches": len(self.manifest.batches),
            "signal_records": len(self.signal_records()),
            **self._hidden_records(),
            "withdrawn_subjects": len(withdrawn_subjects(self.root)),
        }

    def _hidden_records(self) -> dict[str, int]:
        """Stored records later batches hide: amended at the source (a new version stored),
        withdrawn there (entered in error, deleted) and of patients merged into others, as the
        batches' reports count them."""
        hidden = withdrawn = merged = 0
        for superseded, report in zip(
            self.batch_files(layout.SUPERSEDED_FILE),
            self.batch_files(layout.REPORT_FILE),
            strict=True,
        ):
            if superseded.exists():
                rows = pq.read_metadata(superseded).num_rows
                said = json.loads(report.read_text()) if report.exists() else {}
                hidden += rows
                # never more than the file holds: an erasure takes its subjects' rows out
                withdrawn += min(said.get("events_retracted", 0), rows)
                merged += min(said.get("events_merged", 0), rows - withdrawn)
        return {
            "amended_records": hidden - withdrawn - merged,
            "withdrawn_records": withdrawn,
            "merged_records": merged,
        }

    # ---- the twin ------------------------------------------------------------------------

    def twin(self, subject_id: int, as_of: datetime | None = None, **kwargs):
        """The subject's :class:`~jumeau.twin.Twin` built from what was known at ``as_of``
        (keyword arguments: ``known_at``, ``population``; see :func:`jumeau.twin.build_twin`)."""
        from jumeau.twin import build_twin

        return build_twin(self, subject_id, as_of, **kwargs)

    # ---- identity ------------------------------------------------------------------------

    def lookup(self, source: str, source_id: str) -> int:
        """The pseudonym of a source patient id (needs the key): of the patient it was merged
        into, if a batch said so (FHIR ``link`` replaced-by), followed to the end."""
        subject = self.pseudonymiser.subject_id(source, source_id)
        return self.merges().get(subject, (subject, 0))[0]

    def merges(self) -> dict[int, tuple[int, int]]:
        """Pseudonym of each patient merged into another -> the survivor's pseudonym and the
        microseconds from the one's date shift to the survivor's, merges of merges followed to
        the end, as the batches said (a later batch's word last)."""
        said: dict[int, tuple[int, int]] = {}
        for path in self.batch_files(layout.MERGES_FILE):
            if path.exists():
                table = pq.read_table(path).to_pydict()
                said.update(
                    (merged, (into, shift))
                    for merged, into, shift in zip(
                        table["subject_id"],
                        table["into_subject_id"],
                        table["time_shift_us"],
                        strict=True,
                    )
                )
        out = {}
        for merged in said:
            into, shift, seen = merged, 0, {merged}
            while into in said and said[into][0] not in seen:
                into, step = said[into]
                shift += step
                seen.add(into)
            out[merged] = (into, shift)
        return out

    def reidentify(self, subject_id: int, *, purpose: str) -> list[dict]:
        """The source ids and direct identifiers the vault keeps for a pseudonym (needs the
        key), one entry per source that knows the subject.

        Each call is first recorded in the store's audit trail (user, time, subject, purpose;
        :func:`audit_trail`): a re-identification that cannot be recorded is refused.
        """
        import json

        from jumeau.store import audit

        vault = self.identities()
        rows = (
            vault.filter(pl.col("subject_id") == subject_id).unique(maintain_order=True).to_dicts()
            if vault.height
            else []
        )  # a patient ingested again with new data is in the vault of each batch
        audit.record(
            self.root,
            self.pseudonymiser.audit_key(),
            subject_id=subject_id,
            purpose=purpose,
            found=len(rows),
        )
        return [{**row, "identifiers": json.loads(row["identifiers"] or "{}")} for row in rows]

    def forget(self, subject_ids: list[int], *, purpose: str) -> dict:
        """Erase subjects who withdraw from every file of the store and keep them out of later
        ingests (needs the key); each request is first written to the audit trail. See
        :func:`jumeau.store.erasure.forget`."""
        from jumeau.store.erasure import forget

        return forget(self, subject_ids, purpose=purpose)

    def audit_trail(self) -> list[dict]:
        """Every re-identification of the store, oldest first, its chain of keyed MACs checked
        (an entry changed, removed or inserted since is an :class:`~jumeau.store.audit.AuditError`)."""
        from jumeau.store import audit

        return audit.read_trail(self.root, self.pseudonymiser.audit_key())

    def identities(self) -> pl.DataFrame:
        """Decrypt the identity vault of every batch (needs the key)."""
        key = self.pseudonymiser.vault_key()
        parts = [read_vault(p, key) for p in self.batch_files(layout.VAULT_FILE) if p.exists()]
        if not parts:
            return pl.DataFrame()
        return pl.from_arrow(pa.concat_tables(parts))  # type: ignore[return-value]


def code_ancestors(parents: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The transitive closure of a parent map, each code's ancestors nearest first (a cycle in
    the hierarchy ends where it comes back)."""
    out: dict[str, tuple[str, ...]] = {}
    for code in parents:
        seen: list[str] = []
        frontier = list(parents[code])
        while frontier:
            nxt = []
            for parent in frontier:
                if parent != code and parent not in seen:
                    seen.append(parent)
                    nxt.extend(parents.get(parent, ()))
            frontier = nxt
        out[code] = tuple(seen)
    return out


def polars_frame(table: pa.Table) -> pl.DataFrame:
    """A small Arrow table of events as a Polars frame, column by column, dictionaries decoded
    to strings (``pl.from_arrow`` on a whole table costs several times more for a timeline's
    few rows)."""
    columns = []
    for name in table.column_names:
        column = table.column(name)
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        series = pl.Series(name, array)
        if pa.types.is_dictionary(array.type):
            series = series.cast(pl.String)
        columns.append(series)
    return pl.DataFrame(columns)
