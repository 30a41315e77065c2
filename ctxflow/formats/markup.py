"""HTML/XHTML bytes to text: the encoding (a BOM, the page's own declaration, else UTF-8), then the
readable text with headings as Markdown ``#`` lines, list items as ``- `` lines and table cells
separated by `` | `` (standard library ``html.parser``)."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

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


_BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "blockquote", "pre", "table",
          "tr", "ul", "ol", "dl", "dt", "dd", "figure", "figcaption", "form", "hr", "address", "details", "summary",
          "body", "center", "caption", "fieldset", "legend", "tbody", "thead", "tfoot"}
_SKIP = {"script", "style", "template", "noscript", "svg", "math", "iframe"}  # <head> is not: a page may never close it


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

