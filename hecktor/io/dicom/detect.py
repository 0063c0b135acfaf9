"""Tell DICOM files from other files without pydicom (the platform image has none).

A DICOM file as written to media (PS3.10) starts with a 128-byte preamble and the magic ``DICM``. Files without
it (raw data sets, ACR-NEMA) are not read: a study exported by any PACS or scanner since the 1990s has it, and
guessing at headerless files would mistake arbitrary bytes for images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DICOM_MAGIC_OFFSET", "first_dicom_file", "is_dicom_file", "walk_files"]

DICOM_MAGIC_OFFSET = 128
_MAGIC = b"DICM"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a regular file with the PS3.10 preamble and ``DICM`` magic (reads 132 bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + len(_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == _MAGIC


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` at any depth, in a stable order (sorted names), hidden ones excluded.

    Hidden entries (``.DS_Store``, ``._IM0001`` AppleDouble files, ``.git``) are never DICOM images. Links to
    folders are followed (a study assembled from linked series folders), each folder once: a link cycle cannot
    make the walk loop.
    """
    seen: set[tuple[int, int]] = set()
    pending = [Path(root)]
    while pending:
        folder = pending.pop()
        try:
            identity = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished: nothing in it can be read either
        if (identity.st_dev, identity.st_ino) in seen:
            continue
        seen.add((identity.st_dev, identity.st_ino))
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif entry.is_file():
                    yield Path(entry.path)
            except OSError:
                continue
        pending.extend(reversed(subfolders))  # popped in name order


def first_dicom_file(root: Path) -> Path | None:
    """The first DICOM file under ``root`` (any depth), or None; stops at the first one found."""
    return next((path for path in walk_files(root) if is_dicom_file(path)), None)
