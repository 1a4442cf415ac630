"""Direct identifiers written inside free text (a note, a result's comment) never reach the store.

Structured identifiers (names, telecom, addresses, national ids, MRNs) are kept out of the events
by each connector; free text can still carry them. Before a text is stored, e-mail addresses,
French NIR and US social security numbers, telephone numbers and the patient's own names and
record numbers, when the source gives them, are replaced by a bracketed label. This is
pattern-based scrubbing, the usual first layer of de-identification: it removes what has a
recognisable shape or is known for the patient, not every name a clinician may have typed.

The patterns are written once and run both in Python (FHIR) and in DuckDB (OMOP notes), whose
regular expressions (RE2) have no look-around; both give the same text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from jumeau._duck import sql_string

#: (label, pattern), applied in this order.
PATTERNS: tuple[tuple[str, str], ...] = (
    ("[EMAIL]", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    (  # sex, year, month, department (2A/2B for Corsica), commune, order, optional key
        "[NIR]",
        r"\b[12][ .]?[0-9]{2}[ .]?(?:0[1-9]|1[0-2]|[2-9][0-9])[ .]?(?:2[AB]|[0-9]{2})"
        r"[ .]?[0-9]{3}[ .]?[0-9]{3}(?:[ .]?[0-9]{2})?\b",
    ),
    ("[SSN]", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b"),
    ("[PHONE]", r"(?:\+33[ .]?|\b0)[1-9](?:[ .-]?[0-9]{2}){4}\b"),
    ("[PHONE]", r"(?:\+1[ .-]?)?\(?\b[0-9]{3}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b"),
    ("[PHONE]", r"\+[0-9]{2,3}(?:[ .-]?[0-9]){7,12}\b"),
)
_COMPILED = tuple((label, re.compile(pattern)) for label, pattern in PATTERNS)
#: Names shorter than this are not redacted on their own (initials, "Li" inside words...).
MIN_NAME_LENGTH = 3
#: Record numbers shorter than this are not redacted: a patient numbered 123 must not hide a
#: blood pressure of 123/80 (whole tokens only, in any case).
MIN_NUMBER_LENGTH = 5


def redact_patterns(text: str) -> str:
    """``text`` with what looks like an identifier (a phone number, an e-mail, a national id...)
    replaced, whoever it belongs to."""
    for label, pattern in _COMPILED:
        text = pattern.sub(label, text)
    return text


def redact(text: str | None, names: Iterable[str] = (), numbers: Iterable[str] = ()) -> str | None:
    """``text`` with identifiers replaced: the patterns, then each of the patient's ``names``
    (whole words, any case) and record ``numbers`` (whole tokens, as written)."""
    if not text:
        return text
    text = redact_patterns(text)
    words = sorted({n for n in names if n and len(n) >= MIN_NAME_LENGTH}, key=len, reverse=True)
    if words:
        alternatives = "|".join(re.escape(w) for w in words)
        text = re.sub(rf"(?i)\b(?:{alternatives})\b", "[NAME]", text)
    for number in numbers:
        if number and len(number) >= MIN_NUMBER_LENGTH:
            text = re.sub(rf"\b{re.escape(number)}\b", "[ID]", text)
    return text


def redact_sql(expr: str, numbers: Iterable[str] = ()) -> str:
    """A DuckDB expression giving :func:`redact` of the text ``expr`` (patterns, then each SQL
    expression of ``numbers``, a patient's record numbers, replaced as whole tokens where at
    least :data:`MIN_NUMBER_LENGTH` long)."""
    for label, pattern in PATTERNS:
        expr = f"regexp_replace({expr}, {sql_string(pattern)}, '{label}', 'g')"
    for number in numbers:
        expr = (
            f"CASE WHEN length({number}) >= {MIN_NUMBER_LENGTH} THEN regexp_replace({expr}, "
            f"'\\b' || regexp_escape({number}) || '\\b', '[ID]', 'g') ELSE {expr} END"
        )
    return expr
