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
    Markdown headings, list paragraphs ``- `` items. Deleted and moved-away text is left out."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            root = ET.fromstring(read_member(z, "word/document.xml", name))
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

