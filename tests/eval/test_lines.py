import json
import re

import pytest

from ctxflow.eval import (
    LinesExample,
    approx_tokens,
    format_table,
    lines_for_tokens,
    make_lines_task,
    parse_last_int,
    plot_results,
    run_lines_bench,
    score,
    write_json,
)
from ctxflow.eval.lines import (
    ADJECTIVES,
    ASK,
    MAX_VALUE,
    NOUNS,
    PREAMBLE,
    measure_tokens_per_line,
)

LINE = re.compile(r"^line ([a-z]+-[a-z]+): REGISTER_CONTENT is <(\d+)>$")
POINTER = re.compile(r"^line ([a-z]+-[a-z]+): REGISTER_CONTENT is the REGISTER_CONTENT of line ([a-z]+-[a-z]+)$")


def cheat(ex: LinesExample) -> str:
    """Reads the answer out of the document with regexes (allowed in a test only)."""
    key = re.search(r"in line ([a-z]+-[a-z]+)\?", ex.full_prompt).group(1)
    table = {}
    pointers = {}
    for ln in ex.document.split("\n"):
        m = LINE.match(ln)
        if m:
            table[m.group(1)] = int(m.group(2))
        else:
            p = POINTER.match(ln)
            pointers[p.group(1)] = p.group(2)
    while key in pointers:
        key = pointers[key]
    return f"The <REGISTER_CONTENT> in line {key} is <{table[key]}>."


# ---------------------------------------------------------------- word lists


def test_word_lists():
    assert len(ADJECTIVES) >= 140 and len(NOUNS) >= 140
    assert len(set(ADJECTIVES)) == len(ADJECTIVES) and len(set(NOUNS)) == len(NOUNS)
    assert not set(ADJECTIVES) & set(NOUNS)
    assert all(re.fullmatch(r"[a-z]+", w) for w in ADJECTIVES + NOUNS)


# ---------------------------------------------------------------- generation


def test_deterministic_by_seed():
    a = make_lines_task(50, 5, seed=7)
    b = make_lines_task(50, 5, seed=7)
    c = make_lines_task(50, 5, seed=8)
    assert a == b
    assert [e.document for e in a] != [e.document for e in c]
    assert make_lines_task(30, 3, seed=1, two_hop=True) == make_lines_task(30, 3, seed=1, two_hop=True)


def test_structure_and_answer_on_right_line():
    exs = make_lines_task(120, 6, seed=3)
    assert len(exs) == 6
    for e in exs:
        lines = e.document.split("\n")
        assert len(lines) == e.n_lines == 120
        parsed = [LINE.match(ln) for ln in lines]
        assert all(parsed)
        keys = [m.group(1) for m in parsed]
        values = [int(m.group(2)) for m in parsed]
        assert len(set(keys)) == len(keys)  # unique keys
        assert len(set(values)) == len(values)  # unique values -> answer occurs once
        assert all(1 <= v <= MAX_VALUE for v in values)
        assert keys[e.line_index] == e.key
        assert values[e.line_index] == e.answer
        assert lines[e.line_index] == f"line {e.key}: REGISTER_CONTENT is <{e.answer}>"
        assert e.document.count(f"<{e.answer}>") == 1
        adj, noun = e.key.split("-")
        assert adj in ADJECTIVES and noun in NOUNS
        assert not e.two_hop and e.hop_key is None and e.hop_line_index is None
        # prompt
        assert e.question == ASK.format(key=e.key)
        assert e.question == f"Tell me what is the <REGISTER_CONTENT> in line {e.key}? I need the number."
        assert e.full_prompt.startswith(PREAMBLE + "\n\n" + lines[0])
        assert e.full_prompt.endswith("\n\nNow the record is over. " + e.question)
        assert e.document in e.full_prompt
        assert e.prompt_with(e.document) == e.full_prompt
    # stratified over depths: question i asks from the i-th sixth of the record
    assert [e.line_index // 20 for e in exs] == list(range(6))
    assert len({e.id for e in exs}) == 6


def test_two_hop_structure():
    exs = make_lines_task(200, 8, seed=11, two_hop=True)
    for e in exs:
        lines = e.document.split("\n")
        assert e.two_hop and e.hop_key and e.hop_key != e.key
        # asked line is a pointer and holds no number at all
        asked = lines[e.line_index]
        m = POINTER.match(asked)
        assert m and m.group(1) == e.key and m.group(2) == e.hop_key
        assert not re.search(r"\d", asked)
        # the target line is an ordinary numeric line with the answer
        t = LINE.match(lines[e.hop_line_index])
        assert t and t.group(1) == e.hop_key and int(t.group(2)) == e.answer
        # every other line is normal; exactly one pointer line
        assert sum(bool(POINTER.match(ln)) for ln in lines) == 1
        assert sum(bool(LINE.match(ln)) for ln in lines) == 199
        # one-hop retrieval is not enough: target far away, no shared words
        assert abs(e.hop_line_index - e.line_index) >= 200 // 4
        assert not set(e.key.split("-")) & set(e.hop_key.split("-"))
        assert e.document.count(f"<{e.answer}>") == 1
        # the preamble explains pointer lines; the ask is the usual one
        assert "Some lines contain no number" in e.full_prompt
        assert e.full_prompt.endswith(e.question)
        assert e.question == ASK.format(key=e.key)
    # small records still work
    (small,) = make_lines_task(2, 1, seed=0, two_hop=True)
    assert {small.line_index, small.hop_line_index} == {0, 1}
    with pytest.raises(ValueError):
        make_lines_task(1, 1, seed=0, two_hop=True)


def test_limits():
    with pytest.raises(ValueError):
        make_lines_task(len(ADJECTIVES) * len(NOUNS) + 1, 1, seed=0)
    assert make_lines_task(10, 0, seed=0) == []
    # more questions than lines: still valid indices
    exs = make_lines_task(3, 7, seed=2)
    assert all(0 <= e.line_index < 3 for e in exs)


def test_tokens_per_line_order_of_magnitude():
    (e,) = make_lines_task(500, 1, seed=0)
    words = len(re.findall(r"\w+|[^\w\s]", e.document))
    per_line = words / 500
    assert 6 <= per_line <= 26  # ~13 model tokens; ~10 regex words
    assert approx_tokens(e.document) == words
    assert lines_for_tokens(13000, tokens_per_line=13) == 1000
    assert measure_tokens_per_line(approx_tokens) == pytest.approx(10, abs=1.5)


def test_to_dict_is_json_able():
    (e,) = make_lines_task(20, 1, seed=0, two_hop=True)
    d = e.to_dict()
    assert "document" not in d and d["answer"] == e.answer and d["hop_key"] == e.hop_key
    json.dumps(d)
    assert e.to_dict(with_text=True)["document"] == e.document


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("12345", 12345),
        ("The <REGISTER_CONTENT> in line calm-otter is <12345>.", 12345),
        ("It is 12345.", 12345),
        ("12,345", 12345),
        ("1,234,567", 1234567),
        ("12,34", 34),  # not a thousands grouping -> two numbers
        ("1, 2, 3", 3),
        ("1234,567", 567),
        ("1,234,56", 56),
        ("12345.0", 12345),
        ("12345 or maybe 2.5", 12345),  # decimals are not integers
        ("", None),
        ("I don't know.", None),
        ("line 4 says 17; no wait, 99", 99),
    ],
)
def test_parse_last_int(reply, expected):
    assert parse_last_int(reply) == expected


def test_score():
    assert score("The answer is <40734>.", 40734)
    assert score("40,734", 40734)
    assert not score("40734 (line 7)", 40734)  # the LAST integer counts
    assert not score("", 5)
    assert not score(None, 5)
    assert not score("4073", 40734)
    assert score("0", 0)


# ---------------------------------------------------------------- bench + report


def test_run_lines_bench_and_report(tmp_path):
    calls = []

    def zero(ex):
        calls.append(ex.id)
        return "0"

    def broken(ex):
        raise RuntimeError("boom")

    systems = {"cheat": cheat, "zero": zero, "broken": broken}
    res = run_lines_bench([10, 40], per=4, systems=systems, seed=5, progress=False)
    assert res["task"] == "lines" and res["lengths"] == [10, 40] and res["per"] == 4 and res["seed"] == 5
    assert set(res["results"]) == {"cheat", "zero", "broken"}
    for n in ("10", "40"):
        assert res["results"]["cheat"][n]["accuracy"] == 1.0
        assert res["results"]["cheat"][n]["n"] == 4
        assert res["results"]["zero"][n]["accuracy"] == 0.0
        assert res["results"]["broken"][n]["accuracy"] == 0.0
        assert res["results"]["broken"][n]["errors"] == 4
        assert res["results"]["cheat"][n]["seconds_per_q"] >= 0
    assert len(res["examples"]) == 8
    ex0 = res["examples"][0]
    assert set(ex0["replies"]) == {"cheat", "zero", "broken"}
    assert ex0["replies"]["cheat"]["correct"] and ex0["replies"]["cheat"]["parsed"] == ex0["answer"]
    assert ex0["replies"]["zero"]["reply"] == "0" and not ex0["replies"]["zero"]["correct"]
    assert "boom" in ex0["replies"]["broken"]["error"]
    assert len(calls) == 8
    # every system saw the same examples; rerunning gives the same examples
    res2 = run_lines_bench([10, 40], per=4, systems={"zero": zero}, seed=5, progress=False)
    strip = lambda exs: [{k: v for k, v in e.items() if k != "replies"} for e in exs]  # noqa: E731
    assert strip(res2["examples"]) == strip(res["examples"])
    # JSON round trip keeps the dict as is
    assert json.loads(json.dumps(res)) == res

    # two-hop: the cheat follows the pointer
    res3 = run_lines_bench([20], per=3, systems={"cheat": cheat}, seed=1, progress=False, two_hop=True)
    assert res3["task"] == "lines-2hop" and res3["results"]["cheat"]["20"]["accuracy"] == 1.0

    with pytest.raises(RuntimeError):
        run_lines_bench([10], per=1, systems={"broken": broken}, progress=False, catch_errors=False)

    # report
    table = format_table(res)
    rows = table.strip().split("\n")
    assert rows[0] == "| system | 10 lines | 40 lines |"
    assert rows[2].startswith("| cheat | 100% (") and rows[3].startswith("| zero | 0% (")
    assert len(rows) == 5 and re.search(r"\(\d+\.\d\ds\)", rows[2])
    assert format_table(res["results"]) == table  # the inner mapping works too

    png = plot_results(res, tmp_path / "plots" / "lines.png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    out = write_json(res, tmp_path / "out" / "lines.json")
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert loaded == res
    assert format_table(loaded) == table


def test_progress_goes_to_stderr(capsys):
    run_lines_bench([5], per=2, systems={"zero": lambda e: "0"}, seed=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""


def test_per_system_runs_a_slow_system_on_an_even_subset():
    seen = []

    def slow(ex):
        seen.append(ex.line_index)
        return "0"

    res = run_lines_bench([40], per=6, systems={"cheat": cheat, "slow": slow}, seed=2, progress=False, per_system={"slow": 2})
    assert res["results"]["cheat"]["40"]["n"] == 6 and res["results"]["slow"]["40"]["n"] == 2
    # evenly spread over the depths: examples 0 and 3 of 6 (the first and the middle slice)
    assert seen == [res["examples"][0]["line_index"], res["examples"][3]["line_index"]]
    assert sum("slow" in e["replies"] for e in res["examples"]) == 2
    table = format_table(res)
    assert "n=2" in table and "n=6" not in table


def test_bench_cli_rejects_bad_options(capsys):
    from ctxflow.cli import main

    assert main(["bench", "lines", "--lines", "a,b"]) == 2
    assert "--lines must be comma-separated" in capsys.readouterr().err
    assert main(["bench", "lines", "--per", "2", "--baseline-per", "5", "--pipeline", "pipelines/book_qa.yaml"]) == 2
    assert "--baseline-per must be between 0 and --per" in capsys.readouterr().err
