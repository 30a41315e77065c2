"""Book structure detection and outlines of source files."""
from __future__ import annotations

from pathlib import Path

from ctxflow.summarize.outline import markdown_outline, python_outline
from ctxflow.summarize.structure import build_tree, intro_range

ROOT = Path(__file__).resolve().parents[2]


def titles(root):
    return [(n.level, n.title) for n in root.walk()][1:]


def test_named_parts_and_chapters():
    text = ("Front matter.\n\nPART ONE\n\nChapter 1. Rain\n\nIt rained.\nChapter 2 said to be inline, not a heading.\n\n"
            "Chapter 2. Sun\n\nThe sun came.\n\nPART TWO\n\nChapter 3. Snow\n\nSnow fell.\n")
    method, root = build_tree(text, "t")
    assert method == "named"
    assert titles(root) == [(1, "PART ONE"), (2, "Chapter 1. Rain"), (2, "Chapter 2. Sun"), (1, "PART TWO"), (2, "Chapter 3. Snow")]
    ch1 = root.children[0].children[0]
    assert text[ch1.start:ch1.end].startswith("Chapter 1. Rain") and "inline" in text[ch1.start:ch1.end]
    assert text[slice(*intro_range(root))].strip() == "Front matter."
    # nodes tile the text: every character belongs to the root's intro or to exactly one top node
    assert root.children[0].start == text.index("PART ONE") and root.children[-1].end == len(text)


def test_markdown_headings_win_and_no_structure_is_none():
    method, root = build_tree("# A\n\ntext\n\n## B\n\nmore\n\n# C\n\nend\n")
    assert method == "markdown" and titles(root) == [(1, "A"), (2, "B"), (1, "C")]
    method, root = build_tree("just one long paragraph " * 50)
    assert method == "none" and root.children == []


def test_jargon_file_structure():
    text = (ROOT / "examples/data/jargon.txt").read_text(encoding="utf-8")
    method, root = build_tree(text)
    assert method == "named"
    top = [n.title.replace("\xa0", " ") for n in root.children]
    assert top == ["Part I. Introduction", "Part II. The Jargon Lexicon", "Part III. Appendices"]
    names = [n.title.replace("\xa0", " ") for n in root.walk()]
    assert "Chapter 4. Jargon Construction" in names and "Verb Doubling" in names and "The Story of Mel" in names
    mel = next(n for n in root.walk() if n.title == "The Story of Mel")
    assert text.splitlines()[mel.line - 1].strip() == "The Story of Mel"


def test_python_outline_facts():
    src = (ROOT / "tests/summarize/fixture_repo/shop/config.py").read_text()
    o = python_outline(src, "shop/config.py")
    assert o.doc == "Settings of the shop, read from a YAML file."
    assert o.public_names() == ["load_config", "currency_symbol"]
    load = o.symbols[0]
    assert src.splitlines()[load.line - 1].startswith("def load_config") and load.signature == "(path)"
    cart = python_outline((ROOT / "tests/summarize/fixture_repo/shop/cart.py").read_text(), "cart.py")
    assert [c.name for c in cart.symbols[0].children] == ["Cart.__init__", "Cart.add_item", "Cart.total"]
    assert python_outline("def broken(:\n", "x.py").parsed is False


def test_markdown_outline_lines():
    o = markdown_outline("intro\n# Title\n\ntext\n## Sub\n", "r.md")
    assert [(s.name, s.line) for s in o.symbols] == [("Title", 2), ("Sub", 5)]


def test_line_counts_and_headings_with_every_line_ending():
    from ctxflow.summarize.outline import outline_for

    for nl in ("\n", "\r\n", "\r"):
        md = nl.join(["Intro", "=====", "", "Hello there.", "", "## Setup", "", "Run it.", ""])
        method, root = build_tree(md)
        assert method == "markdown" and [(c.title, c.line) for c in root.walk()][1:] == [("Intro", 1), ("Setup", 6)], repr(nl)
        out = markdown_outline(md, "README.md")
        assert out.lines == 8 and [s.line for s in out.symbols] == [1, 6]
        assert outline_for(nl.join(["a", "b", "c"]) + nl, "x.sh", "shell").lines == 3  # as wc -l
        assert outline_for(nl.join(["a", "b", "c"]), "x.sh", "shell").lines == 3  # a last line without a break counts
    assert python_outline("x = 1\ny = 2\n", "a.py").lines == 2
