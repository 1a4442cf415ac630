"""The pseudonymiser: keyed, stable pseudonyms, and a key that never shows."""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import pyarrow as pa
import pytest

from jumeau.store.keys import Pseudonymiser

KEY = bytes(range(32))


def test_pseudonyms_are_the_keyed_hmac_of_the_source_id():
    p = Pseudonymiser(KEY)
    digest = hmac.new(KEY, b"subject\x1fomop\x1f42", hashlib.sha256).digest()
    assert p.subject_id("omop", 42) == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert p.subject_id("omop", 42) == p.subject_id("omop", "42")  # ids compare as text
    assert p.subject_id("omop", 42) != p.subject_id("fhir", 42)
    assert Pseudonymiser(bytes(32)).subject_id("omop", 42) != p.subject_id("omop", 42)


def test_the_key_never_appears_in_a_repr():
    p = Pseudonymiser(KEY, max_date_shift_days=30)
    assert repr(KEY) not in repr(p) and KEY.hex() not in repr(p)


@pytest.mark.parametrize("key", [KEY, bytes(range(16)), bytes(range(100))])
@pytest.mark.parametrize("max_shift", [0, 365])
def test_pseudonyms_computed_in_duckdb_equal_the_python_ones(key, max_shift):
    p = Pseudonymiser(key, max_date_shift_days=max_shift)
    ids = ["42", "0", "007", "P-12'3", "Müller", "x" * 300, *map(str, range(1000, 1500))]
    con = duckdb.connect()
    con.register("ids", pa.table({"source_id": ids + ["42", None]}))
    p.register_pseudonyms(con, "pseudonyms", "om'op", "SELECT source_id FROM ids")
    rows = con.execute("SELECT source_id, subject_id, shift_us FROM pseudonyms").fetchall()
    assert len(rows) == len(ids)  # distinct, nulls left out
    for source_id, subject_id, shift in rows:
        assert subject_id == p.subject_id("om'op", source_id)
        assert shift == p.shift_us("om'op", source_id)
    assert {s for _, _, s in rows} != {0} or max_shift == 0
    assert "jumeau_key_pads" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
