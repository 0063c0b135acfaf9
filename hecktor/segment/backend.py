"""What a segmentation backend (torch, ONNX Runtime) hands the ensemble: one loaded member and its runner.

Its own module so that the ensemble and the backends both import it and neither imports the other at
module level (the ensemble picks a backend's loader when it loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hecktor.core.manifest import MemberConfig
from hecktor.segment.windows import WindowSettings

__all__ = ["LoadedMember", "MemberRunner"]


class MemberRunner(Protocol):
    """One loaded network behind a backend: numpy (2, z, y, x) in, (K, z, y, x) blended logits out."""

    device: str  # where it runs, for the log ("cpu", "cuda", "CUDAExecutionProvider", ...)

    def logits(self, image: np.ndarray, settings: WindowSettings) -> np.ndarray: ...

    def seconds_per_window(self, image: np.ndarray, settings: WindowSettings) -> float: ...


@dataclass(frozen=True)
class LoadedMember:
    config: MemberConfig
    runner: MemberRunner
    settings: WindowSettings  # the manifest's tiling for this member
