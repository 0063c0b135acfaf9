"""Gaussian-weighted sliding-window inference, nnU-Net style, in numpy (no torch).

The tiling (where windows go), the Gaussian importance map and the mirror combinations are defined
here once; the torch path (:mod:`hecktor.segment.torch_backend.sliding_window`) reuses them, so both backends blend
exactly the same windows with exactly the same weights.

The image is cut into overlapping patches; each patch goes through the predictor (with optional
mirror test-time augmentation), is turned into probabilities by a softmax over classes, weighted by
the Gaussian and added into ONE (classes, z, y, x) float32 probability map, while the weights go into
ONE (z, y, x) weight map; the result is their ratio. A predictor is any callable mapping a
(B, C, z, y, x) float32 array to (B, classes, z, y, x) logits, so tests can use analytic "networks"
and the ONNX Runtime backend needs nothing but numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_WHOLE_ROI_MAX_VOXELS",
    "WHOLE_ROI_MULTIPLE",
    "ArrayPredictor",
    "WindowSettings",
    "batched",
    "gaussian_importance_map",
    "mirror_combinations",
    "pad_to_shape",
    "padding_to_shape",
    "predict_mirrored",
    "sliding_window_inference",
    "softmax",
    "whole_image_shape",
    "window_count",
    "window_slices",
    "window_starts",
]

ArrayPredictor = Callable[[np.ndarray], np.ndarray]
Slices3 = tuple[slice, slice, slice]

# The 200 x 200 x 310 mm ROI padded to multiples of 32 is 224 x 224 x 320 voxels; it fits.
DEFAULT_WHOLE_ROI_MAX_VOXELS = 224 * 224 * 320
# One-pass inputs are padded to a multiple of this (and of the network's stride product).
WHOLE_ROI_MULTIPLE = 32


@dataclass(frozen=True)
class WindowSettings:
    """How to tile an image.

    Attributes:
        patch_size: window (z, y, x) in voxels.
        overlap: fraction of a window shared with its neighbour, in [0, 1); nnU-Net uses 0.5.
        batch_size: windows per predictor call.
        mirror_axes: spatial axes (0=z, 1=y, 2=x) to mirror for test-time augmentation; every subset is run.
        whole_roi_if_fits: run the whole image in one pass when it is within ``whole_roi_max_voxels``.
        whole_roi_max_voxels: size budget for the one-pass mode (after padding).
        size_multiple: the one-pass input is padded to a multiple of this along every axis.
        sigma_scale: Gaussian sigma as a fraction of the patch size (nnU-Net: 1/8).
        softmax: apply a softmax over classes to each prediction before blending. The ensemble engine
            blends logits (off), as nnU-Net does; on is for callers that want blended probabilities.
    """

    patch_size: tuple[int, int, int]
    overlap: float = 0.5
    batch_size: int = 2
    mirror_axes: tuple[int, ...] = ()
    whole_roi_if_fits: bool = False
    whole_roi_max_voxels: int = DEFAULT_WHOLE_ROI_MAX_VOXELS
    size_multiple: int = 32
    sigma_scale: float = 1.0 / 8.0
    softmax: bool = True

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1 or self.size_multiple < 1:
            raise ValueError("batch_size and size_multiple must be >= 1")
        if len(set(self.mirror_axes)) != len(self.mirror_axes) or not set(self.mirror_axes) <= {0, 1, 2}:
            raise ValueError(f"mirror_axes must be distinct values out of 0, 1, 2, got {self.mirror_axes}")


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8.0) -> np.ndarray:
    """nnU-Net's importance map (``nnunetv2.inference.sliding_window_prediction.compute_gaussian``).

    A unit impulse at voxel ``n // 2`` of each axis (not the geometric centre: nnU-Net's choice, kept so
    that the container blends windows exactly as the predictor that validated the networks), blurred
    with scipy's ``gaussian_filter`` (sigma = ``sigma_scale`` * patch size per axis, kernel truncated at
    4 sigma) and scaled to a maximum of 1; voxels beyond the truncation radius take the smallest
    non-zero weight so that no voxel has weight 0. Computed here in closed form (the filtered impulse
    is the sampled, truncated kernel), so numpy suffices. Returns (z, y, x) float32.
    """
    profiles = []
    for n in patch_size:
        sigma = n * sigma_scale
        offsets = np.arange(n, dtype=np.float64) - n // 2
        profile = np.exp(-0.5 * (offsets / sigma) ** 2)
        profile[np.abs(offsets) > int(4.0 * sigma + 0.5)] = 0.0  # scipy's radius: int(truncate * sigma + 0.5)
        profiles.append(profile)
    gauss = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    gauss /= gauss.max()
    zero = gauss == 0
    if zero.any():
        gauss[zero] = gauss[~zero].min()
    return gauss.astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: first 0, last ``size - patch``, spacing at most ``patch * (1 - overlap)``.

    ``size`` must be >= ``patch`` (pad first).
    """
    if size < patch:
        raise ValueError(f"image size {size} is smaller than the patch {patch}; pad first")
    target_step = max(patch * (1.0 - overlap), 1.0)
    num = math.ceil((size - patch) / target_step) + 1
    if num == 1:
        return [0]
    step = (size - patch) / (num - 1)
    return [round(step * i) for i in range(num)]


def window_slices(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[Slices3]:
    """All windows (z, y, x slices) tiling an image of ``shape`` (each axis >= the patch)."""
    per_axis = [window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    return [
        (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        for z, y, x in itertools.product(*per_axis)
    ]


def window_count(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """How many windows tile an image of ``shape`` (padded to the patch where smaller)."""
    padded = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    return math.prod(len(window_starts(s, p, overlap)) for s, p in zip(padded, patch, strict=True))


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, the empty one (no mirroring) first; a pure function of the axes."""
    axes = tuple(axes)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def whole_image_shape(shape: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """``shape`` (z, y, x) rounded up to a multiple of ``multiple`` per axis."""
    z, y, x = (math.ceil(s / multiple) * multiple for s in shape)
    return (z, y, x)


def batched(items: Sequence[Slices3], size: int) -> Iterator[Sequence[Slices3]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax (float32)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def padding_to_shape(spatial: Sequence[int], shape: Sequence[int]) -> tuple[list[int], list[int], Slices3]:
    """Zeros to add before and after each axis of a (z, y, x) size so it reaches at least ``shape``, split
    evenly on both sides, and the slices that cut the original region back out (shared by both backends)."""
    before = [max(t - s, 0) // 2 for s, t in zip(spatial, shape, strict=True)]
    after = [max(t - s, 0) - b for s, t, b in zip(spatial, shape, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    return before, after, crop  # type: ignore[return-value]


def pad_to_shape(image: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, Slices3]:
    """Pad (C, z, y, x) with zeros up to at least ``shape`` (z, y, x); see :func:`padding_to_shape`.

    Returns the padded array (the input itself if nothing is needed) and the slices that cut the
    original region back out of it.
    """
    before, after, crop = padding_to_shape(image.shape[1:], shape)
    if not any(before) and not any(after):
        return image, crop
    return np.pad(image, [(0, 0), *zip(before, after, strict=True)]), crop


def predict_mirrored(
    predictor: ArrayPredictor, batch: np.ndarray, mirror_axes: Sequence[int] = (), apply_softmax: bool = True
) -> np.ndarray:
    """Average of the predictions over all mirrorings of ``batch`` (each mirrored back): (B, K, z, y, x) float32."""
    combos = mirror_combinations(mirror_axes)
    total: np.ndarray | None = None
    for combo in combos:
        axes = tuple(a + 2 for a in combo)
        source = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
        out = np.asarray(predictor(source), dtype=np.float32)
        if out.ndim != 5 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise ValueError(f"predictor returned shape {out.shape} for input {batch.shape}")
        if apply_softmax:
            out = softmax(out, axis=1)
        if axes:
            out = np.flip(out, axes)
        total = np.array(out, dtype=np.float32) if total is None else np.add(total, out, out=total)
    assert total is not None  # combos always holds the empty mirroring
    if len(combos) > 1:
        total /= np.float32(len(combos))
    return total


def _whole_image(image: np.ndarray, predictor: ArrayPredictor, settings: WindowSettings) -> np.ndarray:
    padded, crop = pad_to_shape(image, whole_image_shape(image.shape[1:], settings.size_multiple))
    out = predict_mirrored(predictor, padded[None], settings.mirror_axes, settings.softmax)[0]
    return np.ascontiguousarray(out[(slice(None), *crop)])


def sliding_window_inference(
    image: np.ndarray, predictor: ArrayPredictor, num_classes: int, settings: WindowSettings
) -> np.ndarray:
    """Predict a whole (C, z, y, x) float32 image from patches (or in one pass when allowed and small enough).

    Returns:
        (K, z, y, x) float32; with ``softmax`` each voxel's K values sum to 1.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, z, y, x), got shape {image.shape}")
    image = np.asarray(image, dtype=np.float32)
    padded_voxels = math.prod(whole_image_shape(image.shape[1:], settings.size_multiple))
    if settings.whole_roi_if_fits and padded_voxels <= settings.whole_roi_max_voxels:
        out = _whole_image(image, predictor, settings)
        if out.shape[0] != num_classes:
            raise ValueError(f"predictor returned {out.shape[0]} classes, expected {num_classes}")
        return out
    padded, crop = pad_to_shape(image, settings.patch_size)
    spatial = padded.shape[1:]
    gauss = gaussian_importance_map(settings.patch_size, settings.sigma_scale)
    probs = np.zeros((num_classes, *spatial), dtype=np.float32)
    weights = np.zeros(spatial, dtype=np.float32)
    for chunk in batched(window_slices(spatial, settings.patch_size, settings.overlap), settings.batch_size):
        batch = np.stack([padded[(slice(None), *win)] for win in chunk])
        out = predict_mirrored(predictor, batch, settings.mirror_axes, settings.softmax)
        if out.shape[1] != num_classes:
            raise ValueError(f"predictor returned {out.shape[1]} classes, expected {num_classes}")
        for win, pred in zip(chunk, out, strict=True):
            pred *= gauss
            probs[(slice(None), *win)] += pred
            weights[win] += gauss
    probs /= weights
    return np.ascontiguousarray(probs[(slice(None), *crop)])
