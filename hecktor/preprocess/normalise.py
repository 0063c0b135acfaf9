"""Intensity normalisation of the 1 mm ROI for the networks: one implementation for training and inference.

CT follows nnU-Net's CT scheme with the statistics recorded in each member's manifest entry (clip to
the dataset's foreground 0.5-99.5 percentiles, then z-score with its foreground mean and std); PET is
z-scored per case over the ROI's non-zero voxels. Both return new float32 (z, y, x) arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hecktor.core.manifest import CT_NORMALISATION_KEYS

__all__ = ["CT_NORMALISATION_KEYS", "normalise_ct", "normalise_pet"]



def normalise_ct(ct_hu: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """nnU-Net CT normalisation: clip to [lower, upper] HU, then (x - mean) / std. (z, y, x) float32."""
    missing = [k for k in CT_NORMALISATION_KEYS if k not in params]
    if missing:
        raise ValueError(f"ct_normalisation lacks {missing} (needs {list(CT_NORMALISATION_KEYS)})")
    lower, upper, mean, std = (float(params[k]) for k in ("lower", "upper", "mean", "std"))
    if not (std > 0 and lower < upper):
        raise ValueError(f"ct_normalisation must have std > 0 and lower < upper, got {dict(params)}")
    out = np.clip(ct_hu, lower, upper).astype(np.float32, copy=False)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def normalise_pet(pet_suv: np.ndarray) -> np.ndarray:
    """Z-score of the PET with mean and std taken over the ROI's non-zero voxels. (z, y, x) float32.

    Zero voxels (outside the PET field of view) are left out of the statistics but normalised like
    the rest. An all-zero PET gives zeros.
    """
    values = pet_suv[pet_suv != 0]
    if values.size == 0:
        return np.zeros(pet_suv.shape, dtype=np.float32)
    mean = float(values.mean(dtype=np.float64))
    std = max(float(values.std(dtype=np.float64)), 1e-8)
    out = pet_suv.astype(np.float32, copy=True)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out
