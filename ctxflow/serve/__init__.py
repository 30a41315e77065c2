"""``ctxflow serve``: any local model behind an OpenAI-compatible HTTP API (see :mod:`.server`)."""
from .server import ModelServer, make_server

__all__ = ["ModelServer", "make_server"]
