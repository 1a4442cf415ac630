"""The pseudonymiser: keyed, stable pseudonyms, and a key that never shows."""

from __future__ import annotations

import hashlib
import hmac

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
