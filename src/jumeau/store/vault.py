"""The identity vault: direct identifiers kept apart from the events, encrypted.

Connectors hand names, addresses, telecom and national or hospital identifiers to the vault,
never to the event store. Each batch's vault is a Parquet table encrypted with a Fernet key
derived from the store secret, so only a holder of that secret can re-identify a subject.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.fernet import Fernet, InvalidToken

VAULT_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("identifiers", pa.string()),
    ]
)
"""``identifiers`` is a JSON object: names, birth date, addresses, telecom, MRN, NIR/SSN..."""


def write_vault(path: Path, table: pa.Table, key: bytes) -> None:
    """Encrypt ``table`` (``VAULT_SCHEMA``) into ``path``."""
    buf = io.BytesIO()
    pq.write_table(table.cast(VAULT_SCHEMA), buf, compression="zstd")
    path.write_bytes(Fernet(key).encrypt(buf.getvalue()))


def read_vault(path: Path, key: bytes) -> pa.Table:
    """Decrypt a vault file; fails clearly with the wrong key."""
    try:
        data = Fernet(key).decrypt(path.read_bytes())
    except InvalidToken as exc:
        raise PermissionError(f"{path}: the store key does not open this identity vault") from exc
    return pq.read_table(io.BytesIO(data))
