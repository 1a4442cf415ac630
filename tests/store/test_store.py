"""The store: atomic batches, idempotence, random-access timelines, columnar scans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jumeau
from jumeau.ingest.omop import ingest_omop
from jumeau.model import CONNECTOR_SCHEMA, EVENT_SCHEMA, STORED_EVENT_SCHEMA
from jumeau.store import BatchWriter, StoreError, layout


def snapshot(store_root: Path) -> dict:
    """What a reader of the store can see."""
    store = jumeau.open(store_root)
    return {
        "manifest": (store_root / layout.MANIFEST_FILE).read_bytes(),
        "stats": store.stats(),
        "subjects": store.subjects().tolist(),
    }


def _start_ingest(store: Path, source: Path, pause: str | None) -> subprocess.Popen:
    env = {**os.environ}
    if pause:
        env["JUMEAU_PAUSE_AT"] = pause
    code = (
        "import sys, jumeau; from jumeau.ingest.omop import ingest_omop; "
        "ingest_omop(jumeau.open(sys.argv[1]), sys.argv[2])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(store), str(source)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kill_at", ["before-manifest", "mid-work"])
def test_a_killed_ingest_leaves_the_store_unchanged(tmp_path, eunomia, synthea_dir, kill_at):
    store = jumeau.init(tmp_path / "store")
    from jumeau.ingest.fhir import ingest_fhir

    ingest_fhir(store, synthea_dir)
    before = snapshot(store.root)
    proc = _start_ingest(
        store.root, eunomia, "before-manifest" if kill_at == "before-manifest" else None
    )
    if kill_at == "before-manifest":
        assert proc.stdout.readline().strip() == "paused at before-manifest"
    else:
        deadline = time.time() + 30
        while not (store.root / layout.STAGING_DIR).exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(store.root) == before
    report = ingest_omop(jumeau.open(store.root), eunomia)
    assert report.committed
    published = set(jumeau.open(store.root).manifest.batch_ids)
    assert {p.name for p in (store.root / layout.BATCHES_DIR).iterdir()} == published


def test_one_writer_at_a_time(new_store):
    with BatchWriter(new_store, "test", "a"), pytest.raises(StoreError, match="another ingest"):
        BatchWriter(new_store, "test", "b")


def _events(subjects: np.ndarray, times: np.ndarray, source: str = "test/gen") -> pa.Table:
    n = len(subjects)
    return pa.table(
        {
            "subject_id": subjects.astype(np.int64),
            "time": pa.array(times.astype(np.int64), pa.int64()).cast(pa.timestamp("us")),
            "code": [f"TEST/{i % 7}" for i in range(n)],
            "numeric_value": np.arange(n, dtype=np.float64),
            "text_value": pa.nulls(n, pa.string()),
            "unit": pa.nulls(n, pa.string()),
            "end_time": pa.nulls(n, pa.timestamp("us")),
            "domain": ["measurement"] * n,
            "source": [source] * n,
            "record_key": np.arange(n, dtype=np.int64) + (hash(source) % 1000) * 10_000_000,
        },
        schema=CONNECTOR_SCHEMA,
    )


def test_timelines_across_batches_and_row_groups_are_exact(new_store):
    rng = np.random.default_rng(7)
    n = 400_000  # several Arrow record batches, so subject runs cross batch boundaries
    subjects = rng.integers(1, 5_000, n)
    times = rng.integers(0, 10**15, n)
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(subjects, times))
        w.commit()
    more = rng.integers(1, 5_000, 1_000)
    with BatchWriter(new_store, "test", "gen2") as w:
        w.add_events(_events(more, rng.integers(0, 10**15, 1_000), source="test/gen2"))
        w.commit()
    store = jumeau.open(new_store.root)
    all_subjects = np.concatenate([subjects, more])
    assert store.subjects().tolist() == np.unique(all_subjects).tolist()
    for sid in rng.choice(np.unique(all_subjects), 50):
        timeline = store.timeline_arrow(int(sid))
        assert timeline.num_rows == int((all_subjects == sid).sum())
        assert set(timeline.column("subject_id").to_pylist()) == {sid}
        assert timeline.column("time").to_numpy().tolist() == sorted(
            timeline.column("time").to_numpy().tolist()
        )
    assert store.timeline_arrow(10**12).num_rows == 0
    # the Polars frame holds the same values, strings for the dictionaries, over two batches too
    for sid in [*rng.choice(np.unique(more), 10), 10**12]:
        frame = store.timeline(int(sid))
        expected = pl.from_arrow(store.timeline_arrow(int(sid), plain=True))
        assert frame.schema == expected.schema and frame.equals(expected)
        assert frame.schema["code"] == pl.String


def test_a_subject_whose_events_span_many_chunks_is_read_whole(new_store, monkeypatch):
    """A year of a watch's samples is one subject's run across many of the commit's chunks:
    the index keeps it one run (a split run once made reads return its first part only)."""
    from jumeau.store import writer

    monkeypatch.setattr(writer, "ROW_GROUP_SIZE", 1_000)
    rng = np.random.default_rng(5)
    subjects = np.concatenate([np.full(7_500, 42), rng.integers(43, 60, 2_000), [7, 7]])
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(subjects, rng.integers(0, 10**15, len(subjects))))
        report = w.commit()
    assert report.subjects == len(np.unique(subjects))
    store = jumeau.open(new_store.root)
    for sid in (42, 7, int(subjects[-3])):
        assert store.timeline_arrow(sid).num_rows == int((subjects == sid).sum())
    index = pl.read_parquet(next(new_store.root.glob("batches/*/subjects.parquet")))
    assert index["subject_id"].is_unique().all()


def test_an_index_with_a_split_run_written_before_the_fix_still_reads_whole(new_store):
    subjects = np.concatenate([np.full(3_000, 42), [50, 50]])
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(subjects, np.arange(len(subjects)) * 10**6))
        w.commit()
    path = next(new_store.root.glob("batches/*/subjects.parquet"))
    split = pa.table(  # as the earlier writer left a run spanning three chunks
        {
            "subject_id": [42, 42, 42, 50],
            "start": [0, 1_000, 2_000, 3_000],
            "count": [1_000] * 3 + [2],
        }
    )
    pq.write_table(split.cast(pq.read_schema(path)), path)
    store = jumeau.open(new_store.root)
    assert store.timeline_arrow(42).num_rows == 3_000
    assert store.timeline_arrow(50).num_rows == 2


def test_a_batch_sorted_one_subject_range_at_a_time_is_one_sorted_batch(new_store, monkeypatch):
    from jumeau.store import writer

    monkeypatch.setattr(writer, "SORT_RANGE_EVENTS", 7_000)  # 40,000 events: six ranges
    rng = np.random.default_rng(11)
    subjects = rng.integers(0, 2**63 - 1, 2_000, dtype=np.int64)
    chosen = rng.choice(subjects, 40_000)
    first_times = rng.integers(0, 10**15, len(chosen))
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(chosen, first_times))
        report = w.commit()
    assert report.events_written == len(chosen)
    store = jumeau.open(new_store.root)
    stored = store.scan().select("subject_id", "time").collect()
    assert stored.height == len(chosen)
    assert stored.equals(stored.sort("subject_id", "time"))
    assert store.subjects().tolist() == np.unique(chosen).tolist()
    for sid in rng.choice(np.unique(chosen), 20):
        assert store.timeline_arrow(int(sid)).num_rows == int((chosen == sid).sum())
    # again, range by range: what is stored is recognised, only the new events are added
    times = np.concatenate([first_times, rng.integers(0, 10**15, 3)])
    again = _events(np.concatenate([chosen, subjects[:3]]), times)
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(again)
        report = w.commit()
    assert (report.events_written, report.events_already_present) == (3, len(chosen))


def test_the_arrow_copy_stores_codes_as_dictionaries_and_reads_back_every_value(eunomia_store):
    store, _ = eunomia_store
    (arrow_file,) = store.batch_files(layout.EVENTS_ARROW)
    stored = pa.ipc.open_file(pa.memory_map(str(arrow_file))).schema
    assert stored.equals(STORED_EVENT_SCHEMA)
    assert pa.types.is_dictionary(stored.field("code").type)
    subject = int(store.subjects()[17])
    from_arrow = store.timeline_arrow(subject).cast(EVENT_SCHEMA)
    from_parquet = (
        store.scan().filter(pl.col("subject_id") == subject).collect().to_arrow().cast(EVENT_SCHEMA)
    )
    assert from_arrow.sort_by("record_key").equals(from_parquet.sort_by("record_key"))
    assert store.scan().collect_schema()["code"] == pl.String  # Parquet readers see text


def test_a_batch_written_with_plain_strings_still_reads(tmp_path, synthea_dir, key_dir):
    """Stores written before the dictionaries: their Arrow files hold plain strings."""
    from jumeau.ingest.fhir import ingest_fhir

    store = jumeau.init(tmp_path / "s")
    ingest_fhir(store, synthea_dir)
    subject = int(store.subjects()[0])
    expected = store.timeline_arrow(subject).cast(EVENT_SCHEMA)
    (arrow_file,) = store.batch_files(layout.EVENTS_ARROW)
    plain = pa.ipc.open_file(pa.memory_map(str(arrow_file))).read_all().cast(EVENT_SCHEMA)
    rewritten = arrow_file.with_suffix(".plain")
    with pa.OSFile(str(rewritten), "wb") as sink, pa.ipc.new_file(sink, EVENT_SCHEMA) as out:
        out.write_table(plain)
    rewritten.replace(arrow_file)  # the open store's memory map keeps the old file
    reopened = jumeau.open(store.root)
    timeline = reopened.timeline_arrow(subject)
    assert timeline.schema.equals(STORED_EVENT_SCHEMA)
    assert timeline.cast(EVENT_SCHEMA).equals(expected)


def test_timeline_filters(eunomia_store):
    store, _ = eunomia_store
    counts = (
        store.scan()
        .group_by("subject_id")
        .len()
        .sort(["len", "subject_id"], descending=True)
        .collect()
    )
    subject = int(counts["subject_id"][0])
    full = store.timeline(subject)
    window = store.timeline(subject, start=datetime(2000, 1, 1), end=datetime(2010, 12, 31))
    timed = window.filter(window["time"].is_not_null())
    assert timed["time"].min() >= datetime(2000, 1, 1) and timed["time"].max() <= datetime(
        2010, 12, 31
    )
    assert window.height < full.height
    snomed = store.timeline(subject, codes=["SNOMED/"])
    assert snomed.height and snomed["code"].str.starts_with("SNOMED/").all()
    conditions = store.timeline(subject, domains=["condition"])
    assert set(conditions["domain"]) == {"condition"}


def test_scan_and_sql_see_every_event(eunomia_store):
    store, report = eunomia_store
    assert store.scan().select("subject_id").collect().height == report.events_written
    con = store.connect()
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == report.events_written
    con.close()


def test_init_refuses_an_existing_or_non_empty_directory(tmp_path):
    jumeau.init(tmp_path / "s")
    with pytest.raises(StoreError, match="already a jumeau store"):
        jumeau.init(tmp_path / "s")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        jumeau.init(tmp_path / "junk")
    with pytest.raises(StoreError, match="not a jumeau store"):
        jumeau.open(tmp_path / "junk")


@pytest.mark.parametrize("range_events", [24_000_000, 700])
def test_a_record_changed_at_the_source_replaces_the_stored_version(
    new_store, monkeypatch, range_events
):
    """The same records again, three of them amended (another value, another time): the new
    versions replace the stored ones in timelines, scans and SQL, nothing is stored twice, the
    store as it was before still shows the old versions, and the same source once more adds
    nothing (whether the batch is sorted in one range or several)."""
    from jumeau.store import writer

    monkeypatch.setattr(writer, "SORT_RANGE_EVENTS", range_events)
    rng = np.random.default_rng(5)
    subjects = rng.integers(0, 2**63 - 1, 3_000, dtype=np.int64)
    times = rng.integers(0, 10**15, len(subjects))
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(subjects, times))
        w.commit()
    first = datetime.strptime(new_store.manifest.batches[0]["committed_at"], "%Y-%m-%dT%H:%M:%S%z")
    time.sleep(1.1)  # commit times have a resolution of a second
    amended = _events(subjects, times)
    values = amended.column("numeric_value").to_numpy().copy()
    values[[5, 17]] += 0.5
    amended = amended.set_column(3, "numeric_value", pa.array(values))
    moved = times.copy()
    moved[100] += 1
    amended = amended.set_column(1, "time", pa.array(moved).cast(pa.timestamp("us")))
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(amended)
        report = w.commit()
    assert (report.events_written, report.events_already_present) == (3, len(subjects) - 3)
    assert report.events_amended == 3
    assert report.warnings == [
        "3 events amended at the source since they were stored: the new versions replace them "
        "(the store as it was before this batch still shows the old ones)"
    ]
    store = jumeau.open(new_store.root)
    assert store.stats()["amended_records"] == 3
    assert store.timeline_arrow(int(subjects[5])).column("numeric_value").to_pylist() == [5.5]
    moved_event = store.timeline(int(subjects[100]))
    assert moved_event["time"].to_list() == [
        datetime(1970, 1, 1) + timedelta(microseconds=int(moved[100]))
    ]
    untouched = store.timeline_arrow(int(subjects[6])).column("numeric_value").to_pylist()
    assert untouched == [6.0]
    then = first.replace(tzinfo=None)
    assert store.timeline_arrow(int(subjects[5]), known_at=then).column(
        "numeric_value"
    ).to_pylist() == [5.0]
    scanned = store.scan().collect()
    assert scanned.height == len(subjects)
    assert scanned.filter(pl.col("subject_id") == int(subjects[17]))["numeric_value"].to_list() == [
        17.5
    ]
    assert store.scan(known_at=then).collect()["numeric_value"].sum() == float(values.sum() - 1.0)
    con = store.connect()
    n, total = con.execute("SELECT count(*), sum(numeric_value) FROM events").fetchall()[0]
    assert (n, total) == (len(subjects), float(values.sum()))
    con.close()
    for again in (amended, amended):  # the amended source again: nothing new, nothing to say
        with BatchWriter(new_store, "test", "gen") as w:
            w.add_events(again)
            repeat = w.commit()
        assert (repeat.events_written, repeat.warnings) == (0, [])
    with BatchWriter(new_store, "test", "gen") as w:  # the source put back as it was: amended again
        w.add_events(_events(subjects, times))
        back = w.commit()
    assert back.events_amended == 3
    store = jumeau.open(new_store.root)
    assert store.timeline_arrow(int(subjects[5])).column("numeric_value").to_pylist() == [5.0]
    assert store.scan().collect().height == len(subjects)


def test_a_record_the_source_now_gives_another_subject_moves_to_it(new_store):
    """A source that corrects whose a record is (a result filed under the wrong patient): the
    record is stored under the subject it now names, hidden from the one it was stored under,
    and counted as amended; nothing is stored twice."""
    subjects, times = np.array([11, 12, 13]), np.array([10**12, 2 * 10**12, 3 * 10**12])
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(subjects, times))
        w.commit()
    with BatchWriter(new_store, "test", "gen") as w:
        w.add_events(_events(np.array([11, 99, 13]), times))
        report = w.commit()
    assert (report.events_written, report.events_amended) == (1, 1)
    store = jumeau.open(new_store.root)
    assert store.timeline(12).height == 0
    assert store.timeline(99)["numeric_value"].to_list() == [1.0]
    assert store.scan().collect().height == 3
    assert store.stats()["amended_records"] == 1
