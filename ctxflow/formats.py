"""Text out of PDF, HTML, EPUB and DOCX files, with page and section offsets.

Each converter returns ``(text, meta)``. Citation offsets of a converted document index this
extracted text (``ctxflow text FILE`` prints it), so they are exact and reproducible: the same file
always gives the same text. Structure is kept where the format states it: HTML/EPUB/DOCX headings
become Markdown headings (``## Title``, which the book summarizer reads as chapters), list items
``- item``; a PDF's pages are joined by a blank line and ``meta["pages"]`` holds each page's start
offset, so a citation can name its page (:func:`page_of`).

PDF text comes from ``pypdf``; HTML, EPUB (a zip of XHTML in spine order) and DOCX (a zip of
WordprocessingML) are read with the standard library only.
"""
from __future__ import annotations

import bisect
import io
import posixpath
import re
import zipfile
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree as ET

from .errors import DocumentError

FORMATS = ("pdf", "html", "epub", "docx")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")


def sniff(data: bytes, name: str) -> str:
    """The format of ``data``: ``pdf``, ``epub``, ``docx``, ``html`` or ``text`` (by content first,
    then by the file name's suffix for HTML)."""
    head = data[:1024].lstrip()
    if data[:5] == b"%PDF-":
        return "pdf"
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = set(z.namelist())
                if "mimetype" in names and z.read("mimetype").strip() == b"application/epub+zip":
                    return "epub"
                if "word/document.xml" in names:
                    return "docx"
        except zipfile.BadZipFile:
            pass
        return "zip"
    low = head[:256].lower()
    if name.lower().endswith(_HTML_SUFFIXES) or low.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def convert(data: bytes, name: str, fmt: str) -> tuple[str, dict[str, Any]]:
    if fmt == "pdf":
        return pdf_text(data, name)
    if fmt == "html":
        text = data.decode("utf-8", errors="replace")
        return html_text(text)
    if fmt == "epub":
        return epub_text(data, name)
    if fmt == "docx":
        return docx_text(data, name)
    raise DocumentError(f"{name} is a zip archive that is neither EPUB nor DOCX; give a text, PDF, HTML, EPUB or DOCX file.")


def page_of(meta: dict[str, Any], offset: int) -> int | None:
    """The 1-based page holding character ``offset`` of a converted PDF (``None`` for other documents)."""
    pages = meta.get("pages")
    if not pages:
        return None
    return max(1, bisect.bisect_right(pages, offset))


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


# -- PDF ----------------------------------------------------------------------------------------
def pdf_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    try:
        import pypdf
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover - a dependency of ctxflow
        raise DocumentError(f"{name} is a PDF; reading PDFs needs the 'pypdf' package (pip install pypdf).") from None
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd-but-readable files are noise here
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"{name} is an encrypted PDF; decrypt it first (e.g. qpdf --decrypt).")
        pages = [_pdf_page(p) for p in reader.pages]
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"{name} is not a readable PDF ({exc}).") from None
    text, starts = "", []
    for p in pages:
        if text:
            text += "\n\n"
        starts.append(len(text))
        text += p
    if not text.strip():
        raise DocumentError(f"{name} is a PDF with no text layer ({len(pages)} page(s) of images?); "
                            "run OCR on it first (e.g. ocrmypdf) and give the result.")
    return text, {"format": "pdf", "pages": starts, "n_pages": len(pages)}


def _pdf_page(page: Any) -> str:
    text = page.extract_text() or ""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# -- HTML ---------------------------------------------------------------------------------------
_BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "blockquote", "pre", "table",
          "tr", "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "hr", "address", "details", "summary",
          "body", "center", "caption", "fieldset", "legend", "tbody", "thead", "tfoot"}
_SKIP = {"script", "style", "head", "template", "noscript", "svg", "math", "iframe", "object", "button", "select"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HTMLText(HTMLParser):
    """HTML to readable text: blocks on their own lines, headings as ``#`` lines, list items as
    ``- `` lines, table cells separated by `` | ``, whitespace collapsed outside ``<pre>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.line: list[str] = []
        self.skip = 0
        self.pre = 0
        self.title: list[str] = []
        self.in_title = False
        self.headings: list[tuple[int, str]] = []
        self.heading: int = 0
        self.cell = False

    # a new block: end the current line, leave one blank line between paragraphs
    def _break(self, blank: bool = True) -> None:
        line = "".join(self.line)
        line = line.rstrip() if self.pre else line.strip()  # <pre> keeps its indentation
        self.line = []
        if line:
            self.out.append(line)
        if blank and self.out and self.out[-1] != "":
            self.out.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _SKIP:
            if tag not in _VOID:
                self.skip += 1
            return
        if self.skip:
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._break()
            self.heading = int(tag[1])
            self.line.append("#" * self.heading + " ")
        elif tag == "li":
            self._break(blank=False)
            self.line.append("- ")
        elif tag == "br":
            self._break(blank=False)
        elif tag in ("td", "th"):
            if self.cell:
                self.line.append(" | ")
            self.cell = True
        elif tag == "pre":
            self._break()
            self.pre += 1
        elif tag in _BLOCK:
            self._break(blank=tag not in ("tr", "dd", "dt"))
            if tag == "tr":
                self.cell = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and self.heading:
            title = "".join(self.line).lstrip("#").strip()
            if title:
                self.headings.append((self.heading, title))
                self._break()
            else:
                self.line = []
            self.heading = 0
        elif tag == "pre":
            self._break()
            self.pre = max(0, self.pre - 1)
        elif tag in ("li", "tr"):
            self._break(blank=False)
            self.cell = False
        elif tag in _BLOCK:
            self._break(blank=tag not in ("dd", "dt"))

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if self.skip:
            return
        if self.pre:
            parts = data.replace("\r\n", "\n").split("\n")
            for i, part in enumerate(parts):
                if i:
                    self.out.append("".join(self.line).rstrip())
                    self.line = []
                self.line.append(part)
            return
        data = re.sub(r"\s+", " ", data)
        if not self.line or self.line[-1].endswith(" "):  # line start, after a "- "/"## " prefix or a space
            data = data.lstrip()
        if data:
            self.line.append(data)

    def text(self) -> str:
        self._break()
        while self.out and self.out[-1] == "":
            self.out.pop()
        return "\n".join(self.out)


def html_text(html: str) -> tuple[str, dict[str, Any]]:
    p = _HTMLText()
    p.feed(html)
    p.close()
    meta: dict[str, Any] = {"format": "html"}
    title = re.sub(r"\s+", " ", "".join(p.title)).strip()
    if title:
        meta["title"] = title
    return p.text(), meta


# -- EPUB ---------------------------------------------------------------------------------------
_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf",
       "dc": "http://purl.org/dc/elements/1.1/"}


def epub_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """The spine's documents in reading order, each converted as HTML; ``meta["sections"]`` holds
    each one's start offset and title."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ET.fromstring(z.read("META-INF/container.xml"))
            rf = root.find(".//c:rootfile", _NS)
            if rf is None or not rf.get("full-path"):
                raise DocumentError(f"{name}: EPUB without a package file (META-INF/container.xml names none).")
            opf_path = rf.get("full-path")
            opf = ET.fromstring(z.read(opf_path))
            base = posixpath.dirname(opf_path)
            items = {i.get("id"): i.get("href") for i in opf.iterfind(".//opf:manifest/opf:item", _NS)}
            spine = [r.get("idref") for r in opf.iterfind(".//opf:spine/opf:itemref", _NS)
                     if r.get("linear", "yes") != "no"]
            title_el = opf.find(".//dc:title", _NS)
            parts, sections = [], []
            text = ""
            for idref in spine:
                href = items.get(idref)
                if not href:
                    continue
                path = posixpath.normpath(posixpath.join(base, href.split("#")[0]))
                try:
                    raw = z.read(path)
                except KeyError:
                    continue
                body, meta = html_text(raw.decode("utf-8", errors="replace"))
                if not body.strip():
                    continue
                if text:
                    text += "\n\n"
                sections.append({"start": len(text), "title": meta.get("title") or posixpath.basename(path)})
                text += body
                parts.append(path)
    except (KeyError, ET.ParseError, zipfile.BadZipFile) as exc:
        raise DocumentError(f"{name} is not a readable EPUB ({exc}).") from None
    if not text.strip():
        raise DocumentError(f"{name} is an EPUB with no text in its reading order (spine).")
    meta = {"format": "epub", "sections": sections}
    if title_el is not None and (title_el.text or "").strip():
        meta["title"] = title_el.text.strip()
    return text, meta


# -- DOCX ---------------------------------------------------------------------------------------
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """Paragraphs in body order (tables row by row, cells separated by `` | ``); paragraphs styled
    ``Heading N`` or ``Title`` become Markdown headings, list paragraphs ``- `` items."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ET.fromstring(z.read("word/document.xml"))
    except (KeyError, ET.ParseError, zipfile.BadZipFile) as exc:
        raise DocumentError(f"{name} is not a readable DOCX ({exc}).") from None
    body = root.find(f"{_W}body")
    lines: list[str] = []
    for el in (body if body is not None else []):
        if el.tag == f"{_W}p":
            _docx_para(el, lines)
        elif el.tag == f"{_W}tbl":
            for tr in el.iter(f"{_W}tr"):
                cells = [" ".join(_docx_runs(p) for p in tc.iter(f"{_W}p")).strip() for tc in tr.iter(f"{_W}tc")]
                if any(cells):
                    lines.append(" | ".join(cells))
            lines.append("")
    text = "\n".join(lines).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    if not text.strip():
        raise DocumentError(f"{name} is a DOCX with no text.")
    return text, {"format": "docx"}


def _docx_runs(p: Any) -> str:
    out = []
    for node in p.iter():
        if node.tag == f"{_W}t":
            out.append(node.text or "")
        elif node.tag == f"{_W}tab":
            out.append("\t")
        elif node.tag in (f"{_W}br", f"{_W}cr"):
            out.append("\n")
    return "".join(out)


def _docx_para(p: Any, lines: list[str]) -> None:
    text = _docx_runs(p).strip()
    if not text:
        return
    style = p.find(f"{_W}pPr/{_W}pStyle")
    val = (style.get(f"{_W}val") or "") if style is not None else ""
    m = re.fullmatch(r"(?i)heading\s*(\d)", val)
    if m or val.lower() == "title":
        level = int(m.group(1)) if m else 1
        lines += [f"{'#' * min(6, level)} {' '.join(text.split())}", ""]
    elif p.find(f"{_W}pPr/{_W}numPr") is not None or val.lower().startswith("list"):
        lines.append(f"- {text}")
    else:
        lines += [text, ""]
