"""Real PDF, EPUB and DOCX files for the format tests, written with real tools: PDFs by
matplotlib's PDF backend (a text layer with embedded TrueType fonts), EPUB and DOCX as the zip
packages their specifications define (EPUB 3 OCF/OPF, WordprocessingML)."""
from __future__ import annotations

import zipfile
from html import escape
from pathlib import Path


def make_pdf(pages: list[str], path: Path, image_only: bool = False) -> Path:
    """One page per string (lines as given), 8 pt monospace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(8.5, 11))
            if image_only:  # a scan: pixels, no text layer
                ax = fig.add_axes([0.1, 0.1, 0.8, 0.8])
                ax.imshow([[0, 1], [1, 0]])
                ax.axis("off")
            else:
                fig.text(0.05, 0.97, text, va="top", family="monospace", fontsize=8)
            pdf.savefig(fig)
            plt.close(fig)
    return path


def make_epub(chapters: list[tuple[str, str]], path: Path, spine_order: list[int] | None = None) -> Path:
    """``chapters`` = (title, XHTML body) pairs; the spine lists them in ``spine_order`` (default: as given)."""
    order = spine_order if spine_order is not None else list(range(len(chapters)))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")  # first, stored
        z.writestr("META-INF/container.xml",
                   '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                   '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                   '</rootfiles></container>')
        items = "".join(f'<item id="c{i}" href="text/ch{i}.xhtml" media-type="application/xhtml+xml"/>'
                        for i in range(len(chapters)))
        spine = "".join(f'<itemref idref="c{i}"/>' for i in order)
        z.writestr("OEBPS/content.opf",
                   '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
                   '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">test</dc:identifier>'
                   f'<dc:title>A Test Book</dc:title><dc:language>en</dc:language></metadata><manifest>{items}</manifest>'
                   f'<spine>{spine}</spine></package>')
        for i, (title, body) in enumerate(chapters):
            z.writestr(f"OEBPS/text/ch{i}.xhtml",
                       '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml">'
                       f"<head><title>{escape(title)}</title></head><body>{body}</body></html>")
    return path


_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx_para(text: str, style: str | None = None, numbered: bool = False) -> str:
    ppr = ""
    if style or numbered:
        ppr = "<w:pPr>" + (f'<w:pStyle w:val="{style}"/>' if style else "") + \
              ('<w:numPr><w:ilvl w:val="0"/><w:numId w:val="1"/></w:numPr>' if numbered else "") + "</w:pPr>"
    runs = "".join(f'<w:r><w:t xml:space="preserve">{escape(part)}</w:t></w:r>' for part in text.split("|"))
    return f"<w:p>{ppr}{runs}</w:p>"


def docx_table(rows: list[list[str]]) -> str:
    return "<w:tbl>" + "".join("<w:tr>" + "".join(f"<w:tc>{docx_para(c)}</w:tc>" for c in r) + "</w:tr>" for r in rows) + "</w:tbl>"


def make_docx(body_xml: list[str], path: Path, parts: dict[str, str] | None = None) -> Path:
    """A DOCX package with this body; ``parts`` adds other members (e.g. ``word/footnotes.xml``)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, xml in (parts or {}).items():
            z.writestr(member, xml)
        z.writestr("[Content_Types].xml",
                   '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
                   '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
                   '<Default Extension="xml" ContentType="application/xml"/>'
                   '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
                   'wordprocessingml.document.main+xml"/></Types>')
        z.writestr("_rels/.rels",
                   '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                   '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
                   'officeDocument" Target="word/document.xml"/></Relationships>')
        z.writestr("word/document.xml", f'<?xml version="1.0"?><w:document {_W}><w:body>{"".join(body_xml)}</w:body></w:document>')
    return path
