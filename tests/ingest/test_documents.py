"""Clinical notes as hospitals export them: in their own charset, as HTML or RTF, inline or in a
Binary of the export; the store keeps the text a reader sees."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import polars as pl

from jumeau.ingest.documents import document_text
from jumeau.ingest.fhir import ingest_fhir

RTF_NOTE = (
    rb"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0\fswiss Arial;}}{\colortbl;\red0\green0\blue0;}"
    rb"\f0\fs20 Patient vu en consultation.\par Tension 14/8, pas de fi\'e8vre.\par}"
)
HTML_NOTE = (
    "<html><head><title>Compte rendu</title><style>p {color: red}</style></head><body>"
    "<h1>Compte rendu</h1><p>Douleur thoracique &amp; dyspn&eacute;e.</p>"
    "<script>track()</script><ul><li>ECG normal</li><li>Troponine &lt; 5 ng/L</li></ul>"
    "</body></html>"
)


def test_a_latin_1_note_is_read_in_its_charset():
    note = "Fièvre à 39 °C, traitée.".encode("latin-1")
    assert document_text(note, "text/plain; charset=ISO-8859-1") == "Fièvre à 39 °C, traitée."
    assert "\ufffd" in document_text(note, "text/plain")  # undeclared: replaced, never fatal
    assert document_text(note, "text/plain; charset=no-such-set").startswith("Fi")


def test_an_html_note_keeps_its_visible_text_a_line_a_block():
    assert document_text(HTML_NOTE.encode(), "text/html; charset=utf-8") == (
        "Compte rendu\nDouleur thoracique & dyspnée.\nECG normal\nTroponine < 5 ng/L"
    )


def test_an_rtf_note_keeps_its_text_in_its_code_page():
    text = document_text(RTF_NOTE, "text/rtf")
    assert text.splitlines() == ["Patient vu en consultation.", "Tension 14/8, pas de fièvre."]
    assert document_text(RTF_NOTE, "application/octet-stream") == text  # known by its header


def _note(rid: str, attachments: list[dict]) -> dict:
    return {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "subject": {"reference": "Patient/n1"},
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "date": "2023-05-02T10:00:00Z",
        "content": [{"attachment": a} for a in attachments],
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_notes_in_binaries_and_renditions_are_stored_as_read(tmp_path: Path, new_store):
    """A Bulk export's note names its content by url (a Binary, here after it in the file);
    a note in two renditions is stored from its plain text; a PDF leaves the note without
    text, not rejected; the patient's name is scrubbed from what is read."""
    patient = {"resourceType": "Patient", "id": "n1", "name": [{"family": "Durand"}]}
    html = HTML_NOTE.replace("Compte rendu</h1>", "Compte rendu de Mme Durand</h1>")
    lines = [
        patient,
        _note("in-binary", [{"contentType": "text/html", "url": "Binary/b1"}]),
        _note("two", [{"contentType": "text/html", "data": _b64(b"<p>html</p>")},
                      {"contentType": "text/plain", "data": _b64(b"plain")}]),
        _note("pdf", [{"contentType": "application/pdf", "data": _b64(b"%PDF-1.4")}]),
        _note("rtf", [{"contentType": "text/rtf", "url": "https://ehr.example/fhir/Binary/b2"}]),
        {"resourceType": "Binary", "id": "b1", "contentType": "text/html; charset=utf-8",
         "data": _b64(html.encode())},
        {"resourceType": "Binary", "id": "b2", "contentType": "text/rtf", "data": _b64(RTF_NOTE)},
    ]  # fmt: skip
    path = tmp_path / "notes.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = ingest_fhir(new_store, path)
    assert report.tables["fhir/DocumentReference"].accepted == 4
    assert report.unhandled == {"Binary (a document's content)": 2}
    notes = new_store.timeline(new_store.lookup("fhir", "n1")).filter(pl.col("domain") == "note")
    texts = notes["text_value"].to_list()
    assert texts.count(None) == 1  # the PDF
    assert sorted(t for t in texts if t) == [
        "Compte rendu de Mme [NAME]\nDouleur thoracique & dyspnée.\nECG normal\nTroponine < 5 ng/L",
        "Patient vu en consultation.\nTension 14/8, pas de fièvre.",
        "plain",
    ]


def test_the_twin_shows_the_latest_notes_with_the_start_of_their_text(tmp_path: Path, new_store):
    patient = {"resourceType": "Patient", "id": "n1"}
    long_text = "Suivi. " + "Tension stable sous traitement. " * 20
    lines = [patient] + [
        _note(
            f"d{day}",
            [{"contentType": "text/plain", "data": _b64(f"Note {day}. {long_text}".encode())}],
        )
        | {"date": f"2023-05-{day:02d}T10:00:00Z"}
        for day in range(1, 8)
    ]
    path = tmp_path / "notes.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest_fhir(new_store, path)
    subject = new_store.lookup("fhir", "n1")
    notes = new_store.twin(subject).to_dict()["latest_notes"]
    assert [n["written"][:10] for n in notes] == [f"2023-05-0{d}" for d in (7, 6, 5, 4, 3)]
    assert notes[0]["excerpt"].startswith("Note 7. Suivi. Tension stable")
    assert len(notes[0]["excerpt"]) <= 240 and notes[0]["excerpt"].endswith("…")
    earlier = new_store.twin(subject, datetime(2023, 5, 2, 12)).notes
    assert [n["written"][:10] for n in earlier] == ["2023-05-02", "2023-05-01"]
