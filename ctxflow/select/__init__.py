"""Selection: choose which chunks reach the answering model (top-k with MMR, Map-Rerank, CogLTX MemRecall)."""
from . import map_rerank, memrecall, topk  # noqa: F401
