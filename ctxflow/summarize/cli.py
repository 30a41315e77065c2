"""``ctxflow summarize PATH [--pipeline FILE] [--out FILE] [--json]``.

A file is summarized as a book (``pipelines/book_summary.yaml``: input ``document``, optional
``title``); a folder as a codebase (``pipelines/codebase_summary.yaml``: input ``path``). The
Markdown goes to ``--out`` (written to a temporary name and renamed, so a failed run never
leaves half a file) or stdout; ``--json`` prints ``{"summary", "outline"|"report", ...}``.
Progress bars (one per level) go to stderr; every model call is cached, so a rerun after an
interruption resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError


def pipeline_inputs(p: Any, target: str) -> dict[str, Any]:
    """The inputs a summary (or codebase QA) pipeline gets for ``target``: a folder goes in as
    ``path``; a file's text as ``document`` (with ``title`` / ``doc_id`` when declared)."""
    path = Path(target)
    if path.is_dir():
        if "path" not in p.inputs:
            raise UserError(f"{target} is a folder but pipeline {p.source} has no input 'path' "
                            f"(its inputs: {', '.join(p.inputs) or '-'}); use pipelines/codebase_summary.yaml.")
        return {"path": str(target)}
    from ..io import read_document

    doc = read_document(target)
    if "document" not in p.inputs:
        raise UserError(f"{target} is a file but pipeline {p.source} has no input 'document' "
                        f"(its inputs: {', '.join(p.inputs) or '-'}); use pipelines/book_summary.yaml.")
    inputs: dict[str, Any] = {"document": doc.text}
    if "title" in p.inputs:
        inputs["title"] = doc.meta.get("title") or path.name  # an EPUB's / HTML page's own title
    if "doc_id" in p.inputs:
        inputs["doc_id"] = doc.id
    return inputs


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cmd_summarize(args: argparse.Namespace) -> int:
    from ..cli import _load, _run_pipeline, default_pipeline, jsonable

    target = Path(args.path)
    if not target.exists():
        raise UserError(f"{args.path}: no such file or folder; give a text file (a book) or a folder (a codebase).")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name such as summary.md.")
    name = "codebase_summary.yaml" if target.is_dir() else "book_summary.yaml"
    p = _load(args.pipeline or str(default_pipeline(name)), getattr(args, "model", None))
    inputs = pipeline_inputs(p, args.path)
    res = _run_pipeline(p, inputs, args.quiet)
    outs = res.outputs
    summary = outs.get("summary")
    if not isinstance(summary, str):
        raise UserError(f"pipeline {p.source} has no text output 'summary' (its outputs: {', '.join(outs) or '-'}).")
    if args.out:
        _write_atomic(Path(args.out), summary)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps({**{k: jsonable(v) for k, v in outs.items()}, "path": args.path, "trace": jsonable(res.trace)},
                         ensure_ascii=False))
    elif not args.out:
        print(summary)
    return 0


def ask_folder(args: argparse.Namespace) -> int:
    """``ctxflow ask FOLDER QUESTION``: a codebase question (default ``pipelines/codebase_qa.yaml``);
    the answer's citations are printed as ``path:line``."""
    from ..cli import _load, _run_pipeline, default_pipeline, jsonable, print_answer

    p = _load(args.pipeline or str(default_pipeline("codebase_qa.yaml")), getattr(args, "model", None))
    from .. import cli as _cli

    if hasattr(_cli, "_apply_executor"):
        _cli._apply_executor(p, args)
    missing = [k for k in ("path", "question") if k not in p.inputs]
    if missing:
        raise UserError(f"{args.doc} is a folder, but pipeline {p.source} has no input(s) {missing}; asking about a codebase "
                        "needs inputs 'path' and 'question' (e.g. pipelines/codebase_qa.yaml).")
    res = _run_pipeline(p, {"path": args.doc, "question": args.question}, args.quiet)
    ans = res.outputs.get("answer") or next(iter(res.outputs.values()))
    if args.json:
        d = jsonable(ans) if hasattr(ans, "model_dump") else {"answer": jsonable(ans)}
        print(json.dumps({"answer": d.get("text", d.get("answer")), "citations": [
            {"start": c["start"], "end": c["end"], "text": c["text"], "doc_id": c.get("doc_id"), "score": c.get("score"),
             **c.get("meta", {})} for c in d.get("citations", [])], "document": args.doc, "question": args.question,
            "trace": jsonable(res.trace)}, ensure_ascii=False))
    else:
        print_answer(ans)
    return 0


def register(sub: Any) -> None:
    from ..cli import MODEL_HELP  # registered from ctxflow.cli's build_parser: that module is loaded

    s = sub.add_parser("summarize", help="summarize a book (text file) or a codebase (folder) as Markdown")
    s.add_argument("path", help="a text file (summarized section -> chapter -> book) or a folder (file -> folder -> repository)")
    s.add_argument("--pipeline", "-p", help="pipeline file (default: pipelines/book_summary.yaml or codebase_summary.yaml)")
    s.add_argument("--out", "-o", metavar="FILE", help="write the Markdown here (default: stdout)")
    s.add_argument("--json", action="store_true", help="print the outputs (summary, outline/report, trace) as one JSON object")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    s.add_argument("--model", "-m", metavar="MODEL", help=MODEL_HELP)
    s.set_defaults(fn=cmd_summarize)
