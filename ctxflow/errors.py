"""Error hierarchy. Every user mistake is a :class:`UserError`: the CLI prints its message and
exits with status 2, never a traceback. Messages say what was found and what would be valid."""
from __future__ import annotations


class CtxflowError(Exception):
    """Base of all ctxflow errors."""


class UserError(CtxflowError):
    """Bad input from the user (a file, a parameter, a document). Exit status 2 in the CLI."""

    exit_code = 2


class SpecError(UserError):
    """A pipeline file or pipeline definition is wrong. Carries the file, line and column."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, column: int | None = None):
        self.file, self.line, self.column, self.detail = file, line, column, message
        where = ""
        if file:
            where = str(file)
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        super().__init__(where + message)


class ConnectionError_(SpecError):
    """A connection between sockets is invalid (unknown socket, type mismatch, cycle)."""


class ModelNotFoundError(UserError):
    """A model or embedder could not be found on disk."""


class DocumentError(UserError):
    """A document is empty, binary or unreadable."""


class ContextOverflowError(UserError):
    """A prompt is longer than the model's context."""


class StoreError(UserError):
    """A persisted store is missing, incompatible or corrupt."""
