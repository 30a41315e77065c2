"""Aggregation: turn selected chunks into an answer."""
from . import stuff  # noqa: F401
