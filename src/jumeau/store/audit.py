"""The store's audit trail of re-identifications and erasures: who asked for whose identity,
or for whose data to be erased, when and why.

Each entry is one JSON line of ``STORE/audit/reidentifications.jsonl`` carrying a keyed MAC of
itself and of the entry before it, so a holder of the store key can tell that no entry was
changed, removed or inserted since it was written (:func:`read_trail`); a trail cut short after
an intact entry reads as a shorter intact trail (the count of entries, kept elsewhere, tells).
An entry is written and flushed to disk before the identity it records is shown: a
re-identification that cannot be recorded does not happen.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path

AUDIT_DIR = "audit"
TRAIL_FILE = "reidentifications.jsonl"
_GENESIS = "0" * 64


class AuditError(RuntimeError):
    """The audit trail cannot be written, or has been tampered with."""


def trail_path(root: Path) -> Path:
    return root / AUDIT_DIR / TRAIL_FILE


def _mac(key: bytes, previous: str, entry: dict) -> str:
    body = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, previous.encode() + body, hashlib.sha256).hexdigest()


def record(
    root: Path,
    key: bytes,
    *,
    subject_id: int,
    purpose: str,
    found: int | None = None,
    action: str = "reidentify",
) -> dict:
    """Append one request (``reidentify`` or ``forget``) to the trail, flushed to disk, and
    return the entry."""
    if not purpose or not purpose.strip():
        what = "a re-identification" if action == "reidentify" else "an erasure"
        raise AuditError(f"{what} needs its purpose (who asked for it and why)")
    path = trail_path(root)
    try:
        path.parent.mkdir(exist_ok=True)
        with open(path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # two processes must not chain onto the same entry
            fh.seek(0)
            lines = [line for line in fh.read().splitlines() if line.strip()]
            previous = json.loads(lines[-1])["mac"] if lines else _GENESIS
            entry = {
                "action": action,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "user": getpass.getuser(),
                "subject_id": int(subject_id),
                "purpose": purpose.strip(),
            }
            if found is not None:
                entry["identities_found"] = int(found)
            entry["mac"] = _mac(key, previous, entry)
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise AuditError(
            f"{path}: the request ({action}) cannot be recorded in the audit trail ({exc}); "
            "it is refused"
        ) from exc
    return entry


def read_trail(root: Path, key: bytes) -> list[dict]:
    """Every entry of the trail, oldest first, after checking the chain of MACs."""
    path = trail_path(root)
    if not path.exists():
        return []
    entries, previous = [], _GENESIS
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            mac = entry.pop("mac")
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise AuditError(f"{path}: line {number} is not an audit entry") from exc
        if not hmac.compare_digest(mac, _mac(key, previous, entry)):
            raise AuditError(
                f"{path}: line {number} was changed, or an entry before it removed or inserted, "
                "since it was written"
            )
        entries.append({**entry, "mac": mac})
        previous = mac
    return entries
