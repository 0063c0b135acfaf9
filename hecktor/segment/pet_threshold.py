"""A weight-free segmentation engine: SUV-based lesion detection inside the ROI.

It is the default until networks trained on HECKTOR are installed. It is a classical
nuclear-medicine rule, not a learned model:

1. candidate voxels have SUV >= ``suv_floor`` (2.5, the usual FDG positivity threshold);
2. candidate components that reach the brain are physiological uptake and are dropped;
3. inside each remaining component, every hot spot whose peak is >= ``min_peak_suv`` is grown
   from its peak over voxels >= max(suv_floor, ``relative_threshold`` x peak) (the 40 %
   SUVmax rule), so a hot node next to a hotter tumour still gets its own threshold;
4. lesions outside [min_volume_ml, max_volume_ml] are dropped (noise, bladder-like blobs);
5. the primary tumour (GTVp) is the lesion with the largest total lesion glycolysis whose
   centre lies within ``midline_band_mm`` of the midline (pharynx and larynx are midline
   organs); every other lesion is an involved node (GTVn), since nodes sit laterally.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from hecktor.geometry import physical_coordinate_field
from hecktor.manifest import PetThresholdConfig, PreprocessConfig
from hecktor.types import LABEL_GTVN, LABEL_GTVP, Probabilities, Roi

__all__ = ["Lesion", "PetThresholdEngine", "assign_labels", "find_lesions"]

log = logging.getLogger(__name__)

MAX_HOT_SPOTS_PER_COMPONENT = 20


@dataclass(frozen=True)
class Lesion:
    mask: np.ndarray  # bool, ROI shape
    suv_max: float
    volume_ml: float
    tlg: float
    centre_mm: tuple[float, float, float]


def _grow_hot_spots(pet: np.ndarray, component: np.ndarray, config: PetThresholdConfig) -> list[np.ndarray]:
    """Regions grown from each hot spot of one candidate component (arrays of ``component``'s shape).

    A later spot whose grown region touches an earlier one is the earlier spot's shoulder
    (the voxels between the floor and 40 % of its peak), not a lesion of its own.
    """
    remaining = component.copy()
    regions: list[np.ndarray] = []
    taken_margin = np.zeros_like(component)
    for _ in range(MAX_HOT_SPOTS_PER_COMPONENT):
        values = np.where(remaining, pet, 0.0)
        peak_index = np.unravel_index(int(values.argmax()), values.shape)
        peak = float(values[peak_index])
        if peak < config.min_peak_suv:
            break
        above = remaining & (pet >= max(config.suv_floor, config.relative_threshold * peak))
        labelled = cc3d.connected_components(above, connectivity=26)
        region = labelled == labelled[peak_index]
        remaining &= ~region
        if not (region & taken_margin).any():
            regions.append(region)
            taken_margin |= ndimage.binary_dilation(region, structure=np.ones((3, 3, 3), dtype=bool))
    return regions


def find_lesions(roi: Roi, config: PetThresholdConfig) -> list[Lesion]:
    """Hot-spot lesions in the ROI, brain excluded, filtered by volume."""
    pet = roi.pet_suv
    voxel_ml = float(np.prod(roi.grid.GetSpacing())) / 1000.0
    candidates = cc3d.connected_components(pet >= config.suv_floor, connectivity=26)
    z_mm = physical_coordinate_field(roi.grid, 2)
    lesions = []
    for label, box in enumerate(cc3d.statistics(candidates)["bounding_boxes"]):
        if label == 0 or box is None:
            continue
        component = candidates[box] == label
        if roi.brain_bottom_mm is not None:
            brain_limit = roi.brain_bottom_mm - config.brain_margin_mm
            if (z_mm[box][component] > brain_limit).any():
                continue
        for region in _grow_hot_spots(pet[box], component, config):
            volume = float(region.sum()) * voxel_ml
            if not config.min_volume_ml <= volume <= config.max_volume_ml:
                continue
            mask = np.zeros(pet.shape, dtype=bool)
            mask[box] = region
            centre_zyx = np.argwhere(mask).mean(axis=0)
            centre = roi.grid.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist())
            values = pet[mask]
            lesions.append(Lesion(mask, float(values.max()), volume, float(values.mean()) * volume, tuple(centre)))
    return lesions


def assign_labels(lesions: list[Lesion], midline_x_mm: float, config: PetThresholdConfig) -> list[int]:
    """GTVp for the most glycolytic midline lesion, GTVn for all others."""
    labels = [LABEL_GTVN] * len(lesions)
    midline = [i for i, les in enumerate(lesions) if abs(les.centre_mm[0] - midline_x_mm) <= config.midline_band_mm]
    if midline:
        labels[max(midline, key=lambda i: lesions[i].tlg)] = LABEL_GTVP
    return labels


class PetThresholdEngine:
    """SUV threshold segmentation; needs no weights."""

    name = "pet-threshold"
    trained_on_real_data = False

    def __init__(self, config: PetThresholdConfig, preprocess: PreprocessConfig) -> None:
        self.config = config
        self.preprocess = preprocess

    def segment(self, roi: Roi) -> Probabilities:
        lesions = find_lesions(roi, self.config)
        labels = assign_labels(lesions, roi.center_mm[0], self.config)
        label_map = np.zeros(roi.pet_suv.shape, dtype=np.uint8)
        # Nodes first, primary last: where regions touch, the primary tumour wins.
        for lesion, label in sorted(zip(lesions, labels, strict=True), key=lambda pair: pair[1] == LABEL_GTVP):
            label_map[lesion.mask] = label
        for lesion, label in zip(lesions, labels, strict=True):
            log.info(
                "pet-threshold: %s lesion %.1f mL, SUVmax %.1f at %s mm",
                "GTVp" if label == LABEL_GTVP else "GTVn", lesion.volume_ml, lesion.suv_max,
                np.round(lesion.centre_mm, 0),
            )
        one_hot = np.stack([label_map == c for c in range(3)]).astype(np.float32)
        return Probabilities(grid=roi.grid, values=one_hot, engine=self.name)
