"""What build of the product produced an output: its version and, in a source checkout, the git commit.

The version has one source, ``hecktor.__version__`` (``pyproject.toml`` repeats it and a test keeps the two
equal), so a source checkout reports it too, not only an installed wheel. The commit is read with ``git`` from
the checkout the package was imported from; an installed package (the image) has none and reports ``None``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import hecktor

__all__ = ["git_commit", "product_version"]

_CHECKOUT = Path(hecktor.__file__).resolve().parents[1]


def product_version() -> str:
    return hecktor.__version__


@functools.cache
def git_commit() -> str | None:
    """``<sha>`` or ``<sha>-dirty`` of the source checkout the package runs from; ``None`` outside one."""
    if not (_CHECKOUT / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(_CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None
