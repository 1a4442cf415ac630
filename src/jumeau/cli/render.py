"""Printing stores, reports and timelines for people (rich) and machines (JSON)."""

from __future__ import annotations

import sys
from datetime import datetime

import orjson
import polars as pl
from rich.console import Console
from rich.table import Table

from jumeau.store import IngestReport

console = Console(width=None if sys.stdout.isatty() else 140)


def print_json(payload: object) -> None:
    """One JSON document on stdout (times as ISO 8601)."""
    print(
        orjson.dumps(
            payload, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC * 0, default=str
        ).decode()
    )


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
    table = Table(title=f"{report.source_kind} ingest of {report.source}")
    for col in ("source table", "read", "accepted", "rejected", "events", "reconciles"):
        table.add_column(col, justify="left" if col == "source table" else "right")
    for name, c in report.tables.items():
        table.add_row(
            name,
            f"{c.read:,}",
            f"{c.accepted:,}",
            f"{c.rejected:,}",
            f"{c.events:,}",
            "yes" if c.reconciles else "[red]NO[/red]",
        )
    console.print(table)
    for rtype, n in sorted(report.unhandled.items()):
        console.print(f"  not mapped: {n} {rtype} resource(s)")
    for warning in report.warnings:
        console.print(f"  [yellow]warning:[/yellow] {warning}")
    if report.committed:
        console.print(
            f"[green]committed batch {report.batch}[/green]: {report.events_written:,} new events "
            f"for {report.subjects:,} subjects, {report.rejects_written:,} rejects "
            f"({report.events_already_present:,} events already in the store) in {report.seconds:.2f}s"
        )
    else:
        console.print(
            f"nothing new: all {report.events_already_present:,} events are already in the store"
        )


def stats_table(stats: dict) -> None:
    console.print(
        f"[bold]{stats['store']}[/bold]: {stats['subjects']:,} subjects, {stats['events']:,} events "
        f"({stats['first_time']} .. {stats['last_time']}), {stats['rejects']:,} rejects, "
        f"{stats['batches']} batch(es)"
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
        if row["end_time"] and row["end_time"] != row["time"]:
            when += f" → {row['end_time'].date()}"
        table.add_row(when, row["domain"], row["code"], descriptions.get(row["code"], ""), value)
    console.print(table)
