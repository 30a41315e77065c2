"""Example tests of the chunkers: concrete inputs, concrete expectations."""
from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from ctxflow.chunking import (CHUNKERS, CodeChunker, MarkdownChunker, RecursiveChunker, SentenceChunker, TokenChunker,
                              chunk_text, split_sentences)
from ctxflow.chunking.base import TokenCounter
from ctxflow.errors import SpecError, UserError
from ctxflow.graph.component import resource_params
from ctxflow.graph.registry import COMPONENTS

from .helpers import ByteLLM, TrigramLLM, check_chunks

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


# -- registration and API ---------------------------------------------------------------------
def test_components_registered():
    for kind, cls in CHUNKERS.items():
        assert COMPONENTS[f"chunk.{kind}"] is cls
        assert cls.output_sockets()["chunks"].type is not None
        socks = cls.input_sockets()
        assert socks["text"].required and not socks["doc_id"].required
        assert resource_params(cls) == {"llm": "llm"}


def test_chunk_text_kinds_and_errors():
    text = "Hello world. Bye."
    assert chunk_text(text, "chunk.tokens") == chunk_text(text, "tokens")
    with pytest.raises(UserError, match="Valid kinds: code, markdown, recursive, sentences, tokens"):
        chunk_text(text, "sentence")
    with pytest.raises(SpecError, match="unknown parameter 'sise'"):
        chunk_text(text, "tokens", sise=3)


@pytest.mark.parametrize("cls", [TokenChunker, RecursiveChunker, MarkdownChunker])
def test_overlap_must_be_smaller_than_size(cls):
    with pytest.raises(SpecError, match=r"'overlap' must be at least 0 and smaller than size \(10\), got 10; valid values: 0..9") as e:
        cls(size=10, overlap=10)
    assert e.value.param == "overlap"
    with pytest.raises(SpecError, match="parameter .overlap. of chunk.*expected int >= 0"):
        cls(size=10, overlap=-1)


@pytest.mark.parametrize("cls", list(CHUNKERS.values()))
def test_size_must_be_positive(cls):
    with pytest.raises(SpecError, match="parameter 'size' of chunk.*expected int >= 1"):
        cls(size=0)


def test_negative_overlap_sentences():
    with pytest.raises(SpecError, match="overlap_sentences"):
        SentenceChunker(overlap_sentences=-1)


def test_unbound_model_name_is_a_user_error():
    chunker = TokenChunker(size=5, overlap=0, llm="llm")
    with pytest.raises(UserError, match="not bound"):
        chunker.run("some text here")


def test_pipeline_binds_the_named_model():
    from ctxflow.graph.pipeline import Pipeline

    p = Pipeline(models={"tok": TrigramLLM()})
    p.add("chunk", TokenChunker(size=4, overlap=0, llm="tok"))
    text = "abcdefghijkl mnopqrstuvwx"
    p.expose_input("text", "chunk.text")
    out = p.run({"text": text, "chunk.doc_id": "doc"})["chunk.chunks"]
    check_chunks(text, out, "doc", size=4)
    assert [c.n_tokens for c in out] == [TrigramLLM().count_tokens(c.text) for c in out]
    assert p.component("chunk").init_params["llm"] == "tok"


def test_llm_object_passed_directly_counts_with_its_tokenizer():
    text = "日本 abc"
    (c,) = chunk_text(text, "tokens", size=50, overlap=0, llm=ByteLLM())
    assert c.n_tokens == ByteLLM().count_tokens(text) == 8  # 6 bytes + space + "abc"


# -- chunk.tokens ----------------------------------------------------------------------------
def test_tokens_windows_are_exact():
    text = words(100)
    chunks = chunk_text(text, "tokens", size=10, overlap=3, doc_id="d")
    check_chunks(text, chunks, "d", size=10, overlapping=True)
    assert chunks[0].text == words(10)
    assert chunks[1].text.split()[0] == "w7"
    for a, b in zip(chunks, chunks[1:]):
        assert a.n_tokens == 10
        assert TokenCounter().count(text[b.start:a.end]) == 3
    assert chunks[-1].text.endswith("w99")


def test_tokens_without_overlap_partition_the_text():
    text = "  Leading space, then words.\n\nAnd a second paragraph!  "
    chunks = chunk_text(text, "tokens", size=4, overlap=0)
    check_chunks(text, chunks, size=4)
    assert chunks[0].start == 2  # first token, not the whitespace before it
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())


def test_tokens_boundary_does_not_cut_a_word_when_a_space_is_near():
    text = words(14) + " state-of-the-art tail words here"
    chunks = chunk_text(text, "tokens", size=16, overlap=0)
    check_chunks(text, chunks, size=16)
    assert chunks[0].text == words(14)
    assert chunks[1].text.startswith("state-of-the-art")


def test_tokens_single_huge_token_without_spaces():
    text = "x" * 5000 + "." * 30
    chunks = chunk_text(text, "tokens", size=8, overlap=2)
    check_chunks(text, chunks, size=8, overlapping=True)


# -- chunk.sentences -------------------------------------------------------------------------
def test_split_sentences_handles_abbreviations_and_blocks():
    text = ("Mr. Smith went to Washington. He arrived at 3 p.m. on Monday! Did he? Yes. The value is 3.14. "
            "Next one (e.g. this) is fine. J. R. R. Tolkien wrote books. The U.S. Army is big. \"Stop!\" she said. "
            "Wow... Then 今日は晴れ。明日は雨！\n\nNew paragraph without period\n- item one\n- item two\n# Heading\nText.")
    got = [text[s:e] for s, e in split_sentences(text)]
    assert got == [
        "Mr. Smith went to Washington.", "He arrived at 3 p.m. on Monday!", "Did he?", "Yes.", "The value is 3.14.",
        "Next one (e.g. this) is fine.", "J. R. R. Tolkien wrote books.", "The U.S. Army is big.", '"Stop!" she said.',
        "Wow...", "Then 今日は晴れ。", "明日は雨！", "New paragraph without period", "- item one", "- item two",
        "# Heading", "Text.",
    ]


def test_wrapped_lines_are_not_sentence_breaks():
    text = "This sentence is hard-wrapped\nacross two lines. Second one."
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "This sentence is hard-wrapped\nacross two lines.", "Second one."]


def test_sentences_grouped_greedily_with_overlap():
    sents = [f"Sentence number {i} here." for i in range(10)]  # 5 tokens each
    text = " ".join(sents)
    chunks = chunk_text(text, "sentences", size=12)
    check_chunks(text, chunks, size=12)
    assert [c.text for c in chunks] == [" ".join(sents[i:i + 2]) for i in range(0, 10, 2)]
    chunks = chunk_text(text, "sentences", size=16, overlap_sentences=1)
    check_chunks(text, chunks, size=16, overlapping=True)
    assert chunks[0].text == " ".join(sents[0:3])
    assert chunks[1].text == " ".join(sents[2:5])  # starts with the previous chunk's last sentence
    assert chunks[-1].text.endswith(sents[-1])


def test_long_sentence_split_by_tokens():
    text = "Short one. " + words(50, "W") + ". Another short one."
    chunks = chunk_text(text, "sentences", size=20)
    check_chunks(text, chunks, size=20)
    assert chunks[0].text == "Short one."
    assert all(c.n_tokens <= 20 for c in chunks)
    assert chunks[-1].text.endswith("Another short one.")


# -- chunk.recursive -------------------------------------------------------------------------
def test_recursive_prefers_paragraphs():
    paras = [words(8, p) for p in "abcdef"]
    text = "\n\n".join(paras)
    chunks = chunk_text(text, "recursive", size=17)
    check_chunks(text, chunks, size=17)
    assert [c.text for c in chunks] == ["\n\n".join(paras[i:i + 2]) for i in range(0, 6, 2)]
    assert chunk_text(text, "recursive", size=1000)[0].text == text


def test_recursive_overlap_and_custom_separators():
    text = "\n".join(words(5, p) for p in "abcdefgh")
    chunks = chunk_text(text, "recursive", size=10, overlap=5, separators=["\n"])
    check_chunks(text, chunks, size=10, overlapping=True)
    assert chunks[0].text == "a0 a1 a2 a3 a4\nb0 b1 b2 b3 b4"
    assert chunks[1].text == "b0 b1 b2 b3 b4\nc0 c1 c2 c3 c4"
    # no separator at all: cut between tokens
    chunks = chunk_text("a,b,c,d,e,f,g", "recursive", size=3, separators=[";"])
    assert [c.text for c in chunks] == ["a,b", ",c,", "d,e", ",f,", "g"]


# -- chunk.code ------------------------------------------------------------------------------
def _expected_defs(path: Path):
    src = path.read_text()
    tree = ast.parse(src)
    return src, [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def test_code_finds_each_top_level_definition():
    path = ROOT / "ctxflow" / "graph" / "component.py"
    src, defs = _expected_defs(path)
    chunks = chunk_text(src, "code", size=100_000, doc_id="ctxflow/graph/component.py")
    check_chunks(src, chunks, "ctxflow/graph/component.py", strip_start=False)
    by_name = {c.meta["name"]: c for c in chunks if c.meta["kind"] in ("function", "class")}
    assert set(by_name) == {n.name for n in defs}
    for n in defs:
        c = by_name[n.name]
        start = min([d.lineno for d in n.decorator_list] + [n.lineno])
        assert c.meta["line"] == start, n.name
        assert c.meta["end_line"] == n.end_lineno, n.name
        assert c.meta["kind"] == ("class" if isinstance(n, ast.ClassDef) else "function")
        assert c.meta["path"] == "ctxflow/graph/component.py"
        assert c.meta["language"] == "python"
        assert c.text.startswith("@" if n.decorator_list else ("class " if isinstance(n, ast.ClassDef) else "def "))
    # decorators included
    assert by_name["input_sockets"].text.startswith("@functools.lru_cache(maxsize=None)\ndef input_sockets(")
    assert by_name["Socket"].text.startswith("@dataclass(frozen=True)\nclass Socket:")
    # the module docstring opens a "module" chunk named after the file
    assert chunks[0].meta["kind"] == "module" and chunks[0].meta["line"] == 1
    assert chunks[0].meta["name"] == "component"
    assert chunks[0].text.startswith('"""The component contract.')


def test_code_splits_big_classes_per_method():
    path = ROOT / "ctxflow" / "graph" / "pipeline.py"
    src, defs = _expected_defs(path)
    chunks = CodeChunker(size=300, path="pipeline.py").run(src, doc_id="ignored")["chunks"]
    check_chunks(src, chunks, "ignored", size=300, strip_start=False)
    assert all(c.meta["path"] == "pipeline.py" for c in chunks)
    cls = next(n for n in defs if n.name == "Pipeline")
    methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    got = {c.meta["name"] for c in chunks if c.meta["kind"] == "method"}
    assert got == {f"Pipeline.{m.name}" for m in methods}
    for c in chunks:
        if c.meta["kind"] == "method":
            assert c.meta["header"] == "class Pipeline:"
            assert c.text.startswith("    ")  # indentation kept
    run = [c for c in chunks if c.meta["name"] == "Pipeline.run"]
    assert len(run) > 1 and [c.meta["part"] for c in run] == list(range(len(run)))
    m_run = next(m for m in methods if m.name == "run")
    assert run[0].meta["line"] == m_run.lineno and run[-1].meta["end_line"] == m_run.end_lineno


def test_code_comments_above_and_indented_comments_after_definitions():
    src = "import os\n\n\n# helper\n# does things\n@deco\ndef f():\n    return 1\n    # trailing\n\n# free comment\n\nx = 2\n"
    chunks = chunk_text(src, "code", size=1000, path="m.py")
    check_chunks(src, chunks, strip_start=False)
    assert [(c.meta["kind"], c.text) for c in chunks] == [
        ("module", "import os"),
        ("function", "# helper\n# does things\n@deco\ndef f():\n    return 1\n    # trailing"),
        ("module", "# free comment\n\nx = 2"),
    ]
    assert chunks[1].meta["line"] == 4 and chunks[1].meta["end_line"] == 9 and chunks[1].meta["name"] == "f"


def test_code_other_languages_use_blank_line_blocks():
    js = "function a() {\n  return 1;\n}\n\nfunction b() {\n  return 2;\n}\n\nconst c = 3;\n"
    chunks = chunk_text(js, "code", size=9, path="src/app.js")
    check_chunks(js, chunks, size=9, strip_start=False)
    assert [c.text for c in chunks] == ["function a() {\n  return 1;\n}", "function b() {\n  return 2;\n}",
                                        "const c = 3;"]
    assert {c.meta["kind"] for c in chunks} == {"block"} and chunks[0].meta["language"] == "javascript"
    # Python that does not parse falls back to blocks too
    bad = "def f(:\n    pass\n\nx = 1\n"
    chunks = chunk_text(bad, "code", language="python")
    assert [c.meta["kind"] for c in chunks] == ["block"]
    # language forces the choice whatever the path says
    py = "def f():\n    return 1\n"
    assert chunk_text(py, "code", path="notes.txt")[0].meta["kind"] == "block"
    assert chunk_text(py, "code", path="notes.txt", language="python")[0].meta["kind"] == "function"


def test_code_nested_class_name_is_qualified():
    src = ("class Outer:\n    '''Doc of outer, long enough to matter here.'''\n\n    class Inner:\n"
           "        def a(self):\n            return 1\n\n        def b(self):\n            return 2\n\n"
           "    def c(self):\n        return 3\n")
    chunks = chunk_text(src, "code", size=12, path="m.py")
    check_chunks(src, chunks, size=12, strip_start=False)
    names = [c.meta["name"] for c in chunks]
    assert "Outer.Inner.a" in names and "Outer.Inner.b" in names and "Outer.c" in names
    assert next(c for c in chunks if c.meta["name"] == "Outer.Inner.a").meta["header"] == "class Inner:"


# -- chunk.markdown --------------------------------------------------------------------------
def test_markdown_titles_on_sample():
    text = (DATA / "sample.md").read_text()
    chunks = chunk_text(text, "markdown", size=1000, doc_id="sample.md")
    check_chunks(text, chunks, "sample.md")
    titles = [c.meta["title"] for c in chunks]
    assert titles[0] == "Keeping a Sourdough Starter"
    assert "Keeping a Sourdough Starter > Daily Care > Feeding Ratios" in titles
    assert "Keeping a Sourdough Starter > Troubleshooting > Pink or Orange Streaks" in titles
    # "## Starting from Scratch" has no text of its own: it stays with its first subsection
    ingredients = next(c for c in chunks if c.meta["title"].endswith("Ingredients"))
    assert ingredients.text.startswith("## Starting from Scratch\n\n### Ingredients")
    assert ingredients.meta["level"] == 3
    # the fenced block's lines are not headings and stay in their section
    baking = next(c for c in chunks if c.meta["title"].endswith("Baking with the Starter"))
    assert "levain      100 g" in baking.text and baking.meta["level"] == 2


def test_markdown_setext_fences_and_preamble():
    text = ("Preamble text.\n\nIntro\n=====\n\nHello.\n\nSetup\n-----\n\nInstall it.\n\n```sh\n# not a heading\n```\n\n"
            "## Usage ##\nRun it.\n")
    chunks = chunk_text(text, "markdown", size=100)
    check_chunks(text, chunks, size=100)
    assert [(c.meta["title"], c.meta["level"]) for c in chunks] == [
        ("", 0), ("Intro", 1), ("Intro > Setup", 2), ("Intro > Usage", 2)]
    assert chunks[2].text.endswith("# not a heading\n```")
    assert chunks[1].meta["line"] == 3


def test_markdown_big_sections_split_and_plain_text():
    body = "\n\n".join(words(8, p) for p in "abcd")
    text = "# Big\n\n" + body
    chunks = chunk_text(text, "markdown", size=12)
    check_chunks(text, chunks, size=12)
    assert all(c.meta["title"] == "Big" for c in chunks) and len(chunks) >= 4
    plain = "Just text.\n\nNo headings at all."
    chunks = chunk_text(plain, "markdown", size=100)
    assert [(c.text, c.meta["title"]) for c in chunks] == [(plain, "")]


# -- a real document -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(CHUNKERS))
def test_real_document_all_chunkers(kind):
    text = (DATA / "jargon_excerpt.txt").read_text()
    t0 = time.perf_counter()
    params = {"size": 128}
    if kind in ("tokens", "recursive"):
        params["overlap"] = 16
    chunks = chunk_text(text, kind, doc_id="jargon", **params)
    assert time.perf_counter() - t0 < 5
    check_chunks(text, chunks, "jargon", size=128, overlapping=kind in ("tokens", "recursive"),
                 strip_start=kind != "code")
    assert sum(c.n_tokens for c in chunks) >= TokenCounter().count(text) * (0.9 if kind != "tokens" else 1.0)


def test_tokens_default_overlap_follows_size():
    assert TokenChunker().overlap == 32
    assert TokenChunker(size=16).overlap == 2
    assert TokenChunker(size=4).overlap == 0
    assert TokenChunker(size=16, overlap=15).overlap == 15


def test_llm_without_offsets_windows_use_its_counts():
    from .helpers import WordPairLLM

    text = words(100)
    chunks = chunk_text(text, "tokens", size=20, overlap=0, llm=WordPairLLM())
    check_chunks(text, chunks, size=20)
    assert [c.n_tokens for c in chunks] == [20] * 10  # ten words each, no ragged remainders
    chunks = chunk_text(text, "recursive", size=20, llm=WordPairLLM())
    assert [c.n_tokens for c in chunks] == [20] * 10


def test_fallback_tokenizer_splits_cjk_per_character():
    assert TokenCounter().count("Hello, 世界は広い。") == 8
    text = "今日は晴れです。明日は雨でしょう。" * 3
    chunks = chunk_text(text, "tokens", size=4, overlap=0)
    check_chunks(text, chunks, size=4)
    assert chunks[0].text == "今日は晴"
    chunks = chunk_text(text, "sentences", size=10)
    assert chunks[0].text == "今日は晴れです。"


def test_code_class_line_stays_with_its_oversized_docstring():
    """A class whose docstring alone is over size: the ``class X:`` line goes with the docstring's
    first part, not into a chunk of its own."""
    doc = "\n\n".join(" ".join(f"word{i}{j}" for j in range(40)) for i in range(6))
    src = f'class Decoder(object):\n    """{doc}\n    """\n\n    def decode(self, s):\n        return s\n'
    chunks = chunk_text(src, "code", size=128, path="d.py")
    assert all(src[c.start:c.end] == c.text for c in chunks)
    first = next(c for c in chunks if "class Decoder" in c.text)
    assert "word00" in first.text and first.n_tokens <= 128
