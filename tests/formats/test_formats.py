"""PDF, HTML, EPUB and DOCX documents: converted text, page/section offsets, clear errors, and
`ctxflow ask` on a real PDF with the embedded model (citations quote the converted text and name
their page)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxflow.cli import main
from ctxflow.errors import DocumentError
from ctxflow.formats import html_text, locate, page_of
from ctxflow.io import document_from_bytes, read_document

from .files import docx_para, docx_table, make_docx, make_epub, make_pdf

ROOT = Path(__file__).parent.parent.parent
EXCERPT = (ROOT / "tests" / "data" / "jargon_excerpt.txt").read_text(encoding="utf-8")
_ALL = EXCERPT.splitlines()
_AT = next(i for i, line in enumerate(_ALL) if ":heisenbug:" in line)
LINES = _ALL[max(0, _AT - 130):_AT + 110]  # 4 pages of the real document around the entry asked about


def _pages(n_lines: int = 60) -> list[str]:
    return ["\n".join(LINES[i:i + n_lines]) for i in range(0, len(LINES), n_lines)]


@pytest.fixture(scope="module")
def jargon_pdf(tmp_path_factory) -> Path:
    return make_pdf(_pages(), tmp_path_factory.mktemp("pdf") / "jargon.pdf")


def test_pdf_pages_and_offsets(jargon_pdf):
    doc = read_document(jargon_pdf)
    pages = _pages()
    assert doc.meta["format"] == "pdf" and doc.meta["n_pages"] == len(pages) == len(doc.meta["pages"])
    starts = doc.meta["pages"] + [len(doc.text) + 2]
    for i, source in enumerate(pages):
        got = doc.text[starts[i]:starts[i + 1] - 2]  # pages are joined by one blank line
        # the text layer gives back each page's words in order (PDF text keeps no exact spacing)
        assert got.split() == source.split(), i
        mid = starts[i] + len(got) // 2
        assert page_of(doc.meta, mid) == i + 1 == locate(doc.meta, mid)["page"]
    assert page_of({"format": "html"}, 10) is None and locate({}, 3) == {}


def test_pdf_errors(tmp_path, jargon_pdf):
    scan = make_pdf(["", ""], tmp_path / "scan.pdf", image_only=True)
    with pytest.raises(DocumentError, match="no text layer .*OCR"):
        read_document(scan)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(jargon_pdf.read_bytes()[:400])
    with pytest.raises(DocumentError, match="not a readable PDF"):
        read_document(broken)
    import pypdf

    w = pypdf.PdfWriter(clone_from=str(jargon_pdf))
    w.encrypt("secret")
    locked = tmp_path / "locked.pdf"
    with open(locked, "wb") as f:
        w.write(f)
    with pytest.raises(DocumentError, match="encrypted PDF"):
        read_document(locked)
    # the CLI says so in one line, no traceback
    assert main(["text", str(locked)]) == 2


def test_html_structure():
    html = """<!DOCTYPE html><html><head><title>The  Manual</title><style>p{color:red}</style>
    <script>var x = "<p>not text</p>";</script></head><body>
    <h1>Intro</h1><p>This is   a <b>bold</b>
    claim.<br>New line &amp; more.</p><ul><li>one</li><li>two <i>three</i></li></ul>
    <h2>Data</h2><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
    <pre>code  line1\n   indented</pre><p>End.</p></body></html>"""
    text, meta = html_text(html)
    assert meta == {"format": "html", "title": "The Manual", "first_heading": "Intro"}
    assert text == ("# Intro\n\nThis is a bold claim.\nNew line & more.\n\n- one\n- two three\n\n## Data\n\n"
                    "a | b\n1 | 2\n\ncode  line1\n   indented\n\nEnd.")
    # by suffix or by doctype; an .html file's headings become the book summarizer's chapters
    doc = document_from_bytes(b"<p>Hello <em>world</em></p>", "page.htm")
    assert doc.text == "Hello world" and doc.meta["format"] == "html"
    assert document_from_bytes(b"<p>Hello</p>", "notes.txt").text == "<p>Hello</p>"  # a .txt stays text
    from ctxflow.summarize.structure import build_tree

    method, tree = build_tree(text)
    assert method == "markdown"
    assert [c.title for c in tree.children] == ["Intro"] and [c.title for c in tree.children[0].children] == ["Data"]


def test_epub_reading_order_and_sections(tmp_path):
    chapters = [("Chapter One", "<h1>One</h1><p>The first kluge.</p>"),
                ("Chapter Two", "<h1>Two</h1><p>A second <b>hack</b>.</p><script>bad()</script>"),
                ("Notes", "<p>   </p>")]
    book = make_epub(chapters, tmp_path / "book.epub", spine_order=[1, 0, 2])
    doc = read_document(book)
    assert doc.meta["format"] == "epub" and doc.meta["title"] == "A Test Book"
    assert doc.text == "# Two\n\nA second hack.\n\n# One\n\nThe first kluge."  # spine order; empty chapter dropped
    assert [s["title"] for s in doc.meta["sections"]] == ["Two", "One"]  # each part's first heading
    assert locate(doc.meta, doc.text.index("kluge"))["section"] == "One"
    assert locate(doc.meta, 0)["section"] == "Two"


def test_docx_paragraphs_headings_lists_tables(tmp_path):
    body = [docx_para("Report", "Title"), docx_para("Scope", "Heading2"), docx_para("First |part| of text."),
            docx_para("item a", numbered=True), docx_para("item b", "ListParagraph"),
            docx_table([["k", "v"], ["x", "1"]]), docx_para("Last.")]
    doc = read_document(make_docx(body, tmp_path / "r.docx"))
    assert doc.meta["format"] == "docx"
    assert doc.text == "# Report\n\n## Scope\n\nFirst part of text.\n\n- item a\n- item b\nk | v\nx | 1\n\nLast."


def test_docx_footnotes_and_endnotes_follow_the_body(tmp_path):
    from .files import _W as W_NS

    def ref(kind, nid):
        return f'<w:r><w:{kind}Reference w:id="{nid}"/></w:r>'

    def notes(kind, items):
        sep = f'<w:{kind} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{kind}>'
        return (f'<?xml version="1.0"?><w:{kind}s {W_NS}>{sep}' + "".join(
            f'<w:{kind} w:id="{nid}"><w:p><w:r><w:{kind}Ref/></w:r><w:r><w:t xml:space="preserve"> {text}</w:t></w:r></w:p>'
            f'</w:{kind}>' for nid, text in items) + f"</w:{kind}s>")

    body = [f"<w:p><w:r><w:t>Kluges abound.</w:t></w:r>{ref('footnote', 7)}</w:p>",
            f"<w:p><w:r><w:t>See also</w:t></w:r>{ref('footnote', 3)}<w:r><w:t> and hacks.</w:t></w:r>{ref('endnote', 2)}</w:p>"]
    parts = {"word/footnotes.xml": notes("footnote", [(3, "Second note."), (7, "First note, in 1962.")]),
             "word/endnotes.xml": notes("endnote", [(2, "An endnote.")])}
    doc = read_document(make_docx(body, tmp_path / "n.docx", parts))
    assert doc.text == ("Kluges abound.[^1]\n\nSee also[^2] and hacks.[^e1]\n\n"
                        "[^1]: First note, in 1962.\n[^2]: Second note.\n[^e1]: An endnote.")
    assert read_document(make_docx(body[:1], tmp_path / "m.docx")).text == "Kluges abound."  # no notes part: no mark
    damaged = {"word/footnotes.xml": parts["word/footnotes.xml"][:-20]}  # a damaged notes part: the body still reads
    assert read_document(make_docx(body[:1], tmp_path / "d.docx", damaged)).text == "Kluges abound."


def test_other_zip_and_binary_are_refused(tmp_path):
    import zipfile

    z = tmp_path / "data.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a.txt", "hello")
    with pytest.raises(DocumentError, match="neither EPUB nor DOCX"):
        read_document(z)
    with pytest.raises(DocumentError, match="looks binary.*PDF, HTML, EPUB or DOCX"):
        document_from_bytes(b"\x7fELF\x00\x00\x01", "prog")


def test_text_command(jargon_pdf, capsys):
    assert main(["text", str(jargon_pdf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meta"]["format"] == "pdf" and out["text"] == read_document(jargon_pdf).text
    assert main(["text", str(jargon_pdf)]) == 0
    assert capsys.readouterr().out == out["text"] + "\n"


def test_ask_a_pdf_cites_pages(jargon_pdf, llm, embedder, capsys):
    """The default pipeline on a PDF with the embedded model: citations quote the converted text
    exactly, name their page, and one lies on the page that holds the entry asked about."""
    rc = main(["ask", str(jargon_pdf), "According to the Jargon File, the term 'heisenbug' comes from which "
               "principle of quantum physics?", "--json", "-q"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["answer"].strip()
    doc = read_document(jargon_pdf)
    assert res["citations"]
    for c in res["citations"]:
        assert doc.text[c["start"]:c["end"]] == c["text"]
        assert c["page"] == page_of(doc.meta, c["start"])
    entry_page = page_of(doc.meta, doc.text.index(":heisenbug:"))
    assert any(c["page"] == entry_page for c in res["citations"]), (entry_page, res["citations"])


def test_index_a_folder_of_pdf_and_html_then_ask_the_store(jargon_pdf, tmp_path, capsys, llm, embedder):
    """`ctxflow index` reads PDFs and HTML like text files (converted); `ask --store` cites the
    converted text exactly, verified against the file, with the PDF page."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.pdf").write_bytes(jargon_pdf.read_bytes())
    (docs / "notes.html").write_text("<html><body><h1>Lunch</h1><p>The team eats lunch at noon in the "
                                     "garden.</p></body></html>", encoding="utf-8")
    store = tmp_path / "store"
    assert main(["index", str(docs), "--store", str(store), "--quiet"]) == 0
    assert "skipped" not in capsys.readouterr().err
    assert main(["ask", "--store", str(store), "What is a heisenbug?", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["citations"]
    for c in out["citations"]:
        doc = read_document(c["path"])
        assert doc.text[c["start"]:c["end"]] == c["text"] and c["verified"] is True
        if c["path"].endswith(".pdf"):
            assert c["page"] == page_of(doc.meta, c["start"])
    assert any(c["path"].endswith(".pdf") for c in out["citations"])


# -- found by review: each of these lost, duplicated or garbled text, or crashed ------------------
def test_html_without_closing_head_keeps_its_text_and_svg_titles_stay_out():
    doc = document_from_bytes(b"<html><head><title>T</title><body><p>Para one.</p><p>Para two.</p></body></html>", "a.html")
    assert doc.text == "Para one.\n\nPara two." and doc.meta["title"] == "T"
    text, meta = html_text("<title>Real</title><p><svg><title>icon</title></svg>Body</p>")
    assert text == "Body" and meta["title"] == "Real"


@pytest.mark.parametrize("data,want", [
    ("<meta charset=iso-8859-1><p>Crème brûlée</p>".encode("latin-1"), "Crème brûlée"),
    ('<meta http-equiv="Content-Type" content="text/html; charset=windows-1252"><p>“quoted”</p>'.encode("cp1252"), "“quoted”"),
    ("<html><p>Crème</p></html>".encode("utf-16"), "Crème"),  # with its byte-order mark
    (b"\xef\xbb\xbf<p>Cr\xc3\xa8me</p>", "Crème"),
])
def test_html_reads_its_declared_or_bom_encoding(data, want):
    doc = document_from_bytes(data, "page.html")
    assert doc.text == want and "replaced_bytes" not in doc.meta
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # found as HTML by its opening tag too, without a suffix
        assert document_from_bytes(data, "page").text == want


def test_text_files_are_never_reflowed_as_html_and_junk_before_pdf_header_is_allowed(jargon_pdf):
    assert document_from_bytes(b"<!doctype html>\n<p>kept as written</p>\n", "notes.md").text.startswith("<!doctype")
    assert document_from_bytes(b"\x00\x00junk\n" + jargon_pdf.read_bytes(), "x.pdf").meta["format"] == "pdf"


def test_docx_content_controls_nested_tables_text_boxes_and_tracked_changes(tmp_path):
    W = "w"
    sdt = f"<{W}:sdt><{W}:sdtPr/><{W}:sdtContent>{docx_para('Inside a content control.')}</{W}:sdtContent></{W}:sdt>"
    inner = docx_table([["x", "y"]])
    nested = (f"<{W}:tbl><{W}:tr><{W}:tc>{docx_para('A1')}</{W}:tc><{W}:tc>{docx_para('A2')}{inner}</{W}:tc></{W}:tr></{W}:tbl>")
    mc = 'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'
    box = (f"<{W}:p><{W}:r><{W}:t xml:space=\"preserve\">Before </{W}:t></{W}:r><{W}:r><mc:AlternateContent {mc}><mc:Choice>"
           f"<{W}:txbxContent>{docx_para('Box text')}</{W}:txbxContent></mc:Choice><mc:Fallback><{W}:txbxContent>"
           f"{docx_para('Box text')}</{W}:txbxContent></mc:Fallback></mc:AlternateContent></{W}:r>"
           f"<{W}:r><{W}:t>after.</{W}:t></{W}:r></{W}:p>")
    changes = (f"<{W}:p><{W}:r><{W}:t>Kept </{W}:t></{W}:r><{W}:del><{W}:r><{W}:delText>gone </{W}:delText></{W}:r></{W}:del>"
               f"<{W}:ins><{W}:r><{W}:t>new</{W}:t></{W}:r></{W}:ins><{W}:r><{W}:t xml:space=\"preserve\"> e</{W}:t>"
               f"<{W}:noBreakHyphen/><{W}:t>mail</{W}:t></{W}:r></{W}:p>")
    doc = read_document(make_docx([docx_para("Intro."), sdt, nested, box, changes, docx_para("Outro.")], tmp_path / "d.docx"))
    assert doc.text == ("Intro.\n\nInside a content control.\n\nA1 | A2 x y\n\nBefore after.\n\nBox text\n\n"
                        "Kept new e-mail\n\nOutro.")


def test_epub_encoded_hrefs_missing_parts_drm_and_section_names(tmp_path):
    import zipfile

    book = make_epub([("My Book", "<h1>Chapter 1</h1><p>First.</p>"), ("My Book", "<h1>Chapter 2</h1><p>Second.</p>")],
                     tmp_path / "b.epub")
    doc = read_document(book)
    assert [s["title"] for s in doc.meta["sections"]] == ["Chapter 1", "Chapter 2"]  # first heading, not <title>
    # a manifest href with %20, and a spine part the package does not hold
    spaced, drm = tmp_path / "spaced.epub", tmp_path / "drm.epub"
    with zipfile.ZipFile(book) as src, zipfile.ZipFile(spaced, "w") as out, zipfile.ZipFile(drm, "w") as locked:
        for info in src.infolist():
            data = src.read(info)
            name = info.filename
            if name == "OEBPS/content.opf":
                data = data.replace(b'href="text/ch0.xhtml"', b'href="text/Chapter%201.xhtml"').replace(
                    b"</manifest>", b'<item id="gone" href="text/gone.xhtml" media-type="application/xhtml+xml"/></manifest>'
                ).replace(b"</spine>", b'<itemref idref="gone"/></spine>')
            out.writestr("OEBPS/text/Chapter 1.xhtml" if name == "OEBPS/text/ch0.xhtml" else name, data)
            locked.writestr(name, src.read(info) if not name.endswith("ch1.xhtml") else b"\x93\x11\xfe binary")
        locked.writestr("META-INF/encryption.xml",
                        '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
                        'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData><enc:EncryptionMethod '
                        'Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/><enc:CipherData><enc:CipherReference '
                        'URI="OEBPS/text/ch1.xhtml"/></enc:CipherData></enc:EncryptedData></encryption>')
    got = read_document(spaced)
    assert got.text == doc.text and got.meta["missing"] == ["OEBPS/text/gone.xhtml"]
    with pytest.raises(DocumentError, match="DRM-protected EPUB"):
        read_document(drm)


def test_damaged_pdfs_and_oversized_zip_parts_are_clear_errors(tmp_path, jargon_pdf, monkeypatch):
    data = jargon_pdf.read_bytes()
    odd = data.replace(b"/FlateDecode", b"/NoSuchDecode", 1)  # an unsupported stream filter
    f = tmp_path / "odd.pdf"
    f.write_bytes(odd)
    try:
        doc = read_document(f)  # pages that cannot be decoded are listed, the others read
        assert doc.meta.get("unreadable_pages") or doc.text.strip()
    except DocumentError as exc:
        assert "not a readable PDF" in str(exc)
    import ctxflow.formats.archive as archive

    monkeypatch.setattr(archive, "MAX_UNZIPPED", 10_000)
    with pytest.raises(DocumentError, match="zip bomb"):
        read_document(make_docx([docx_para("x" * 20_000)], tmp_path / "big.docx"))


def test_citations_of_converted_files_name_their_page_not_a_line_of_the_file(tmp_path, jargon_pdf, capsys):
    """A line of the converted text is no line of the HTML/PDF file, so verified store citations of
    converted files carry no line (a PDF's carry its page), and the CLI prints ``file (page N)``."""
    import io
    import sys

    from ctxflow.cli import print_answer
    from ctxflow.memory.cli import _verify
    from ctxflow.types import Answer, Citation

    page = tmp_path / "page.html"
    page.write_text("<html>\n<body>\n\n\n<p>To reset the zorblax, hold the button.</p></body></html>", encoding="utf-8")
    html = read_document(page)
    pdf = read_document(jargon_pdf)
    i, j = html.text.index("To reset"), pdf.text.index(":heisenbug:")
    cits = [Citation(doc_id=str(page), start=i, end=i + 8, text="To reset", meta={"path": str(page), "line": 1}),
            Citation(doc_id=str(jargon_pdf), start=j, end=j + 11, text=":heisenbug:", meta={"path": str(jargon_pdf), "line": 9})]
    _verify(cits, io.StringIO())
    assert cits[0].meta == {"path": str(page), "verified": True}
    assert cits[1].meta == {"path": str(jargon_pdf), "verified": True, "page": page_of(pdf.meta, j)}
    print_answer(Answer(text="a", citations=cits), sys.stdout)
    out = capsys.readouterr().out
    assert f"{jargon_pdf} (page {page_of(pdf.meta, j)}) [{j}:{j + 11}]" in out and f"{page} [{i}:{i + 8}]" in out


def test_a_document_object_runs_through_any_pipeline_and_its_citations_name_file_and_page(jargon_pdf):
    """Python API: pipe.run({"document": ctxflow.read_document("x.pdf"), ...}) takes the converted text,
    and the answer's citations carry the file's path and the PDF page (no line of converted text)."""
    import ctxflow

    pipe = ctxflow.loads("""
version: 1
models:
  llm: {type: fake, responses: ["Heisenberg's Uncertainty Principle in quantum physics."]}
components:
  chunk: {type: chunk.sentences, size: 96}
  bank: {type: memory.bm25, top_k: 3}
  answer: {type: aggregate.stuff, llm: llm}
connections:
  - chunk.chunks -> bank.chunks
  - bank.hits -> answer.chunks
inputs:
  document: chunk.text
  question: [bank.query, answer.question]
outputs:
  answer: answer.answer
""")
    doc = ctxflow.read_document(jargon_pdf)
    ans = pipe.run({"document": doc, "question": "What is a heisenbug?"})["answer"]
    assert ans.citations
    for c in ans.citations:
        assert doc.text[c.start:c.end] == c.text
        assert c.meta["path"] == str(jargon_pdf) and c.meta["page"] == page_of(doc.meta, c.start) and "line" not in c.meta
    assert any("Uncertainty" in c.text for c in ans.citations)


def test_a_text_file_that_mentions_the_pdf_header_stays_text():
    doc = document_from_bytes(b"# Notes on PDF\n\nEvery PDF file starts with the header %PDF-1.7 and more.\n", "notes.md")
    assert "format" not in doc.meta and doc.text.startswith("# Notes on PDF")


def test_citations_of_other_sources_are_not_placed_on_the_document(jargon_pdf, tmp_path):
    """Only citations that quote the document get its path and page: one from a store's other file
    keeps its own path and line; with two Document inputs, each citation goes to the one it quotes."""
    from ctxflow.graph.pipeline import _place_citations
    from ctxflow.types import Answer, Citation

    pdf = read_document(jargon_pdf)
    j = pdf.text.index(":heisenbug:")
    other = tmp_path / "other.txt"
    other.write_text("Intro.\nThe lighthouse keeper is named Ada.\n", encoding="utf-8")
    q = tmp_path / "q.txt"
    q.write_text("What is a heisenbug?", encoding="utf-8")
    mine = Citation(start=j, end=j + 11, text=":heisenbug:", meta={"line": 3})
    theirs = Citation(start=7, end=42, text="The lighthouse keeper is named Ada.", meta={"path": str(other), "line": 2})
    ans = Answer(text="x", citations=[mine, theirs])
    _place_citations([ans], [pdf, read_document(q)])
    assert mine.meta == {"path": str(jargon_pdf), "page": page_of(pdf.meta, j)}
    assert theirs.meta == {"path": str(other), "line": 2}


def test_a_pdf_indexed_into_a_store_is_cited_by_page_through_a_pipeline_bank(jargon_pdf, tmp_path, capsys):
    """Store chunks of a converted file carry the page (not a line of converted text), also when the
    store is read by a pipeline's bank rather than `ask --store`."""
    from ctxflow.memory import open_store
    from ctxflow.types import Citation

    store = tmp_path / "s"
    assert main(["index", str(jargon_pdf), "--store", str(store), "--bank", "bm25", "-q"]) == 0
    hits = open_store(store).search("heisenbug Heisenberg uncertainty", 3)
    assert hits
    doc = read_document(jargon_pdf)
    for h in hits:
        c = Citation.from_chunk(h.item)
        assert "line" not in c.meta and c.meta["page"] == page_of(doc.meta, c.start)
