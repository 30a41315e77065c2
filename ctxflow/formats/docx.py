"""DOCX: WordprocessingML paragraphs, tables and text boxes in body order, headings and lists marked."""
from __future__ import annotations

import io
import re
import zipfile
import zlib
from typing import Any
from xml.etree import ElementTree as ET

from ..errors import DocumentError
from .archive import read_member

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """Paragraphs in body order, also inside content controls (``w:sdt``) and custom XML; tables row
    by row (cells separated by `` | ``, a table inside a cell flattened into it); text boxes as
    their own lines after their paragraph. Paragraphs styled ``Heading N`` or ``Title`` become
    Markdown headings, list paragraphs ``- `` items. Deleted and moved-away text is left out.
    Footnotes and endnotes are marked where they are referenced (``[^1]``, ``[^e1]``, numbered in
    reading order as Word shows them) and their text follows the body as ``[^1]: ...`` lines.
    Headers, footers and comments are not read (page furniture and review remarks)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ET.fromstring(read_member(z, "word/document.xml", name))
            notes = {kind: _notes(z, kind, name) for kind in ("footnote", "endnote")}
    except DocumentError:
        raise
    except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, zlib.error) as exc:
        raise DocumentError(f"{name} is not a readable DOCX ({type(exc).__name__}: {exc}).") from None
    body = root.find(f"{_W}body")
    if body is None:
        raise DocumentError(f"{name} is a DOCX without a WordprocessingML body (a Strict OOXML file? save it as a "
                            "standard .docx).")
    lines: list[str] = []
    refs: list[tuple[str, str]] = []  # (kind, id) of each note reference, in reading order
    _docx_blocks(body, lines, refs)
    marks: dict[tuple[str, str], str] = {}
    count = {"footnote": 0, "endnote": 0}
    for kind, nid in refs:  # numbered per kind in reading order, as Word shows them; a note without text gets no mark
        if (kind, nid) not in marks and notes[kind].get(nid):
            count[kind] += 1
            marks[kind, nid] = f"[^{'e' if kind == 'endnote' else ''}{count[kind]}]"
    text = _PLACEHOLDER.sub(lambda m: marks.get((m.group(1), m.group(2)), ""), "\n".join(lines).strip("\n"))
    tail = [f"{mark}: {notes[kind][nid]}" for part in ("footnote", "endnote")  # footnotes, then endnotes
            for (kind, nid), mark in marks.items() if kind == part]
    if tail:
        text = text.rstrip("\n") + "\n\n" + "\n".join(tail)
    text = re.sub(r"\n{3,}", "\n\n", text)
    if not text.strip():
        raise DocumentError(f"{name} is a DOCX with no text.")
    return text, {"format": "docx"}


_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_CONTAINERS = {f"{_W}sdt", f"{_W}sdtContent", f"{_W}customXml", f"{_W}smartTag", f"{_W}ins", f"{_W}moveTo"}
_GONE = {f"{_W}del", f"{_W}moveFrom", _MC_FALLBACK, f"{_W}sdtPr", f"{_W}sdtEndPr"}
_NOTE_REFS = {f"{_W}footnoteReference": "footnote", f"{_W}endnoteReference": "endnote"}
_PLACEHOLDER = re.compile("\x00(footnote|endnote):([^\x00]*)\x00")  # XML text never holds NUL


def _placeholder(kind: str, nid: str) -> str:
    return f"\x00{kind}:{nid}\x00"  # stands in for the marker until every reference is numbered


def _notes(z: zipfile.ZipFile, kind: str, name: str) -> dict[str, str]:
    """The text of each footnote or endnote by its id (``word/footnotes.xml``; none when absent)."""
    try:
        root = ET.fromstring(read_member(z, f"word/{kind}s.xml", name))
    except (KeyError, ET.ParseError, zipfile.BadZipFile, zlib.error, EOFError):  # none, or a damaged part: the body still reads
        return {}
    out = {}
    for note in root.iter(f"{_W}{kind}"):
        if note.get(f"{_W}type") in (None, "normal"):  # not the separator lines
            lines: list[str] = []
            _docx_blocks(note, lines, [])
            text = " ".join(" ".join(line.split()) for line in lines if line.strip())
            out[note.get(f"{_W}id") or ""] = _PLACEHOLDER.sub("", text)  # a note inside a note is not numbered
    return out


def _docx_blocks(parent: Any, lines: list[str], refs: list[tuple[str, str]]) -> None:
    for el in parent:
        if el.tag == f"{_W}p":
            _docx_para(el, lines, refs)
        elif el.tag == f"{_W}tbl":
            for tr in el.findall(f"{_W}tr"):
                cells = [_docx_cell(tc, refs) for tc in tr.findall(f"{_W}tc")]
                if any(cells):
                    lines.append(" | ".join(cells))
            lines.append("")
        elif el.tag in _CONTAINERS:
            _docx_blocks(el, lines, refs)


def _docx_cell(tc: Any, refs: list[tuple[str, str]]) -> str:
    parts: list[str] = []
    for el in tc:
        if el.tag == f"{_W}p":
            parts.append(_docx_runs(el, refs)[0])
        elif el.tag == f"{_W}tbl":  # a table in a cell: its cells in order, flattened into this one
            parts.extend(_docx_cell(c, refs) for tr in el.findall(f"{_W}tr") for c in tr.findall(f"{_W}tc"))
        elif el.tag in _CONTAINERS:
            parts.append(_docx_cell(el, refs))
    return " ".join(p.strip() for p in parts if p.strip())


def _docx_runs(p: Any, refs: list[tuple[str, str]]) -> tuple[str, list[Any]]:
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
            elif tag in _NOTE_REFS:
                refs.append((_NOTE_REFS[tag], ch.get(f"{_W}id") or ""))
                out.append(_placeholder(*refs[-1]))
            walk(ch)

    walk(p)
    return "".join(out), boxes


def _docx_para(p: Any, lines: list[str], refs: list[tuple[str, str]]) -> None:
    raw, boxes = _docx_runs(p, refs)
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
        _docx_para(box, lines, refs)

