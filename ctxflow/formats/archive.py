"""Bounded reads of zip members (EPUB and DOCX are zip packages): a member that would unpack to
more than ``MAX_UNZIPPED`` bytes is refused before it is read."""
from __future__ import annotations

import zipfile

from ..errors import DocumentError

MAX_UNZIPPED = 512 * 2**20  # bytes a zip member may unpack to (a "zip bomb" is refused before it is read)


def read_member(z: zipfile.ZipFile, member: str, name: str) -> bytes:
    info = z.getinfo(member)
    if info.file_size > MAX_UNZIPPED:
        raise DocumentError(f"{name}: {member} unpacks to {info.file_size / 2**20:.0f} MB, more than the "
                            f"{MAX_UNZIPPED // 2**20} MB a document part may hold; refused (a damaged file or a zip bomb).")
    return z.read(member)

