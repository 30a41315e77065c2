"""Markdown of a codebase summary: overview, tree, folders and files with ``path:line`` facts."""
from __future__ import annotations

import posixpath
from typing import Any


def _join(root: str, rel: str) -> str:
    return rel if root in (".", "") else f"{root}/{rel}"


def _short(text: str, n: int = 100) -> str:
    first = (text or "").split(". ")[0].strip().rstrip(".")
    return first if len(first) <= n else first[: n - 3].rstrip() + "..."


def tree_lines(paths: list[str], notes: dict[str, str], root: str) -> list[str]:
    """An ASCII tree of ``paths`` (relative, POSIX) with a note after each file."""
    tree: dict[str, Any] = {}
    for p in paths:
        node = tree
        for part in p.split("/")[:-1]:
            node = node.setdefault(part + "/", {})
        node[p.split("/")[-1]] = p
    out = [f"{root}/"]

    def walk(node: dict[str, Any], prefix: str) -> None:
        keys = sorted(node, key=lambda k: (not k.endswith("/"), k))
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            branch = "└── " if last else "├── "
            v = node[k]
            if isinstance(v, dict):
                out.append(f"{prefix}{branch}{k}")
                walk(v, prefix + ("    " if last else "│   "))
            else:
                note = notes.get(v, "")
                out.append(f"{prefix}{branch}{k}" + (f"  — {note}" if note else ""))

    walk(tree, "")
    return out


def _facts(f: dict[str, Any], root: str) -> list[str]:
    path = _join(root, f["path"])
    out = []
    for s in f["symbols"]:
        if s["kind"] == "heading":
            out.append(f"- {'  ' * (int(s['signature'] or 1) - 1)}{s['name']} — `{path}:{s['line']}`")
            continue
        if not s["public"]:
            continue
        kw = "class " if s["kind"] == "class" else ""
        doc = f" — {s['doc']}" if s["doc"] else ""
        out.append(f"- `{kw}{s['name']}{s['signature']}` — `{path}:{s['line']}`{doc}")
        for c in s["children"]:
            if c["public"]:
                cdoc = f" — {c['doc']}" if c["doc"] else ""
                out.append(f"  - `{c['name'].rsplit('.', 1)[-1]}{c['signature']}` — `{path}:{c['line']}`{cdoc}")
    return out


def render_code(report: dict[str, Any]) -> str:
    root = report["root"]
    files = report["files"]
    folders = report["folders"]
    skipped = report["skipped"]
    out = [f"# `{root}/` — codebase summary", "",
           f"> {len(files)} files ({report['tokens']:,} tokens) summarized, {len(skipped)} paths skipped; "
           f"{report['calls']} model calls; model `{report['model']}`. Written by `ctxflow summarize`. "
           "Prose is the model's; the *Defines* lists (names, signatures, docstrings, `path:line`) are read from the "
           "source with `ast` and are exact.", "",
           "## Overview", "", folders.get(root + "/", "") or "(no summary)", "", "## Tree", "", "```"]
    out += tree_lines([f["path"] for f in files], {f["path"]: _short(f["summary"], 90) for f in files}, root)
    out += ["```", ""]
    if skipped:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped_by_reason"].items()))
        out += ["## Skipped", "", f"{len(skipped)} paths ({by}):", ""]
        for s in skipped[:60]:
            out.append(f"- `{_join(root, s['path'])}` — {s['reason']}")
        if len(skipped) > 60:
            out.append(f"- ... and {len(skipped) - 60} more")
        out.append("")
    out += ["## Folders and files", ""]
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        by_dir.setdefault(posixpath.dirname(f["path"]), []).append(f)
    for d in sorted(by_dir):
        label = _join(root, d) + "/" if d else root + "/"
        out += [f"### `{label}`", ""]
        if d:
            out += [folders.get(label, "") or "(no summary)", ""]
        for f in by_dir[d]:
            path = _join(root, f["path"])
            out += [f"#### `{path}` ({f['lines']} lines)", "", f["summary"] or "(no summary)", ""]
            if f.get("module_doc"):
                out += [f"*Docstring:* {f['module_doc']}", ""]
            facts = _facts(f, root)
            if facts:
                out += ["*Defines:*", ""] + facts + [""]
            if f.get("notes"):
                out += ["*Parts:*", ""]
                for n in f["notes"]:
                    name = f" `{n['name']}`" if n.get("name") else ""
                    out.append(f"- `{path}:{n['line']}`{name}: {n['summary']}")
                out.append("")
    return "\n".join(out).rstrip() + "\n"
