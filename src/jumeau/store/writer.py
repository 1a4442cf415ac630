"""Atomic, idempotent ingest batches.

A connector hands a :class:`BatchWriter` canonical events, either as Arrow tables or as Parquet
files it writes itself with DuckDB (``raw_path``), plus rejects, code descriptions and
identities. ``commit`` drops events already in the store (same source and record key), sorts the
rest by subject and time, writes the batch files in a staging folder and publishes them with one
atomic manifest update.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jumeau._duck import arrow_reader, arrow_table, connect, run, scalar, sql_string
from jumeau.model import (
    CONNECTOR_SCHEMA,
    DICTIONARY_COLUMNS,
    HELD_SCHEMA,
    MERGE_SCHEMA,
    PARTS_SCHEMA,
    REJECT_SCHEMA,
    RETRACTION_SCHEMA,
    STORED_EVENT_SCHEMA,
)
from jumeau.store import layout
from jumeau.store.erasure import WITHDRAWN_FILE, withdrawn_subjects
from jumeau.store.report import IngestReport
from jumeau.store.vault import VAULT_SCHEMA, write_vault

if TYPE_CHECKING:
    from jumeau.store.store import Store

ROW_GROUP_SIZE = 128 * 1024
#: Row groups of the batch's Parquet file: large for scans (subject ranges still prune by stats).
PARQUET_ROW_GROUP_SIZE = 1024 * 1024
#: Events sorted at once at commit: a larger batch is sorted one subject range after another.
#: A million subjects' 85 M events commit as fast in ranges of 10 M as of 24 M (each range
#: reads the raw files again, which costs less than the larger sort saves) with half the
#: peak memory: 1.4 GB against 3.0 GB.
SORT_RANGE_EVENTS = 10_000_000
#: A raw event file may carry this column; rows where it is set are not events (the connector
#: reports them as rejects) and are skipped at commit.
REJECT_REASON = "reject_reason"
#: Code metadata: a description and the codes a code belongs under (MEDS ``parent_codes``, e.g. a
#: local lab code's LOINC code), which let everything downstream read a local code as a standard one.
CODES_SCHEMA = pa.schema(
    [("code", pa.string()), ("description", pa.string()), ("parent_codes", pa.list_(pa.string()))]
)
INDEX_SCHEMA = pa.schema([("subject_id", pa.int64()), ("start", pa.int64()), ("count", pa.int64())])


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table``'s columns to ``schema``, naming what is missing."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"connector output lacks columns {missing}")
    return table.select(schema.names).cast(schema)


class BatchWriter:
    """Collects one ingest batch and commits it atomically.

    Use as a context manager: leaving the block without ``commit`` (or by an exception) discards
    everything written so far and leaves the store untouched.
    """

    def __init__(
        self, store: Store, source_kind: str, source: str, *, namespace: str | None = None
    ) -> None:
        self.store = store
        #: the namespace of the source's ids (``omop``, ``chu-lille``): what a full refresh of
        #: the source replaces
        self.namespace = namespace
        self._refreshed: list[str] = []
        self.report = IngestReport(source_kind=source_kind, source=source)
        self._started = time.perf_counter()
        self._lock_fd = layout.lock_store(store.root)
        layout.clear_unpublished(store.root)
        self.batch_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.dir = store.root / layout.STAGING_DIR / self.batch_id
        self.raw_dir = self.dir / "raw"
        self.raw_dir.mkdir(parents=True)
        self._events: pq.ParquetWriter | None = None
        self._rejects = pq.ParquetWriter(self.dir / "raw-rejects.parquet", REJECT_SCHEMA)
        self._codes = pq.ParquetWriter(self.dir / "raw-codes.parquet", CODES_SCHEMA)
        self._parts: pq.ParquetWriter | None = None
        self._identities: list[pa.Table] = []
        self._retractions: list[pa.Table] = []
        self._held: list[pa.Table] = []
        self._merges: list[pa.Table] = []
        self._closed = False

    @property
    def staging_dir(self) -> Path:
        """A scratch folder a connector may use; removed with the batch."""
        return self.dir

    def signal_folder(self, record_id: str) -> Path:
        """Where a connector writes one waveform record of the batch (see
        :func:`jumeau.signals.store.write_record`)."""
        return self.dir / layout.SIGNALS_DIR / record_id

    def raw_path(self, name: str) -> Path:
        """Where a connector may write a Parquet file of events itself (e.g. a DuckDB ``COPY``).

        The file holds ``CONNECTOR_SCHEMA`` columns and optionally ``reject_reason``; rows with
        a reason are skipped (report them with :meth:`add_rejects`).
        """
        return self.raw_dir / f"{name}.parquet"

    def add_events(self, data: pa.Table | pa.RecordBatch) -> int:
        """Append canonical events (``CONNECTOR_SCHEMA`` columns); return the row count."""
        table = conform(data, CONNECTOR_SCHEMA)
        if table.num_rows:
            if self._events is None:
                self._events = pq.ParquetWriter(self.raw_path("arrow-events"), CONNECTOR_SCHEMA)
            self._events.write_table(table, row_group_size=ROW_GROUP_SIZE)
        return table.num_rows

    def add_rejects(self, data: pa.Table) -> int:
        """Append rejected records (``REJECT_SCHEMA``); a file named by a relative path is named
        by its absolute one, so the same source read from another folder is the same source."""
        table = conform(data, REJECT_SCHEMA)
        if table.num_rows:
            files = table.column("file")
            for name in pc.unique(files).to_pylist():
                if name and not os.path.isabs(name) and os.path.exists(name):
                    files = pc.if_else(pc.equal(files, name), str(Path(name).resolve()), files)
            index = REJECT_SCHEMA.get_field_index("file")
            table = table.set_column(index, REJECT_SCHEMA.field(index), files)
            self._rejects.write_table(table)
        return table.num_rows

    def add_codes(self, data: pa.Table) -> None:
        """Describe codes (``code``, ``description`` and optionally ``parent_codes``); only codes
        the batch uses are kept."""
        if "parent_codes" not in data.column_names:
            data = data.append_column(
                "parent_codes", pa.nulls(data.num_rows, CODES_SCHEMA.field("parent_codes").type)
            )
        table = conform(data, CODES_SCHEMA)
        if table.num_rows:
            self._codes.write_table(table)

    def add_retractions(self, data: pa.Table) -> None:
        """Withdraw stored records (``RETRACTION_SCHEMA``): a result the source now says was
        entered in error, a resource it deleted. Their events of earlier batches are hidden from
        this batch on (the store as it was before still shows them); a record not stored is
        ignored, and a null ``subject_id`` is the subject the record is stored under."""
        table = conform(data, RETRACTION_SCHEMA)
        if table.num_rows:
            self._retractions.append(table)

    def add_parts(self, data: pa.Table) -> None:
        """Say which events are parts of a larger record (``PARTS_SCHEMA``: a resource's
        components, answers, series): withdrawing the record (a DELETE, entered in error)
        withdraws every stored part of it, and a new version of the record hides the stored
        parts it no longer has."""
        table = conform(data, PARTS_SCHEMA)
        if table.num_rows:
            if self._parts is None:
                self._parts = pq.ParquetWriter(self.dir / _RAW_PARTS, PARTS_SCHEMA)
            self._parts.write_table(table)

    def add_merges(self, data: pa.Table) -> None:
        """Merge stored subjects into others (``MERGE_SCHEMA``): a master patient index found
        two records of one patient after the one merged away was stored. Its stored events move
        to the surviving subject (the records the batch brings again come as the batch has
        them) and are hidden from the merged one from this batch on; a subject with nothing
        stored merges nothing."""
        table = conform(data, MERGE_SCHEMA)
        if table.num_rows:
            self._merges.append(table)

    def add_held(self, data: pa.Table) -> None:
        """Records (``source``, ``record_key``) the source still holds though the batch rejected
        them (a resource malformed today): a full refresh keeps their stored versions."""
        table = conform(data, HELD_SCHEMA)
        if table.num_rows:
            self._held.append(table)

    def refresh(self) -> None:
        """Say the batch is the whole of its source (a warehouse's nightly snapshot, a complete
        Bulk Data export) for the source tables it accepted records of (``omop/measurement``):
        the records that earlier batches of the same kind and namespace stored from them and
        that the batch no longer holds were deleted at the source, and are withdrawn from the
        batch on. A table of which nothing was accepted (every row rejected, a column renamed)
        withdraws nothing: a broken export must not empty the store."""
        if self.namespace is None:
            raise ValueError("a full refresh needs the namespace of the source's ids")
        tables = self.report.tables
        self._refreshed = sorted(name for name, counts in tables.items() if counts.accepted)
        kept = sorted(
            name for name, counts in tables.items() if counts.read and not counts.accepted
        )
        if kept:
            self.report.warnings.append(
                f"full refresh: nothing of {', '.join(kept)} was accepted; the records stored "
                "from them are kept, not withdrawn"
            )

    def add_identities(self, data: pa.Table) -> None:
        """Keep direct identifiers for the encrypted vault (``VAULT_SCHEMA``)."""
        self._identities.append(conform(data, VAULT_SCHEMA))

    def _close_writers(self) -> None:
        for w in (self._events, self._rejects, self._codes, self._parts):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()

    def commit(self) -> IngestReport:
        """Deduplicate, sort and publish the batch; a batch that adds nothing is dropped."""
        self._close_writers()
        self._drop_known_signals()
        self._seal_earlier_batches()
        con = connect(self.dir / "tmp")
        try:
            written, present, subjects, amended = self._write_events(con)
            self._write_superseded(con, amended)
            rejects = self._write_rejects(con)
            self._write_codes(con)
        finally:
            con.close()
        report = self.report
        report.events_written, report.events_already_present = written, present
        report.rejects_written, report.subjects = rejects, subjects
        report.seconds = round(time.perf_counter() - self._started, 3)
        if written == 0 and rejects == 0 and not (report.events_retracted or report.events_merged):
            self._discard()
            return report
        report.batch = self.batch_id
        report.committed = True
        for name in ("raw-rejects.parquet", "raw-codes.parquet"):
            (self.dir / name).unlink()
        if self._parts is not None:
            (self.dir / _RAW_PARTS).rename(self.dir / layout.PARTS_FILE)
        for child in list(self.dir.iterdir()):
            if child.is_dir() and child.name != layout.SIGNALS_DIR:
                shutil.rmtree(child)
        if self._merges:
            merges = pa.concat_tables(self._merges).select(
                ["subject_id", "into_subject_id", "time_shift_us"]
            )
            pq.write_table(merges, self.dir / layout.MERGES_FILE)
        identities = self._kept_identities()
        if identities is not None:
            write_vault(
                self.dir / layout.VAULT_FILE, identities, self.store.pseudonymiser.vault_key()
            )
        (self.dir / layout.REPORT_FILE).write_text(
            json.dumps(self._sealed_report(report.to_dict()), indent=2)
        )
        self._publish()
        return report

    def _seal_earlier_batches(self) -> None:
        """Seal the file paths of batches committed before paths were sealed (their rejects,
        report and manifest entry), once, under the store's lock. Each file is replaced whole;
        sealing what is sealed changes nothing, so a commit killed half-way is finished by the
        next."""
        root, seal = self.store.root, self.store.pseudonymiser.seal
        manifest = layout.Manifest.read(root)
        legacy = [
            b for b in manifest.batches if b.get("source") and b["source"] != seal(b["source"])
        ]
        for entry in legacy:
            folder = root / layout.BATCHES_DIR / entry["id"]
            rejects = folder / layout.REJECTS_PARQUET
            if rejects.exists():
                tmp = rejects.with_name(f".{rejects.name}.tmp")
                pq.write_table(self._sealed_files(pq.read_table(rejects)), tmp, compression="zstd")
                os.replace(tmp, rejects)
            report = folder / layout.REPORT_FILE
            if report.exists():
                layout.write_json_atomic(
                    report, self._sealed_report(json.loads(report.read_text()))
                )
            entry["source"] = seal(entry["source"])
        if legacy:
            manifest.write(root)
            self.store.refresh()

    def _sealed_report(self, report: dict) -> dict:
        """A report as the store keeps it: the source's path and the warnings (which name files)
        sealed, since a file may be named after its patient."""
        seal = self.store.pseudonymiser.seal
        return {
            **report,
            "source": seal(report.get("source")),
            "warnings": [seal(w) for w in report.get("warnings", [])],
        }

    def _kept_identities(self) -> pa.Table | None:
        """The batch's identities, less those of subjects who withdrew (None: nothing to keep)."""
        if not self._identities:
            return None
        table = without_subjects(
            pa.concat_tables(self._identities), withdrawn_subjects(self.store.root)
        )
        return table if table.num_rows else None

    def _drop_known_signals(self) -> None:
        """Waveform records already in the store (a record's folder is named by the keyed hash
        of its source) are not stored twice when a source is ingested again with new data."""
        staged = self.dir / layout.SIGNALS_DIR
        if not staged.is_dir():
            return
        gone = set(withdrawn_subjects(self.store.root).tolist())
        if gone:
            from jumeau.signals.store import SignalRecord

            for record in list(staged.iterdir()):
                if SignalRecord(record).subject_id in gone:
                    shutil.rmtree(record)
        for batch in self.store.manifest.batch_ids:
            known = self.store.root / layout.BATCHES_DIR / batch / layout.SIGNALS_DIR
            if not known.is_dir():
                continue
            for record in list(staged.iterdir()):
                if (known / record.name).is_dir():
                    shutil.rmtree(record)

    def _raw_files(self) -> list[str]:
        """The connector's raw event files (see :meth:`raw_path`), in name order."""
        return sorted(str(p) for p in self.raw_dir.glob("*.parquet"))

    def _existing(self, filename: str) -> list[str]:
        return [str(p) for p in self.store.batch_files(filename)]

    def _write_events(
        self, con: duckdb.DuckDBPyConnection
    ) -> tuple[int, int, int, pa.Table | None]:
        """Write the batch's event files; return the events written, those already stored, the
        subjects, and the stored records that the batch brings new versions of."""
        raw = self._raw_files()
        if not raw and not self._merges:  # a batch of rejects only still has (empty) event files
            with _EventFiles(self.dir):
                pass
            return 0, 0, 0, None
        if not raw:  # a batch that only merges patients: the events it moves are its own
            empty = self.raw_path("merges-only")
            pq.write_table(CONNECTOR_SCHEMA.empty_table(), empty)
            raw = [str(empty)]
        columns = {
            r[0]
            for r in run(
                con, "DESCRIBE SELECT * FROM read_parquet($raw, union_by_name=true)", {"raw": raw}
            )
        }
        valid = f"{REJECT_REASON} IS NULL" if REJECT_REASON in columns else "true"
        withdrawn = self.store.root / WITHDRAWN_FILE
        if withdrawn.exists():  # subjects who withdrew are not stored again
            out = f"CAST(subject_id AS BIGINT) IN (SELECT subject_id FROM read_parquet({str(withdrawn)!r}))"
            left_out = scalar(
                con,
                f"SELECT count(*) FROM read_parquet({raw!r}, union_by_name=true) "
                f"WHERE {valid} AND {out}",
            )
            if left_out:
                self.report.events_withdrawn = left_out
                self.report.warnings.append(
                    f"{left_out:,} events of subjects who withdrew from the store are not stored"
                )
            valid = f"{valid} AND NOT ({out})"
        run(
            con,
            f"""CREATE TEMP VIEW incoming_raw AS SELECT
                CAST(subject_id AS BIGINT) AS subject_id, CAST(time AS TIMESTAMP) AS time,
                CAST(code AS VARCHAR) AS code, CAST(numeric_value AS DOUBLE) AS numeric_value,
                CAST(text_value AS VARCHAR) AS text_value, CAST(unit AS VARCHAR) AS unit,
                CAST(end_time AS TIMESTAMP) AS end_time, CAST(domain AS VARCHAR) AS domain,
                CAST(source AS VARCHAR) AS source, CAST(record_key AS BIGINT) AS record_key
            FROM read_parquet({raw!r}, union_by_name=true) WHERE {valid}""",
        )
        existing = self.store.current_events_sql()
        moved = self._moved_by_merges(con, existing)
        run(
            con,
            "CREATE TEMP VIEW incoming AS SELECT * FROM incoming_raw"
            + (" UNION ALL SELECT * FROM moved" if moved else ""),
        )
        total = scalar(con, "SELECT count(*) FROM incoming")
        # The sort carries its rows' payload: the low-cardinality text columns travel as ENUMs
        # (a few bytes instead of a string each), which keeps a large batch's sort in memory far
        # longer, and come out as the Arrow dictionaries the batch's files store. The tiebreak is
        # the record key's top 31 bits: a 24-byte sort key sorts much faster than the 27 bytes
        # the whole key needs, and ties beyond it are vanishingly rare.
        for column in DICTIONARY_COLUMNS:
            run(
                con,
                f"CREATE TYPE jumeau_{column} AS ENUM "
                f"(SELECT DISTINCT {column} FROM incoming WHERE {column} IS NOT NULL)",
            )
        encoded = ", ".join(f"r.{c}::jumeau_{c} AS {c}" for c in DICTIONARY_COLUMNS)
        amended: list[pa.Table] = []
        with _EventFiles(self.dir) as files:
            for ours, theirs in zip(
                _subject_ranges(total, "r.subject_id"),
                _subject_ranges(total, "e.subject_id"),
                strict=True,
            ):
                # records already stored are skipped; a record's subject is its own, so only the
                # stored events of the same subject range are read (their files are sorted by it).
                # A stored record whose content the source has since changed (an amended result)
                # comes through flagged: its new version is stored and the batch says it
                # supersedes the one stored.
                # A record stored under another subject (moved by a merge, re-attributed at
                # the source) is new there and hides the stored one.
                flag = joined = kept = ""
                if existing:
                    flag = ", e.record_key IS NOT NULL AS _stored, e.subject_id AS _stored_subject"
                    joined = (
                        " LEFT JOIN (SELECT subject_id, source, record_key, "
                        f"{_content_digest('e')} AS digest FROM ({existing}) e WHERE {theirs}) e "
                        "ON e.source = r.source AND e.record_key = r.record_key"
                    )
                    kept = (
                        f" AND (e.record_key IS NULL OR e.digest <> {_content_digest('r')}"
                        " OR e.subject_id <> r.subject_id)"
                    )
                query = (
                    f"SELECT r.* REPLACE ({encoded}){flag} FROM incoming r{joined} "
                    f"WHERE {ours}{kept} "
                    "ORDER BY subject_id, time NULLS FIRST, (r.record_key >> 29)::INTEGER"
                )
                for batch in arrow_reader(con, query, batch_size=ROW_GROUP_SIZE):
                    if existing:
                        stored = batch.column("_stored")
                        if pc.any(stored).as_py():
                            replaces = batch.filter(stored)
                            amended.append(
                                pa.table(
                                    {
                                        "subject_id": replaces.column("_stored_subject"),
                                        "source": replaces.column("source").cast(pa.string()),
                                        "record_key": replaces.column("record_key"),
                                    }
                                )
                            )
                        batch = batch.drop_columns(["_stored", "_stored_subject"])
                    files.add(pa.Table.from_batches([batch]))
        written = files.written
        replaced = pa.concat_tables(amended) if amended else None
        if moved:
            merged_away = arrow_table(
                con, "SELECT subject_id, source, record_key FROM merged_away"
            ).cast(RETRACTION_SCHEMA)
            if replaced is not None:  # the moves are counted as moves, not amendments
                replaced = replaced.cast(RETRACTION_SCHEMA)
                amendments = replaced.join(
                    merged_away, ["subject_id", "source", "record_key"], join_type="left anti"
                )
                replaced = pa.concat_tables([amendments.cast(RETRACTION_SCHEMA), merged_away])
            else:
                amendments, replaced = None, merged_away
            hidden = merged_away.num_rows
            self.report.events_merged = hidden
            self.report.warnings.append(
                f"{_events(hidden)} of patients merged into others since they were stored "
                "(link replaced-by): moved to the surviving patient, the merged record's own "
                "demographics hidden (the store as it was before this batch still shows them "
                "under the merged patient)"
            )
            amended = [amendments] if amendments is not None and amendments.num_rows else []
        if amended:
            changed = sum(t.num_rows for t in amended)
            self.report.events_amended = changed
            self.report.warnings.append(
                f"{_events(changed)} amended at the source since they were stored: the new "
                "versions replace them (the store as it was before this batch still shows the "
                "old ones)"
            )
        return written, total - written, files.subjects, replaced

    def _moved_by_merges(self, con: duckdb.DuckDBPyConnection, existing: str | None) -> bool:
        """Stage the stored events of subjects merged into others (see :meth:`add_merges`): every
        one of them in table ``merged_away`` (hidden from this batch on), and in table ``moved``
        those that move to the surviving subject (not the merged record's own, not those the
        batch brings again). False when nothing stored is merged."""
        if not self._merges or not existing:
            return False
        con.register("merges", pa.concat_tables(self._merges))
        try:
            run(
                con,
                f"""CREATE TEMP TABLE merged_away AS SELECT e.subject_id,
                    e.source::VARCHAR AS source, e.record_key, e.time, e.code::VARCHAR AS code,
                    e.numeric_value, e.text_value, e.unit::VARCHAR AS unit, e.end_time,
                    e.domain::VARCHAR AS domain, m.into_subject_id, m.time_shift_us, m.own_source
                FROM ({existing}) e JOIN merges m ON e.subject_id = m.subject_id
                    AND starts_with(e.source::VARCHAR, m.source_prefix)""",
            )
        finally:
            con.unregister("merges")
        if not scalar(con, "SELECT count(*) FROM merged_away"):
            return False
        run(
            con,
            """CREATE TEMP TABLE moved AS SELECT into_subject_id AS subject_id,
                time + to_microseconds(time_shift_us) AS time, code, numeric_value, text_value,
                unit, end_time + to_microseconds(time_shift_us) AS end_time, domain, source,
                record_key
            FROM merged_away a WHERE source <> own_source AND NOT EXISTS (
                SELECT 1 FROM incoming_raw r WHERE r.source = a.source
                    AND r.record_key = a.record_key)""",
        )
        return True

    def _write_superseded(self, con: duckdb.DuckDBPyConnection, amended: pa.Table | None) -> None:
        """Write the stored records the batch hides: those it amends and those the source
        withdrew, sorted by subject (a timeline read finds a subject's by binary search)."""
        parts = [amended] if amended is not None else []
        retracted = self._stored_retractions(con)
        if retracted is not None and retracted.num_rows:
            parts.append(retracted)
            gone = retracted.num_rows
            self.report.events_retracted = gone
            self.report.warnings.append(
                f"{_events(gone)} withdrawn at the source since they were stored (entered in "
                "error, deleted, gone from a full refresh, or no longer part of their record's "
                "new version): hidden from this batch on (the store as it was before this batch "
                "still shows them)"
            )
        if parts:
            table = pa.concat_tables([p.cast(RETRACTION_SCHEMA) for p in parts])
            # a record both merged away and withdrawn is hidden once
            table = table.group_by(["subject_id", "source", "record_key"]).aggregate([])
            table = table.select(RETRACTION_SCHEMA.names).cast(RETRACTION_SCHEMA)
            table = table.sort_by("subject_id")
            pq.write_table(table, self.dir / layout.SUPERSEDED_FILE)

    def _stored_retractions(self, con: duckdb.DuckDBPyConnection) -> pa.Table | None:
        """The current stored events of the records withdrawn, one row each, under the subject
        each is stored under; records not stored, or hidden already, are left out."""
        stored_parts = self._stored_parts()
        if not (self._retractions or self._refreshed or stored_parts):
            return None  # the usual batch: nothing to look up
        existing = self.store.current_events_sql()
        if not existing:
            return None
        queries = []
        if self._retractions:
            con.register("retractions", pa.concat_tables(self._retractions))
            queries.append(
                f"""SELECT e.subject_id, e.source::VARCHAR AS source, e.record_key
                FROM ({existing}) e SEMI JOIN retractions r ON e.source = r.source
                    AND e.record_key = r.record_key
                    AND (r.subject_id IS NULL OR e.subject_id = r.subject_id)"""
            )
            if stored_parts:  # a record withdrawn is withdrawn with its parts
                queries.append(
                    f"""SELECT e.subject_id, e.source::VARCHAR AS source, e.record_key
                    FROM ({existing}) e SEMI JOIN (SELECT p.source, p.record_key
                        FROM read_parquet({stored_parts!r}) p SEMI JOIN retractions r
                        ON p.source = r.source AND p.resource_key = r.record_key) x
                    ON e.source = x.source AND e.record_key = x.record_key"""
                )
        if self._dropped_parts(con, stored_parts):
            queries.append(
                f"""SELECT e.subject_id, e.source::VARCHAR AS source, e.record_key
                FROM ({existing}) e SEMI JOIN dropped_parts d
                ON e.source = d.source AND e.record_key = d.record_key"""
            )
        absent = self._absent_from_refresh(stored_parts)
        if absent:
            queries.append(absent)
        if not queries:
            return None
        try:
            return arrow_table(con, " UNION ".join(queries)).cast(RETRACTION_SCHEMA)
        finally:
            if self._retractions:
                con.unregister("retractions")

    def _stored_parts(self) -> list[str]:
        """The parts files of the store's batches (see :meth:`add_parts`)."""
        return [str(p) for p in self.store.batch_files(layout.PARTS_FILE) if p.exists()]

    def _dropped_parts(self, con: duckdb.DuckDBPyConnection, stored_parts: list[str]) -> bool:
        """Stage in table ``dropped_parts`` the stored parts (source, record_key) of records the
        batch brings a new version of that no longer has them (an answer taken out of a
        questionnaire, a medication now of one ingredient); False if there are none."""
        if not stored_parts or not self._raw_files():
            return False
        ours = ["SELECT source, record_key AS resource_key FROM incoming"]
        if self._parts is not None:
            ours.append(
                f"SELECT source, resource_key FROM read_parquet({str(self.dir / _RAW_PARTS)!r})"
            )
        run(
            con,
            f"""CREATE TEMP TABLE dropped_parts AS SELECT DISTINCT p.source, p.record_key
            FROM read_parquet({stored_parts!r}) p SEMI JOIN ({" UNION ".join(ours)}) r
                ON p.source = r.source AND p.resource_key = r.resource_key
            ANTI JOIN incoming i ON i.source = p.source AND i.record_key = p.record_key""",
        )
        return bool(scalar(con, "SELECT count(*) FROM dropped_parts"))

    def _absent_from_refresh(self, stored_parts: list[str]) -> str | None:
        """SQL of the stored records of a refreshed source that the batch no longer holds (see
        :meth:`refresh`), or None."""
        if not self._refreshed:
            return None
        ours = {
            b["id"]
            for b in self.store.manifest.batches
            if b.get("source_kind") == self.report.source_kind
            # batches from before namespaces were recorded are of the default one
            and b.get("namespace", self.report.source_kind) == self.namespace
        }
        stored = self.store.current_events_sql(batches=ours)
        if stored is None:
            return None
        # what the source still holds: its rows, rejected ones included (a row that fails a
        # check today is still there: its stored version is kept), and the records a connector
        # rejected before they became rows (see add_held)
        parts = ["SELECT NULL::VARCHAR AS source, NULL::BIGINT AS record_key WHERE false"]
        raw = self._raw_files()
        if raw:
            parts.append(
                "SELECT CAST(source AS VARCHAR) AS source, CAST(record_key AS BIGINT) AS "
                f"record_key FROM read_parquet({raw!r}, union_by_name=true)"
            )
        if self._held:
            held_file = self.dir / "held" / "records.parquet"  # a scratch folder, removed
            held_file.parent.mkdir(exist_ok=True)
            pq.write_table(pa.concat_tables(self._held), held_file)
            parts.append(f"SELECT source, record_key FROM read_parquet({sql_string(held_file)})")
            if stored_parts:  # a record held is held with its parts
                parts.append(
                    f"""SELECT p.source, p.record_key FROM read_parquet({stored_parts!r}) p
                    SEMI JOIN read_parquet({sql_string(held_file)}) h
                        ON p.source = h.source AND p.resource_key = h.record_key"""
                )
        held = " UNION ALL ".join(parts)
        return f"""SELECT e.subject_id, e.source::VARCHAR AS source, e.record_key
            FROM ({stored}) e ANTI JOIN ({held}) h
                ON h.source = e.source::VARCHAR AND h.record_key = e.record_key
            WHERE e.source::VARCHAR IN ({", ".join(sql_string(t) for t in self._refreshed)})"""

    def _write_rejects(self, con: duckdb.DuckDBPyConnection) -> int:
        raw = self.dir / "raw-rejects.parquet"
        existing = self._existing(layout.REJECTS_PARQUET)
        new_filter = ""
        if existing:
            new_filter = (
                f"WHERE NOT EXISTS (SELECT 1 FROM read_parquet({existing!r}) e "
                "WHERE e.source = r.source AND e.file = r.file AND e.record = r.record "
                "AND e.reason = r.reason)"
            )
        out = self.dir / layout.REJECTS_PARQUET
        con.register("raw_rejects", self._sealed_files(pq.read_table(raw)))
        run(
            con,
            f"COPY (SELECT r.* FROM raw_rejects r {new_filter}) TO '{out}' "
            "(FORMAT parquet, COMPRESSION zstd)",
        )
        con.unregister("raw_rejects")
        return scalar(con, f"SELECT count(*) FROM read_parquet('{out}')")

    def _sealed_files(self, rejects: pa.Table) -> pa.Table:
        """Rejects with their file paths sealed (see :meth:`Pseudonymiser.seal`): one seal per
        distinct file, however many of its records were rejected."""
        files = rejects.column("file").combine_chunks().dictionary_encode()
        seal = self.store.pseudonymiser.seal
        sealed = pa.array([seal(f) for f in files.dictionary.to_pylist()], pa.string())
        column = pa.DictionaryArray.from_arrays(files.indices, sealed).cast(pa.string())
        return rejects.set_column(rejects.schema.get_field_index("file"), "file", column)

    def _write_codes(self, con: duckdb.DuckDBPyConnection) -> None:
        events = self.dir / layout.EVENTS_PARQUET
        run(
            con,
            f"""COPY (SELECT code, any_value(description ORDER BY description NULLS LAST) AS description,
                {layout.PARENT_CODES_AGGREGATE} AS parent_codes
            FROM read_parquet('{self.dir / "raw-codes.parquet"}')
            WHERE code IN (SELECT DISTINCT code FROM read_parquet('{events}'))
            GROUP BY code ORDER BY code) TO '{self.dir / layout.CODES_PARQUET}' (FORMAT parquet)""",
        )

    def _publish(self) -> None:
        root = self.store.root
        target = root / layout.BATCHES_DIR / self.batch_id
        target.parent.mkdir(exist_ok=True)
        layout.fsync_tree(self.dir)
        os.rename(self.dir, target)
        layout.fsync_dir(target.parent)
        manifest = layout.Manifest.read(root)
        manifest.batches.append(
            {
                "id": self.batch_id,
                "source_kind": self.report.source_kind,
                "source": self.store.pseudonymiser.seal(self.report.source),
                "events": self.report.events_written,
                "rejects": self.report.rejects_written,
                **({"namespace": self.namespace} if self.namespace is not None else {}),
                "committed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        pause_for_tests("before-manifest")
        manifest.write(root)
        self._release()
        self.store.refresh()

    def _discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            layout.unlock_store(self._lock_fd)

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self._close_writers()
            self._discard()


#: The batch's parts (see :meth:`BatchWriter.add_parts`) until it is committed.
_RAW_PARTS = "raw-parts.parquet"


def _events(n: int) -> str:
    return f"{n:,} event{'s' if n != 1 else ''}"


def _content_digest(alias: str) -> str:
    """SQL for a digest of what an event says (not where it came from): a stored record whose
    digest differs from the incoming one's has been changed at the source."""
    columns = ("time", "code::VARCHAR", "numeric_value", "text_value", "unit::VARCHAR", "end_time")
    return "hash(" + ", ".join(f"{alias}.{c}" for c in columns) + ")"


def _subject_ranges(events: int, column: str) -> list[str]:
    """SQL conditions on ``column`` splitting a batch into consecutive subject ranges of about
    :data:`SORT_RANGE_EVENTS` events (pseudonyms are uniform over the positive int64s).

    Several sorts that each fit in memory, one after the other, beat one sort that spills to
    disk, even though each reads the batch's raw files again.
    """
    parts = max(1, math.ceil(events / SORT_RANGE_EVENTS))
    return range_conditions(column, [k * (1 << 63) // parts for k in range(1, parts)])


def range_conditions(column: str, edges: list[int]) -> list[str]:
    """SQL conditions on ``column`` for the consecutive ranges the sorted ``edges`` cut (the
    first range takes the nulls): every row meets exactly one."""
    if not edges:
        return ["true"]
    lower = [f"({column} < {edges[0]} OR {column} IS NULL)"]
    middle = [f"({column} >= {a} AND {column} < {b})" for a, b in itertools.pairwise(edges)]
    return lower + middle + [f"{column} >= {edges[-1]}"]


def pause_for_tests(point: str) -> None:
    """Let a crash test stop the process at a named point of a commit (``JUMEAU_PAUSE_AT``)."""
    if os.environ.get("JUMEAU_PAUSE_AT") == point:
        print(f"paused at {point}", flush=True)
        time.sleep(3600)


class _ParquetInBackground:
    """The batch's Parquet file: tables are gathered into row groups of
    ``PARQUET_ROW_GROUP_SIZE`` rows, each encoded on a second thread (pyarrow releases the GIL)
    while the sorted stream goes on; row groups keep their order."""

    def __init__(self, path: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # plain strings for every Parquet reader (no Arrow dictionary type in the file's schema);
        # the dictionaries still spare the writer hashing every value
        # dictionaries only where values repeat (hashing every subject id, time and key for a
        # dictionary that is then abandoned costs more than the rest of the encoding), and
        # statistics only on the sort columns (the only ones whose row-group ranges prune)
        self._writer = pq.ParquetWriter(
            path,
            STORED_EVENT_SCHEMA,
            compression="zstd",
            compression_level=1,
            store_schema=False,
            use_dictionary=[*DICTIONARY_COLUMNS, "text_value"],
            write_statistics=["subject_id", "time"],
        )
        self._pool = ThreadPoolExecutor(1)
        self._last = None
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= PARQUET_ROW_GROUP_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._last is not None:
            self._last.result()
        if self._pending:
            group = pa.concat_tables(self._pending)
            self._last = self._pool.submit(self._writer.write_table, group, PARQUET_ROW_GROUP_SIZE)
        self._pending, self._rows = [], 0

    def __enter__(self) -> _ParquetInBackground:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self._flush()
            if self._last is not None:
                self._last.result()
        finally:
            self._pool.shutdown()
            self._writer.close()


class _SubjectRuns:
    """Builds the (subject_id, start, count) index of a subject-sorted stream."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._end = 0
        self._last: int | None = None

    def add(self, subject_ids: np.ndarray, offset: int) -> None:
        if len(subject_ids) == 0:
            return
        steps = np.diff(subject_ids)
        previous = self._last
        if (steps < 0).any() or (previous is not None and subject_ids[0] < previous):
            raise layout.StoreError("internal error: events reached the batch out of subject order")
        self._last = subject_ids[-1]
        change = np.flatnonzero(steps) + 1
        starts = np.concatenate(([0], change))
        ids = subject_ids[starts]
        if previous is not None and previous == ids[0]:  # the last subject goes on (a subject
            ids, starts = ids[1:], starts[1:]  # of many chunks: each continues the run)
        self._ids.append(ids)
        self._starts.append(starts + offset)
        self._end = offset + len(subject_ids)

    @property
    def count(self) -> int:
        return sum(len(i) for i in self._ids)

    def table(self) -> pa.Table:
        if not self._ids:
            return INDEX_SCHEMA.empty_table()
        ids = np.concatenate(self._ids)
        starts = np.concatenate(self._starts)
        counts = np.diff(np.append(starts, self._end))
        return pa.table({"subject_id": ids, "start": starts, "count": counts}, schema=INDEX_SCHEMA)


def copy_batch_without(source: Path, target: Path, subjects: np.ndarray, vault_key: bytes) -> int:
    """Write the batch folder ``source`` again at ``target`` without anything of ``subjects``
    (their events, identities, amendments and waveform records); return the events left out.

    The events stream from the Arrow file, a record batch at a time, into a new Arrow file,
    Parquet file and subject index as a commit writes them; the files that hold nothing of a
    subject are linked, not copied.
    """
    from jumeau.signals.store import SignalRecord
    from jumeau.store.vault import read_vault

    target.mkdir(parents=True)
    removed = 0
    # read batch by batch (not memory-mapped: a mapped file's pages would all stay resident)
    with pa.OSFile(str(source / layout.EVENTS_ARROW), "rb") as stored, _EventFiles(target) as files:
        reader = pa.ipc.open_file(stored)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            kept = without_subjects(batch, subjects)
            removed += batch.num_rows - kept.num_rows
            if kept.num_rows:
                files.add(pa.Table.from_batches([kept]))
    for name in (layout.SUPERSEDED_FILE, layout.PARTS_FILE, layout.MERGES_FILE):
        if (source / name).exists():
            rows = without_subjects(pq.read_table(source / name), subjects)
            if name == layout.MERGES_FILE:  # nor the merges into them
                rows = without_subjects(rows, subjects, "into_subject_id")
            pq.write_table(rows, target / name)
    if (source / layout.VAULT_FILE).exists():
        vault = without_subjects(read_vault(source / layout.VAULT_FILE, vault_key), subjects)
        if vault.num_rows:
            write_vault(target / layout.VAULT_FILE, vault, vault_key)
    signals = source / layout.SIGNALS_DIR
    if signals.is_dir():
        gone = set(np.asarray(subjects).tolist())
        for record in sorted(signals.iterdir()):
            if SignalRecord(record).subject_id not in gone:
                shutil.copytree(
                    record, target / layout.SIGNALS_DIR / record.name, copy_function=_link_or_copy
                )
    for child in source.iterdir():  # rejects, codes, the report: nothing of a subject in them
        if child.is_file() and not (target / child.name).exists():
            _link_or_copy(child, target / child.name)
    layout.fsync_tree(target)
    return removed


def without_subjects(
    table: pa.Table | pa.RecordBatch, subjects: np.ndarray, column: str = "subject_id"
) -> pa.Table:
    """The rows of ``table`` whose ``column`` is none of ``subjects``."""
    unwanted = pa.array(np.asarray(subjects, dtype=np.int64))
    return table.filter(pc.invert(pc.is_in(table.column(column), unwanted)))


class _EventFiles:
    """A batch's event files, written together from subject-sorted tables: the Arrow file
    timelines are sliced from, the Parquet copy scans read, and the subject index of both
    (written when the block ends without an error)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0
        self._runs = _SubjectRuns()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _EventFiles:
        sink = self._stack.enter_context(pa.OSFile(str(self.folder / layout.EVENTS_ARROW), "wb"))
        self._ipc = self._stack.enter_context(pa.ipc.new_file(sink, STORED_EVENT_SCHEMA))
        self._parquet = self._stack.enter_context(
            _ParquetInBackground(self.folder / layout.EVENTS_PARQUET)
        )
        return self

    def add(self, table: pa.Table) -> None:
        table = table.cast(STORED_EVENT_SCHEMA)
        self._ipc.write_table(table)
        self._runs.add(table.column("subject_id").to_numpy(), self.written)
        self.written += table.num_rows
        self._parquet.add(table)

    @property
    def subjects(self) -> int:
        return self._runs.count

    def __exit__(self, exc_type, *exc) -> None:
        self._stack.__exit__(exc_type, *exc)
        if exc_type is None:
            pq.write_table(self._runs.table(), self.folder / layout.SUBJECTS_INDEX)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link where the file system allows one (the same bytes, no copy), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
