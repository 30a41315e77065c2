"""The pipeline engine: a typed graph of components on a networkx MultiDiGraph.

    p = Pipeline(models={"llm": LocalLM(), "embed": STEmbedder()})
    p.add("chunk", TokenChunker(size=256))
    p.add("bank", CosineMemory(embedder="embed", top_k=4))
    p.add("answer", Stuff(llm="llm"))
    p.connect("chunk.chunks", "bank.chunks")
    p.connect("bank.hits", "answer.chunks")
    p.expose_input("document", "chunk.text")
    p.expose_input("question", "bank.query", "answer.question")
    p.expose_output("answer", "answer.answer")
    result = p.run({"document": text, "question": "..."})
    result["answer"], result.trace

* ``connect`` checks at once: unknown component or socket (listing what exists), type
  mismatch, an input already fed, self-loops and cycles.
* ``validate()`` runs before any model loads: required inputs fed, model references declared
  and of the right kind, LLM capabilities sufficient, pipeline inputs/outputs resolve.
* ``run`` executes in a deterministic topological order (ties broken by name, so insertion
  order never matters), emits events to subscribers and returns outputs plus a trace.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx

from ..errors import ConnectionError_, SpecError, UserError
from ..events import EventBus, Subscriber, use_bus
from ..llm.base import LLM, Embedder
from ..run.base import use_executor
from ..types import Document
from .component import Socket, compatible, describe_type, input_sockets, resource_params
from .glimpse import glimpse
from .registry import suggest

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass
class RunResult:
    """Outputs of a run (``result["answer"]``) plus its trace (order, timings, LLM usage)."""

    outputs: dict[str, Any]
    trace: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.outputs[key]

    def __contains__(self, key: str) -> bool:
        return key in self.outputs

    def keys(self) -> Iterable[str]:
        return self.outputs.keys()


def _split(ref: str, what: str) -> tuple[str, str | None]:
    if not isinstance(ref, str) or not ref.strip():
        raise ConnectionError_(f"{what} must be 'component.socket', got {ref!r}.")
    ref = ref.strip()
    if "." in ref:
        comp, sock = ref.split(".", 1)
        return comp.strip(), sock.strip()
    return ref, None


def _check_input_value(name: str, value: Any, want: Any, socket: str) -> Any:
    """A pipeline input for a text socket must be text (a Path or bytes is a common slip in Python);
    a path-like value is taken for a socket that holds a path (``path``, ``folder``, ...)."""
    if want is str and isinstance(value, os.PathLike) and any(w in socket for w in ("path", "folder", "dir", "file")):
        return os.fspath(value)
    if isinstance(value, Document) and want is not Document:  # ctxflow.read_document(...): its (converted) text
        return value.text
    if want is str and not isinstance(value, str):
        hint = " (read the file first: Path(...).read_text())" if hasattr(value, "read_text") else \
            " (decode it first: data.decode('utf-8'))" if isinstance(value, (bytes, bytearray)) else ""
        raise UserError(f"pipeline input {name!r} must be text (str), got {type(value).__name__}{hint}.")
    return value


def _place_citations(values: Any, docs: list[Document]) -> None:
    """Give each citation that quotes one of ``docs`` (its text at its offsets, and no other file's
    path) that document's path, and the page or section of a converted PDF/EPUB (no line: a line of
    converted text is no line of the file). Citations of other sources (a store) are left as they are."""
    from ..formats import place

    for v in values:
        for c in getattr(v, "citations", None) or []:
            mine = [d for d in docs if d.text[c.start:c.end] == c.text
                    and c.meta.get("path") in (None, "", d.meta.get("path"))]
            if len(mine) != 1:
                continue
            doc = mine[0]
            if doc.meta.get("path"):
                c.meta["path"] = doc.meta["path"]
            place(c.meta, doc.meta, c.start)


def _attribute(exc: Exception, name: str, type_name: str) -> None:
    """Say which component raised ``exc``: a user mistake's message gets the component's name in
    front (the CLI prints only the message); any other error gets a note under its traceback."""
    where = f"component {name!r} ({type_name})"
    if getattr(exc, "_ctxflow_component", None):
        return
    exc._ctxflow_component = name  # type: ignore[attr-defined]
    if isinstance(exc, UserError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{where}: {exc.args[0]}",) + exc.args[1:]
    elif hasattr(exc, "add_note"):  # Python 3.11+: shown under the traceback
        exc.add_note(f"raised in {where}")
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), f"raised in {where}"]


class Pipeline:
    def __init__(self, models: dict[str, LLM | Embedder] | None = None, executor: Any = None, name: str = "pipeline"):
        self.graph = nx.MultiDiGraph()
        self.models: dict[str, LLM | Embedder] = {}
        self.model_specs: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, list[str]] = {}
        self.outputs: dict[str, str] = {}
        self.executor = executor
        self.name = name
        self.name_given = name != "pipeline"  # dumped only when set (a file's name defaults to its stem)
        self.meta: dict[str, Any] = {}
        self.description: str | None = None
        self.source: str | None = None
        self.subscribers: list[Subscriber] = []
        self._warm = False
        for n, m in (models or {}).items():
            self.add_model(n, m)

    # -- building -------------------------------------------------------------------------
    def add_model(self, name: str, model: LLM | Embedder, spec: dict[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"invalid model name {name!r}: use letters, digits, '_' or '-', starting with a letter.")
        if name in self.models:
            raise SpecError(f"duplicate model name {name!r}: each model is declared once.")
        if not isinstance(model, (LLM, Embedder)):
            raise SpecError(f"model {name!r} must be an LLM or an Embedder, got {type(model).__name__}.")
        self.models[name] = model
        self.model_specs[name] = spec if spec is not None else model.spec()
        self._warm = False

    def add(self, name: str, component: Any) -> "Pipeline":
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"invalid component name {name!r}: use letters, digits, '_' or '-', starting with a letter.")
        if name in self.graph:
            raise SpecError(f"duplicate component name {name!r}: names must be unique. Existing: {', '.join(sorted(self.graph))}.")
        if not hasattr(component, "run") or not getattr(type(component), "type_name", ""):
            raise SpecError(f"{name!r} is not a registered component (decorate its class with @component).")
        # model objects passed in Python become shared models with a name
        for param, kind in resource_params(type(component)).items():
            val = getattr(component, param, None)
            if isinstance(val, (LLM, Embedder)):
                existing = [n for n, m in self.models.items() if m is val]
                if existing:
                    mname = existing[0]
                else:
                    mname = param if param not in self.models else f"{param}_{len(self.models)}"
                    self.add_model(mname, val)
                component._init_params[param] = mname
        self.graph.add_node(name, component=component)
        self._warm = False
        return self

    def component(self, name: str) -> Any:
        if name not in self.graph:
            raise SpecError(f"unknown component {name!r}.{suggest(name, self.graph)} Components: {', '.join(sorted(self.graph)) or '(none)'}.")
        return self.graph.nodes[name]["component"]

    @property
    def components(self) -> dict[str, Any]:
        return {n: self.graph.nodes[n]["component"] for n in sorted(self.graph)}

    def _in(self, name: str) -> dict[str, Socket]:
        return input_sockets(type(self.component(name)))

    def _out(self, name: str) -> dict[str, Any]:
        return type(self.component(name)).outputs

    def _resolve(self, ref: str, side: str) -> tuple[str, str]:
        comp, sock = _split(ref, "a connection end")
        if comp not in self.graph:
            raise ConnectionError_(
                f"unknown component {comp!r} in {ref!r}.{suggest(comp, self.graph)} Components: {', '.join(sorted(self.graph)) or '(none)'}."
            )
        socks = list(self._out(comp)) if side == "out" else list(self._in(comp))
        kind = "output" if side == "out" else "input"
        if sock is None:
            if len(socks) == 1:
                return comp, socks[0]
            raise ConnectionError_(f"{ref!r} must name one of {comp!r}'s {kind} sockets: {', '.join(socks) or '(none)'}.")
        if sock not in socks:
            raise ConnectionError_(
                f"{comp!r} has no {kind} socket {sock!r}.{suggest(sock, socks)} Its {kind} sockets: {', '.join(socks) or '(none)'}."
            )
        return comp, sock

    def connect(self, sender: str, receiver: str) -> "Pipeline":
        a, out = self._resolve(sender, "out")
        b, inp = self._resolve(receiver, "in")
        if a == b:
            raise ConnectionError_(f"cannot connect {a!r} to itself ({a}.{out} -> {b}.{inp}): self-loops are not allowed.")
        out_t = self._out(a)[out]
        in_t = self._in(b)[inp].type
        if not compatible(out_t, in_t):
            raise ConnectionError_(
                f"type mismatch: {a}.{out} gives {describe_type(out_t)} but {b}.{inp} takes {describe_type(in_t)}."
            )
        for _, _, d in self.graph.in_edges(b, data=True):
            if d["inp"] == inp:
                raise ConnectionError_(f"{b}.{inp} is already fed by {d['src']}.{d['out']}; an input socket takes one connection.")
        if inp in {s.split(".", 1)[1] for names in self.inputs.values() for s in names if s.split(".", 1)[0] == b}:
            raise ConnectionError_(f"{b}.{inp} is already fed by a pipeline input; an input socket takes one source.")
        if nx.has_path(self.graph, b, a):
            path = nx.shortest_path(self.graph, b, a)
            raise ConnectionError_(
                f"connecting {a}.{out} -> {b}.{inp} would make a cycle ({' -> '.join(path + [b])}); pipelines are acyclic."
            )
        self.graph.add_edge(a, b, key=f"{out}->{inp}", out=out, inp=inp, src=a)
        self._warm = False
        return self

    def expose_input(self, name: str, *targets: str) -> "Pipeline":
        """Make ``name`` a pipeline input feeding each ``component.socket`` in ``targets``."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"invalid pipeline input name {name!r}.")
        if not targets:
            raise SpecError(f"pipeline input {name!r} feeds no socket; give one or more 'component.socket' targets.")
        resolved = []
        for t in targets:
            c, s = self._resolve(t, "in")
            for _, _, d in self.graph.in_edges(c, data=True):
                if d["inp"] == s:
                    raise ConnectionError_(f"pipeline input {name!r} targets {c}.{s}, which is already fed by {d['src']}.{d['out']}.")
            for other, fed in self.inputs.items():
                if other != name and f"{c}.{s}" in fed:
                    raise ConnectionError_(f"pipeline inputs {other!r} and {name!r} both target {c}.{s}; a socket takes one "
                                           f"input: list every socket {other!r} should feed under {other!r} alone.")
            resolved.append(f"{c}.{s}")
        self.inputs.setdefault(name, [])
        self.inputs[name].extend(r for r in resolved if r not in self.inputs[name])
        return self

    def expose_output(self, name: str, source: str) -> "Pipeline":
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"invalid pipeline output name {name!r}.")
        c, s = self._resolve(source, "out")
        self.outputs[name] = f"{c}.{s}"
        return self

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    # -- checking -------------------------------------------------------------------------
    def order(self) -> list[str]:
        """Deterministic topological order: ties broken by component name."""
        return list(nx.lexicographical_topological_sort(self.graph))

    def _fed(self) -> set[tuple[str, str]]:
        fed = {(b, d["inp"]) for _, b, d in self.graph.edges(data=True)}
        for targets in self.inputs.values():
            for t in targets:
                c, s = t.split(".", 1)
                fed.add((c, s))
        return fed

    def validate(self) -> None:
        """Check the whole graph before anything loads. Raises SpecError with what to fix."""
        if not self.graph:
            raise SpecError("the pipeline has no components.")
        fed = self._fed()
        for name in self.order():
            comp = self.component(name)
            for sock in self._in(name).values():
                if sock.required and (name, sock.name) not in fed:
                    raise SpecError(
                        f"required input {name}.{sock.name} ({describe_type(sock.type)}) is not connected: connect a component's "
                        f"output to it or list it under inputs:."
                    )
            for param, kind in resource_params(type(comp)).items():
                ref = comp.init_params.get(param, getattr(comp, param, None))
                if ref is None:
                    continue
                if isinstance(ref, (LLM, Embedder)):
                    continue
                if ref not in self.models:
                    declared = ", ".join(sorted(self.models)) or "(none)"
                    raise SpecError(
                        f"component {name!r} parameter {param!r} refers to model {ref!r}, which is not declared under models: "
                        f"(declared: {declared}).{suggest(str(ref), self.models)}"
                    )
                m = self.models[ref]
                want = LLM if kind == "llm" else Embedder
                if not isinstance(m, want):
                    raise SpecError(f"component {name!r} parameter {param!r} needs an {kind}, but model {ref!r} is a {type(m).__name__}.")
                need = set(getattr(comp, "requires", ())) if kind == "llm" else set()
                missing = need - set(getattr(m, "capabilities", ()))
                if missing:
                    raise SpecError(
                        f"component {name!r} ({type(comp).type_name}) needs grey-box capabilities {sorted(missing)} that model "
                        f"{ref!r} ({type(m).__name__}) lacks; use a local model (type: local)."
                    )
        for pname, src in self.outputs.items():
            self._resolve(src, "out")

    # -- running --------------------------------------------------------------------------
    def warm_up(self) -> None:
        if self._warm:
            return
        self.validate()
        for name in self.order():
            comp = self.component(name)
            for param in resource_params(type(comp)):
                ref = comp.init_params.get(param)
                if isinstance(ref, str) and ref in self.models:
                    setattr(comp, param, self.models[ref])
        for m in self.models.values():
            m.warm_up()
        for name in self.order():
            self.component(name).warm_up()
        self._warm = True

    def _split_inputs(self, inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        per: dict[str, dict[str, Any]] = {}
        for key, value in (inputs or {}).items():
            if key in self.inputs:
                for t in self.inputs[key]:
                    c, s = t.split(".", 1)
                    per.setdefault(c, {})[s] = _check_input_value(key, value, self._in(c)[s].type, s)
            elif "." in key:
                c, s = self._resolve(key, "in")
                src = next((f"{a}.{d['out']}" for a, _, d in self.graph.in_edges(c, data=True) if d["inp"] == s), None)
                also = next((n for n, fed in self.inputs.items() if f"{c}.{s}" in fed and n in inputs), None)
                if src or also:
                    raise UserError(f"input {key!r}: {c}.{s} is fed by {src or f'the pipeline input {also!r}'} already; "
                                    f"a socket takes one value.")
                per.setdefault(c, {})[s] = _check_input_value(key, value, self._in(c)[s].type, s)
            else:
                valid = sorted(self.inputs) or ["component.socket"]
                raise UserError(f"unknown pipeline input {key!r}.{suggest(key, self.inputs)} Valid inputs: {', '.join(valid)}.")
        return per

    def run(self, inputs: dict[str, Any] | None = None, subscribers: list[Subscriber] | None = None) -> RunResult:
        if isinstance(inputs, Mapping) and not isinstance(inputs, dict):
            inputs = dict(inputs)  # a MappingProxyType, ChainMap, ...
        if inputs is not None and not isinstance(inputs, dict):
            raise UserError(f"run() takes a dict of inputs, got {type(inputs).__name__}: "
                            f"p.run({{{', '.join(repr(n) + ': ...' for n in sorted(self.inputs)) or '...'}}}).")
        per = self._split_inputs(inputs or {})
        missing = [n for n in self.inputs if n not in (inputs or {}) and any(
            self._in(c)[s].required and s not in per.get(c, {}) for c, s in (t.split(".", 1) for t in self.inputs[n]))]
        if missing:
            raise UserError(f"missing pipeline input(s): {', '.join(missing)}. This pipeline takes: {', '.join(sorted(self.inputs))}.")
        self.warm_up()
        bus = EventBus(self.subscribers + list(subscribers or []))
        produced: dict[str, dict[str, Any]] = {}
        trace: dict[str, Any] = {"order": self.order(), "components": {},
                                 "models": {n: str(getattr(m, "model_id", type(m).__name__)) for n, m in self.models.items()}}
        t_run = time.perf_counter()
        with use_bus(bus), use_executor(self.executor):  # map steps go through the pipeline's executor
            for name in self.order():
                comp = self.component(name)
                kwargs = dict(per.get(name, {}))
                for a, _, d in self.graph.in_edges(name, data=True):
                    if d["out"] in produced.get(a, {}):
                        kwargs[d["inp"]] = produced[a][d["out"]]
                for sock in self._in(name).values():
                    if sock.required and sock.name not in kwargs:
                        src = next((f" ({a!r} did not return its declared output {d['out']!r})" for a, _, d in
                                    self.graph.in_edges(name, data=True) if d["inp"] == sock.name), "")
                        raise UserError(f"component {name!r} got no value for its required input {sock.name!r}{src}.")
                bus.component = name
                bus.emit("component_start", type=type(comp).type_name)
                t0 = time.perf_counter()
                try:
                    out = comp.run(**kwargs)
                except Exception as exc:
                    bus.emit("error", error=str(exc), type=type(exc).__name__)
                    _attribute(exc, name, type(comp).type_name)
                    raise
                dt = time.perf_counter() - t0
                if not isinstance(out, dict):
                    raise TypeError(f"component {name!r}.run() returned {type(out).__name__}, expected a dict of outputs")
                unknown = set(out) - set(self._out(name))
                if unknown:
                    raise TypeError(f"component {name!r} returned undeclared outputs {sorted(unknown)}; declared: {sorted(self._out(name))}")
                produced[name] = out
                info = {"type": type(comp).type_name, "seconds": round(dt, 6)}
                info.update(bus.counters.get(name, {}))
                if isinstance(out.get("trace"), dict):
                    info["detail"] = out["trace"]
                info["outputs"] = {k: glimpse(v) for k, v in out.items() if k != "trace"}
                trace["components"][name] = info
                bus.emit("component_end", seconds=dt)
                bus.component = None
        trace["seconds"] = round(time.perf_counter() - t_run, 6)
        if self.outputs:
            outputs = {}
            for pname, src in self.outputs.items():
                c, s = src.split(".", 1)
                if s not in produced.get(c, {}):
                    raise TypeError(f"component {c!r} ({type(self.component(c)).type_name}) did not return its declared "
                                    f"output {s!r}, which is the pipeline output {pname!r}.")
                outputs[pname] = produced[c][s]
        else:
            leaves = [n for n in self.order() if self.graph.out_degree(n) == 0]
            outputs = {f"{n}.{k}": v for n in leaves for k, v in produced.get(n, {}).items()}
        for v in outputs.values():
            if hasattr(v, "trace") and isinstance(getattr(v, "trace"), dict) and not v.trace.get("pipeline"):
                v.trace["pipeline"] = trace
        docs = [v for v in (inputs or {}).values() if isinstance(v, Document)]
        if docs:  # documents read from files: the citations quoting them name them (and a PDF's page)
            _place_citations(outputs.values(), docs)
        return RunResult(outputs, trace)

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        comps = {}
        for name in self.order():
            comp = self.component(name)
            params = {}
            for k, v in comp.init_params.items():
                if isinstance(v, (LLM, Embedder)):
                    v = next((n for n, m in self.models.items() if m is v), None)
                params[k] = v
            comps[name] = {"type": type(comp).type_name, **params}
        conns = sorted(f"{a}.{d['out']} -> {b}.{d['inp']}" for a, b, d in self.graph.edges(data=True))
        d: dict[str, Any] = {"version": 1}
        if self.name_given:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        if self.models:
            d["models"] = {n: dict(self.model_specs[n]) for n in sorted(self.models)}
        d["components"] = comps
        if conns:
            d["connections"] = conns
        if self.inputs:
            d["inputs"] = {k: (v[0] if len(v) == 1 else list(v)) for k, v in self.inputs.items()}
        if self.outputs:
            d["outputs"] = dict(self.outputs)
        if self.executor is not None and hasattr(self.executor, "spec"):
            d["executor"] = self.executor.spec()
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.to_dict() == other.to_dict()

    def dumps(self) -> str:
        from .spec import dumps

        return dumps(self)

    def draw(self, path: str) -> None:
        from .draw import draw

        draw(self, path)

    def __repr__(self) -> str:
        return f"Pipeline({len(self.graph)} components, {self.graph.number_of_edges()} connections)"
