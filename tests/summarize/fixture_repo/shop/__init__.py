"""Tiny shop: a fixture package for ctxflow's summarize and codebase QA tests."""
