"""Property tests: every chunker keeps exact offsets, covers every non-space character, numbers
chunks consecutively and respects its size, on arbitrary unicode and on word/markdown/code text."""
from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxflow.chunking import chunk_text
from ctxflow.chunking.base import TokenCounter
from ctxflow.chunking.sentences import split_sentences

from .helpers import ByteLLM, TrigramLLM, WordPairLLM, check_chunks

# CHUNKING_EXAMPLES=5000 for a deeper search
EXAMPLES = int(os.environ.get("CHUNKING_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = [
    "the", "a", "cat", "sat", "Mr.", "Dr.", "e.g.", "U.S.A.", "3.14", "don't", "naïve", "日本語", "東京。", "ok！", "😀",
    "well-known", "x_y", "Hello!", "why?", "end.", "(see", "it).", '"quoted."', "…", "Wait...", "J.", "#", "##", "===",
    "---", "```", "~~~", "def", "class", "f():", "-", "*", "1.", ">", "|", "\t", "\u00a0", "\x00", "\u2028", "é", "e\u0301",
    "ﬁ", "ß", "İ", "\u200b", "Ⅻ", "¹", "٣", "\U0001d400",
]
SEPS = [" ", " ", " ", " ", "\n", "\n\n", "\r\n", "\r", "  ", "\n   \n", "\u2029", "", "\n\n\n", "\t"]

word_text = st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPS)), max_size=120).map(
    lambda xs: "".join(w + s for w, s in xs))
any_text = st.text(max_size=300)
LINES = [
    "# Title", "## Section", "### Sub section", "#### Deep", "####### not a heading", "#hashtag", "Setext title", "=====",
    "-----", "", "", "", "Some text in a paragraph.", "More text here, and more. Another sentence!", "- item one",
    "* item two", "1. first", "```python", "```", "~~~", "    # indented code", "> quote", "| a | b |", "|---|---|",
    "## Closed ##", "#", "Une phrase en français.", "日本語の文。次の文！",
]
md_text = st.lists(st.sampled_from(LINES), max_size=40).map("\n".join)
SNIPPETS = [
    "import os", "from x import (\n    a,\n    b,\n)", "x = 1", '"""Module doc."""', "def f(a):\n    return a",
    "@deco\ndef g():\n    pass", "@deco(1)\n@other\nclass C:\n    pass",
    "class A(Base):\n    '''Doc.'''\n    y = 2\n\n    def m(self):\n        return 1\n\n    # about p\n    @property\n"
    "    def p(self):\n        x = [\n            1,\n        ]\n        return x\n    z = 3",
    "class Outer:\n    class Inner:\n        def a(self):\n            pass\n\n        def b(self):\n            pass\n"
    "    def c(self):\n        pass",
    "# a comment", "", "", "if __name__ == '__main__':\n    f(1)", "async def h():\n    await x", "a = 1; b = 2",
    "class B(A): pass", "def k(): return 2", "x = 1; def bad(): pass", "    # stray indented comment",
    "def long(a, b):\n    c = a + b\n\n    d = c * 2\n    e = d - 1\n\n    return {\n        'c': c,\n        'd': d,\n    }",
    "function js() {\n  return 1;\n}", "\r\n", "\x0c", "s = '''multi\nline\nstring'''",
]
code_text = st.lists(st.sampled_from(SNIPPETS), max_size=15).map("\n".join)
texts = st.one_of(any_text, word_text)
sizes = st.integers(min_value=1, max_value=40)


def _overlap_tokens(text: str, a, b) -> int:
    return TokenCounter().count(text[b.start:a.end]) if b.start < a.end else 0


@SETTINGS
@given(text=texts, size=sizes, data=st.data())
def test_tokens_properties(text, size, data):
    overlap = data.draw(st.integers(min_value=0, max_value=size - 1))
    chunks = chunk_text(text, "tokens", size=size, overlap=overlap, doc_id="d")
    check_chunks(text, chunks, "d", size=size, overlapping=overlap > 0)
    for a, b in zip(chunks, chunks[1:]):
        assert _overlap_tokens(text, a, b) <= overlap


@SETTINGS
@given(text=st.one_of(texts, md_text), size=sizes, ov=st.integers(min_value=0, max_value=3))
def test_sentences_properties(text, size, ov):
    chunks = chunk_text(text, "sentences", size=size, overlap_sentences=ov, doc_id="d")
    check_chunks(text, chunks, "d", size=size, overlapping=ov > 0)


@SETTINGS
@given(text=texts)
def test_split_sentences_partition(text):
    sents = split_sentences(text)
    covered = set()
    prev_end = 0
    for s, e in sents:
        assert prev_end <= s < e
        assert text[s:e] == text[s:e].strip()
        covered.update(range(s, e))
        prev_end = e
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


@SETTINGS
@given(text=st.one_of(texts, md_text), size=sizes, data=st.data())
def test_recursive_properties(text, size, data):
    overlap = data.draw(st.integers(min_value=0, max_value=size - 1))
    chunks = chunk_text(text, "recursive", size=size, overlap=overlap, doc_id="d")
    check_chunks(text, chunks, "d", size=size, overlapping=overlap > 0)
    for a, b in zip(chunks, chunks[1:]):
        assert _overlap_tokens(text, a, b) <= overlap


@SETTINGS
@given(text=st.one_of(texts, md_text), size=sizes, overlap=st.integers(min_value=0, max_value=3))
def test_markdown_properties(text, size, overlap):
    overlap = min(overlap, size - 1)
    chunks = chunk_text(text, "markdown", size=size, overlap=overlap, doc_id="d")
    check_chunks(text, chunks, "d", size=size, overlapping=overlap > 0)
    for c in chunks:
        assert isinstance(c.meta["title"], str) and isinstance(c.meta["level"], int)


@SETTINGS
@given(text=st.one_of(code_text, texts), size=st.integers(min_value=1, max_value=80),
       language=st.sampled_from(["auto", "python", "javascript"]))
def test_code_properties(text, size, language):
    chunks = chunk_text(text, "code", size=size, language=language, doc_id="pkg/mod.py")
    check_chunks(text, chunks, "pkg/mod.py", size=size, strip_start=False)
    for c in chunks:
        assert c.meta["path"] == "pkg/mod.py"
        assert c.meta["kind"] in ("function", "class", "method", "module", "block")
        # a chunk that starts with whitespace starts at a line start (it keeps its indentation)
        if c.text[0].isspace():
            assert c.start == 0 or text[c.start - 1] in "\r\n"


@SETTINGS
@given(text=code_text)
def test_code_large_size_one_chunk_per_definition(text):
    import ast

    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    chunks = chunk_text(text, "code", size=10_000, doc_id="m.py")
    check_chunks(text, chunks, "m.py", strip_start=False)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    def_chunks = [c for c in chunks if c.meta["kind"] in ("function", "class")]
    # each definition alone on its lines gets its own chunk, from its first decorator
    for n in defs:
        start = min([d.lineno for d in n.decorator_list] + [n.lineno])
        shared = any(m is not n and (m.lineno <= n.end_lineno and m.end_lineno >= start) for m in tree.body)
        if shared:
            continue
        match = [c for c in def_chunks if c.meta["name"] == n.name
                 and c.meta["line"] <= start and c.meta["end_line"] >= n.end_lineno]
        assert len(match) == 1, (n.name, [c.meta for c in chunks])
        # nothing but comments above the definition's first line
        head = re.split(r"\r\n|\r|\n", text[match[0].start:])[: start - match[0].meta["line"]]
        assert all(line.lstrip().startswith("#") for line in head), head


@settings(max_examples=max(40, EXAMPLES // 2), deadline=None)
@given(text=st.one_of(texts, md_text, code_text), size=st.integers(min_value=1, max_value=30),
       kind=st.sampled_from(["tokens", "sentences", "recursive", "code", "markdown"]),
       llm=st.sampled_from([TrigramLLM(), ByteLLM(), WordPairLLM()]))
def test_llm_tokenizers(text, size, kind, llm):
    """With a model's tokenizer (odd offsets: leading spaces, overlapping byte tokens, a slice counting
    differently from the document), offsets stay exact and every chunk fits unless it is one piece."""
    params = {"size": size, "llm": llm}
    if kind in ("tokens", "recursive"):
        params["overlap"] = size // 3
    chunks = chunk_text(text, kind, doc_id="x", **params)
    check_chunks(text, chunks, "x", overlapping=kind in ("tokens", "recursive"), strip_start=kind != "code")
    pieces = TokenCounter(llm).pieces(text)
    for c in chunks:
        assert c.n_tokens == llm.count_tokens(c.text)
        if c.n_tokens > size:  # allowed only when the chunk cannot be cut: a single piece
            i, j = pieces.index_range(c.start, c.end)
            assert j - i == 1, (c.text, c.n_tokens, size)


@pytest.mark.parametrize("kind", ["tokens", "sentences", "recursive", "code", "markdown"])
@pytest.mark.parametrize("text", ["", " ", "\n\n\t ", "\u3000\u2029"])
def test_blank_text_gives_no_chunks(kind, text):
    assert chunk_text(text, kind) == []
