"""What one ingest batch read, wrote and rejected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: What a long ingest calls with a short message (a table's name, a file) as its work moves on:
#: the CLI's progress bar.
Progress = Callable[[str], None]


@dataclass
class TableCount:
    """Reconciliation of one source table or resource type: ``read == accepted + rejected``."""

    read: int = 0
    accepted: int = 0
    rejected: int = 0
    events: int = 0

    @property
    def reconciles(self) -> bool:
        return self.read == self.accepted + self.rejected


@dataclass
class IngestReport:
    """The outcome of one ingest call, saved beside the batch and printed by the CLI."""

    source_kind: str
    source: str
    batch: str | None = None
    tables: dict[str, TableCount] = field(default_factory=dict)
    events_written: int = 0
    events_already_present: int = 0
    #: events that are new versions of stored records the source has changed since
    events_amended: int = 0
    #: stored events of records the source has since withdrawn (entered in error, deleted)
    events_retracted: int = 0
    #: stored events of patients merged into others (moved to the survivor, or hidden)
    events_merged: int = 0
    #: events of subjects who withdrew from the store, not stored
    events_withdrawn: int = 0
    rejects_written: int = 0
    subjects: int = 0
    unhandled: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    committed: bool = False
    seconds: float = 0.0

    def table(self, name: str) -> TableCount:
        return self.tables.setdefault(name, TableCount())

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rejected"] = self.rejected
        return out
