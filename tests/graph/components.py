"""Small components used by the engine tests (registered under test.*)."""
from __future__ import annotations

from ctxflow.graph.component import Component, component
from ctxflow.types import Chunk, Scored


@component("test.words", outputs={"chunks": list[Chunk]})
class Words(Component):
    def __init__(self, lower: bool = False):
        self.lower = lower

    def run(self, text: str, doc_id: str = "") -> dict:
        import re

        out = []
        for i, m in enumerate(re.finditer(r"\S+", text)):
            t = m.group(0)
            out.append(Chunk(doc_id=doc_id, index=i, start=m.start(), end=m.end(), text=t))
        return {"chunks": out}


@component("test.score", outputs={"scored": list[Scored[Chunk]]})
class ScoreLen(Component):
    def run(self, chunks: list[Chunk]) -> dict:
        return {"scored": [Scored[Chunk](item=c, score=float(len(c.text))) for c in chunks]}


@component("test.join", outputs={"text": str, "count": int})
class Join(Component):
    def __init__(self, sep: str = " "):
        self.sep = sep

    def run(self, scored: list[Scored[Chunk]], prefix: str = "") -> dict:
        return {"text": prefix + self.sep.join(s.item.text for s in scored), "count": len(scored)}


@component("test.echo", outputs={"text": str})
class Echo(Component):
    calls = 0

    def __init__(self, tag: str = ""):
        self.tag = tag
        self.warmed = False

    def warm_up(self) -> None:
        self.warmed = True

    def run(self, text: str) -> dict:
        import ctxflow.events as ev

        ev.progress(1, 2, "echo")
        ev.progress(2, 2, "echo")
        type(self).calls += 1
        return {"text": f"{self.tag}{text}"}


@component("test.concat", outputs={"text": str})
class Concat(Component):
    def run(self, a: str, b: str) -> dict:
        return {"text": a + "|" + b}


@component("test.fail", outputs={"text": str, "extra": str})
class Fail(Component):
    """Raises ``how`` ('user': a UserError, 'bug': a KeyError) or, with 'none', returns no 'extra'."""

    def __init__(self, how: str = "user"):
        self.how = how

    def run(self, text: str) -> dict:
        from ctxflow.errors import UserError

        if self.how == "user":
            raise UserError(f"cannot use {text!r}")
        if self.how == "bug":
            raise KeyError("oops")
        return {"text": text}
