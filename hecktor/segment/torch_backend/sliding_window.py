"""Gaussian-weighted sliding-window inference on torch tensors (CPU or CUDA), nnU-Net style.

The tiling, the Gaussian importance map and the mirror combinations come from
:mod:`hecktor.segment.windows`, the numpy path the ONNX Runtime backend uses, so both backends blend
exactly the same windows with exactly the same weights; this module only keeps the tensors (and the
accumulation) on the device. No per-window full-size maps are ever made: ONE (classes, z, y, x)
probability sum and ONE (z, y, x) weight map.

Alternatively the whole image is run in one pass (padded to a multiple of ``size_multiple``) when
``whole_roi_if_fits`` is set and the padded image has at most ``whole_roi_max_voxels`` voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from hecktor.segment import windows
from hecktor.segment.windows import (
    WindowSettings,
    batched,
    mirror_combinations,
    whole_image_shape,
    window_slices,
    window_starts,
)

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


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8.0) -> torch.Tensor:
    """:func:`hecktor.segment.windows.gaussian_importance_map` as a float32 tensor (the same values)."""
    return torch.from_numpy(windows.gaussian_importance_map(patch_size, sigma_scale))


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
    before, after, crop = windows.padding_to_shape(tuple(image.shape[1:]), shape)
    if not any(before) and not any(after):
        return image, crop
    pads = [p for axis in (2, 1, 0) for p in (before[axis], after[axis])]  # F.pad: last axis first
    return F.pad(image, pads), crop


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
    gauss = gaussian_importance_map(settings.patch_size, settings.sigma_scale)
    gauss = gauss.to(accumulate_device)
    probs = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=accumulate_device)
    weights = torch.zeros(spatial, dtype=torch.float32, device=accumulate_device)
    for chunk in batched(window_slices(spatial, settings.patch_size, settings.overlap), settings.batch_size):
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
