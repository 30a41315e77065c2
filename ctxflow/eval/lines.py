"""The LongEval "lines" retrieval task (LongChat, Li et al. 2023), and a two-hop variant.

A *record* is a list of lines such as::

    line curious-lantern: REGISTER_CONTENT is <40734>

with a unique ``adjective-noun`` key per line and a random value in 1..50000. A line is about
10 words-and-punctuation (:func:`approx_tokens`), ~13.5 BERT word pieces and ~21 SmolLM2 BPE
tokens (digits and ``REGISTER_CONTENT`` split finely); so "~13 tokens per line" is a lower
bound and byte-level BPE models see closer to 20. The model reads a fixed preamble, the record and an ask, and must
reply with the value of one line. A reply is correct when the last integer in it equals the
value (:func:`score`).

Choices made here, beyond the original task:

* Values are drawn *without replacement* inside one record, so the answer occurs in the
  record exactly once (the original draws with replacement; a duplicate is rare anyway).
* Each example has its own freshly generated record (as LongEval's test cases do), and the
  asked lines are stratified over the record: question ``i`` of ``n_questions`` asks about a
  line drawn from the ``i``-th equal slice of the record, so a few questions cover all depths.
* Two-hop variant (``two_hop=True``): the asked line holds no number but a pointer,
  ``line k1: REGISTER_CONTENT is the REGISTER_CONTENT of line k2``; line ``k2`` is an ordinary
  numeric line and its value is the answer. ``k2`` sits at least a quarter of the record away
  from ``k1`` (when the record has 4 or more lines) and, when possible, shares neither word
  with ``k1``, so a system that retrieves only the asked line (or a chunk around it) does not
  see the number, and a lexical search for ``k1``'s words does not stumble on ``k2``. The
  preamble gets one extra sentence that explains pointer lines; the ask is unchanged.

Everything is deterministic given the seed (``random.Random(seed)``; no global state).
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

__all__ = [
    "ADJECTIVES",
    "NOUNS",
    "PREAMBLE",
    "TWO_HOP_NOTE",
    "ASK",
    "LinesExample",
    "make_lines_task",
    "make_line",
    "make_pointer_line",
    "parse_last_int",
    "score",
    "approx_tokens",
    "lines_for_tokens",
    "measure_tokens_per_line",
    "build_prompt",
    "TOKENS_PER_LINE",
    "MAX_VALUE",
]

# --------------------------------------------------------------------------------------------
# word lists (ordinary lowercase English words, letters only, no word in both lists)

ADJECTIVES: tuple[str, ...] = tuple("""
able absent active actual afraid alert alive ancient angry anxious awake aware awkward basic
bitter blank bold brave brief bright broad broken busy calm careful casual cheap cheerful civil
clean clever cloudy clumsy coastal cold common complex cool correct crazy crisp crowded cruel
curious curly damp dark dear decent deep dense direct dirty distant dizzy dry dull eager early
easy elegant empty equal exact faint fair famous fancy fast fierce firm flat fluffy foggy fond
formal fragile free fresh friendly frozen funny gentle giant glad golden graceful grand greedy
grumpy guilty handy happy hardy harsh heavy hidden hollow honest hungry icy idle jolly keen kind
large lazy little lively lonely loud lucky mellow messy mild modern muddy narrow nervous noble
noisy odd orange patient plain polite proud purple quick quiet rapid rare rich rough round royal
rusty sandy scary shallow sharp shiny shy silent silly simple sleepy slim slow smooth soft solid
sour spicy steady sticky stormy strange strict sunny sweet swift tall tame tender thirsty tidy
tiny tough vast warm weary wild windy wise witty young zesty
""".split())

NOUNS: tuple[str, ...] = tuple("""
acorn anchor apple arrow badge bakery balloon banana barn basket beach beacon bell bench bicycle
blanket bottle bridge brush bucket button cabin cable camera candle canoe canyon carpet castle
cellar chair cherry chimney circle cliff clock cloud coconut compass cookie copper cottage crayon
curtain cushion desert diamond dolphin donkey dragon drum eagle engine falcon feather fence fiddle
forest fountain garden garlic ginger glacier glove goose harbor helmet hammer honey island jacket
jungle kettle kitten ladder lantern lemon library lizard lobster magnet mango marble meadow mirror
monkey mountain needle notebook ocean olive onion otter oven paddle parrot peach pebble pencil
pepper piano pillow pirate planet pocket potato puzzle rabbit radio raven ribbon river rocket
saddle sailor salmon sandal scarf shovel spider spoon squirrel statue stone sugar tablet teapot
temple tiger tomato tower tractor trumpet tulip tunnel turtle umbrella valley violin wagon walnut
wallet whistle window wizard wolf zebra
""".split())

#: values are drawn from 1..MAX_VALUE, as in LongEval
MAX_VALUE = 50000
#: model tokens per ordinary line, measured with SmolLM2's tokenizer (20.7 on 1000 lines);
#: use :func:`measure_tokens_per_line` with your own model's ``count_tokens`` to be exact
TOKENS_PER_LINE = 21

# --------------------------------------------------------------------------------------------
# prompt pieces (LongEval's wording)

PREAMBLE = (
    "Below is a record of lines I want you to remember. Each line begins with 'line <line index>' "
    "and contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line "
    "index, memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you "
    "to retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:"
)
#: inserted before "Now the record start:" in the two-hop variant
TWO_HOP_NOTE = (
    "Some lines contain no number; instead they say that their <REGISTER_CONTENT> is the "
    "<REGISTER_CONTENT> of another line, and then their <REGISTER_CONTENT> is the number of that "
    "other line. "
)
ASK = "Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
RECORD_OVER = "Now the record is over. "


def make_line(key: str, value: int) -> str:
    """An ordinary record line: ``line <key>: REGISTER_CONTENT is <value>``."""
    return f"line {key}: REGISTER_CONTENT is <{value}>"


def make_pointer_line(key: str, target_key: str) -> str:
    """A two-hop pointer line: its value is the value of line ``target_key``."""
    return f"line {key}: REGISTER_CONTENT is the REGISTER_CONTENT of line {target_key}"


def preamble(two_hop: bool = False) -> str:
    if not two_hop:
        return PREAMBLE
    head, tail = PREAMBLE.rsplit("Now the record start:", 1)
    return head + TWO_HOP_NOTE + "Now the record start:" + tail


def build_prompt(record: str, key: str, two_hop: bool = False) -> str:
    """The whole LongEval prompt around ``record`` (which may be a reduced record)."""
    return preamble(two_hop) + "\n\n" + record + "\n\n" + RECORD_OVER + ASK.format(key=key)


# --------------------------------------------------------------------------------------------
# examples


@dataclass
class LinesExample:
    """One question about one record.

    ``line_index`` is the 0-based index (in ``document.split("\\n")``) of the asked line; in the
    two-hop variant ``hop_key``/``hop_line_index`` name the line that holds the number.
    """

    document: str
    question: str
    full_prompt: str
    answer: int
    key: str
    line_index: int
    n_lines: int
    two_hop: bool = False
    hop_key: str | None = None
    hop_line_index: int | None = None
    id: str = ""

    @property
    def lines(self) -> list[str]:
        return self.document.split("\n")

    @property
    def preamble(self) -> str:
        return preamble(self.two_hop)

    def prompt_with(self, record: str) -> str:
        """The full prompt with ``record`` in place of the document (e.g. retrieved lines only)."""
        return build_prompt(record, self.key, self.two_hop)

    def to_dict(self, with_text: bool = False) -> dict[str, Any]:
        """JSON-able fields; the (long) texts only when ``with_text``."""
        d = asdict(self)
        if not with_text:
            for k in ("document", "full_prompt"):
                d.pop(k)
        return d


def _keys(rng: random.Random, n: int) -> list[str]:
    n_a, n_n = len(ADJECTIVES), len(NOUNS)
    if n > n_a * n_n:
        raise ValueError(f"at most {n_a * n_n} unique keys; asked for {n} lines")
    return [f"{ADJECTIVES[i // n_n]}-{NOUNS[i % n_n]}" for i in rng.sample(range(n_a * n_n), n)]


def _stratified_index(rng: random.Random, i: int, n_questions: int, n_lines: int) -> int:
    lo = (i * n_lines) // n_questions
    hi = ((i + 1) * n_lines) // n_questions
    lo = min(lo, n_lines - 1)
    return rng.randrange(lo, max(hi, lo + 1))


def _hop_index(rng: random.Random, keys: list[str], line_index: int) -> int:
    n = len(keys)
    min_dist = max(1, n // 4)
    cands = [j for j in range(n) if abs(j - line_index) >= min_dist]
    words = set(keys[line_index].split("-"))
    disjoint = [j for j in cands if not words & set(keys[j].split("-"))]
    return rng.choice(disjoint or cands)


def make_lines_task(n_lines: int, n_questions: int, seed: int, two_hop: bool = False) -> list[LinesExample]:
    """``n_questions`` examples, each a fresh record of ``n_lines`` lines; deterministic in ``seed``."""
    if n_lines < (2 if two_hop else 1):
        raise ValueError(f"n_lines must be >= {2 if two_hop else 1}, got {n_lines}")
    if n_questions < 0:
        raise ValueError("n_questions must be >= 0")
    rng = random.Random(seed)
    out: list[LinesExample] = []
    for i in range(n_questions):
        keys = _keys(rng, n_lines)
        values = rng.sample(range(1, MAX_VALUE + 1), n_lines)
        idx = _stratified_index(rng, i, n_questions, n_lines)
        lines = [make_line(k, v) for k, v in zip(keys, values)]
        hop_key = hop_idx = None
        answer = values[idx]
        if two_hop:
            hop_idx = _hop_index(rng, keys, idx)
            hop_key = keys[hop_idx]
            lines[idx] = make_pointer_line(keys[idx], hop_key)
            answer = values[hop_idx]
        document = "\n".join(lines)
        question = ASK.format(key=keys[idx])
        out.append(
            LinesExample(
                document=document,
                question=question,
                full_prompt=build_prompt(document, keys[idx], two_hop),
                answer=answer,
                key=keys[idx],
                line_index=idx,
                n_lines=n_lines,
                two_hop=two_hop,
                hop_key=hop_key,
                hop_line_index=hop_idx,
                id=f"lines{'2hop' if two_hop else ''}-{n_lines}-{seed}-{i}",
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# token estimates

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def approx_tokens(text: str) -> int:
    """Words and punctuation marks (a tokenizer-free stand-in; real tokenizers give ~1.3x)."""
    return sum(1 for _ in _WORDS.finditer(text))


def lines_for_tokens(n_tokens: int, tokens_per_line: float = TOKENS_PER_LINE) -> int:
    """How many lines give a record of about ``n_tokens`` model tokens."""
    return max(1, round(n_tokens / tokens_per_line))


def measure_tokens_per_line(count_tokens: Callable[[str], int], n_lines: int = 200, seed: int = 0) -> float:
    """Mean tokens per record line under ``count_tokens`` (e.g. ``llm.count_tokens``)."""
    doc = make_lines_task(n_lines, 1, seed)[0].document
    return count_tokens(doc) / n_lines


# --------------------------------------------------------------------------------------------
# scoring

# A number: either digits grouped strictly by thousands with commas ("12,345", "1,234,567") or a
# plain digit run; either may carry a decimal part. A grouped form only counts when the grouping
# is exact and not followed by more digits or ",<digit>"; otherwise the pieces are read as
# separate numbers ("12,34" -> 12 and 34; "1,2,3" -> 1, 2, 3; "1234,567" -> 1234 and 567).
_NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?")


def parse_last_int(reply: str) -> int | None:
    """The last integer in ``reply``, or ``None``.

    Rules: thousands separators are accepted only in the strict form ``12,345`` (commas
    followed by exactly three digits, no spaces), which reads as 12345; anything else splits at
    the comma. A number with a decimal part counts as an integer when the fraction is all zeros
    (``12345.0`` -> 12345); other decimals (``2.5``) are not integers and are skipped. A sentence
    end (``is 12345.``) is fine. Signs are ignored (values are positive).
    """
    if not reply:
        return None
    for m in reversed(list(_NUMBER.finditer(reply))):
        whole, _, frac = m.group(0).partition(".")
        if frac and frac.strip("0"):
            continue
        return int(whole.replace(",", ""))
    return None


def score(reply: str, answer: int) -> bool:
    """LongEval's rule: correct when the last integer in the reply equals the answer."""
    got = parse_last_int(reply or "")
    return got is not None and got == int(answer)
