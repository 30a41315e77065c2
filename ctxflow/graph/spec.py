"""YAML <-> Pipeline.

The file shape (``version: 1``)::

    version: 1
    models:
      llm:   {type: local, model: default}
      embed: {type: sentence-transformers, model: default}
    components:
      chunk:  {type: chunk.tokens, size: 256, overlap: 32}
      bank:   {type: memory.cosine, embedder: embed}
    connections:
      - chunk.chunks -> bank.chunks
    inputs:  {document: chunk.text, question: [bank.query]}
    outputs: {hits: bank.hits}

Only ``yaml.safe_load``-level constructs are read (no tags, no Python objects), only registered
component and model types are built, and every error names the file, the line and column, what
was found and what would be valid. ``dumps(loads(x))`` loads back to an equal pipeline.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError, UserError
from .component import short_repr, validate_params
from .pipeline import Pipeline
from .registry import get_component, get_model, suggest

Path_ = tuple[Union[str, int], ...]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    name: str | None = None
    description: str | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    components: dict[str, dict[str, Any]]
    connections: list[str] = Field(default_factory=list)
    inputs: dict[str, Union[str, list[str]]] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    executor: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None


_TOP_KEYS = list(_Spec.model_fields)


class _Marks:
    """Line/column of every key and value in the file, by path."""

    def __init__(self, file: str):
        self.file = file
        self.value: dict[Path_, tuple[int, int]] = {}
        self.key: dict[Path_, tuple[int, int]] = {}

    def at(self, path: Path_, key: bool = False) -> tuple[int | None, int | None]:
        table = self.key if key else self.value
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if not key and p in self.key:
                return self.key[p]
            p = p[:-1]
        return (1, 1) if not path else (None, None)

    def error(self, msg: str, path: Path_ = (), key: bool = False) -> SpecError:
        line, col = self.at(path, key)
        return SpecError(msg, self.file, line, col)


def _walk(node: yaml.Node, path: Path_, marks: _Marks, seen_nodes: set[int] | None = None) -> None:
    marks.value[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    # an alias (*a) is the same node object as its anchor (&a): walk it once, or a small file of
    # nested aliases ("billion laughs") would take exponential time and memory
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            if key in seen:
                raise SpecError(
                    f"duplicate key {key!r} (first defined on line {seen[key]}); each name appears once.",
                    marks.file, k.start_mark.line + 1, k.start_mark.column + 1,
                )
            seen[key] = k.start_mark.line + 1
            marks.key[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            _walk(v, path + (key,), marks, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (i,), marks, seen_nodes)


def _parse(text: str, file: str) -> tuple[Any, _Marks]:
    marks = _Marks(file)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _walk(node, (), marks)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise SpecError(f"invalid YAML: {what}.", file, mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:  # a control character (NUL, ...) the YAML reader refuses: where it is
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        ch = chr(exc.character) if isinstance(exc.character, int) else exc.character
        raise SpecError(f"invalid YAML: the control character {ch!r} is not allowed in a YAML file; remove it.", file, line, col) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file, None) from None
    except RecursionError:
        raise SpecError("the YAML is nested too deeply to read; a pipeline file needs only a few levels.", file, None) from None
    return data, marks


def _param_of(exc: Exception, params: dict[str, Any]) -> tuple[str, ...]:
    """The parameter an error from a component's ``__init__`` is about, so the error points at
    its line: the one it names in ``.param``, else the first given parameter its message names."""
    param = getattr(exc, "param", None)
    if param in params:
        return (param,)
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(exc))
    return next(((w,) for w in words if w in params), ())


def _describe(v: Any) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing"
    return f"{short_repr(v)} ({type(v).__name__})"


def loads(text: str, file: str = "<string>", local_model: str | os.PathLike | None = None) -> Pipeline:
    """Build a Pipeline from YAML text. Raises SpecError with file:line:column. ``local_model``
    replaces the ``model`` of every ``type: local`` model (``ctxflow ask --model``)."""
    data, marks = _parse(text, file)
    if not isinstance(data, dict):
        raise marks.error(f"the top level must be a mapping with keys version, models, components, connections, inputs, outputs; found {_describe(data)}.")
    if local_model is not None and isinstance(data.get("models") or {}, dict):
        locals_ = [m for m in (data.get("models") or {}).values() if isinstance(m, dict) and m.get("type") == "local"]
        if not locals_:
            raise SpecError(f"--model {local_model}: {file} declares no local model (type: local) to replace.")
        for m in locals_:
            m["model"] = os.fspath(local_model)  # a Path is a folder or a .gguf file like its string
    if "version" not in data:
        raise marks.error("missing 'version': add 'version: 1' at the top of the file.")
    if data.get("version") != 1 or isinstance(data.get("version"), bool):  # true == 1 in Python
        raise marks.error(f"unsupported version {short_repr(data.get('version'))}: this ctxflow reads version 1.", ("version",))
    for k in data:
        if k not in _TOP_KEYS:
            raise marks.error(f"unknown top-level key {k!r}.{suggest(str(k), _TOP_KEYS)} Valid keys: {', '.join(_TOP_KEYS)}.", (k,), key=True)
    if "components" not in data:
        raise marks.error("missing 'components': a pipeline needs at least one component.")
    try:
        spec = _Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        # pydantic appends union branch names to loc; keep the real path
        path = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("list[", "str"))))
        where = ".".join(str(p) for p in path)
        raise marks.error(f"{where}: {err['msg'].lower()}; found {_describe(err.get('input'))}.", path) from None

    p = Pipeline(name=spec.name or Path(file).stem)
    p.name_given = spec.name is not None
    p.description = spec.description
    if spec.meta:
        p.meta.update(spec.meta)

    # models
    for mname, mspec in spec.models.items():
        path = ("models", mname)
        if not isinstance(mspec, dict) or "type" not in mspec:
            raise marks.error(f"model {mname!r} needs a 'type' (e.g. local, http, sentence-transformers).", path)
        params = {k: v for k, v in mspec.items() if k != "type"}
        try:
            cls = get_model(str(mspec["type"]))
            clean = validate_params(cls, params)
            model = cls(**clean)
        except (TypeError, ValueError) as exc:
            raise marks.error(f"model {mname!r}: {exc}", path) from None
        except SpecError as exc:
            sub = path + ((getattr(exc, "param", None),) if getattr(exc, "param", None) else ("type",))
            raise marks.error(f"model {mname!r}: {exc.detail}", sub, key=getattr(exc, "param", None) is not None and "unknown" in exc.detail) from None
        try:
            p.add_model(mname, model, spec=dict(mspec))
        except SpecError as exc:
            raise marks.error(exc.detail, path, key=True) from None

    # components
    for cname, cspec in spec.components.items():
        path = ("components", cname)
        if not isinstance(cspec, dict) or "type" not in cspec:
            raise marks.error(f"component {cname!r} needs a 'type' (a registered component type such as chunk.tokens).", path)
        params = {k: v for k, v in cspec.items() if k != "type"}
        try:
            cls = get_component(str(cspec["type"]))
        except SpecError as exc:
            raise marks.error(f"component {cname!r}: {exc.detail}", path + ("type",)) from None
        try:
            comp = cls(**params)
        except SpecError as exc:
            param = getattr(exc, "param", None)
            sub = path + ((param,) if param else ())
            raise marks.error(f"component {cname!r}: {exc.detail}", sub, key=bool(param) and "unknown" in exc.detail) from None
        except (TypeError, ValueError, UserError) as exc:
            raise marks.error(f"component {cname!r}: {exc}", path + _param_of(exc, params)) from None
        try:
            p.add(cname, comp)
        except SpecError as exc:
            raise marks.error(exc.detail, path, key=True) from None

    # connections
    for i, conn in enumerate(spec.connections):
        path = ("connections", i)
        if "->" not in conn:
            raise marks.error(f"connection {conn!r} must read 'sender.socket -> receiver.socket'.", path)
        a, b = (s.strip() for s in conn.split("->", 1))
        try:
            p.connect(a, b)
        except SpecError as exc:
            raise marks.error(exc.detail, path) from None

    # inputs / outputs
    for iname, targets in spec.inputs.items():
        tl = [targets] if isinstance(targets, str) else list(targets)
        if not tl:
            raise marks.error(f"input {iname!r} feeds no socket; give one component.socket or a list of them.", ("inputs", iname))
        for j, t in enumerate(tl):
            try:
                p.expose_input(iname, t)
            except SpecError as exc:
                sub = ("inputs", iname) + ((j,) if not isinstance(targets, str) else ())
                raise marks.error(f"input {iname!r}: {exc.detail}", sub) from None
    for oname, src in spec.outputs.items():
        try:
            p.expose_output(oname, src)
        except SpecError as exc:
            raise marks.error(f"output {oname!r}: {exc.detail}", ("outputs", oname)) from None

    if spec.executor is not None:
        from ..run import make_executor

        try:
            p.executor = make_executor(spec.executor)
        except SpecError as exc:
            raise marks.error(f"executor: {exc.detail}", ("executor",)) from None

    # whole-graph checks, located at the component they concern
    try:
        p.validate()
    except SpecError as exc:
        comp = next((c for c in sorted(p.graph, key=len, reverse=True) if repr(c) in exc.detail or f"{c}." in exc.detail), None)
        raise marks.error(exc.detail, ("components", comp) if comp else ("components",), key=comp is not None) from None
    p.source = file
    return p


def _bundled_names() -> list[str]:
    from ..cli import default_pipeline

    try:
        folder = default_pipeline("book_qa.yaml").parent
    except UserError:  # pragma: no cover - the recipes ship with the package
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _bundled(path: Path) -> Path | None:
    """A bundled recipe named by ``path`` (``book_qa``, ``book_qa.yaml`` or ``pipelines/book_qa.yaml``), if any."""
    from ..cli import default_pipeline

    if path.parent not in (Path("."), Path("pipelines")) or path.stem not in _bundled_names():
        return None
    if path.suffix not in ("", ".yaml"):
        return None
    cand = default_pipeline(path.stem + ".yaml")
    return cand if cand.exists() else None


def load(path: str | os.PathLike, local_model: str | os.PathLike | None = None) -> Pipeline:
    """Read a pipeline file, or a bundled recipe by name (``ctxflow.load("book_qa")``, from any folder).
    A missing or unreadable file is a SpecError, not a traceback. ``local_model`` (a model name, a
    Hugging Face folder or a .gguf file) replaces the ``model`` of every ``type: local`` model."""
    path = Path(path)
    if not path.exists():
        bundled = _bundled(path)
        if bundled is None:
            raise SpecError(f"pipeline file not found: {path} (the bundled recipes load by name from anywhere: "
                            f"{', '.join(_bundled_names())})")
        path = bundled
    if path.is_dir():
        raise SpecError(f"{path} is a directory; give a pipeline .yaml file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start}); a pipeline file is UTF-8 YAML.", str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read the pipeline file: {exc.strerror or exc}.", str(path)) from None
    return loads(text, str(path), local_model)


def to_yaml(d: dict[str, Any]) -> str:
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)


def dumps(p: Pipeline) -> str:
    return to_yaml(p.to_dict())


def dump(p: Pipeline, path: str | os.PathLike) -> None:
    """Write ``p`` as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(p), encoding="utf-8")
    os.replace(tmp, path)
