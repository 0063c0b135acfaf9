"""Gaussian-weighted sliding-window inference, nnU-Net style.

The image is cut into overlapping patches; each patch goes through the predictor (with optional
mirror test-time augmentation), is turned into probabilities by a softmax over classes, weighted by a
Gaussian importance map and added into ONE (classes, z, y, x) float32 probability map, while the
weights go into ONE (z, y, x) weight map; the result is their ratio. No per-window full-size maps are
ever made. A predictor is any callable mapping (B, C, z, y, x) to (B, classes, z, y, x) (logits),
so tests can use analytic "networks".

Alternatively the whole image is run in one pass (padded to a multiple of ``size_multiple``) when
``whole_roi_if_fits`` is set and the padded image has at most ``whole_roi_max_voxels`` voxels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = [
    "Predictor",
    "WindowSettings",
    "gaussian_importance_map",
    "mirror_combinations",
    "pad_to_shape",
    "predict_mirrored",
    "sliding_window_inference",
    "whole_image_shape",
    "window_slices",
    "window_starts",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]
Slices3 = tuple[slice, slice, slice]

# The 200 x 200 x 310 mm ROI padded to multiples of 32 is 224 x 224 x 320 voxels; it fits.
DEFAULT_WHOLE_ROI_MAX_VOXELS = 224 * 224 * 320


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
        min_weight: floor of the importance map (its maximum is 1) so that no voxel gets weight 0.
        softmax: apply a softmax over classes to each prediction before blending.
    """

    patch_size: tuple[int, int, int]
    overlap: float = 0.5
    batch_size: int = 2
    mirror_axes: tuple[int, ...] = ()
    whole_roi_if_fits: bool = False
    whole_roi_max_voxels: int = DEFAULT_WHOLE_ROI_MAX_VOXELS
    size_multiple: int = 32
    sigma_scale: float = 1.0 / 8.0
    min_weight: float = 1e-4
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
        if not 0.0 < self.min_weight <= 1.0:
            raise ValueError(f"min_weight must be in (0, 1], got {self.min_weight}")


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8.0, min_weight: float = 1e-4
) -> torch.Tensor:
    """Separable Gaussian centred on the patch, sigma = ``sigma_scale`` * patch size per axis.

    Returns a (z, y, x) float32 tensor with maximum 1 (reached at the centre voxel for odd sizes),
    symmetric under flips, clamped from below at ``min_weight`` so no voxel has weight 0.
    """
    profiles = []
    for n in patch_size:
        coords = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        profiles.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    gauss = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    gauss = gauss / gauss.max()
    return gauss.clamp_(min=min_weight).to(torch.float32)


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


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes``, the empty one (no mirroring) first; a pure function of the axes."""
    axes = tuple(axes)
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def predict_mirrored(
    predictor: Predictor, batch: torch.Tensor, mirror_axes: Sequence[int] = (), softmax: bool = True
) -> torch.Tensor:
    """Average of the predictions over all mirrorings of ``batch`` (each mirrored back).

    Args:
        predictor: (B, C, z, y, x) -> (B, K, z, y, x).
        batch: (B, C, z, y, x).
        mirror_axes: spatial axes (0=z, 1=y, 2=x) whose subsets are mirrored.
        softmax: apply a softmax over K to every prediction before averaging (probability space).

    Returns:
        (B, K, z, y, x) float32 on the predictor's output device.
    """
    combos = mirror_combinations(mirror_axes)
    total: torch.Tensor | None = None
    for combo in combos:
        dims = [a + 2 for a in combo]
        out = predictor(batch.flip(dims) if dims else batch).float()
        if out.ndim != 5 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise ValueError(f"predictor returned shape {tuple(out.shape)} for input {tuple(batch.shape)}")
        if softmax:
            out = torch.softmax(out, dim=1)
        if dims:
            out = out.flip(dims)
        total = out if total is None else total.add_(out)
    assert total is not None  # combos always holds the empty mirroring
    return total.div_(len(combos)) if len(combos) > 1 else total


def pad_to_shape(image: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, Slices3]:
    """Pad (C, z, y, x) with zeros, split evenly on both sides, up to at least ``shape`` (z, y, x).

    Returns the padded tensor (the input itself if nothing is needed) and the slices that cut the
    original region back out of it.
    """
    spatial = image.shape[1:]
    before = [max(t - s, 0) // 2 for s, t in zip(spatial, shape, strict=True)]
    after = [max(t - s, 0) - b for s, t, b in zip(spatial, shape, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop  # type: ignore[return-value]
    pads = [p for axis in (2, 1, 0) for p in (before[axis], after[axis])]  # F.pad: last axis first
    return F.pad(image, pads), crop  # type: ignore[return-value]


def whole_image_shape(shape: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """``shape`` (z, y, x) rounded up to a multiple of ``multiple`` per axis."""
    z, y, x = (math.ceil(s / multiple) * multiple for s in shape)
    return (z, y, x)


def _batched(items: Sequence[Slices3], size: int) -> Iterator[Sequence[Slices3]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _whole_image(
    image: torch.Tensor, predictor: Predictor, settings: WindowSettings, device: torch.device
) -> torch.Tensor:
    """One pass over the padded image: (C, z, y, x) -> (K, z, y, x)."""
    padded, crop = pad_to_shape(image, whole_image_shape(image.shape[1:], settings.size_multiple))
    out = predict_mirrored(predictor, padded.to(device)[None], settings.mirror_axes, settings.softmax)[0]
    return out[(slice(None), *crop)]


def _blend_windows(
    image: torch.Tensor,
    predictor: Predictor,
    num_classes: int,
    settings: WindowSettings,
    device: torch.device,
    accumulate_device: torch.device,
) -> torch.Tensor:
    """Tile, predict, weight and accumulate: (C, z, y, x) -> (K, z, y, x) on ``accumulate_device``."""
    padded, crop = pad_to_shape(image, settings.patch_size)
    padded = padded.to(device)
    spatial = tuple(padded.shape[1:])
    gauss = gaussian_importance_map(settings.patch_size, settings.sigma_scale, settings.min_weight)
    gauss = gauss.to(accumulate_device)
    probs = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=accumulate_device)
    weights = torch.zeros(spatial, dtype=torch.float32, device=accumulate_device)
    for chunk in _batched(window_slices(spatial, settings.patch_size, settings.overlap), settings.batch_size):
        batch = torch.stack([padded[(slice(None), *win)] for win in chunk])
        out = predict_mirrored(predictor, batch, settings.mirror_axes, settings.softmax).to(accumulate_device)
        if out.shape[1] != num_classes:
            raise ValueError(f"predictor returned {out.shape[1]} classes, expected {num_classes}")
        for win, pred in zip(chunk, out, strict=True):
            probs[(slice(None), *win)].addcmul_(pred, gauss)
            weights[win].add_(gauss)
    probs.div_(weights)
    return probs[(slice(None), *crop)]


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Predictor,
    num_classes: int,
    settings: WindowSettings,
    device: torch.device | str = "cpu",
    accumulate_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predict a whole image from patches (or in one pass when allowed and small enough).

    Args:
        image: (C, z, y, x) float tensor, already normalised.
        predictor: (B, C, pz, py, px) -> (B, num_classes, pz, py, px) logits (or values if ``softmax`` is off).
        num_classes: K, the predictor's output channels.
        settings: tiling, blending and augmentation settings.
        device: where windows are sent before the predictor sees them.
        accumulate_device: where the (K, z, y, x) sum and the (z, y, x) weight map live; default ``device``.

    Returns:
        (K, z, y, x) float32 tensor on ``accumulate_device`` (on ``device`` in one-pass mode); with
        ``softmax`` each voxel's K values sum to 1.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, z, y, x), got shape {tuple(image.shape)}")
    device = torch.device(device)
    accumulate_device = torch.device(accumulate_device) if accumulate_device is not None else device
    padded_voxels = math.prod(whole_image_shape(image.shape[1:], settings.size_multiple))
    if settings.whole_roi_if_fits and padded_voxels <= settings.whole_roi_max_voxels:
        out = _whole_image(image, predictor, settings, device)
        if out.shape[0] != num_classes:
            raise ValueError(f"predictor returned {out.shape[0]} classes, expected {num_classes}")
        return out
    return _blend_windows(image, predictor, num_classes, settings, device, accumulate_device)
