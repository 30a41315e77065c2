"""Summarizing books and codebases, and answering questions about codebases.

Importing this package registers ``summarize.book``, ``summarize.code``, ``code.read`` and
``code.answer``; ``ctxflow summarize PATH`` is in :mod:`ctxflow.summarize.cli`.
"""
from __future__ import annotations

from .book import BookSummary
from .code import CodeSummary
from .qa import CodeAnswer, CodeRead
from .walk import walk_codebase

__all__ = ["BookSummary", "CodeAnswer", "CodeRead", "CodeSummary", "walk_codebase"]
