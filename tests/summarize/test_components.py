"""Control flow of the summarizers with the scripted fake LLM (the real model is in test_real.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ctxflow.cli import main
from ctxflow.errors import ContextOverflowError, UserError
from ctxflow.llm.fake import FakeLLM
from ctxflow.summarize import BookSummary, CodeSummary
from ctxflow.summarize.fold import Summarizer, clean, pack
from ctxflow.summarize.outline import python_outline

HERE = Path(__file__).parent
REPO = HERE / "fixture_repo"


def test_clean_cuts_loops_and_keeps_sentences():
    assert clean("It is a cart. It adds prices.\n\nn.\n\nn.\n\nn.") == "It is a cart. It adds prices."
    assert clean("A big file. A big file. A big file.") == "A big file."
    assert clean("") == ""


def test_pack_groups_fit_and_always_shrink():
    llm = FakeLLM(context=512)
    texts = [f"note number {i} " * 5 for i in range(40)]
    groups = pack(llm, texts, 60)
    assert [t for g in groups for t in g] == texts
    assert all(len(g) >= 2 for g in groups) and len(groups) < len(texts)


def test_book_sections_cover_every_character_and_fold_bottom_up():
    chapters = [f"Chapter {i}. Title {i}\n\n" + "\n\n".join(f"Paragraph {i}.{k} says fact {i * 10 + k}. " * 6 for k in range(8))
                for i in range(1, 5)]
    text = "Preface text.\n\n" + "\n\n".join(chapters) + "\n"
    llm = FakeLLM(responses=["A summary sentence."], context=400)
    res = BookSummary(llm=llm, section_tokens=120, max_new_tokens=16).run(document=text, title="t.txt")
    out = res["outline"]
    assert out["structure"] == "named" and out["section_budget"] <= 120
    parts = [p for n in _walk(out["root"]) for p in n["parts"]]
    covered = set()
    for p in parts:
        covered.update(range(p["start"], p["end"]))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace() and not _in_heading(text, i))
    assert [c["title"] for c in out["root"]["children"]] == [f"Chapter {i}. Title {i}" for i in range(1, 5)]
    assert all(n["summary"] for n in _walk(out["root"]))
    # every prompt fits the window; calls = sections + fold groups
    assert all(llm.prompt_tokens(p) <= 400 for p in llm.prompts)
    assert out["calls"] == len(llm.prompts) > out["sections"]
    md = res["summary"]
    assert "## Outline" in md and "- Chapter 3. Title 3 (lines" in md and "### Chapter 2. Title 2" in md


def _walk(n):
    yield n
    for c in n["children"]:
        yield from _walk(c)


def _in_heading(text, i):
    line = text[text.rfind("\n", 0, i) + 1: text.find("\n", i) if text.find("\n", i) >= 0 else len(text)]
    return line.startswith("Chapter")


def test_book_without_structure_gets_size_based_sections():
    text = " ".join(f"Sentence {i} is here." for i in range(400))
    llm = FakeLLM(responses=["Gist."], context=300)
    out = BookSummary(llm=llm, section_tokens=100).run(document=text)["outline"]
    assert out["structure"] == "none" and out["sections"] >= 10
    assert "size-based sections" in BookSummary(llm=FakeLLM(responses=["x y."], context=300), section_tokens=100).run(document=text)["summary"]


def test_book_errors_are_clear():
    with pytest.raises(UserError, match="empty"):
        BookSummary(llm=FakeLLM()).run(document="   ")
    with pytest.raises(ContextOverflowError, match="context"):
        Summarizer(FakeLLM(context=60), max_new_tokens=40).budget("Summarize {text} please, in many words " * 3)
    with pytest.raises(UserError, match="section_tokens"):
        BookSummary(section_tokens=10)


def test_code_summary_facts_tree_and_line_references():
    llm = FakeLLM(responses=["This file does one job."], context=2048)
    res = CodeSummary(llm=llm, max_new_tokens=16).run(path=str(REPO))
    rep, md = res["report"], res["summary"]
    paths = [f["path"] for f in rep["files"]]
    assert paths == ["README.md", "shop/__init__.py", "shop/cart.py", "shop/config.py", "shop/db.py", "shop/mail.py"]
    root = rep["root"]
    assert "## Tree" in md and "├── shop/" in md and "cart.py  — This file does one job" in md
    # every public top-level def is listed with a path:line that points at its definition
    for rel in paths[1:]:
        src = (REPO / rel).read_text()
        for s in python_outline(src, rel).symbols:
            ref = f"`{root}/{rel}:{s.line}`"
            assert ref in md, ref
            assert re.match(rf"(def|class) {s.name}\b", src.splitlines()[s.line - 1])
    assert f"{root}/shop/" in rep["folders"] and rep["folders"][f"{root}/"]
    assert rep["calls"] == len(llm.prompts)


def test_code_summary_long_files_are_chunked_into_notes(tmp_path):
    body = "\n\n".join(f"def func_{i}(x):\n    \"\"\"Doc {i}.\"\"\"\n" + "    y = x + 1\n" * 20 + "    return y\n" for i in range(12))
    (tmp_path / "big.py").write_text(body)
    llm = FakeLLM(responses=["Does a thing."], context=2048)
    rep = CodeSummary(llm=llm, file_tokens=200, chunk_tokens=150, max_new_tokens=8).run(path=str(tmp_path))["report"]
    notes = rep["files"][0]["notes"]
    assert len(notes) >= 12 and notes[0]["name"] == "func_0" and notes[0]["line"] == 1
    file_prompt = [p for p in llm.prompts if "Here is the file" in p][0]
    assert "lines 1-" in file_prompt and "func_0" in file_prompt


def test_summarize_cli_with_a_fake_model(tmp_path, capsys):
    pipe = tmp_path / "p.yaml"
    pipe.write_text((HERE.parents[1] / "pipelines/codebase_summary.yaml").read_text().replace(
        "{type: local, model: default}", "{type: fake, responses: ['It works.'], context: 2048}"))
    out = tmp_path / "o" / "s.md"
    assert main(["summarize", str(REPO), "--pipeline", str(pipe), "--out", str(out), "--quiet"]) == 0
    assert out.read_text().startswith("# `") and "shop/config.py:7" in out.read_text()
    assert main(["summarize", str(REPO), "--pipeline", str(pipe), "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["report"]["files"][3]["public_names"] == ["load_config", "currency_symbol"]
    # user mistakes: exit 2, one line, nothing written
    for argv, msg in ((["summarize", str(tmp_path / "nope")], "no such file or folder"),
                      (["summarize", str(REPO), "--out", str(tmp_path)], "is a folder"),
                      (["summarize", str(REPO / "README.md"), "--pipeline", str(pipe)], "has no input 'document'")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
