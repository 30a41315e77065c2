"""The ``ctxflow`` command line.

    ctxflow run PIPELINE [--input NAME=VALUE | NAME=@FILE]... [--json] [--trace FILE]
    ctxflow validate PIPELINE
    ctxflow draw PIPELINE -o FILE            (.png drawn offline, .mmd Mermaid text)
    ctxflow ask DOC QUESTION [--pipeline FILE] [--json] [--stream]
    ctxflow ask --store DIR QUESTION [--json]
    ctxflow text FILE [--json]               (the text read from a PDF, HTML, EPUB, DOCX or text file)
    ctxflow index PATH... --store DIR [--bank ...]        (ctxflow/memory/cli.py)
    ctxflow bench lines --lines 200,400,600 --per N [--pipeline FILE] [--json OUT]
    ctxflow --version

User mistakes print one message on stderr and exit with status 2, never a traceback; a file the
system refuses to read or write (permission, disk full) prints one message and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import CtxflowError, UserError


# -- helpers ----------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    """``v`` as plain JSON data: strict JSON (NaN and infinities become null), numpy values as numbers,
    anything else as its text; also inside an Answer's trace or meta, which a component fills freely."""
    if hasattr(v, "model_dump"):
        return jsonable(v.model_dump())
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    if hasattr(v, "tolist"):
        return jsonable(v.tolist())
    return str(v)


class ProgressBars:
    """Turns ``progress`` events into tqdm bars on stderr (one per component and description)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[tuple, Any] = {}

    def __call__(self, ev: Any) -> None:
        if not self.enabled:
            return
        if ev.kind == "progress":
            from tqdm import tqdm

            key = (ev.component, ev.data.get("desc", ""))
            bar = self.bars.get(key)
            if bar is None:
                desc = f"{ev.component}: {ev.data.get('desc')}" if ev.data.get("desc") else str(ev.component)
                bar = self.bars[key] = tqdm(total=ev.data.get("total"), desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
            if ev.data.get("total") is not None and bar.total != ev.data.get("total"):
                bar.total = ev.data.get("total")
            bar.n = ev.data.get("done", 0)
            bar.refresh()
        elif ev.kind == "component_end":
            for key in [k for k in self.bars if k[0] == ev.component]:
                self.bars.pop(key).close()

    def close(self) -> None:
        for b in self.bars.values():
            b.close()
        self.bars.clear()


def _parse_inputs(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` / ``NAME=@FILE`` pairs; a file comes in as its Document (text converted from
    PDF/HTML/EPUB/DOCX; the pipeline gives the citations of an answer built from it the file's path)."""
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--input {it!r} must be NAME=VALUE or NAME=@FILE.")
        name, value = it.split("=", 1)
        name = name.strip()
        if not name:
            raise UserError(f"--input {it!r} has no NAME before '=': write NAME=VALUE or NAME=@FILE.")
        if name in out:
            raise UserError(f"--input {name} is given twice; give each input once.")
        if value.startswith("@"):
            from .io import read_document

            value = read_document(value[1:])
        out[name] = value
    return out


def _load(path: str, model: str | None = None):
    from .graph.spec import load

    return load(path, local_model=model)


def default_pipeline(name: str = "book_qa.yaml") -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "pipelines" / name, here / "pipelines" / name):
        if cand.exists():
            return cand
    try:
        from importlib.resources import files

        p = files("ctxflow.pipelines") / name
        if p.is_file():
            return Path(str(p))
    except Exception:
        pass
    raise UserError(f"default pipeline {name!r} not found; pass --pipeline FILE.")


def print_answer(ans: Any, stream=sys.stdout, text: bool = True, source: str = "") -> None:
    """The answer text, then each citation as ``where [start:end] "quote"``; ``where`` is the
    citation's file path (or document id, or ``source``) and its line when known."""
    if text:
        print(getattr(ans, "text", ans), file=stream)
    cits = getattr(ans, "citations", None) or []
    if cits:
        print("\nCitations:", file=stream)
        for i, c in enumerate(cits, 1):
            where = c.meta.get("path") or c.doc_id or source
            if c.meta.get("page"):  # a PDF: its page, not a line of the extracted text
                where = f"{where} (page {c.meta['page']})"
            elif c.meta.get("line"):
                where = f"{where}:{c.meta['line']}"
            if c.meta.get("section"):
                where = f"{where} ({c.meta['section']})"
            quote = c.text if len(c.text) <= 300 else c.text[:297] + "..."
            quote = quote.replace("\n", " ")
            print(f"  [{i}] {where} [{c.start}:{c.end}] \"{quote}\"", file=stream)


# -- commands ---------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    p = _load(args.pipeline)
    print(f"{args.pipeline}: OK ({len(p.graph)} components, {p.graph.number_of_edges()} connections, "
          f"inputs: {', '.join(p.inputs) or '-'}, outputs: {', '.join(p.outputs) or '-'})")
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    p = _load(args.pipeline)
    from .graph.draw import draw

    out = draw(p, args.output)
    print(f"wrote {out}")
    return 0


def _apply_executor(p: Any, args: argparse.Namespace) -> None:
    """``--executor`` replaces the pipeline file's ``executor:`` (the components stay as they are)."""
    if getattr(args, "executor", None):
        from .run import parse_executor_arg

        p.executor = parse_executor_arg(args.executor)


def _run_pipeline(p: Any, inputs: dict[str, Any], quiet: bool, extra: Sequence[Any] = ()) -> Any:
    bars = ProgressBars(enabled=not quiet)
    try:
        return p.run(inputs, subscribers=[bars, *extra])
    finally:
        bars.close()


def cmd_run(args: argparse.Namespace) -> int:
    p = _load(args.pipeline, args.model)
    _apply_executor(p, args)
    inputs = _parse_inputs(args.input)
    res = _run_pipeline(p, inputs, args.quiet)
    if args.json:
        print(json.dumps({"outputs": jsonable(res.outputs), "trace": jsonable(res.trace)}, ensure_ascii=False))
    else:
        for k, v in res.outputs.items():
            if hasattr(v, "citations"):
                print(f"{k}:")
                print_answer(v)  # citations quoting an @FILE carry its path (Pipeline.run places them)
            else:
                val = jsonable(v)
                print(f"{k}: {val if isinstance(val, str) else json.dumps(val, ensure_ascii=False, indent=2)}")
    if args.trace:  # after the outputs: a trace that cannot be written never costs the run's answer
        sys.stdout.flush()
        try:
            Path(args.trace).write_text(json.dumps(jsonable(res.trace), indent=2), encoding="utf-8")
        except OSError as exc:
            raise CtxflowError(f"--trace {args.trace}: the trace could not be written ({exc.strerror or exc}); "
                               "the outputs above are complete.") from None
    return 0


MODEL_HELP = ("the local LLM, replacing the model of every 'type: local' model of the pipeline: 'default' "
              "(SmolLM2-135M-Instruct), a Hugging Face model folder or a .gguf file")
LONG_QUESTION = 2000  # characters (~500 tokens): past this, `ask` says why it will be slow


def cmd_ask(args: argparse.Namespace) -> int:
    from .io import read_document

    pos = list(args.positional)
    if args.store:
        if len(pos) != 1:
            raise UserError(f"with --store, give only the question (got {len(pos)} positional arguments): "
                            "ctxflow ask --store DIR \"QUESTION\".")
        if not pos[0].strip():
            raise UserError("the question is empty: ask something, e.g. ctxflow ask --store stores/docs \"Who is the narrator?\".")
        from .memory.cli import ask_store

        return ask_store(args)
    if len(pos) != 2:
        raise UserError(f"ask takes a document and a question (got {len(pos)} positional arguments): "
                        "ctxflow ask DOC \"QUESTION\"  or  ctxflow ask --store DIR \"QUESTION\".")
    args.doc, args.question = pos
    if not args.question.strip():
        raise UserError("the question is empty: ask something, e.g. ctxflow ask book.txt \"Who is the narrator?\".")
    if len(args.question) > LONG_QUESTION and not args.quiet:
        print(f"note: the question is {len(args.question):,} characters long; every LLM call repeats it beside the "
              "document's passages, so this will be slow and leave little room for them. Put long material in the "
              "document and ask a short question.", file=sys.stderr)
    if Path(args.doc).is_dir():  # a codebase folder: pipelines/codebase_qa.yaml (input 'path')
        from .summarize.cli import ask_folder

        return ask_folder(args)
    doc = read_document(args.doc)
    if doc.meta.get("replaced_bytes"):
        print(f"warning: {args.doc}: {doc.meta['replaced_bytes']} invalid UTF-8 byte(s) replaced by U+FFFD", file=sys.stderr)
    p = _load(args.pipeline or str(default_pipeline()), args.model)
    _apply_executor(p, args)
    inputs: dict[str, Any] = {"document": doc, "question": args.question}  # citations get its page/section
    if "doc_id" in p.inputs:
        inputs["doc_id"] = doc.id
    missing = [k for k in ("document", "question") if k not in p.inputs]
    if missing:
        raise UserError(f"pipeline {p.source} has no input(s) {missing}; 'ask' needs inputs 'document' and 'question'.")
    from .run.stream import TokenPrinter

    printer = TokenPrinter() if args.stream and not args.json else None
    res = _run_pipeline(p, inputs, args.quiet, [printer] if printer else [])
    ans = res.outputs.get("answer") or next(iter(res.outputs.values()))
    if args.json:
        d = jsonable(ans) if hasattr(ans, "model_dump") else {"answer": jsonable(ans)}
        out = {"answer": d.get("text", d.get("answer")), "citations": [
            {"start": c["start"], "end": c["end"], "text": c["text"], "doc_id": c.get("doc_id") or args.doc, "score": c.get("score"), **c.get("meta", {})}
            for c in d.get("citations", [])], "score": d.get("score"), "document": args.doc, "question": args.question,
            # the answer's own trace (e.g. Map-Rerank's scored drafts of every candidate), then the run's
            "answer_trace": {k: v for k, v in (d.get("trace") or {}).items() if k != "pipeline"},
            "trace": jsonable(res.trace)}
        print(json.dumps(out, ensure_ascii=False))
    elif printer is not None and printer.printed:  # the text is out already: end its line, then the citations
        print()
        print_answer(ans, sys.stdout, text=False, source=args.doc)
    else:
        if printer is not None and not args.quiet:
            print(f"note: --stream: {Path(p.source).name if p.source else 'this pipeline'} writes its answer without "
                  "streaming (e.g. select.map_rerank picks one of several drafts), so it prints whole.", file=sys.stderr)
        print_answer(ans, source=args.doc)
    return 0


def cmd_text(args: argparse.Namespace) -> int:
    """``ctxflow text FILE``: the text ctxflow reads from a file (PDF, HTML, EPUB and DOCX are
    converted); citation offsets index exactly this text."""
    from .io import read_document

    doc = read_document(args.file)
    if args.json:
        print(json.dumps({"text": doc.text, "meta": jsonable(doc.meta)}, ensure_ascii=False))
    else:
        sys.stdout.write(doc.text if doc.text.endswith("\n") else doc.text + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .eval.cli import bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ctxflow", description="Run long documents through a local LLM with a short context window.")
    ap.add_argument("--version", action="version", version=f"ctxflow {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    r = sub.add_parser("run", help="run a pipeline file")
    r.add_argument("pipeline")
    r.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE|NAME=@FILE")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    r.add_argument("--trace", metavar="FILE", help="write the run trace (timings, LLM calls) as JSON")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    r.add_argument("--model", "-m", metavar="MODEL", help=MODEL_HELP)
    r.add_argument("--executor", metavar="TYPE[:K=V,...]", help="run map steps on: local, or ray[:actors=N,address=local|auto|ray://...]")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check a pipeline file without loading any model")
    v.add_argument("pipeline")
    v.set_defaults(fn=cmd_validate)

    d = sub.add_parser("draw", help="draw a pipeline (.png offline, .mmd Mermaid)")
    d.add_argument("pipeline")
    d.add_argument("-o", "--output", required=True)
    d.set_defaults(fn=cmd_draw)

    a = sub.add_parser("ask", help="answer a question about a document, with citations")
    a.add_argument("positional", nargs="+", metavar="DOC QUESTION",
                   help="a document (file or folder; - reads it from standard input) and a question; with --store, only the question")
    a.add_argument("--store", "-s", metavar="DIR", help="answer from a persisted store made by `ctxflow index`")
    a.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    a.add_argument("--pipeline", "-p", help="pipeline file (default: pipelines/book_qa.yaml for a file, "
                   "pipelines/codebase_qa.yaml for a folder)")
    a.add_argument("--model", "-m", metavar="MODEL", help=MODEL_HELP)
    a.add_argument("--json", action="store_true", help="print {answer, citations: [{start, end, text, ...}], trace} as JSON")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    a.add_argument("--executor", metavar="TYPE[:K=V,...]", help="run map steps on: local, or ray[:actors=N,address=local|auto|ray://...]")
    a.set_defaults(fn=cmd_ask)

    t = sub.add_parser("text", help="print the text ctxflow reads from a file (PDF, HTML, EPUB, DOCX converted)")
    t.add_argument("file", help="the file (- reads standard input)")
    t.add_argument("--json", action="store_true", help="print {text, meta} (format, page offsets, sections) as JSON")
    t.set_defaults(fn=cmd_text)

    b = sub.add_parser("bench", help="benchmarks (lines retrieval)")
    b.set_defaults(fn=cmd_bench)  # `ctxflow bench` alone: bench_main says which benchmarks exist
    bsub = b.add_subparsers(dest="task", metavar="TASK")
    bl = bsub.add_parser("lines", help="LongEval lines retrieval through a pipeline and the full-context baseline")
    bl.add_argument("--lines", default="200,400,600", help="comma-separated record lengths")
    bl.add_argument("--per", type=int, default=10, help="questions per length")
    bl.add_argument("--pipeline", "-p", action="append", help="pipeline file (default: pipelines/book_qa.yaml); repeat to compare several in one run")
    bl.add_argument("--json", metavar="OUT", help="write results JSON here (a PNG plot beside it)")
    bl.add_argument("--seed", type=int, default=0)
    bl.add_argument("--two-hop", action="store_true", help="the two-hop variant")
    bl.add_argument("--no-baseline", action="store_true", help="skip the full-context baseline")
    bl.add_argument("--baseline-per", type=int, default=None, help="questions per length for the (slow) full-context baseline (default: --per)")
    bl.set_defaults(fn=cmd_bench)

    # subcommands owned by their subsystems: each module has ``register(subparsers)``; a module
    # that is absent (an optional part not installed) simply adds nothing
    import importlib

    for mod in _SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):
                continue
            raise
        m.register(sub)
    return ap


#: modules adding subcommands (``index``, ``summarize``, ``serve``, ``moa`` ...)
_SUBCOMMAND_MODULES = (
    "ctxflow.memory.cli",
    "ctxflow.summarize.cli",
    "ctxflow.serve.cli",
    "ctxflow.attention.cli",
)


def _check_output_paths(args: argparse.Namespace) -> None:
    """Refuse an output file that cannot be written *before* the work that fills it runs (a run's
    trace, a summary, a MoA plan or profile), so a long run is not lost to a typo in a path."""
    for flag in ("trace", "out", "output", "json"):
        value = getattr(args, flag, None)
        if not isinstance(value, str) or not value:
            continue  # unset, or a --json switch
        path = Path(value)
        if path.is_dir():
            raise UserError(f"--{flag} {value} is a folder; give a file name inside it.")
        try:  # the folder it goes in is made now, as `mkdir -p` would
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--{flag} {value}: cannot make its folder {path.parent} ({exc.strerror or exc}); "
                            "choose another path.") from None
        if not os.access(path.parent, os.W_OK):
            raise UserError(f"--{flag} {value}: the folder {path.parent} is not writable; choose another path.")


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help(sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if getattr(args, "quiet", False):  # -q: transformers' "Loading weights" bar too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        _check_output_paths(args)
        return int(args.fn(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished LLM calls are cached; run again to resume)", file=sys.stderr)
        return 130
    except CtxflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a file or folder the system refuses (permission, disk full, read-only): say which
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
