"""External memory banks: add chunks once, search many times."""
from . import cosine  # noqa: F401
