"""What a segmentation backend (torch, ONNX Runtime, OpenVINO) hands the ensemble: one loaded member and its runner.

Its own module so that the ensemble and the backends both import it and neither imports the other at
module level (the ensemble picks a backend's loader when it loads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from hecktor.core.manifest import CHALLENGE_LABELS, EnsembleConfig, MemberConfig
from hecktor.segment.windows import WHOLE_ROI_MULTIPLE, WindowSettings, pad_to_shape, sliding_window_inference

__all__ = ["ArrayRunner", "LoadedMember", "MemberRunner", "member_window_settings"]


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


class ArrayRunner:
    """A runner whose network is a numpy callable, (B, C, z, y, x) float32 -> (B, K, z, y, x) float32 logits
    (ONNX Runtime, OpenVINO): subclasses give ``__call__``; tiling, blending and timing are the same for all."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def logits(self, image: np.ndarray, settings: WindowSettings) -> np.ndarray:
        """(2, z, y, x) -> (K, z, y, x) float32 Gaussian-blended logits."""
        return sliding_window_inference(image, self, len(CHALLENGE_LABELS), replace(settings, softmax=False))

    def seconds_per_window(self, image: np.ndarray, settings: WindowSettings) -> float:
        """Seconds for one window, timed on a second call (the first allocates, compiles kernels for the shape
        and, on CUDA, warms up)."""
        window, _ = pad_to_shape(np.asarray(image, dtype=np.float32), settings.patch_size)
        z, y, x = settings.patch_size
        batch = np.ascontiguousarray(window[None, :, :z, :y, :x])
        elapsed = 0.0
        for _ in range(2):
            start = time.perf_counter()
            self(batch)
            elapsed = time.perf_counter() - start
        return elapsed


def member_window_settings(config: EnsembleConfig, member: MemberConfig, whole_roi_if_fits: bool | None = None,
                           size_multiple: int = WHOLE_ROI_MULTIPLE) -> WindowSettings:
    """The manifest's tiling for ``member``; ``whole_roi_if_fits`` (default: the manifest's) is off for a model
    fixed to one input size, ``size_multiple`` what the network's strides need of a whole-ROI input."""
    return WindowSettings(
        patch_size=tuple(member.patch_size),  # type: ignore[arg-type]
        overlap=config.overlap,
        batch_size=config.batch_size,
        mirror_axes=tuple(config.mirror_axes),
        whole_roi_if_fits=config.whole_roi_if_fits if whole_roi_if_fits is None else whole_roi_if_fits,
        size_multiple=size_multiple,
    )
