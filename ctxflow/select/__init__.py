"""Selection: choose which chunks reach the answering model."""
from . import topk  # noqa: F401
