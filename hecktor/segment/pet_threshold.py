"""A weight-free segmentation engine: SUV-based lesion detection inside the ROI.

It is the default until networks trained on HECKTOR are installed. It is a classical
nuclear-medicine rule, not a learned model:

1. candidate voxels have SUV >= ``suv_floor`` (2.5, the usual FDG positivity threshold);
2. candidate components that reach the brain are physiological uptake and are dropped;
3. inside each remaining component, every hot spot whose peak is >= ``min_peak_suv`` is grown
   from its peak over voxels >= max(suv_floor, ``relative_threshold`` x peak) (the 40 %
   SUVmax rule), so a hot node next to a hotter tumour still gets its own threshold; a region
   grown next to (or around) one grown before it is that lesion's shoulder or halo, never a
   lesion of its own, and stays unlabelled;
4. lesions outside [min_volume_ml, max_volume_ml] are dropped (noise, bladder-like blobs);
5. the primary tumour (GTVp) is the lesion with the largest total lesion glycolysis whose
   centre lies within ``midline_band_mm`` of the midline (pharynx and larynx are midline
   organs; the midline is the brain's centroid, see ``hecktor.preprocess.roi``); every other lesion
   is an involved node (GTVn), since nodes sit laterally.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from hecktor.core.geometry import direction_matrix, frame_coordinates_of_indices, voxel_volume_ml
from hecktor.core.manifest import PetThresholdConfig
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Probabilities, Roi

__all__ = ["Lesion", "PetThresholdEngine", "assign_labels", "find_lesions"]

log = logging.getLogger(__name__)

MAX_HOT_SPOTS_PER_COMPONENT = 20
MAX_LESIONS_LOGGED = 20
_NEIGHBOURS_26 = np.ones((3, 3, 3), dtype=bool)

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Lesion:
    """One grown hot spot. Its mask covers only its candidate component's bounding box ``box``
    (ROI (z, y, x) slices), so a PET with thousands of hot spots costs what the hot spots cost."""

    box: Box
    mask: np.ndarray  # bool, shape of the box
    suv_max: float  # peak of the PET resampled to the ROI grid: the engine's, not the measured SUVmax
    volume_ml: float
    tlg: float
    centre_mm: tuple[float, float, float]  # patient-frame coordinates (x: left +, z: superior +)


def _grow_hot_spots(pet: np.ndarray, component: np.ndarray, config: PetThresholdConfig) -> list[np.ndarray]:
    """Regions grown from each hot spot of one candidate component (arrays of ``component``'s shape).

    A later spot whose grown region touches any region grown before it (a lesion, or uptake already
    found to belong to one) is that lesion's shoulder or halo, not a lesion of its own, and is left
    unlabelled. Only lesions used to count as "touched": a shoulder grown from the rim of a hot
    primary then sat between the primary and the warm halo beyond it, so the halo, touching only
    the shoulder, came out as a ring-shaped "node" around the primary (29 mL on STS_002).
    """
    remaining = component.copy()
    regions: list[np.ndarray] = []
    claimed = np.zeros_like(component)  # every region grown so far: lesions and the uptake attached to them
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
        attached = bool(claimed.any()) and bool(
            (ndimage.binary_dilation(region, structure=_NEIGHBOURS_26) & claimed).any())
        claimed |= region
        if not attached:
            regions.append(region)
    return regions


def _frame_coordinates(roi: Roi, box: Box, mask: np.ndarray) -> np.ndarray:
    """Patient-frame coordinates (n, 3) of the voxels of ``mask`` inside ``box``."""
    start = np.array([s.start for s in box])
    return frame_coordinates_of_indices(roi.grid, direction_matrix(roi.grid), np.argwhere(mask) + start)


def find_lesions(roi: Roi, config: PetThresholdConfig) -> list[Lesion]:
    """Hot-spot lesions in the ROI, brain excluded, filtered by volume."""
    pet = roi.pet_suv
    voxel_ml = voxel_volume_ml(roi.grid)
    candidates = cc3d.connected_components(pet >= config.suv_floor, connectivity=26)
    lesions = []
    for label, box in enumerate(cc3d.statistics(candidates)["bounding_boxes"]):
        if label == 0 or box is None:
            continue
        component = candidates[box] == label
        if roi.brain_bottom_mm is not None:
            brain_limit = roi.brain_bottom_mm - config.brain_margin_mm
            if _frame_coordinates(roi, box, component)[:, 2].max() > brain_limit:
                continue
        pet_box = pet[box]
        for region in _grow_hot_spots(pet_box, component, config):
            volume = float(np.count_nonzero(region)) * voxel_ml
            if not config.min_volume_ml <= volume <= config.max_volume_ml:
                continue
            centre = _frame_coordinates(roi, box, region).mean(axis=0)
            values = pet_box[region]
            lesions.append(Lesion(box, region, float(values.max()), volume, float(values.mean()) * volume,
                                  (float(centre[0]), float(centre[1]), float(centre[2]))))
    return lesions


def assign_labels(lesions: list[Lesion], midline_x_mm: float, config: PetThresholdConfig) -> list[int]:
    """GTVp for the most glycolytic lesion within ``midline_band_mm`` of the midline, GTVn for all others."""
    labels = [LABEL_GTVN] * len(lesions)
    midline = [i for i, les in enumerate(lesions) if abs(les.centre_mm[0] - midline_x_mm) <= config.midline_band_mm]
    if midline:
        labels[max(midline, key=lambda i: lesions[i].tlg)] = LABEL_GTVP
    return labels


class PetThresholdEngine:
    """SUV threshold segmentation; needs no weights."""

    name = "pet-threshold"
    trained_on_real_data = False

    def __init__(self, config: PetThresholdConfig) -> None:
        self.config = config

    def segment(self, roi: Roi, deadline: float | None = None) -> Probabilities:
        """One-hot probabilities of the lesions found; fast and fixed in cost, so ``deadline`` is not needed."""
        lesions = find_lesions(roi, self.config)
        labels = assign_labels(lesions, roi.midline_x_mm, self.config)
        label_map = np.zeros(roi.pet_suv.shape, dtype=np.uint8)
        # Nodes first, primary last: where regions touch, the primary tumour wins.
        for lesion, label in sorted(zip(lesions, labels, strict=True), key=lambda pair: pair[1] == LABEL_GTVP):
            label_map[lesion.box][lesion.mask] = label
        _log_lesions(lesions, labels)
        one_hot = np.stack([label_map == c for c in range(3)]).astype(np.float32)
        return Probabilities(grid=roi.grid, values=one_hot, engine=self.name)


def _log_lesions(lesions: list[Lesion], labels: list[int]) -> None:
    by_glycolysis = sorted(zip(lesions, labels, strict=True), key=lambda pair: -pair[0].tlg)
    for lesion, label in by_glycolysis[:MAX_LESIONS_LOGGED]:
        # Not called SUVmax: this peak is read on the 1 mm ROI grid before restore; the SUVmax the
        # measurements report (and the pipeline logs) is read from the final mask on the CT grid.
        log.info(
            "pet-threshold: %s candidate %.1f mL, peak %.1f SUV on the 1 mm ROI grid, at frame %s mm",
            "GTVp" if label == LABEL_GTVP else "GTVn", lesion.volume_ml, lesion.suv_max,
            np.round(lesion.centre_mm, 0),
        )
    if len(lesions) > MAX_LESIONS_LOGGED:
        log.info("pet-threshold: %d more lesions not listed (%d in all)", len(lesions) - MAX_LESIONS_LOGGED,
                 len(lesions))
