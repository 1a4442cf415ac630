"""The per-store secret and everything derived from it: pseudonyms, record keys, date shifts.

The secret never lives in the store directory. It is a 32-byte random key in a key file under
``$JUMEAU_KEY_DIR`` (default ``~/.jumeau/keys``), named after the store's id, or at a path the
user gives. Whoever holds it can recompute a subject's pseudonym from a source id; nobody else can.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from jumeau._duck import sql_string

_SUBJECT_MASK = (1 << 63) - 1
#: The prefix of a text sealed by :meth:`Pseudonymiser.seal`.
SEALED = "sealed:"
_US_PER_DAY = 86_400_000_000


class StoreKeyError(RuntimeError):
    """The store's secret key is missing or unreadable."""


def default_key_dir() -> Path:
    """Where store keys live unless a key file is given: ``$JUMEAU_KEY_DIR`` or ``~/.jumeau/keys``."""
    return Path(os.environ.get("JUMEAU_KEY_DIR", Path.home() / ".jumeau" / "keys"))


def create_key(path: Path) -> bytes:
    """Write a new random secret to ``path`` (mode 0600) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def load_key(path: Path) -> bytes:
    """Read a secret written by :func:`create_key`."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise StoreKeyError(
            f"store key not found at {path}: set JUMEAU_KEY_DIR or pass --key-file to the key "
            "created by `jumeau init`"
        ) from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise StoreKeyError(f"store key at {path} is not a hex secret") from exc
    if len(key) < 16:
        raise StoreKeyError(f"store key at {path} is too short ({len(key)} bytes)")
    return key


#: Pseudonyms and date shifts a :class:`Pseudonymiser` keeps once computed (a million
#: patients: ~150 MB each).
_REMEMBERED_SUBJECTS = 1_000_000


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonyms and date shifts for one store.

    Parameters
    ----------
    key:
        The store's secret.
    max_date_shift_days:
        If positive, every subject's times move by a consistent number of days drawn from
        ``[-max_date_shift_days, +max_date_shift_days]`` by the key; 0 keeps true dates.
    """

    key: bytes = field(repr=False)  # a secret: never in logs or tracebacks
    max_date_shift_days: int = 0
    _keyed: Any = field(default=None, init=False, repr=False, compare=False)
    _salt: str = field(default="", init=False, repr=False, compare=False)
    #: pseudonyms already computed: a FHIR export names the same few patients in every resource
    _subjects: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _shifts: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _siv: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # copying the keyed state skips re-deriving the padded keys for every id
        object.__setattr__(self, "_keyed", hmac.new(self.key, digestmod=hashlib.sha256))
        salt = hmac.new(self.key, b"record-salt", hashlib.sha256).hexdigest()[:24]
        object.__setattr__(self, "_salt", salt)

    def _mac(self, label: str, source: str, source_id: str) -> bytes:
        mac = self._keyed.copy()
        mac.update(f"{label}\x1f{source}\x1f{source_id}".encode())
        return mac.digest()

    def subject_id(self, source: str, source_id: object) -> int:
        """The pseudonym (a positive int64) of a patient id from a source (``omop``, ``fhir``...)."""
        known = self._subjects.get((source, source_id))
        if known is not None:
            return known
        digest = self._mac("subject", source, str(source_id))
        subject = int.from_bytes(digest[:8], "big") & _SUBJECT_MASK
        if len(self._subjects) < _REMEMBERED_SUBJECTS:
            self._subjects[(source, source_id)] = subject
        return subject

    def shift_us(self, source: str, source_id: object) -> int:
        """The subject's date shift in microseconds (0 when shifting is off)."""
        if self.max_date_shift_days <= 0:
            return 0
        known = self._shifts.get((source, source_id))
        if known is not None:
            return known
        digest = self._mac("shift", source, str(source_id))
        span = 2 * self.max_date_shift_days + 1
        shift = (int.from_bytes(digest[:4], "big") % span - self.max_date_shift_days) * _US_PER_DAY
        if len(self._shifts) < _REMEMBERED_SUBJECTS:
            self._shifts[(source, source_id)] = shift
        return shift

    @property
    def record_salt(self) -> str:
        """A 96-bit hex secret derived from the key, prefixed to record ids before hashing (short
        enough that salt, source and id fit one MD5 block)."""
        return self._salt

    def record_key(self, source: str, record_id: object) -> int:
        """A 60-bit keyed hash of a source record id; the same formula as :func:`record_key_sql`.

        MD5 under a secret prefix serves here as a fast keyed pseudo-random function (DuckDB
        computes it natively for hundreds of millions of rows); it authenticates nothing.
        """
        text = f"{self.record_salt}|{source}|{record_id}"
        return int.from_bytes(hashlib.md5(text.encode()).digest(), "little") >> 68

    def register_pseudonyms(
        self, con: Any, name: str, source: str, ids_sql: str, params: Any = None
    ) -> None:
        """Create the temp table ``name`` (``source_id``, ``subject_id``, ``shift_us``) mapping
        every distinct id of ``ids_sql`` (a query with a ``source_id`` column) in DuckDB.

        The same HMAC-SHA256 as :meth:`subject_id` and :meth:`shift_us`, computed natively for
        millions of ids at once. The key's pads travel as a registered relation, never in the
        SQL text (which an error message could show).
        """
        padded = self.key if len(self.key) <= 64 else hashlib.sha256(self.key).digest()
        padded = padded.ljust(64, b"\0")
        con.register(
            "jumeau_key_pads",
            pa.table(
                {
                    "ipad": pa.array([bytes(b ^ 0x36 for b in padded)], pa.binary()),
                    "opad": pa.array([bytes(b ^ 0x5C for b in padded)], pa.binary()),
                }
            ),
        )

        def mac(label: str) -> str:
            message = (
                f"encode('{label}' || chr(31) || {sql_string(source)} || chr(31) || i.source_id)"
            )
            return f"sha256(k.opad || unhex(sha256(k.ipad || {message})))"

        span = 2 * self.max_date_shift_days + 1
        shift = (
            f"((('0x' || left({mac('shift')}, 8))::UBIGINT % {span})::BIGINT"
            f" - {self.max_date_shift_days}) * {_US_PER_DAY}"
            if self.max_date_shift_days > 0
            else "0"
        )
        try:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE {name} AS
                SELECT i.source_id,
                    (('0x' || left({mac("subject")}, 16))::UBIGINT & {_SUBJECT_MASK})::BIGINT
                        AS subject_id,
                    ({shift})::BIGINT AS shift_us
                FROM (SELECT DISTINCT CAST(source_id AS VARCHAR) AS source_id FROM ({ids_sql})
                      WHERE source_id IS NOT NULL) i, jumeau_key_pads k""",
                params,
            )
        finally:
            con.unregister("jumeau_key_pads")

    def audit_key(self) -> bytes:
        """The key that chains the audit trail's entries (:mod:`jumeau.store.audit`)."""
        return hmac.new(self.key, b"audit", hashlib.sha256).digest()

    def seal(self, text: str | None) -> str | None:
        """``text`` (a source file's path, which may carry a patient's name: Synthea names its
        bundles after their patient) encrypted deterministically under the store secret
        (AES-SIV): the same path seals the same way, so rejects still compare across batches,
        and only a key holder reads it back (:meth:`unseal`)."""
        if text is None or text.startswith(SEALED):
            return text
        token = base64.urlsafe_b64encode(self._sealer().encrypt(text.encode(), None)).decode()
        return SEALED + token

    def unseal(self, text: str | None) -> str | None:
        """The text :meth:`seal` sealed (other text unchanged)."""
        if text is None or not text.startswith(SEALED):
            return text
        from cryptography.exceptions import InvalidTag

        try:
            data = self._sealer().decrypt(base64.urlsafe_b64decode(text[len(SEALED) :]), None)
        except (InvalidTag, ValueError) as exc:
            raise PermissionError("the store key does not open this sealed text") from exc
        return data.decode()

    def _sealer(self):
        """The AES-SIV cipher of :meth:`seal`, made when first needed (its import costs a store
        opened only to read ~20 ms)."""
        if self._siv is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESSIV

            key = hmac.new(self.key, b"seal", hashlib.sha512).digest()
            object.__setattr__(self, "_siv", AESSIV(key))
        return self._siv

    def vault_key(self) -> bytes:
        """The Fernet key that encrypts the identity vault."""
        return base64.urlsafe_b64encode(hmac.new(self.key, b"vault", hashlib.sha256).digest())


def record_key_sql(salt: str, source_sql: str, id_sql: str) -> str:
    """DuckDB expression computing :meth:`Pseudonymiser.record_key` for an id column."""
    return (
        f"(md5_number('{salt}|' || {source_sql} || '|' || CAST({id_sql} AS VARCHAR)) >> 68)::BIGINT"
    )
