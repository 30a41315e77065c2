"""Fact extraction for the graph and triple banks: ``(subject; relation; object)`` triples.

* :func:`extract_rules` — deterministic patterns, per sentence (and per line for ``key: value``):
  ``X: Y`` (a label and its value), ``X is/are/was/were [a|an|the] Y``, ``X has Y``,
  ``<word> of <Name>``, and capitalised entities co-occurring in a sentence (linked by the
  words between them when there are few, else by ``co-occurs with``).
* :func:`extract_llm` — prompts the model to list facts, one ``(subject; relation; object)`` per
  line; :func:`parse_triples` reads that tolerantly (numbered or bulleted lines, ``|`` or ``,``
  separators, JSON-ish quotes and brackets) and skips what it cannot read. It never raises.
* :func:`normalize_entity` — the key entities are merged on: case, Unicode form, whitespace,
  punctuation, a leading article and a simple plural are folded away.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable, Sequence

Triple3 = tuple[str, str, str]

EXTRACT_PROMPT = """List the facts stated in the text below as triples, one per line, written as
(subject; relation; object)
Use short noun phrases for subject and object and a short verb phrase for the relation. Write only the triples.

Text:
{text}

Facts:"""

_ARTICLES = ("the ", "a ", "an ")
_PUNCT = re.compile(r"[^\w\s'-]+|(?<!\w)['-]|['-](?!\w)", re.UNICODE)
_WS = re.compile(r"\s+")


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")) and word.isalpha():
        return word[:-1]
    return word


def normalize_entity(text: str) -> str:
    """The merge key of an entity: ``"The  Dogs!"`` and ``"dog"`` both give ``"dog"``."""
    s = unicodedata.normalize("NFKC", text).lower().strip()
    s = s.replace("\u2019", "'")
    if s.endswith("'s"):
        s = s[:-2]
    s = _WS.sub(" ", _PUNCT.sub(" ", s)).strip()
    for art in _ARTICLES:
        if s.startswith(art) and len(s) > len(art):
            s = s[len(art):]
            break
    if not s:
        return ""
    words = s.split(" ")
    words[-1] = _singular(words[-1])
    return " ".join(words)


def normalize_relation(text: str) -> str:
    return _WS.sub(" ", _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())).strip()


def _clean(part: str) -> str:
    part = part.strip().strip("\"'`*[](){}<>").strip()
    return _WS.sub(" ", part).rstrip(".,;:")


# -- parsing model output ---------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*\u2022>]+|\d+[.)]|\(\d+\)|triple\s*\d*\s*:|fact\s*\d*\s*:)\s*", re.IGNORECASE)
_PARENS = re.compile(r"[(\[]([^()\[\]]+)[)\]]")


def _split3(inner: str) -> Triple3 | None:
    for sep in (";", "|", "\t", ",", " - ", "->", "—"):
        parts = [_clean(p) for p in inner.split(sep)]
        parts = [p for p in parts if p]
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        if len(parts) > 3 and sep in (";", "|", "\t"):
            return parts[0], parts[1], f"{sep} ".join(parts[2:]).strip()
    return None


def parse_triples(output: Any, max_len: int = 120) -> list[Triple3]:
    """Triples in a model's output; malformed lines are skipped (never raises)."""
    out: list[Triple3] = []
    try:
        text = output if isinstance(output, str) else str(getattr(output, "text", output) or "")
        for line in text.splitlines():
            line = _BULLET.sub("", line).strip()
            if not line:
                continue
            groups = _PARENS.findall(line) or [line]
            for g in groups:
                t = _split3(g)
                if t and all(0 < len(p) <= max_len for p in t):
                    out.append(t)
    except Exception:  # pragma: no cover - defensive: model output must never crash indexing
        return out
    return list(dict.fromkeys(out))


def extract_llm(llm: Any, texts: Sequence[str], batch_size: int = 8, max_new_tokens: int = 256) -> list[list[Triple3]]:
    """Ask ``llm`` for the facts of each text (batched); one list of triples per text."""
    budget = max(64, int(getattr(llm, "context_length", 2048)) - max_new_tokens - 96)
    prompts = []
    for t in texts:
        try:
            t = llm.truncate(t, budget)
        except Exception:
            pass
        prompts.append(EXTRACT_PROMPT.format(text=t))
    out: list[list[Triple3]] = []
    for i in range(0, len(prompts), batch_size):
        try:
            gens = llm.generate(prompts[i:i + batch_size], max_new_tokens=max_new_tokens)
        except Exception as exc:  # a failing model call leaves these chunks without facts
            import warnings

            warnings.warn(f"fact extraction failed for {len(prompts[i:i + batch_size])} chunk(s): {exc}", stacklevel=2)
            gens = [""] * len(prompts[i:i + batch_size])
        gens = list(gens) + [""] * (len(prompts[i:i + batch_size]) - len(gens))
        out.extend(parse_triples(g) for g in gens[: len(prompts[i:i + batch_size])])
    return out


# -- rules ----------------------------------------------------------------------------------------
# a sentence ends at . ! ? before a capital or digit, but not after an initial ("Robert A. Heinlein")
_SENT = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)\s+(?=[\"'(\[]?[A-Z0-9])")
_PARA = re.compile(r"\n[ \t]*\n")
_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s")
_KV = re.compile(r"^\s*([A-Za-z][\w .'/-]{0,48}?)\s*[:=]\s+(\S.{0,200}?)\s*\.?$")
_COPULA = re.compile(r"^(?:.*,\s*)?(?P<s>[\w'\- ]{1,60}?)\s+(?P<v>is|are|was|were|has|have|had)\s+(?:(?P<a>a|an|the)\s+)?(?P<o>[^,;:()]{1,80})",
                     re.IGNORECASE)
_OF = re.compile(r"\b([a-z][a-z-]{2,})\s+of\s+(?:the\s+)?([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*){0,2})")
_NAME = r"[A-Z](?:\.(?=\s+[A-Z])|[\w'-]*)"  # a capitalised word, or an initial followed by a name
_ENT = re.compile(rf"\b{_NAME}(?:\s+(?:of\s+|de\s+|von\s+)?{_NAME})*")
_CAPS_STOP = frozenset("the a an in on at of for and but or if when while this that these those it he she they we i "
                       "there here after before then so as by with from to his her their its our my your "
                       "what who whom whose which where why how is are was were do does did can could would should "
                       "will may might not no yes see also".split())


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` with whitespace collapsed. Hard-wrapped lines are joined: a line break
    ends a sentence only at a blank line, before a list item, or after a short line (a heading)."""
    out = []
    for para in _PARA.split(text):
        block: list[str] = []
        lines = para.split("\n")
        for i, line in enumerate(lines):
            if block and _ITEM.match(line):
                out.append(" ".join(block))
                block = []
            block.append(line.strip())
            if len(line.strip()) < 40 and i + 1 < len(lines):
                out.append(" ".join(block))
                block = []
        out.append(" ".join(block))
    return [" ".join(s.split()) for b in out for s in _SENT.split(b) if s.strip()]


def _entities(sent: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _ENT.finditer(sent):
        words = m.group(0).split()
        s = m.start()
        while words and words[0].lower() in _CAPS_STOP:  # "The", "In" starting a sentence
            s += len(words[0]) + 1
            words = words[1:]
        if words:
            name = " ".join(words)
            out.append((s, s + len(name), name))
    return out


def _trim_np(s: str, max_words: int) -> str:
    words = s.strip().split()
    while words and words[0].lower() in _CAPS_STOP:
        words = words[1:]
    return " ".join(words[-max_words:]) if words else ""


def extract_rules(text: str, max_entities: int = 6) -> list[Triple3]:
    """Deterministic triples of ``text`` (see the module docstring)."""
    out: list[Triple3] = []
    for line in text.splitlines():
        m = _KV.match(line)
        if m and len(m.group(1).split()) <= 5:
            out.append((_clean(m.group(1)), "is", _clean(m.group(2))))
    for sent in sentences(text):
        if _KV.match(sent):
            continue
        m = _COPULA.match(sent)
        if m:
            subj, obj = _trim_np(m.group("s"), 6), _clean(" ".join(m.group("o").split()[:8]))
            verb = m.group("v").lower()
            rel = f"{verb} {m.group('a').lower()}" if m.group("a") and m.group("a").lower() in ("a", "an") else verb
            if subj and obj:
                out.append((subj, rel, obj))
        for m in _OF.finditer(sent):
            if m.group(1).lower() not in _CAPS_STOP:
                out.append((m.group(1), "of", m.group(2)))
        ents = _entities(sent)[:max_entities]
        for i, (s1, e1, a) in enumerate(ents):
            for j in range(i + 1, len(ents)):
                s2, _, b = ents[j]
                between = sent[e1:s2].strip(" ,")
                if j == i + 1 and between and len(between.split()) <= 4 and not re.search(r"[;:()]", between):
                    rel = normalize_relation(between) or "co-occurs with"
                else:
                    rel = "co-occurs with"
                if normalize_entity(a) != normalize_entity(b):
                    out.append((a, rel, b))
    return [t for t in dict.fromkeys(out) if all(t) and normalize_entity(t[0]) and normalize_entity(t[2])]


def extract(texts: Iterable[str], extractor: str = "rules", llm: Any = None) -> list[list[Triple3]]:
    """Triples of each text with ``extractor`` = ``rules``, ``llm`` or ``both``."""
    texts = list(texts)
    if extractor not in ("rules", "llm", "both"):
        raise ValueError(f"extractor must be 'rules', 'llm' or 'both'; got {extractor!r}.")
    rules = [extract_rules(t) for t in texts] if extractor in ("rules", "both") else [[] for _ in texts]
    if extractor == "rules":
        return rules
    model = extract_llm(llm, texts)
    return [list(dict.fromkeys(a + b)) for a, b in zip(model, rules)]
