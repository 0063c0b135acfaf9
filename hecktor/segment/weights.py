"""Reading ensemble members' weight files, each checked against the sha256 the manifest records.

A file is read into memory once, hashed, and the same bytes are deserialised by the backend, so what
is run is exactly what was checked (no window between checking and loading). A missing file or a hash
mismatch raises :class:`hecktor.core.manifest.ManifestError` naming the file and both hashes. Torch-free:
the backends (:mod:`hecktor.segment.torch_backend.runner`, :mod:`hecktor.segment.onnx_backend`) deserialise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hecktor.core.manifest import ManifestError

__all__ = ["read_verified"]


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The bytes of ``path`` after checking their sha256 against ``expected_sha256``.

    Raises:
        ManifestError: the file is missing or unreadable, or its hash differs (both hashes are named).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: model weights file cannot be read ({exc.strerror or exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.strip().lower():
        raise ManifestError(
            f"{path}: sha256 mismatch: the manifest expects {expected_sha256}, the file has {actual}; "
            "refusing to load weights that are not the ones the manifest describes"
        )
    return data
