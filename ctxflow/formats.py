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
import struct
import zipfile
import zlib
from urllib.parse import unquote
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree as ET

from .errors import DocumentError

FORMATS = ("pdf", "html", "epub", "docx")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")


_TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text", ".csv", ".tsv", ".log", ".json", ".yaml", ".yml")
MAX_UNZIPPED = 512 * 2**20  # bytes a zip member may unpack to (a "zip bomb" is refused before it is read)


def sniff(data: bytes, name: str) -> str:
    """The format of ``data``: ``pdf``, ``epub``, ``docx``, ``html``, ``zip`` (another archive) or
    ``text`` (by content first; HTML by the file name's suffix, or by its opening tag in a file
    without a text suffix)."""
    if b"%PDF-" in data[:1024]:  # the header may follow some junk bytes
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
    low = name.lower()
    if low.endswith(_HTML_SUFFIXES):
        return "html"
    if low.endswith(_TEXT_SUFFIXES):
        return "text"
    head = _bom_stripped(data[:1024]).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def _bom_stripped(head: bytes) -> bytes:
    for bom in (b"\xef\xbb\xbf",):
        if head.startswith(bom):
            return head[len(bom):]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return head.decode("utf-16", errors="ignore").encode("utf-8")
        except UnicodeError:
            return head
    return head


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)|<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)


def decode_markup(data: bytes) -> tuple[str, int]:
    """HTML/XHTML bytes as text: a byte-order mark first, then the encoding the page declares
    (``<meta charset>``, ``http-equiv``, an XML declaration), then UTF-8; ``(text, replaced bytes)``."""
    import codecs

    if data.startswith(b"\xef\xbb\xbf"):
        enc = "utf-8-sig"
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        enc = "utf-16"
    else:
        m = _CHARSET.search(data[:4096])
        enc = (m.group(1) or m.group(2)).decode("ascii") if m else "utf-8"
        try:
            enc = codecs.lookup(enc).name
        except LookupError:
            enc = "utf-8"
        if enc in ("utf-16-le", "utf-16-be", "utf-16"):  # declared but without a BOM: trust the bytes
            enc = "utf-8"
    try:
        return data.decode(enc).lstrip("\ufeff"), 0
    except UnicodeDecodeError:
        text = data.decode(enc, errors="replace")
        return text.lstrip("\ufeff"), text.count("\ufffd") - data.decode(enc, errors="ignore").count("\ufffd")


def _read_member(z: zipfile.ZipFile, member: str, name: str) -> bytes:
    info = z.getinfo(member)
    if info.file_size > MAX_UNZIPPED:
        raise DocumentError(f"{name}: {member} unpacks to {info.file_size / 2**20:.0f} MB, more than the "
                            f"{MAX_UNZIPPED // 2**20} MB a document part may hold; refused (a damaged file or a zip bomb).")
    return z.read(member)


def convert(data: bytes, name: str, fmt: str) -> tuple[str, dict[str, Any]]:
    if fmt == "pdf":
        return pdf_text(data, name)
    if fmt == "html":
        text, replaced = decode_markup(data)
        body, meta = html_text(text)
        if replaced:
            meta["replaced_bytes"] = replaced
        return body, meta
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
    from pypdf.errors import DependencyError, PyPdfError

    unreadable: list[int] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"{name} is an encrypted PDF; decrypt it first (e.g. qpdf --decrypt).")
        pages = []
        for i, page in enumerate(reader.pages):
            try:
                pages.append(_pdf_page(page))
            except DependencyError:
                raise
            except _PDF_ERRORS:  # one damaged page: the others are still read
                unreadable.append(i + 1)
                pages.append("")
    except DocumentError:
        raise
    except DependencyError as exc:
        raise DocumentError(f"{name} is an AES-encrypted PDF, which pypdf opens only with the 'cryptography' package "
                            f"(pip install cryptography), or decrypt it first (e.g. qpdf --decrypt) ({exc}).") from None
    except (PdfReadError, PyPdfError, *_PDF_ERRORS) as exc:
        raise DocumentError(f"{name} is not a readable PDF ({type(exc).__name__}: {exc}).") from None
    text, starts = "", []
    for p in pages:
        if text:
            text += "\n\n"
        starts.append(len(text))
        text += p
    if not text.strip():
        raise DocumentError(f"{name} is a PDF with no text layer ({len(pages)} page(s) of images?); "
                            "run OCR on it first (e.g. ocrmypdf) and give the result.")
    meta: dict[str, Any] = {"format": "pdf", "pages": starts, "n_pages": len(pages)}
    if unreadable:
        meta["unreadable_pages"] = unreadable
    return text, meta


_PDF_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, NotImplementedError, RecursionError,
               AssertionError, ZeroDivisionError, OverflowError, zlib.error, struct.error)


def _pdf_page(page: Any) -> str:
    text = page.extract_text() or ""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# -- HTML ---------------------------------------------------------------------------------------
_BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "blockquote", "pre", "table",
          "tr", "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "hr", "address", "details", "summary",
          "body", "center", "caption", "fieldset", "legend", "tbody", "thead", "tfoot"}
_SKIP = {"script", "style", "template", "noscript", "svg", "math", "iframe"}  # <head> is not: a page may never close it
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
        if tag == "title" and not self.skip:  # the page's title (not an SVG's): meta, never body text
            self.in_title = True
            return
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
        if tag == "title" and self.in_title:
            self.in_title = False
            return
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
            return
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
    if p.headings:
        meta["first_heading"] = p.headings[0][1]
    return p.text(), meta


# -- EPUB ---------------------------------------------------------------------------------------
_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf",
       "dc": "http://purl.org/dc/elements/1.1/"}


#: EPUB "encryption" that is only font obfuscation (the text is readable); anything else is DRM
_FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")


def epub_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """The spine's documents in reading order, each converted as HTML; ``meta["sections"]`` holds
    each one's start offset and title (its first heading, else its ``<title>``, else its file name).
    Spine items the package lists but does not hold are named in ``meta["missing"]``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            root = ET.fromstring(_read_member(z, "META-INF/container.xml", name))
            rf = root.find(".//c:rootfile", _NS)
            if rf is None or not rf.get("full-path"):
                raise DocumentError(f"{name}: EPUB without a package file (META-INF/container.xml names none).")
            opf_path = rf.get("full-path")
            opf = ET.fromstring(_read_member(z, opf_path, name))
            base = posixpath.dirname(opf_path)
            locked = _drm_locked(z, name) if "META-INF/encryption.xml" in names else set()
            items = {i.get("id"): i.get("href") for i in opf.iterfind(".//opf:manifest/opf:item", _NS)}
            spine = [r.get("idref") for r in opf.iterfind(".//opf:spine/opf:itemref", _NS)
                     if r.get("linear", "yes") != "no"]
            title_el = opf.find(".//dc:title", _NS)
            sections, missing, replaced = [], [], 0
            text = ""
            for idref in spine:
                href = items.get(idref)
                if not href:
                    missing.append(str(idref))
                    continue
                path = posixpath.normpath(posixpath.join(base, unquote(href.split("#")[0])))
                if path in locked:
                    raise DocumentError(f"{name} is a DRM-protected EPUB ({path} is encrypted); ctxflow reads only "
                                        "EPUBs without DRM.")
                if path not in names:
                    missing.append(path)
                    continue
                markup, bad = decode_markup(_read_member(z, path, name))
                replaced += bad
                body, meta = html_text(markup)
                if not body.strip():
                    continue
                if text:
                    text += "\n\n"
                title = meta.get("first_heading") or meta.get("title") or posixpath.basename(path)
                sections.append({"start": len(text), "title": title})
                text += body
    except DocumentError:
        raise
    except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, zlib.error) as exc:
        raise DocumentError(f"{name} is not a readable EPUB ({type(exc).__name__}: {exc}).") from None
    if not text.strip():
        raise DocumentError(f"{name} is an EPUB with no text in its reading order (spine)"
                            + (f"; it lists parts it does not hold: {', '.join(missing[:5])}." if missing else "."))
    meta = {"format": "epub", "sections": sections}
    if missing:
        meta["missing"] = missing
    if replaced:
        meta["replaced_bytes"] = replaced
    if title_el is not None and (title_el.text or "").strip():
        meta["title"] = title_el.text.strip()
    return text, meta


def _drm_locked(z: zipfile.ZipFile, name: str) -> set[str]:
    """Members that META-INF/encryption.xml says are encrypted with something other than font obfuscation."""
    enc = ET.fromstring(_read_member(z, "META-INF/encryption.xml", name))
    out = set()
    for ed in enc.iter("{http://www.w3.org/2001/04/xmlenc#}EncryptedData"):
        method = ed.find("{http://www.w3.org/2001/04/xmlenc#}EncryptionMethod")
        algo = method.get("Algorithm", "") if method is not None else ""
        ref = ed.find(".//{http://www.w3.org/2001/04/xmlenc#}CipherReference")
        if ref is not None and ref.get("URI") and algo not in _FONT_OBFUSCATION:
            out.add(posixpath.normpath(unquote(ref.get("URI"))))
    return out


# -- DOCX ---------------------------------------------------------------------------------------
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """Paragraphs in body order, also inside content controls (``w:sdt``) and custom XML; tables row
    by row (cells separated by `` | ``, a table inside a cell flattened into it); text boxes as
    their own lines after their paragraph. Paragraphs styled ``Heading N`` or ``Title`` become
    Markdown headings, list paragraphs ``- `` items. Deleted and moved-away text is left out."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ET.fromstring(_read_member(z, "word/document.xml", name))
    except DocumentError:
        raise
    except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, zlib.error) as exc:
        raise DocumentError(f"{name} is not a readable DOCX ({type(exc).__name__}: {exc}).") from None
    body = root.find(f"{_W}body")
    if body is None:
        raise DocumentError(f"{name} is a DOCX without a WordprocessingML body (a Strict OOXML file? save it as a "
                            "standard .docx).")
    lines: list[str] = []
    _docx_blocks(body, lines)
    text = "\n".join(lines).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    if not text.strip():
        raise DocumentError(f"{name} is a DOCX with no text.")
    return text, {"format": "docx"}


_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_CONTAINERS = {f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml", f"{_W}smartTag", f"{_W}ins", f"{_W}moveTo"}
_GONE = {f"{_W}del", f"{_W}moveFrom", _MC_FALLBACK, f"{_W}sdtPr", f"{_W}sdtEndPr"}


def _docx_blocks(parent: Any, lines: list[str]) -> None:
    for el in parent:
        if el.tag == f"{_W}p":
            _docx_para(el, lines)
        elif el.tag == f"{_W}tbl":
            for tr in el.findall(f"{_W}tr"):
                cells = [_docx_cell(tc) for tc in tr.findall(f"{_W}tc")]
                if any(cells):
                    lines.append(" | ".join(cells))
            lines.append("")
        elif el.tag in _CONTAINERS:
            _docx_blocks(el, lines)


def _docx_cell(tc: Any) -> str:
    parts: list[str] = []
    for el in tc:
        if el.tag == f"{_W}p":
            parts.append(_docx_runs(el)[0])
        elif el.tag == f"{_W}tbl":  # a table in a cell: its cells in order, flattened into this one
            parts.extend(_docx_cell(c) for tr in el.findall(f"{_W}tr") for c in tr.findall(f"{_W}tc"))
        elif el.tag in _CONTAINERS:
            parts.append(_docx_cell(el))
    return " ".join(p.strip() for p in parts if p.strip())


def _docx_runs(p: Any) -> tuple[str, list[Any]]:
    """A paragraph's text, and the text-box paragraphs found inside it (emitted after it)."""
    out: list[str] = []
    boxes: list[Any] = []

    def walk(node: Any) -> None:
        for ch in node:
            tag = ch.tag
            if tag in _GONE:
                continue
            if tag == f"{_W}txbxContent":
                boxes.extend(x for x in ch.iter(f"{_W}p"))
                continue
            if tag == f"{_W}t":
                out.append(ch.text or "")
            elif tag == f"{_W}tab":
                out.append("\t")
            elif tag in (f"{_W}br", f"{_W}cr"):
                out.append("\n")
            elif tag == f"{_W}noBreakHyphen":
                out.append("-")
            walk(ch)

    walk(p)
    return "".join(out), boxes


def _docx_para(p: Any, lines: list[str]) -> None:
    raw, boxes = _docx_runs(p)
    text = raw.strip()
    if text:
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
    for box in boxes:  # text boxes: their own paragraphs, after the one that anchors them
        _docx_para(box, lines)
