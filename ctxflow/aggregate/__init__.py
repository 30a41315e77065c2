"""Aggregation: turn selected chunks into an answer.

Importing this package registers ``aggregate.stuff``, ``aggregate.map_reduce``,
``aggregate.refine``, ``aggregate.pcw`` and ``aggregate.nbce`` (see ``docs/aggregation.md``)."""
from . import map_reduce, nbce, pcw, refine, stuff  # noqa: F401
