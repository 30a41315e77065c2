"""Importing this module registers every built-in component and model type."""
from __future__ import annotations

import importlib

for _mod in (
    "ctxflow.llm.local",
    "ctxflow.llm.embed",
    "ctxflow.llm.fake",
    "ctxflow.llm.http",
    "ctxflow.chunking",
    "ctxflow.memory",
    "ctxflow.select",
    "ctxflow.aggregate",
    "ctxflow.summarize",
):
    importlib.import_module(_mod)
