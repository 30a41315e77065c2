"""Selection: choose which chunks reach the answering model (top-k with MMR, Map-Rerank, CogLTX MemRecall)."""
from . import map_rerank, memrecall, merge, topk  # noqa: F401
