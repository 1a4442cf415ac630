"""``jumeau``: ingest health data of every scale into a pseudonymised store, read timelines and
signals, derive features, build and evaluate patient twins, export MEDS, run the demo."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import jumeau
from jumeau.cli import render
from jumeau.store.layout import StoreError
from jumeau.store.report import IngestReport

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ingest_app = typer.Typer(
    no_args_is_help=True, help="Ingest a source into a store (one atomic batch)."
)
export_app = typer.Typer(no_args_is_help=True, help="Export a store to another format.")
evaluate_app = typer.Typer(
    no_args_is_help=True, help="Measure how well jumeau's models do on your data."
)
app.add_typer(ingest_app, name="ingest")
app.add_typer(export_app, name="export")
app.add_typer(evaluate_app, name="evaluate")


class Format(StrEnum):
    text = "text"
    json = "json"


StoreOpt = Annotated[Path, typer.Option("--store", "-s", help="The store directory.")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key-file", help="The store's secret key, if not at its default place."),
]
PurposeOpt = Annotated[
    str, typer.Option(help="Who asks and why (kept in the store's audit trail with your user).")
]
SubjectOpt = Annotated[
    str | None, typer.Option(help="The patient's id in --subject-source (default: from the file).")
]
PseudonymArg = Annotated[int, typer.Argument(help="The subject's pseudonym.")]
SubjectSourceOpt = Annotated[
    str,
    typer.Option(
        help="The namespace of --subject: the file's own, or omop, fhir... to join a patient."
    ),
]
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="text for people, json for machines.")
]


SourceNameOpt = Annotated[
    str,
    typer.Option(
        "--source-name",
        help="Namespace of the source's patient and record ids: one name a site, so that two "
        "warehouses' person 1 stay two patients (use it again with `jumeau lookup --source`).",
    ),
]


def _fail(message: str) -> None:
    render.error_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(2)


@contextmanager
def _errors():
    """Turn expected failures into one clear line and exit code 2."""
    from jumeau.ingest.devices import DeviceError
    from jumeau.ingest.edf import EdfError
    from jumeau.ingest.fhir import FhirError
    from jumeau.ingest.meds import MedsError
    from jumeau.ingest.omop_sources import OmopSourceError
    from jumeau.ingest.vcf import VcfError
    from jumeau.ingest.wfdb import WfdbError
    from jumeau.store.audit import AuditError
    from jumeau.store.keys import StoreKeyError

    try:
        yield
    except (
        StoreError,
        WfdbError,
        EdfError,
        VcfError,
        DeviceError,
        OmopSourceError,
        FhirError,
        MedsError,
        StoreKeyError,
        AuditError,
        PermissionError,
        FileNotFoundError,
        FileExistsError,
    ) as exc:
        _fail(str(exc))


def _open(store: Path, key_file: Path | None = None) -> jumeau.Store:
    with _errors():
        return jumeau.open(store, key_file=key_file)


@contextmanager
def _progress(label: str):
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=render.console,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(label)
        yield lambda name: bar.update(task, description=f"{label}: {name}")


def _ingest(
    kind: str, source: str, store: Path, key_file: Path | None, fmt: Format, **kwargs
) -> IngestReport:
    from jumeau.ingest.devices import ingest_devices
    from jumeau.ingest.dicom import ingest_dicom
    from jumeau.ingest.edf import ingest_edf
    from jumeau.ingest.fhir import ingest_fhir
    from jumeau.ingest.meds import ingest_meds
    from jumeau.ingest.omop import ingest_omop
    from jumeau.ingest.vcf import ingest_vcf
    from jumeau.ingest.wfdb import ingest_wfdb
    from jumeau.twin.registry import update_registries

    func = {
        "omop": ingest_omop,
        "fhir": ingest_fhir,
        "meds": ingest_meds,
        "wfdb": ingest_wfdb,
        "edf": ingest_edf,
        "vcf": ingest_vcf,
        "dicom": ingest_dicom,
        "devices": ingest_devices,
    }[kind]
    target = _open(store, key_file)
    with _errors(), _progress(f"ingesting {kind}") as progress:
        report = func(target, source, progress=progress, **kwargs)
    with _errors():
        twins = update_registries(target) if report.committed else []
    if fmt is Format.json:
        render.print_json({**report.to_dict(), "twins": twins} if twins else report.to_dict())
    else:
        render.report_table(report)
        for update in twins:
            render.twins_update(update)
    return report


FullRefreshOpt = Annotated[
    bool,
    typer.Option(
        "--full-refresh",
        help="The source is whole (a nightly snapshot, a complete export): what earlier "
        "ingests of the same --source-name stored from its tables and it no longer holds was "
        "deleted at the source, and is withdrawn.",
    ),
]


@app.command()
def init(
    store: Annotated[Path, typer.Argument(help="The new store directory.")],
    key_file: KeyOpt = None,
    date_shift_days: Annotated[
        int,
        typer.Option(help="Shift each subject's dates by a keyed, consistent ±N days (0: off)."),
    ] = 0,
) -> None:
    """Create an empty store and its secret key (kept outside the store)."""
    with _errors():
        s = jumeau.init(store, key_file=key_file, max_date_shift_days=date_shift_days)
    render.console.print(
        f"created store {s.root}; secret key at {s.key_path} (keep it safe)", markup=False
    )


@ingest_app.command("omop")
def ingest_omop_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="CDM folder (CSV/Parquet), DuckDB or SQLite file, or postgresql:// URL."
        ),
    ],
    store: StoreOpt,
    schema: Annotated[str | None, typer.Option(help="Database schema of the CDM tables.")] = None,
    vocabulary_schema: Annotated[
        str | None,
        typer.Option(help="Schema of the vocabulary (concept) table, if not --schema."),
    ] = None,
    vocabulary_folder: Annotated[
        Path | None,
        typer.Option(help="Folder with the concept table (an Athena download) to use instead."),
    ] = None,
    source_name: SourceNameOpt = "omop",
    full_refresh: FullRefreshOpt = False,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest an OMOP CDM v5.3/v5.4 database."""
    _ingest(
        "omop",
        source,
        store,
        key_file,
        format,
        schema=schema,
        vocabulary_schema=vocabulary_schema,
        vocabulary_folder=vocabulary_folder,
        source_name=source_name,
        full_refresh=full_refresh,
    )


@ingest_app.command("fhir")
def ingest_fhir_cmd(
    source: Annotated[str, typer.Argument(help="Bundle .json, .ndjson file, or a folder of them.")],
    store: StoreOpt,
    source_name: SourceNameOpt = "fhir",
    full_refresh: FullRefreshOpt = False,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest FHIR R4 Bundles and Bulk Data NDJSON."""
    _ingest(
        "fhir",
        source,
        store,
        key_file,
        format,
        source_name=source_name,
        full_refresh=full_refresh,
    )


@ingest_app.command("meds")
def ingest_meds_cmd(
    source: Annotated[str, typer.Argument(help="A MEDS dataset folder (data/*.parquet).")],
    store: StoreOpt,
    source_name: SourceNameOpt = "meds",
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Import a MEDS dataset."""
    _ingest("meds", source, store, key_file, format, source_name=source_name)


@ingest_app.command("wfdb")
def ingest_wfdb_cmd(
    source: Annotated[
        str, typer.Argument(help="A WFDB record (path without extension or .hea) or a folder.")
    ],
    store: StoreOpt,
    subject: SubjectOpt = None,
    subject_source: SubjectSourceOpt = "wfdb",
    start: Annotated[
        datetime | None, typer.Option(help="Record start when the header has none.")
    ] = None,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest WFDB waveform records and their annotations."""
    _ingest(
        "wfdb",
        source,
        store,
        key_file,
        format,
        subject=subject,
        subject_source=subject_source,
        start=start,
    )


@ingest_app.command("edf")
def ingest_edf_cmd(
    source: Annotated[
        str, typer.Argument(help="An EDF/EDF+ or BDF/BDF+ file, or a folder of them.")
    ],
    store: StoreOpt,
    subject: SubjectOpt = None,
    subject_source: SubjectSourceOpt = "edf",
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest EDF/EDF+ and BDF/BDF+ recordings (EEG, polysomnography) and their annotations or hypnograms."""
    _ingest("edf", source, store, key_file, format, subject=subject, subject_source=subject_source)


@ingest_app.command("vcf")
def ingest_vcf_cmd(
    source: Annotated[str, typer.Argument(help="A VCF/BCF file (plain or bgzipped).")],
    store: StoreOpt,
    sample_map: Annotated[
        Path | None,
        typer.Option(help="CSV with columns sample,source,id mapping samples to patients."),
    ] = None,
    subject_source: SubjectSourceOpt = "vcf",
    time: Annotated[
        datetime | None, typer.Option(help="Sample date (default: static genotypes).")
    ] = None,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest each sample's called variants (genotype, quality, filter, gene, consequence)."""
    from jumeau.ingest.vcf import read_sample_map

    with _errors():
        mapping = read_sample_map(sample_map) if sample_map else None
    _ingest(
        "vcf",
        source,
        store,
        key_file,
        format,
        sample_map=mapping,
        subject_source=subject_source,
        time=time,
    )


@ingest_app.command("dicom")
def ingest_dicom_cmd(
    source: Annotated[
        str, typer.Argument(help="A DICOM file or a folder (walked; non-DICOM files reported).")
    ],
    store: StoreOpt,
    subject: SubjectOpt = None,
    subject_source: SubjectSourceOpt = "dicom",
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest DICOM metadata as events (pixel data referenced by path and hash) and waveforms."""
    _ingest(
        "dicom", source, store, key_file, format, subject=subject, subject_source=subject_source
    )


@ingest_app.command("devices")
def ingest_devices_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="A CSV/JSON/NDJSON stream (time, metric, value[, unit, device]), an Apple Health export.xml, or a folder."
        ),
    ],
    store: StoreOpt,
    subject: Annotated[str, typer.Option(help="The patient's id in --subject-source.")],
    subject_source: SubjectSourceOpt = "device",
    timezone: Annotated[
        str | None, typer.Option(help="IANA zone of times without an offset, e.g. Europe/Paris.")
    ] = None,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Ingest connected-device streams; duplicates and clock jumps are reported."""
    _ingest(
        "devices",
        source,
        store,
        key_file,
        format,
        subject=subject,
        subject_source=subject_source,
        timezone=timezone,
    )


@app.command()
def signal(
    subject: PseudonymArg,
    store: StoreOpt,
    channel: Annotated[str | None, typer.Option(help="Channel name (default: the first).")] = None,
    start: Annotated[
        datetime | None, typer.Option(help="Window start (default: record start).")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="Window end (default: record end).")] = None,
    points: Annotated[
        int, typer.Option(help="At most this many points (min/max/mean buckets).")
    ] = 2000,
    format: FormatOpt = Format.text,
) -> None:
    """A window of a subject's waveform at any zoom, in at most --points points."""
    s = _open(store)
    records = s.signal_records(subject)
    if start is not None:
        records = [r for r in records if r.end > start] or records
    if not records:
        _fail(f"subject {subject} has no waveform record in {store}")
    if channel is not None:
        having = [r for r in records if channel in r.channels]
        if not having:
            names = sorted({c for r in records for c in r.channels})
            _fail(f"subject {subject} has no channel {channel!r} (channels: {', '.join(names)})")
        records = having
    record = records[0]
    window = record.window(channel if channel is not None else 0, start, end, points)
    chan = channel or record.channels[0]
    payload = {
        "record": record.id,
        "channel": chan,
        "unit": window["unit"],
        "fs": record.fs,
        "start": record.start.isoformat(),
        "level": window["level"],
        "t": [round(float(t), 6) for t in window["t"]],
        "min": [float(v) for v in window["min"]],
        "max": [float(v) for v in window["max"]],
        "mean": [float(v) for v in window["mean"]],
    }
    if format is Format.json:
        render.print_json(payload)
    else:
        render.console.print(
            f"record {record.id} channel {chan} ({window['unit']}, {record.fs:g} Hz) from {record.start}: "
            f"{len(payload['t'])} points at pyramid level {window['level']}; "
            f"range {min(payload['min']):.4g} .. {max(payload['max']):.4g} {window['unit']}",
            markup=False,
        )


@app.command()
def features(
    kind: Annotated[str, typer.Argument(help="ecg, eeg or sleep")],
    store: StoreOpt,
    method: Annotated[
        str | None,
        typer.Option(help="Sleep stager: spectral or yasa (default: yasa when installed)."),
    ] = None,
    format: FormatOpt = Format.text,
) -> None:
    """Derive signal features as timeline events (ECG: HR/HRV per 5-min window and record;
    EEG: relative band powers per 30-s epoch and channel; sleep: a stage per 30-s epoch and the
    night's summary for every EEG record of 30 minutes or more)."""
    from jumeau.signals.features import ecg_features, eeg_features, sleep_features

    derive = {"ecg": ecg_features, "eeg": eeg_features, "sleep": sleep_features}.get(kind)
    if derive is None:
        _fail(f"unknown feature kind {kind!r}: use ecg, eeg or sleep")
    options = {"method": method} if kind == "sleep" else {}
    s = _open(store)
    with _errors(), _progress(f"{kind.upper()} features") as progress:
        report = derive(s, progress=progress, **options)
    render.print_json(report.to_dict()) if format is Format.json else render.report_table(report)


@app.command()
def plot(
    subject: PseudonymArg,
    store: StoreOpt,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("signal.png"),
    channel: Annotated[
        list[str] | None, typer.Option(help="Channels to draw (default: the first three).")
    ] = None,
    start: Annotated[
        datetime | None, typer.Option(help="Window start (default: record start).")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="Window end (default: start + 10 s).")
    ] = None,
) -> None:
    """Draw a window of a subject's waveform with its annotations (PNG)."""
    from jumeau.signals.plot import plot_window

    s = _open(store)
    records = [r for r in s.signal_records(subject) if start is None or r.start <= start < r.end]
    if not records:
        _fail(f"subject {subject} has no waveform record covering {start or 'any time'} in {store}")
    path = plot_window(s, records[0], out, channels=channel, start=start, end=end)
    render.console.print(f"wrote {path}", markup=False)


@evaluate_app.command("ecg")
def evaluate_ecg(
    records: Annotated[
        list[str], typer.Argument(help="WFDB records with reference .atr annotations.")
    ],
    channel: Annotated[int, typer.Option(help="Lead to analyse (index).")] = 0,
    format: FormatOpt = Format.text,
) -> None:
    """R-peak detection against each record's reference beats (150 ms): sensitivity, PPV, F1."""
    from jumeau.signals.ecg import evaluate_record

    results = []
    for record in records:
        try:
            results.append(evaluate_record(record.removesuffix(".hea"), channel))
        except (FileNotFoundError, ValueError) as exc:
            results.append({"record": record, "error": str(exc)})
    scored = [r for r in results if "f1" in r]
    summary = {
        "records": results,
        "mean_f1": sum(r["f1"] for r in scored) / len(scored) if scored else None,
    }
    if format is Format.json:
        render.print_json(summary)
        return
    for r in results:
        if "error" in r:
            render.console.print(f"{r['record']}: {r['error']}", markup=False)
        else:
            render.console.print(
                f"{r['record']} ({r['channel']}): Se {r['sensitivity']:.4%}  PPV {r['ppv']:.4%}  F1 {r['f1']:.4%}  "
                f"({r['tp']} TP, {r['fn']} FN, {r['fp']} FP; {r['times_real_time']:,.0f}x real time)",
                markup=False,
            )
    if summary["mean_f1"] is not None:
        render.console.print(f"mean F1 {summary['mean_f1']:.4%} over {len(scored)} record(s)")
    if len(scored) < len(results):
        raise typer.Exit(2)


@evaluate_app.command("sleep")
def evaluate_sleep(
    files: Annotated[
        list[Path],
        typer.Argument(help="Pairs of files: a polysomnography EDF then its hypnogram EDF+."),
    ],
    method: Annotated[
        list[str] | None, typer.Option(help="Stagers to score (default: spectral and yasa).")
    ] = None,
    trim_wake: Annotated[
        float,
        typer.Option(help="Score from this many minutes before sleep to after it (-1: all)."),
    ] = 30.0,
    format: FormatOpt = Format.text,
) -> None:
    """Stage each night and score it against its hypnogram: accuracy, Cohen's kappa, per-stage
    F1, with YASA's pretrained stager as the peer when installed."""
    from jumeau.signals.sleep import METHODS, evaluate_night

    if len(files) % 2:
        _fail("give pairs of files: PSG.edf HYPNOGRAM.edf [PSG.edf HYPNOGRAM.edf ...]")
    methods = tuple(method or METHODS)
    nights = []
    for psg, hypnogram in zip(files[::2], files[1::2], strict=True):
        try:
            nights.append(
                evaluate_night(psg, hypnogram, methods, None if trim_wake < 0 else trim_wake)
            )
        except (FileNotFoundError, ValueError) as exc:
            nights.append({"record": str(psg), "error": str(exc)})
    means = {}
    for m in methods:
        scored = [n["methods"][m] for n in nights if "accuracy" in n.get("methods", {}).get(m, {})]
        if scored:
            means[m] = {
                "nights": len(scored),
                "accuracy": sum(x["accuracy"] for x in scored) / len(scored),
                "kappa": sum(x["kappa"] for x in scored) / len(scored),
            }
    summary = {"nights": nights, "mean": means}
    if format is Format.json:
        render.print_json(summary)
    else:
        render.sleep_agreement(summary)
    if any("error" in n for n in nights):
        raise typer.Exit(2)


@app.command()
def stats(store: StoreOpt, format: FormatOpt = Format.text) -> None:
    """Subjects, events, events by domain, rejects."""
    s = _open(store)
    result = s.stats()
    render.print_json(result) if format is Format.json else render.stats_table(result)


@app.command()
def subjects(
    store: StoreOpt,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 0,
    format: FormatOpt = Format.text,
) -> None:
    """List subject pseudonyms."""
    ids = _open(store).subjects().tolist()
    ids = ids[:limit] if limit else ids
    if format is Format.json:
        render.print_json(ids)
    else:
        print("\n".join(str(i) for i in ids))


@app.command()
def timeline(
    subject: PseudonymArg,
    store: StoreOpt,
    start: Annotated[
        datetime | None, typer.Option(help="Keep events at or after this time.")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="Keep events at or before this time.")
    ] = None,
    code: Annotated[
        list[str] | None,
        typer.Option(help="Keep these codes; a prefix ending in / keeps a vocabulary."),
    ] = None,
    domain: Annotated[list[str] | None, typer.Option(help="Keep these domains.")] = None,
    format: FormatOpt = Format.text,
) -> None:
    """One subject's events in time order."""
    s = _open(store)
    frame = s.timeline(subject, start=start, end=end, codes=code, domains=domain)
    if frame.is_empty() and not s.timeline(subject).height:
        _fail(f"subject {subject} is not in {store}")
    if format is Format.json:
        render.print_json(render.events_as_records(frame))
    else:
        render.timeline_table(
            frame, s.code_descriptions(), f"subject {subject}: {frame.height} events"
        )


@app.command()
def lookup(
    store: StoreOpt,
    source: Annotated[
        str, typer.Option(help="omop, fhir, meds, wfdb... or the --source-name of an ingest.")
    ],
    id: Annotated[str, typer.Option("--id", help="The patient id in that source.")],
    key_file: KeyOpt = None,
) -> None:
    """Print the pseudonym of a source patient id (needs the store key), of the patient it was
    merged into if it was; says on stderr when no event of the store has that subject (a wrong
    source name gives a pseudonym too)."""
    s = _open(store, key_file)
    with _errors():
        subject = s.lookup(source, id)
        print(subject, flush=True)
        if subject != s.pseudonymiser.subject_id(source, id):
            print(f"note: {source} patient {id} was merged into this subject", file=sys.stderr)
        if not s.has_subject(subject):
            print(f"note: subject {subject} has no events in {s.root}", file=sys.stderr)


@app.command()
def reidentify(
    subject: Annotated[int, typer.Argument(help="The subject's pseudonym.")],
    store: StoreOpt,
    purpose: PurposeOpt,
    key_file: KeyOpt = None,
    format: FormatOpt = Format.text,
) -> None:
    """Print the source ids and direct identifiers the identity vault keeps for a pseudonym
    (needs the store key); every call is first written to the store's audit trail."""
    s = _open(store, key_file)
    with _errors():
        found = s.reidentify(subject, purpose=purpose)
    if format is Format.json:
        render.print_json(found)
        return
    if not found:
        render.console.print(f"the identity vault of {s.root} holds nothing for subject {subject}")
        return
    for entry in found:
        render.console.print(f"{entry['source']} patient {entry['source_id']}", markup=False)
        for name, value in entry["identifiers"].items():
            if value not in (None, [], {}, ""):
                render.console.print(
                    f"  {name}: {json.dumps(value, ensure_ascii=False)}", markup=False
                )


@app.command()
def forget(
    subjects: Annotated[list[int], typer.Argument(help="The pseudonyms of the subjects.")],
    store: StoreOpt,
    purpose: PurposeOpt,
    key_file: KeyOpt = None,
    dry_run: Annotated[
        bool, typer.Option(help="Say what would be erased (events, batches) and erase nothing.")
    ] = False,
    format: FormatOpt = Format.text,
) -> None:
    """Erase subjects who withdraw: their events, identities and waveforms leave every file of
    the store, later ingests keep them out, and the request is written to the audit trail."""
    s = _open(store, key_file)
    if dry_run:
        from jumeau.store.erasure import plan

        planned = plan(s, subjects)
        if format is Format.json:
            render.print_json(planned)
            return
        for subject, n in planned["subjects"].items():
            note = "" if n else " (not in the store: later ingests would keep it out)"
            render.console.print(f"subject {subject}: {n:,} events{note}")
        render.console.print(
            f"would erase {planned['events']:,} events from {len(planned['batches'])} batch(es); "
            "nothing erased"
        )
        return
    with _errors():
        result = s.forget(subjects, purpose=purpose)
    if format is Format.json:
        render.print_json(result)
        return
    render.console.print(
        f"erased {result['subjects']} subject(s): {result['events_removed']:,} events removed, "
        f"{result['batches_rewritten']} batch(es) written again; later ingests keep them out"
    )


@app.command()
def audit(store: StoreOpt, key_file: KeyOpt = None, format: FormatOpt = Format.text) -> None:
    """The store's audit trail: every re-identification and erasure (time, user, pseudonym,
    purpose), its chain of keyed MACs checked first (needs the store key)."""
    s = _open(store, key_file)
    with _errors():
        trail = s.audit_trail()
    if format is Format.json:
        render.print_json(trail)
        return
    render.console.print(f"{len(trail)} request(s) in the audit trail of {s.root}; chain intact")
    for entry in trail:
        render.console.print(
            f"{entry['time']}  {entry['action']:<10} subject {entry['subject_id']}"
            f"  by {entry['user']}: {entry['purpose']}",
            markup=False,
        )


@app.command()
def rejects(store: StoreOpt, limit: int = 20, format: FormatOpt = Format.text) -> None:
    """Records that failed validation, with file, record and reason."""
    frame = _open(store).rejects()
    if format is Format.json:
        render.print_json(frame.head(limit).to_dicts() if limit else frame.to_dicts())
        return
    render.console.print(f"{frame.height:,} rejects")
    import polars as pl

    with pl.Config(tbl_rows=limit, fmt_str_lengths=120, tbl_width_chars=200):
        render.console.print(frame.drop("record_key").head(limit))


@export_app.command("meds")
def export_meds_cmd(
    out: Annotated[Path, typer.Argument(help="The new MEDS dataset folder.")],
    store: StoreOpt,
    format: FormatOpt = Format.text,
) -> None:
    """Write the store as a MEDS dataset."""
    from jumeau.export.meds import export_meds

    with _errors():
        result = export_meds(_open(store), out)
    if format is Format.json:
        render.print_json(result)
    else:
        render.console.print(
            f"wrote MEDS dataset {out}: {result['subjects']:,} subjects, {result['events']:,} events, "
            f"{result['shards']} shard(s), {result['codes']:,} codes",
            markup=False,
        )


@app.command()
def twin(
    subject: PseudonymArg,
    store: StoreOpt,
    as_of: Annotated[
        datetime | None,
        typer.Option(help="Build the twin from what was known then (default: now)."),
    ] = None,
    known_at: Annotated[
        datetime | None,
        typer.Option(help="Read the store as it was then (batches committed by this time)."),
    ] = None,
    forecast: Annotated[
        list[str] | None, typer.Option(help="Also forecast these variables (3, 6, 12 months).")
    ] = None,
    learn: Annotated[
        bool, typer.Option(help="Learn population priors and noise from the store first.")
    ] = True,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Also say what changed since the twin of this earlier date (the last visit)."
        ),
    ] = None,
    format: FormatOpt = Format.text,
) -> None:
    """A patient's state, risks and forecasts as of a date, with no data from after it."""
    from jumeau.twin import PopulationModel

    s = _open(store)
    population = PopulationModel.fit_cached(s, as_of, known_at=known_at) if learn else None
    try:
        result = s.twin(subject, as_of, known_at=known_at, population=population)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    payload = result.to_dict()
    if since is not None:
        if since >= result.as_of:
            _fail(f"--since {since.isoformat()} is not before the twin's date {result.as_of}")
        earlier_population = (
            PopulationModel.fit_cached(s, since, known_at=known_at) if learn else None
        )
        try:  # the earlier twin from what was known then, on the population of then
            earlier = s.twin(subject, since, known_at=known_at, population=earlier_population)
        except KeyError:
            earlier = None
        payload["changes_since"] = result.diff(earlier) if earlier else None
        if earlier:  # what the codes named are, the resolved ones included
            payload["changes_since"]["descriptions"] = {
                code: description
                for code, description in result.descriptions.items()  # both twins read these
                if any(code in v for v in payload["changes_since"].values() if isinstance(v, list))
            }
    if forecast:
        payload["forecasts"] = {}
        for variable in forecast:
            try:
                payload["forecasts"][variable] = result.forecast(variable)
            except (KeyError, ValueError) as exc:
                payload["forecasts"][variable] = {"error": str(exc.args[0])}
    if format is Format.json:
        render.print_json(payload)
    else:
        render.twin_summary(payload)
        render.twin_changes(payload)


@app.command()
def twins(
    store: StoreOpt,
    as_of: Annotated[datetime, typer.Option(help="The date the twins describe.")],
    format: FormatOpt = Format.text,
) -> None:
    """Bring every subject's twin snapshot up to date: only subjects touched by batches committed
    since the last update are rebuilt; prints what changed for each."""
    from jumeau.twin.registry import TwinRegistry

    with _errors():
        result = TwinRegistry(_open(store), as_of).update()
    if format is Format.json:
        render.print_json(result)
        return
    render.twins_update({"as_of": as_of.isoformat(), **result})


@evaluate_app.command("forecasts")
def evaluate_forecasts(
    store: StoreOpt,
    cutoff: Annotated[
        list[datetime], typer.Option(help="Train before, forecast after (repeat to pool).")
    ],
    horizon: Annotated[
        str, typer.Option(help="Forecast measurements up to this far after the cutoff.")
    ] = "12mo",
    outcome: Annotated[
        list[str] | None,
        typer.Option(
            help="Also back-test the 1-year risk of an event with these codes (e.g. SNOMED/74474003)."
        ),
    ] = None,
    format: FormatOpt = Format.text,
) -> None:
    """Temporal back-test: MAE and interval coverage per variable against carry-forward and the
    population mean; with --outcome, C-index and Brier score of the 1-year event risk."""
    from jumeau.twin.events import evaluate_events
    from jumeau.twin.forecast import backtest, pool, published

    s = _open(store)
    results = [backtest(s, c, horizon=horizon) for c in cutoff]
    payload = published(results[0] if len(results) == 1 else pool(results))
    if outcome:
        payload["events"] = []
        for c in cutoff:
            try:
                payload["events"].append(evaluate_events(s, outcome, c))
            except ValueError as exc:
                payload["events"].append({"cutoff": c.isoformat(), "error": str(exc)})
    if format is Format.json:
        render.print_json(payload)
    else:
        render.backtest_table(payload)
        for result in payload.get("events", []):
            render.event_result(result)


@app.command()
def demo(
    store: Annotated[Path, typer.Option(help="Where to build the demo store (replaced).")] = Path(
        "demo-store"
    ),
) -> None:
    """Build a store from the Eunomia OMOP database, bundled Synthea FHIR bundles and an MIT-BIH
    ECG, then show it: the store, one patient's timeline and twin."""
    from jumeau.demo import run_demo

    run_demo(store)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
