"""The outcome network's image inputs and the discrete-time hazard arithmetic; numpy only.

One function, :func:`lesion_patch`, makes the network's inputs for training and for the container alike, from
the ROI of :func:`hecktor.preprocess.roi.extract_roi` and a label image in the same physical frame (the reference
mask at training, the final segmentation on the CT grid in the container):

- the patch is ``patch_size`` voxels of the ROI grid centred on the centroid of all lesion voxels (GTVp and
  GTVn, measured on the label image's own grid), or on the ROI's centre when there is no lesion (seed 000);
- CT is clipped to ``ct_window_hu`` and scaled to [0, 1], PET stays in SUV; outside the ROI the patch holds air
  (the window's lower bound, 0 after scaling) and SUV 0;
- the masks are the label image brought onto the patch's voxels by
  :func:`hecktor.preprocess.roi.resample_labels_to_grid` (nnU-Net's per-label linear interpolation), one-hot GTVp
  and GTVn. That function is what ``extract_roi(case, config, labels=...)`` uses on the whole ROI, and it is
  voxel-wise, so the patch's masks equal the same crop of the ROI's labels without resampling the whole ROI.

Risk from the hazard logits ``z`` (K bins): ``h_k = sigmoid(z_k)``, ``S_k = prod_{j<=k} (1 - h_j)``,
``risk = -sum_k S_k`` (seed 000): higher = earlier relapse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import continuous_index_of, continuous_index_to_physical, sub_grid
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Roi
from hecktor.preprocess.roi import resample_labels_to_grid

__all__ = ["OutcomeImageInputs", "hazard_risk", "lesion_centre", "lesion_patch", "survival_curve", "time_bins"]


@dataclass(frozen=True)
class OutcomeImageInputs:
    """``image`` (2, z, y, x) float32: CT scaled to [0, 1], PET in SUV; ``masks`` (2, z, y, x) float32 one-hot
    GTVp, GTVn; ``start_zyx``: the patch's first voxel as an index of the ROI grid (may be negative)."""

    image: np.ndarray
    masks: np.ndarray
    start_zyx: tuple[int, int, int]
    centred_on: str  # "lesions" or "ROI centre (no lesion)"


def lesion_centre(labels: sitk.Image | None, grid: sitk.Image) -> np.ndarray | None:
    """Continuous (z, y, x) index in ``grid`` of the centroid of ``labels``' lesion voxels; ``None`` without any."""
    if labels is None:
        return None
    values = sitk.GetArrayViewFromImage(labels)  # ``labels`` outlives this view
    zyx = np.argwhere(values > 0)
    if zyx.size == 0:
        return None
    physical = continuous_index_to_physical(labels, zyx.mean(axis=0)[::-1])
    return continuous_index_of(grid, physical)[0][::-1]


def _crop(values: np.ndarray, start: np.ndarray, size: Sequence[int], fill: float) -> np.ndarray:
    """``values[start : start + size]`` (z, y, x) with ``fill`` where the window leaves the array."""
    out = np.full(tuple(size), fill, dtype=np.float32)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), values.shape)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
        out[dst] = values[src]
    return out


def lesion_patch(
    roi: Roi, labels: sitk.Image | None, patch_size: Sequence[int], ct_window_hu: tuple[float, float]
) -> OutcomeImageInputs:
    """The network's image inputs for one case; see the module docstring."""
    size = np.asarray(patch_size, dtype=int)
    centre = lesion_centre(labels, roi.grid)
    centred_on = "lesions"
    if centre is None:
        centre = (np.asarray(roi.ct_hu.shape, dtype=np.float64) - 1.0) / 2.0
        centred_on = "ROI centre (no lesion)"
    start = np.round(centre - (size - 1) / 2.0).astype(int)
    low, high = ct_window_hu
    ct = (np.clip(_crop(roi.ct_hu, start, size, low), low, high) - low) / (high - low)
    pet = _crop(roi.pet_suv, start, size, 0.0)
    masks = np.zeros((2, *size), dtype=np.float32)
    if labels is not None:
        grid = sub_grid(roi.grid, start[::-1], (start + size)[::-1])
        on_patch = resample_labels_to_grid(labels, grid)
        masks[0] = on_patch == LABEL_GTVP
        masks[1] = on_patch == LABEL_GTVN
    image = np.stack([ct, pet]).astype(np.float32)
    return OutcomeImageInputs(image, masks, (int(start[0]), int(start[1]), int(start[2])), centred_on)


def time_bins(days: np.ndarray | Sequence[float], cut_points: Sequence[float]) -> np.ndarray:
    """Bin index 0..K-1 of each time: bin k holds ``cut[k-1] <= t < cut[k]`` (first from 0, last unbounded)."""
    return np.searchsorted(np.asarray(cut_points, dtype=np.float64), np.asarray(days, dtype=np.float64), side="right")


def survival_curve(logits: np.ndarray) -> np.ndarray:
    """(B, K) hazard logits -> (B, K) ``S_k = prod_{j<=k} (1 - sigmoid(z_j))`` in float64."""
    z = np.asarray(logits, dtype=np.float64)
    return np.cumprod(1.0 / (1.0 + np.exp(z)), axis=-1)  # 1 - sigmoid(z) = sigmoid(-z)


def hazard_risk(logits: np.ndarray) -> np.ndarray:
    """(B, K) hazard logits -> (B,) risk ``-sum_k S_k`` (higher = earlier relapse)."""
    return -survival_curve(logits).sum(axis=-1)
