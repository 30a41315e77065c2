"""EPUB: the package's spine documents in reading order, each read as HTML; DRM-encrypted parts refused."""
from __future__ import annotations

import io
import posixpath
import zipfile
import zlib
from typing import Any
from urllib.parse import unquote
from xml.etree import ElementTree as ET

from ..errors import DocumentError
from .archive import read_member
from .markup import decode_markup, html_text

_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf",
       "dc": "http://purl.org/dc/elements/1.1/"}


#: EPUB "encryption" that is only font obfuscation (the text is readable); anything else is DRM
_FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")


def epub_text(data: bytes, name: str) -> tuple[str, dict[str, Any]]:
    """The spine's documents in reading order, each converted as HTML; ``meta["sections"]`` holds
    each one's start offset and title (its first heading, else its ``<title>``, else its file name).
    Spine items the package lists but does not hold are named in ``meta["missing"]``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = set(z.namelist())
            root = ET.fromstring(read_member(z, "META-INF/container.xml", name))
            rf = root.find(".//c:rootfile", _NS)
            if rf is None or not rf.get("full-path"):
                raise DocumentError(f"{name}: EPUB without a package file (META-INF/container.xml names none).")
            opf_path = rf.get("full-path")
            opf = ET.fromstring(read_member(z, opf_path, name))
            base = posixpath.dirname(opf_path)
            locked = _drm_locked(z, name) if "META-INF/encryption.xml" in names else set()
            items = {i.get("id"): i.get("href") for i in opf.iterfind(".//opf:manifest/opf:item", _NS)}
            spine = [r.get("idref") for r in opf.iterfind(".//opf:spine/opf:itemref", _NS)
                     if r.get("linear", "yes") != "no"]
            title_el = opf.find(".//dc:title", _NS)
            sections, missing, replaced = [], [], 0
            text = ""
            for idref in spine:
                href = items.get(idref)
                if not href:
                    missing.append(str(idref))
                    continue
                path = posixpath.normpath(posixpath.join(base, unquote(href.split("#")[0])))
                if path in locked:
                    raise DocumentError(f"{name} is a DRM-protected EPUB ({path} is encrypted); ctxflow reads only "
                                        "EPUBs without DRM.")
                if path not in names:
                    missing.append(path)
                    continue
                markup, bad = decode_markup(read_member(z, path, name))
                replaced += bad
                body, meta = html_text(markup)
                if not body.strip():
                    continue
                if text:
                    text += "\n\n"
                title = meta.get("first_heading") or meta.get("title") or posixpath.basename(path)
                sections.append({"start": len(text), "title": title})
                text += body
    except DocumentError:
        raise
    except (KeyError, ET.ParseError, zipfile.BadZipFile, OSError, RuntimeError, EOFError, zlib.error) as exc:
        raise DocumentError(f"{name} is not a readable EPUB ({type(exc).__name__}: {exc}).") from None
    if not text.strip():
        raise DocumentError(f"{name} is an EPUB with no text in its reading order (spine)"
                            + (f"; it lists parts it does not hold: {', '.join(missing[:5])}." if missing else "."))
    meta = {"format": "epub", "sections": sections}
    if missing:
        meta["missing"] = missing
    if replaced:
        meta["replaced_bytes"] = replaced
    if title_el is not None and (title_el.text or "").strip():
        meta["title"] = title_el.text.strip()
    return text, meta


def _drm_locked(z: zipfile.ZipFile, name: str) -> set[str]:
    """Members that META-INF/encryption.xml says are encrypted with something other than font obfuscation."""
    enc = ET.fromstring(read_member(z, "META-INF/encryption.xml", name))
    out = set()
    for ed in enc.iter("{http://www.w3.org/2001/04/xmlenc#}EncryptedData"):
        method = ed.find("{http://www.w3.org/2001/04/xmlenc#}EncryptionMethod")
        algo = method.get("Algorithm", "") if method is not None else ""
        ref = ed.find(".//{http://www.w3.org/2001/04/xmlenc#}CipherReference")
        if ref is not None and ref.get("URI") and algo not in _FONT_OBFUSCATION:
            out.add(posixpath.normpath(unquote(ref.get("URI"))))
    return out

