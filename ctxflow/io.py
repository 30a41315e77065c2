"""Reading documents from disk, with clear errors for empty, binary and non-UTF-8 files.

Text files are read as UTF-8 (or UTF-16 with a byte-order mark). PDF, HTML, EPUB and DOCX files
are converted to text (``ctxflow.formats``); ``Document.meta["format"]`` says which, and offsets
index the converted text (``ctxflow text FILE`` prints it).

Documented fallback: invalid UTF-8 bytes are replaced by U+FFFD and the count is reported
(a warning on stderr in the CLI, ``Document.meta["replaced_bytes"]`` in Python)."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import DocumentError
from .types import Document

STDIN = "-"  # the path that reads a document from standard input (``cat book.txt | ctxflow ask - "Q"``)


def read_document(path: str | Path) -> Document:
    """The document in the file at ``path`` (text, or PDF/HTML/EPUB/DOCX converted to text); ``-``
    reads it from standard input (its id and path are then ``<stdin>``)."""
    if str(path) == STDIN:
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None or sys.stdin.isatty():
            raise DocumentError("'-' reads the document from standard input, but nothing is piped in: "
                                "e.g. cat book.txt | ctxflow ask - \"QUESTION\".")
        return document_from_bytes(stdin.read(), "<stdin>")
    path = Path(path)
    if not path.exists():
        raise DocumentError(f"document not found: {path}")
    if path.is_dir():
        raise DocumentError(f"{path} is a directory; give a text file (or use 'ctxflow index' / 'ctxflow summarize' for folders).")
    try:
        data = path.read_bytes()
    except OSError as exc:  # no permission, a FIFO or device that fails, ...
        raise DocumentError(f"cannot read {path}: {exc.strerror or exc}.") from None
    return document_from_bytes(data, str(path))


def document_from_bytes(data: bytes, name: str) -> Document:
    if not data:
        raise DocumentError(f"{name} is empty: there is nothing to read.")
    if not data.strip():
        raise DocumentError(f"{name} holds only whitespace: there is nothing to read.")
    from .formats import convert, sniff

    fmt = sniff(data, name)
    if fmt != "text":
        try:
            text, meta = convert(data, name, fmt)
        except (DocumentError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a file the converter's library chokes on: this file's error, not the run's
            raise DocumentError(f"{name}: could not read this {fmt.upper()} file ({type(exc).__name__}: {exc}).") from None
        if not text.strip():
            raise DocumentError(f"{name} holds no text after conversion from {fmt.upper()}.")
        return Document(id=name, text=text, meta={"path": name, **meta})
    head = data[:8192]
    if b"\x00" in head and not (head.startswith((b"\xff\xfe", b"\xfe\xff"))):
        raise DocumentError(f"{name} looks binary (it contains NUL bytes); give a text file (UTF-8), or a PDF, HTML, EPUB or DOCX file.")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return Document(id=name, text=data.decode("utf-16"), meta={"path": name, "encoding": "utf-16"})
        except UnicodeDecodeError:
            raise DocumentError(f"{name} has a UTF-16 byte-order mark but does not decode as UTF-16.") from None
    try:
        text = data.decode("utf-8-sig")
        replaced = 0
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")  # -sig: a BOM is dropped here too (offsets stay exact)
        replaced = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    if not text.strip():
        raise DocumentError(f"{name} holds only whitespace: there is nothing to read.")
    meta = {"path": name}
    if replaced:
        meta["replaced_bytes"] = replaced
    return Document(id=name, text=text, meta=meta)


def read_source_text(path: str | Path) -> str:
    """A source file's text exactly as citation offsets count it: UTF-8 with a BOM dropped, line
    endings kept (CRLF stays two characters), invalid bytes replaced by U+FFFD; no conversion."""
    return Path(path).read_bytes().decode("utf-8-sig", errors="replace")
