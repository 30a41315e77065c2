"""PDF text with ``pypdf``: pages joined by a blank line, each page's start offset in
``meta["pages"]``; a damaged page is skipped and listed, a file pypdf cannot open is a clear error."""
from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from ..errors import DocumentError


def pdf_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    try:
        import pypdf
        from pypdf.errors import PdfReadError
    except ImportError:  # pragma: no cover - a dependency of ctxflow
        raise DocumentError(f"{name} is a PDF; reading PDFs needs the 'pypdf' package (pip install pypdf).") from None
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd-but-readable files are noise here
    from pypdf.errors import DependencyError, PyPdfError

    unreadable: list[int] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(f"{name} is an encrypted PDF; decrypt it first (e.g. qpdf --decrypt).")
        pages = []
        for i, page in enumerate(reader.pages):
            try:
                pages.append(_pdf_page(page))
            except DependencyError:
                raise
            except _PDF_ERRORS:  # one damaged page: the others are still read
                unreadable.append(i + 1)
                pages.append("")
    except DocumentError:
        raise
    except DependencyError as exc:
        raise DocumentError(f"{name} is an AES-encrypted PDF, which pypdf opens only with the 'cryptography' package "
                            f"(pip install cryptography), or decrypt it first (e.g. qpdf --decrypt) ({exc}).") from None
    except (PdfReadError, PyPdfError, *_PDF_ERRORS) as exc:
        raise DocumentError(f"{name} is not a readable PDF ({type(exc).__name__}: {exc}).") from None
    text, starts = "", []
    for p in pages:
        if text:
            text += "\n\n"
        starts.append(len(text))
        text += p
    if not text.strip():
        raise DocumentError(f"{name} is a PDF with no text layer ({len(pages)} page(s) of images?); "
                            "run OCR on it first (e.g. ocrmypdf) and give the result.")
    meta: dict[str, Any] = {"format": "pdf", "pages": starts, "n_pages": len(pages)}
    if unreadable:
        meta["unreadable_pages"] = unreadable
    return text, meta


_PDF_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, NotImplementedError, RecursionError,
               AssertionError, ZeroDivisionError, OverflowError, zlib.error, struct.error)


def _pdf_page(page: Any) -> str:
    text = page.extract_text() or ""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

