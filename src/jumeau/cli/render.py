"""Printing stores, reports and timelines for people (rich) and machines (JSON)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jumeau.store.report import IngestReport

if TYPE_CHECKING:
    import polars as pl

console = Console(width=None if sys.stdout.isatty() else 140)
#: errors and notes go to standard error: standard output stays the result (JSON for machines)
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def print_json(payload: object) -> None:
    """One JSON document on stdout (times as ISO 8601)."""
    print(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str).decode())


def events_as_records(frame: pl.DataFrame) -> list[dict]:
    """Events as JSON-ready dicts with the canonical field names."""
    out = []
    for row in frame.iter_rows(named=True):
        for key in ("time", "end_time"):
            if isinstance(row.get(key), datetime):
                row[key] = row[key].isoformat()
        out.append(row)
    return out


def report_table(report: IngestReport) -> None:
    """Per-table reconciliation of an ingest, then the outcome."""
    table = Table(title=escape(f"{report.source_kind} ingest of {report.source}"))
    for col in ("source table", "read", "accepted", "rejected", "events", "reconciles"):
        table.add_column(col, justify="left" if col == "source table" else "right")
    for name, c in report.tables.items():
        table.add_row(
            escape(name),
            f"{c.read:,}",
            f"{c.accepted:,}",
            f"{c.rejected:,}",
            f"{c.events:,}",
            "yes" if c.reconciles else "[red]NO[/red]",
        )
    console.print(table)
    for rtype, n in sorted(report.unhandled.items()):
        console.print(escape(f"  not mapped: {n:,} × {rtype}"))
    for warning in report.warnings:
        console.print(f"  [yellow]warning:[/yellow] {escape(warning)}")
    if report.committed:
        fresh = report.events_written - report.events_amended
        amended = f" and {report.events_amended:,} amended" if report.events_amended else ""
        if report.events_retracted:
            amended += f", {report.events_retracted:,} withdrawn"
        if report.events_merged:
            amended += f", {report.events_merged:,} of merged patients moved or hidden"
        console.print(
            f"[green]committed batch {report.batch}[/green]: {_count(fresh, 'new event')}"
            f"{amended} for {_count(report.subjects, 'subject')}, "
            f"{_count(report.rejects_written, 'reject')} "
            f"({_count(report.events_already_present, 'event')} already in the store) "
            f"in {report.seconds:.2f}s"
        )
    else:
        console.print(
            f"nothing new: all {report.events_already_present:,} events are already in the store"
        )


def _normal(variable: dict) -> str:
    """A variable's reference interval, and where its last value stands against it."""
    bounds = variable.get("normal_range")
    if not bounds:
        return ""
    low, high = bounds
    text = (
        f"{low:g}-{high:g}"
        if low is not None and high is not None
        else (f">= {low:g}" if low is not None else f"<= {high:g}")
    )
    flag = variable.get("out_of_range")
    return f"{text} [bold red]{flag}[/bold red]" if flag else text


def _listed(item: dict) -> str:
    """A twin's list item as a clinician reads it: an order to *not* do a thing says so."""
    name = item.get("description") or item["code"]
    if item.get("terms"):  # a consent: what it provides for, and whether it permits or denies
        return f"{name} ({item['terms']})"
    return f"do not: {name}" if item.get("do_not_perform") == "true" else name


def stats_table(stats: dict) -> None:
    console.print(
        f"[bold]{stats['store']}[/bold]: {stats['subjects']:,} subjects, {stats['events']:,} events "
        f"({stats['first_time']} .. {stats['last_time']}), {stats['rejects']:,} rejects, "
        f"{stats['batches']} batch(es), {stats['signal_records']} waveform record(s)"
    )
    if (
        stats.get("amended_records")
        or stats.get("withdrawn_records")
        or stats.get("withdrawn_subjects")
        or stats.get("merged_records")
    ):
        console.print(
            f"{stats['amended_records']:,} record(s) amended and "
            f"{stats.get('withdrawn_records', 0):,} withdrawn at the source since first stored, "
            f"{stats.get('merged_records', 0):,} of patients merged into others; "
            f"{stats['withdrawn_subjects']:,} subject(s) erased on their withdrawal"
        )
    table = Table(title="events by domain")
    table.add_column("domain")
    table.add_column("events", justify="right")
    for domain, n in stats["events_by_domain"].items():
        table.add_row(domain, f"{n:,}")
    console.print(table)
    if stats["rejects_by_source"]:
        rejects = Table(title="rejects by source")
        rejects.add_column("source")
        rejects.add_column("rejects", justify="right")
        for source, n in stats["rejects_by_source"].items():
            rejects.add_row(source, f"{n:,}")
        console.print(rejects)


def timeline_table(frame: pl.DataFrame, descriptions: dict[str, str], title: str) -> None:
    table = Table(title=title)
    for col in ("time", "domain", "code", "description", "value"):
        table.add_column(col, overflow="fold")
    for row in frame.iter_rows(named=True):
        value = ""
        if row["numeric_value"] is not None:
            value = f"{row['numeric_value']:g} {row['unit'] or ''}".strip()
        elif row["text_value"]:
            value = row["text_value"][:40]
        when = row["time"].isoformat(sep=" ") if row["time"] else "(static)"
        end = row["end_time"]
        if end and row["time"] and end != row["time"]:
            # within the day (an ECG window, a 15-minute claim) the end's time tells; beyond, its date
            same_day = end.date() == row["time"].date()
            when += f" → {end.time().isoformat() if same_day else end.date()}"
        elif end:
            when += f" → {end.date()}"
        cells = (when, row["domain"], row["code"], descriptions.get(row["code"], ""), value)
        table.add_row(*map(escape, cells))
    console.print(table)


def twin_changes(twin: dict) -> None:
    """What changed since the earlier twin ``jumeau twin --since`` built, in words."""
    change = twin.get("changes_since", False)
    if change is False:
        return
    if change is None:
        console.print("[bold]changes[/bold]: no twin at the earlier date (nothing known then)")
        return
    names = change.get("descriptions", {})
    console.print(f"[bold]changes since {change['from'][:10]}[/bold]")
    lines = []
    for key in (
        "new_problems",
        "resolved_problems",
        "started_medications",
        "stopped_medications",
        "new_goals",
        "ended_goals",
        "new_alerts",
        "ended_alerts",
        "procedures_since",
        "vaccines_since",
    ):
        if change.get(key):
            lines.append(
                f"{key.replace('_', ' ')}: " + "; ".join(names.get(c) or c for c in change[key])
            )
    for name, moved in change.get("normal_range_changes", {}).items():
        value = "" if moved["value"] is None else f" ({moved['value']:.4g})"
        lines.append(
            f"{name}: {moved['before'] or 'in range'} -> {moved['after'] or 'in range'}{value}"
        )
    for surprise in change.get("outside_predicted_interval", []):
        low, high = surprise["interval_95"]
        lines.append(
            f"{surprise['variable']} {surprise['value']:.4g} on {surprise['time'][:10]}: outside "
            f"the predicted {low:.4g} - {high:.4g}"
        )
    for score, moved in change.get("risk_changes", {}).items():
        lines.append(f"{score}: {moved['before']} -> {moved['after']}")
    for line in lines or ["no change"]:
        console.print(f"  {escape(line)}")


def twins_update(result: dict) -> None:
    """One line per registry update, then what changed for each rebuilt twin."""
    console.print(
        f"twins as of {result['as_of'][:10]}: store version {result['from_version']} -> "
        f"{result['to_version']}, {result['rebuilt']} twin(s) rebuilt"
    )
    for change in result["diffs"]:
        parts = [
            f"{k.replace('_', ' ')}: {len(v) if isinstance(v, list | dict) else v}"
            for k, v in change.items()
            if k not in ("subject_id", "from", "to") and v
        ]
        console.print(f"  subject {change['subject_id']}: " + ("; ".join(parts) or "no change"))


def sleep_agreement(summary: dict) -> None:
    """Per night and stager: agreement with the hypnogram; then the means."""
    for night in summary["nights"]:
        if "error" in night:
            console.print(night["error"], markup=False)  # the message names the file
            continue
        window = night["window"]
        console.print(
            f"{night['record']} (EEG {night['channels']['eeg']}; epochs {window[0]}-{window[1]} "
            f"of {night['epochs_in_record']})",
            markup=False,
        )
        for method, r in night["methods"].items():
            if "error" in r:
                console.print(f"  {method}: {r['error']}", markup=False)
                continue
            f1 = "  ".join(f"{s} {v:.2f}" for s, v in r["f1"].items())
            console.print(
                f"  {method}: accuracy {r['accuracy']:.1%}  kappa {r['kappa']:.3f}  "
                f"({r['epochs']} epochs, {r['seconds']:.1f} s)  F1 {f1}"
            )
    for method, m in summary["mean"].items():
        console.print(
            f"mean {method}: accuracy {m['accuracy']:.1%}  kappa {m['kappa']:.3f} "
            f"over {m['nights']} night(s)"
        )


def _lifetime(demographics: dict) -> str:
    """``age 63.2``, ``age unknown`` or ``died 2010-12-01, aged 76.92``."""
    if demographics.get("deceased"):
        return f"died {demographics['deceased'][:10]}, aged {demographics['age']}"
    return "age unknown" if demographics["age"] is None else f"age {demographics['age']}"


def twin_summary(twin: dict) -> None:
    demo = twin["demographics"]
    console.print(
        f"[bold]subject {twin['subject_id']}[/bold] as of {twin['as_of']}: {demo['sex'] or 'sex unknown'}, "
        f"{_lifetime(demo)}, smoking {demo['smoking_status'] or 'unknown'}; {twin['events_used']} events used"
    )
    table = Table(title="state (filtered estimate with 95% interval)")
    for col in (
        "variable",
        "last value",
        "normal range",
        "age (days)",
        "estimate",
        "95% interval",
        "trend / year",
        "n",
    ):
        table.add_column(col, justify="left" if col == "variable" else "right")
    for name, v in twin["variables"].items():
        low, high = v["interval_95"]
        table.add_row(
            name,
            escape(f"{v['last_value']:.4g} {v['unit']}") if v["last_value"] is not None else "",
            _normal(v),
            f"{v['age_days']:g}" if v["age_days"] is not None else "",
            f"{v['estimate']:.4g}",
            f"{low:.4g} - {high:.4g}",
            f"{v['trend_per_year']:+.3g}" if v["trend_per_year"] else "0",
            str(v["n_observations"]),
        )
    if twin["variables"]:
        console.print(table)
    else:
        console.print("state: no catalogued variable (vitals, labs) measured by this date")
    risks = Table(title="risk scores")
    for col in ("score", "value", "95% interval", "missing / note"):
        risks.add_column(col)
    for r in twin["risks"].values():
        interval = (
            "" if not r["interval_95"] else f"{r['interval_95'][0]:g} - {r['interval_95'][1]:g}"
        )
        value = "" if r["value"] is None else f"{r['value']} {r['unit']}".strip()
        risks.add_row(
            escape(r["name"]),
            escape(value),
            interval,
            escape(
                "; ".join(
                    filter(None, [r["missing"] and "missing " + ", ".join(r["missing"]), r["note"]])
                )
            ),
        )
    console.print(risks)
    for title, key in (
        ("active problems", "problems"),
        ("past problems, latest first", "past_problems"),
        ("active medications", "medications"),
        ("allergies", "allergies"),
        ("procedures, latest first", "procedures"),
        ("immunizations, latest first", "immunizations"),
        ("devices", "devices"),
        ("goals", "goals"),
        ("episodes of care", "episodes"),
        ("alerts", "alerts"),
        ("consents in force", "consents"),
        ("orders of the last 90 days", "recent_orders"),
    ):
        items = twin.get(key) or []
        status = twin.get("allergy_status") if key == "allergies" and not items else None
        console.print(
            f"[bold]{title}[/bold] ({len(items)}): "
            + escape(status or "; ".join(_listed(i) for i in items[:12]))
            + (" ..." if len(items) > 12 else "")
        )
    for note in twin.get("latest_notes") or []:
        console.print(
            f"[bold]note[/bold] {note['written'][:10]} "
            + escape(f"{note['description'] or note['code']}: {note['excerpt'] or '(no text)'}")
        )
    genomics = twin.get("genomics")
    if genomics:
        high = genomics["high_impact"]
        console.print(
            f"[bold]genome[/bold]: {genomics['variants']:,} variants in {genomics['genes']:,} "
            f"genes; {len(high)} of high impact"
            + escape(
                (": " if high else "")
                + "; ".join(
                    f"{v['gene'] or v['code']} {v['consequence']}"
                    + (f" ({v['genotype']})" if v["genotype"] else "")
                    for v in high[:12]
                )
            )
        )
        implications = genomics.get("implications") or []
        if implications:
            console.print(
                f"[bold]reported significance[/bold] ({len(implications)}): "
                + escape(
                    "; ".join(
                        f"{v['gene'] or v['code']} {v['significance']}"
                        + (f" ({v['condition']})" if v["condition"] else "")
                        for v in implications[:12]
                    )
                )
            )
    family = twin.get("family_history") or []
    if family:
        console.print(
            f"[bold]family history[/bold] ({len(family)}): "
            + escape("; ".join(_family_member(f) for f in family[:12]))
        )
    signals = twin.get("signal_features") or {}
    if signals:
        shown = [
            f"{name.split('@')[0]} {f['value']:.4g}{' ' + f['unit'] if f.get('unit') not in (None, '1') else ''}"
            for name, f in list(signals.items())[:14]
        ]
        latest = max(f["time"] for f in signals.values())
        console.print(
            f"[bold]signal features[/bold] (latest {latest[:16]}): " + escape("; ".join(shown))
        )
    for variable, forecasts in twin.get("forecasts", {}).items():
        if isinstance(forecasts, dict):
            console.print(escape(f"forecast {variable}: {forecasts['error']}"))
            continue
        for f in forecasts:
            lo80, hi80 = f["interval_80"]
            console.print(
                escape(
                    f"forecast {variable} +{f['horizon']} ({f['date']}): {f['median']:.4g} {f['unit']} "
                    f"(80%: {lo80:.4g} - {hi80:.4g})"
                )
            )


#: the back-test table's learning-curve column, kept on one line
LEARNING_COLUMN = "MAE seeing last 1/2/4/all"


def backtest_table(result: dict) -> None:
    if not result["variables"]:
        console.print(
            f"forecast back-test, cutoff {result['cutoff']}: no catalogued variable was measured "
            f"both before the cutoff and within {result['horizon']} after it"
        )
        return
    table = Table(
        title=f"forecast back-test, cutoff {result['cutoff']}, horizon {result['horizon']}"
    )
    for col in (
        "variable",
        "n",
        "MAE twin",
        "MAE carry-fwd",
        "MAE pop. mean",
        "vs carry-fwd",
        "95% CI (patients)",
        "80% cover",
        "95% cover",
        LEARNING_COLUMN,
    ):
        table.add_column(
            col, justify="left" if col == "variable" else "right", no_wrap=col == LEARNING_COLUMN
        )
    for name, v in result["variables"].items():
        improvement = v["improvement_vs_carry_forward"]
        table.add_row(
            name,
            str(v["n"]),
            f"{v['mae']:.3g}",
            f"{v['mae_carry_forward']:.3g}",
            f"{v['mae_population_mean']:.3g}",
            "" if improvement is None else f"{improvement:+.0%}",
            _interval(v.get("improvement_ci95")),
            f"{v['coverage_80']:.0%}",
            f"{v['coverage_95']:.0%}",
            _learning(v.get("mae_by_own_observations")),
        )
    console.print(table)


def _learning(curve: dict | None) -> str:
    if not curve:
        return ""
    return "/".join(f"{curve[k]:.2g}" for k in ("1", "2", "4", "all"))


def _interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f"{round(bounds[0] * 100):+d}% to {round(bounds[1] * 100):+d}%"


def event_result(result: dict) -> None:
    if "error" in result:
        console.print(f"event back-test at {result['cutoff']}: {result['error']}")
        return
    c_index = "n/a" if result["c_index"] is None else f"{result['c_index']:.3f}"
    console.print(
        f"1-year risk of {', '.join(result['outcome'])} after {result['cutoff'][:10]}: "
        f"C-index {c_index}, Brier {result['brier']:.4f} (prevalence-only {result['brier_prevalence_baseline']:.4f}); "
        f"train {result['train']['subject_windows']} subject-windows over "
        f"{result['train']['landmarks']} landmarks / {result['train']['events']} events "
        f"/ {result['train'].get('censored', 0)} censored, "
        f"test {result['test']['subjects']} / {result['test']['events']}"
    )


def _count(n: int, noun: str) -> str:
    """``1 subject``, ``2,694 subjects``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _family_member(history: dict) -> str:
    """``Myocardial Infarction (father, at 74)``: a relative's condition, who, at what age."""
    age = history.get("onset_age")
    said = [history.get("relative"), None if age is None else f"at {age:g}"]
    details = ", ".join(filter(None, said))
    name = history.get("description") or history["code"]
    return f"{name} ({details})" if details else name
