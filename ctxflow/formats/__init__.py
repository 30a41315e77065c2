"""Text out of PDF, HTML, EPUB and DOCX files, with page and section offsets.

Each converter returns ``(text, meta)``. Citation offsets of a converted document index this
extracted text (``ctxflow text FILE`` prints it), so they are exact and reproducible: the same file
always gives the same text. Structure is kept where the format states it: HTML/EPUB/DOCX headings
become Markdown headings (``## Title``, which the book summarizer reads as chapters), list items
``- item``; a PDF's pages are joined by a blank line and ``meta["pages"]`` holds each page's start
offset, so a citation can name its page (:func:`page_of`).

PDF text comes from ``pypdf``; HTML, EPUB (a zip of XHTML in spine order) and DOCX (a zip of
WordprocessingML) are read with the standard library only.

Modules: ``pdf`` (pypdf), ``markup`` (HTML/XHTML: encoding and text), ``epub``, ``docx``, and
``archive`` (bounded reads of zip members, shared by EPUB and DOCX).
"""
from __future__ import annotations

import bisect
import io
import zipfile
from typing import Any

from ..errors import DocumentError
from .markup import decode_markup, html_text

FORMATS = ("pdf", "html", "epub", "docx")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text", ".csv", ".tsv", ".log", ".json", ".yaml", ".yml")


def sniff(data: bytes, name: str) -> str:
    """The format of ``data``: ``pdf``, ``epub``, ``docx``, ``html``, ``zip`` (another archive) or
    ``text`` (by content first; HTML by the file name's suffix, or by its opening tag in a file
    without a text suffix)."""
    low = name.lower()
    if low.endswith(_TEXT_SUFFIXES):  # a text file is read as text, whatever it quotes
        return "text"
    if data.lstrip()[:5] == b"%PDF-" or (low.endswith(".pdf") and b"%PDF-" in data[:1024]):  # junk may precede it
        return "pdf"
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = set(z.namelist())
                if "mimetype" in names:
                    with z.open("mimetype") as f:
                        if f.read(64).strip() == b"application/epub+zip":
                            return "epub"
                if "word/document.xml" in names:
                    return "docx"
                if "META-INF/container.xml" in names:
                    return "epub"
        except (zipfile.BadZipFile, OSError, RuntimeError):
            pass
        return "zip"
    if low.endswith(_HTML_SUFFIXES):
        return "html"
    head = decode_markup(data[:1024])[0].lstrip().lower()  # a BOM (UTF-8 or UTF-16) read as such
    if head.startswith(("<!doctype html", "<html")):
        return "html"
    return "text"


def convert(data: bytes, name: str, fmt: str) -> tuple[str, dict[str, Any]]:
    if fmt == "pdf":
        from .pdf import pdf_text

        return pdf_text(data, name)
    if fmt == "html":
        text, replaced = decode_markup(data)
        body, meta = html_text(text)
        if replaced:
            meta["replaced_bytes"] = replaced
        return body, meta
    if fmt == "epub":
        from .epub import epub_text

        return epub_text(data, name)
    if fmt == "docx":
        from .docx import docx_text

        return docx_text(data, name)
    raise DocumentError(f"{name} is a zip archive that is neither EPUB nor DOCX; give a text, PDF, HTML, EPUB or DOCX file.")


def page_of(meta: dict[str, Any], offset: int) -> int | None:
    """The 1-based page holding character ``offset`` of a converted PDF (``None`` for other documents)."""
    pages = meta.get("pages")
    if not pages:
        return None
    return max(1, bisect.bisect_right(pages, offset))


def place(meta: dict[str, Any], doc_meta: dict[str, Any], offset: int) -> bool:
    """For a citation (or chunk) ``meta`` of a converted document: its page or section instead of line
    numbers, which would count lines of the converted text, not of the file. False (nothing changed)
    for a plain text document."""
    if not doc_meta.get("format"):
        return False
    meta.pop("line", None)
    meta.pop("end_line", None)
    meta.update(locate(doc_meta, offset))
    return True


def locate(meta: dict[str, Any], offset: int) -> dict[str, Any]:
    """Where character ``offset`` of a converted document lies, for a citation: ``{"page": n}`` in a
    PDF, ``{"section": title}`` in an EPUB, ``{}`` otherwise."""
    page = page_of(meta, offset)
    if page is not None:
        return {"page": page}
    sections = meta.get("sections")
    if sections:
        i = bisect.bisect_right([s["start"] for s in sections], offset) - 1
        if i >= 0:
            return {"section": sections[i]["title"]}
    return {}

