"""Identifiers inside free text are replaced before a text is stored, alike in Python and DuckDB."""

from __future__ import annotations

import duckdb
import pytest

from jumeau.ingest.redact import redact, redact_sql

CASES = [
    ("Écrire à jean.dupont@chu-lille.fr demain", "Écrire à [EMAIL] demain"),
    ("NIR 1 85 05 78 006 084 36, vu ce jour", "NIR [NIR], vu ce jour"),
    ("nir 285052A00608436.", "nir [NIR]."),
    ("SSN 123-45-6789 on file", "SSN [SSN] on file"),
    ("Joindre au 06 12 34 56 78 ou +33 1 23 45 67 89", "Joindre au [PHONE] ou [PHONE]"),
    ("call (617) 555-0123 or 617.555.0199", "call [PHONE] or [PHONE]"),
    ("tel +44 20 7946 0958", "tel [PHONE]"),
    # what is not an identifier stays: values, dates, doses, codes
    (
        "HbA1c 7.2 % on 2021-03-04, 500 mg bid, LOINC 4548-4",
        "HbA1c 7.2 % on 2021-03-04, 500 mg bid, LOINC 4548-4",
    ),
    ("BP 120/80 mmHg, HR 72, weight 81.5 kg", "BP 120/80 mmHg, HR 72, weight 81.5 kg"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_identifier_shapes_are_replaced_and_clinical_values_kept(text, expected):
    assert redact(text) == expected
    con = duckdb.connect()
    assert con.execute(f"SELECT {redact_sql('$t')}", {"t": text}).fetchone()[0] == expected


def test_the_patients_own_names_and_numbers_are_replaced():
    text = "Mrs ABE604 Rohan584 (MRN 00123456) seen; Abe604's daughter called. Li stable."
    out = redact(text, names=["Abe604", "Rohan584", "Li"], numbers=["00123456"])
    assert out == "Mrs [NAME] [NAME] (MRN [ID]) seen; [NAME]'s daughter called. Li stable."
    con = duckdb.connect()
    sql = redact_sql("$t", numbers=["$mrn"])
    assert con.execute(f"SELECT {sql}", {"t": text, "mrn": "00123456"}).fetchone()[0] == (
        "Mrs ABE604 Rohan584 (MRN [ID]) seen; Abe604's daughter called. Li stable."
    )
    assert redact(None) is None and redact("") == ""


def test_short_record_numbers_and_numbers_inside_words_are_left():
    text = "BP 123/80, ref 12345; lot AB12345X"
    assert redact(text, numbers=["123", "12345"]) == "BP 123/80, ref [ID]; lot AB12345X"
    con = duckdb.connect()
    sql = redact_sql("$t", numbers=["$a", "$b"])
    got = con.execute(f"SELECT {sql}", {"t": text, "a": "123", "b": "12345"}).fetchone()[0]
    assert got == "BP 123/80, ref [ID]; lot AB12345X"
