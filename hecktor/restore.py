"""Probabilities on the 1 mm ROI -> post-processed label image on the native CT grid.

Probabilities are resampled linearly onto the CT voxels that the ROI covers and only then
turned into labels (smoother, more faithful edges than nearest-neighbour labels), so
per-class float maps never exist at full CT size. Post-processing follows seed 001:
tumour-first composition, 3-D hole filling, and removal of components smaller than
``min_component_voxels`` per class (counted on the CT grid).
"""

from __future__ import annotations

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hecktor.core.geometry import continuous_index_of, image_on_grid, physical_corners, resample_to_grid, sub_grid
from hecktor.core.manifest import PostprocessConfig
from hecktor.core.types import LABEL_BACKGROUND, LABEL_GTVN, LABEL_GTVP, Probabilities

__all__ = ["compose_labels", "ct_box_covering", "lesion_candidate_box", "postprocess_labels", "restore_to_ct_grid"]

# Order in which classes win ties: the primary tumour first, then nodes, then background.
_TIE_ORDER = (LABEL_GTVP, LABEL_GTVN, LABEL_BACKGROUND)


def ct_box_covering(ct: sitk.Image, grid: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer (start, stop) CT indices (x, y, z) of the voxels inside ``grid``'s extent, or None."""
    index = continuous_index_of(ct, physical_corners(grid))
    size = np.asarray(ct.GetSize())
    start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size)
    stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, size)
    if (stop - start < 1).any():
        return None
    return start, stop


def compose_labels(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over (3, z, y, x) probabilities with ties going to GTVp, then GTVn, then background."""
    reordered = probabilities[list(_TIE_ORDER)]
    return np.asarray(_TIE_ORDER, dtype=np.uint8)[reordered.argmax(axis=0)]


def postprocess_labels(labels: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Hole filling (tumour first) and small-component removal, per class."""
    out = labels.copy()
    if config.fill_holes:
        out[ndimage.binary_fill_holes(out == LABEL_GTVP)] = LABEL_GTVP
        out[ndimage.binary_fill_holes(out == LABEL_GTVN) & (out == LABEL_BACKGROUND)] = LABEL_GTVN
    for label in (LABEL_GTVP, LABEL_GTVN):
        mask = out == label
        if mask.any():
            kept = cc3d.dust(mask, threshold=config.min_component_voxels, connectivity=26)
            out[mask & ~kept] = LABEL_BACKGROUND
    return out


def lesion_candidate_box(background: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(start, stop) ROI indices (x, y, z) outside which no CT voxel can be labelled a lesion.

    A CT voxel becomes a lesion only if an interpolated lesion probability reaches the
    background's, which needs background <= 0.5 at one of its interpolation neighbours: so the
    bounding box of {background <= 0.5}, grown by one voxel, holds every possible lesion voxel.
    Restoring only that box makes this stage cost what the lesions cost, not what the ROI costs.
    """
    zyx = np.argwhere(background <= 0.5)
    if zyx.size == 0:
        return None
    lo = np.maximum(zyx.min(axis=0) - 1, 0)
    hi = np.minimum(zyx.max(axis=0) + 2, background.shape)
    return lo[::-1], hi[::-1]


def restore_to_ct_grid(probabilities: Probabilities, ct: sitk.Image, config: PostprocessConfig) -> sitk.Image:
    """uint8 label image with exactly the CT's size, spacing, origin and direction."""
    full = np.zeros(ct.GetSize()[::-1], dtype=np.uint8)
    candidates = lesion_candidate_box(probabilities.values[LABEL_BACKGROUND])
    if candidates is None:
        return image_on_grid(full, ct)
    (x0, y0, z0), (x1, y1, z1) = candidates
    source = sub_grid(probabilities.grid, candidates[0], candidates[1])
    box = ct_box_covering(ct, source)
    if box is not None:
        start, stop = box
        target = sub_grid(ct, start, stop)
        background_outside = {LABEL_BACKGROUND: 1.0, LABEL_GTVP: 0.0, LABEL_GTVN: 0.0}
        resampled = np.stack([
            sitk.GetArrayFromImage(
                resample_to_grid(image_on_grid(probabilities.values[c, z0:z1, y0:y1, x0:x1], source), target, "linear",
                                 background_outside[c])
            )
            for c in range(3)
        ])
        labels = postprocess_labels(compose_labels(resampled), config)
        full[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = labels
    return image_on_grid(full, ct)
