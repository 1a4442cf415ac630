"""The text of a clinical document as its reader sees it, from the form the source keeps it in.

Hospital systems export notes as plain text in their own character set (Latin-1 is common in
French ones), as HTML or XHTML, or as RTF (word processors; Epic's notes): the stored text is
what the document says, without its markup, decoded by the charset its content type names.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from html.parser import HTMLParser

#: Content types whose text can be read, best first when a record offers several renditions.
READABLE_TYPES = (
    "text/plain",
    "text/markdown",
    "text/html",
    "application/xhtml+xml",
    "text/rtf",
    "application/rtf",
)
_HTML = frozenset({"text/html", "application/xhtml+xml"})
_RTF = frozenset({"text/rtf", "application/rtf"})
#: HTML elements that end a line of the text a browser shows.
_BLOCKS = frozenset(
    {"p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre"}
)
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", re.IGNORECASE)


def media_type(content_type: str | None) -> str:
    """``text/html; charset=ISO-8859-1`` -> ``text/html`` (plain text when none is given)."""
    return (content_type or "text/plain").split(";")[0].strip().lower()


def readable(content_type: str | None) -> bool:
    """Whether a document of this content type has text to read (not a PDF, not an image)."""
    kind = media_type(content_type)
    return kind in READABLE_TYPES or kind.startswith("text/")


#: The start of a text that is an RTF or an HTML document, whatever its content type says (an
#: OMOP note_text has none).
RTF_START = re.compile(r"^\s*\{\\rtf")
HTML_START = re.compile(r"^\s*<(?:!doctype html|html|body|div|p[ >])", re.IGNORECASE)


def document_text(content: bytes | str, content_type: str | None = None) -> str:
    """The text a reader of the document sees: decoded by the content type's charset (UTF-8
    when none is named or the name is unknown; a byte that does not decode is replaced, never
    fatal) unless it is text already, its HTML or RTF markup removed (an RTF or HTML document
    is known by its start too)."""
    kind = media_type(content_type)
    if isinstance(content, bytes):
        if kind in _RTF or content.lstrip()[:5] == b"{\\rtf":
            # 7-bit text escaping other characters in its own code page (\ansicpg)
            content = content.decode("latin-1")
        else:
            match = _CHARSET.search(content_type or "")
            encoding = "utf-8"
            if match:
                with contextlib.suppress(LookupError):
                    encoding = codecs.lookup(match.group(1)).name
            content = content.decode(encoding, errors="replace")
    text = content
    if kind in _RTF or RTF_START.match(text):
        from striprtf.striprtf import rtf_to_text

        return rtf_to_text(text, errors="ignore").strip()
    if kind in _HTML or HTML_START.match(text):
        parser = _TextOfHtml()
        parser.feed(text)
        parser.close()
        return parser.text()
    return text


class _TextOfHtml(HTMLParser):
    """The visible text of an HTML document, a line per block, entities resolved."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style", "head"):
            self._hidden += 1
        elif tag in _BLOCKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self._parts).splitlines())
        return "\n".join(line for line in lines if line)
