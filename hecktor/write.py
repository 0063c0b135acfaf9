"""Write the challenge outputs atomically: every file goes to a temporary name, then is renamed.

Nothing is written until all outputs of the case are computed, so a failure leaves
``/output`` as it was: no partial or corrupt files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

__all__ = ["HPV_PATH", "RFS_PATH", "SEGMENTATION_PATH", "atomic_write", "write_json", "write_label_image"]

SEGMENTATION_PATH = Path("images/tumor-lymph-node-segmentation/output.mha")
RFS_PATH = Path("rfs.json")
HPV_PATH = Path("hpv-status.json")


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``target`` (same suffix), then rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600 files; the platform may read /output as another user.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_label_image(labels: sitk.Image, target: Path) -> None:
    atomic_write(target, lambda tmp: sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(tmp), useCompression=True))


def write_json(value: object, target: Path) -> None:
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(value)))
