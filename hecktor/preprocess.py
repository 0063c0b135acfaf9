"""Locate the head-and-neck ROI on the PET, then resample only that ROI of CT and PET to 1 mm.

Following seeds 000/001 (after Myronenko et al., HECKTOR 2022): in the cranial quarter of the
common PET/CT extent, PET is z-scored and thresholded at z > 1; the centroid of the largest
connected component (normally the brain) anchors a 200 x 200 x 310 mm box. Unlike the
organisers' template, nothing outside that box is ever resampled, which is what makes this
stage take about a second instead of tens of seconds.

Fallback (small field of view, or a PET without a brain): when the largest component is
smaller than ``MIN_BRAIN_ML`` or its median SUV is below ``MIN_BRAIN_MEDIAN_SUV`` the box
is centred on the common extent in x and y and its top
is put at the top of the common extent. ``Roi.located_by`` records which rule was used and
the run log says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk

from hecktor.geometry import (
    continuous_index_of,
    direction_matrix,
    make_grid,
    physical_coordinate_field,
    physical_corners,
    resample_to_grid,
    sub_grid,
)
from hecktor.manifest import PreprocessConfig
from hecktor.types import Case, InputError, Roi

__all__ = ["MIN_BRAIN_ML", "BrainLocation", "common_extent", "extract_roi", "locate_brain", "roi_grid"]

log = logging.getLogger(__name__)

MIN_BRAIN_ML = 100.0  # an adult brain is ~1200 mL; the z>1 part of its upper quarter is > 100 mL
MIN_BRAIN_MEDIAN_SUV = 3.0  # grey matter is SUV 6-12; body tissue cut by the slab is ~1-2
MAX_BRAIN_HEIGHT_MM = 100.0  # bound on centroid-to-bottom distance when the brain merges with neighbours
CT_AIR_HU = -1024.0


@dataclass(frozen=True)
class BrainLocation:
    centroid_mm: np.ndarray  # physical (x, y, z)
    bottom_mm: float  # physical z of the lowest brain voxel
    volume_ml: float


def common_extent(ct: sitk.Image, pet: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box (lo, hi) covered by both images; raises if they do not overlap."""
    boxes = [physical_corners(img) for img in (ct, pet)]
    lo = np.maximum(boxes[0].min(axis=0), boxes[1].min(axis=0))
    hi = np.minimum(boxes[0].max(axis=0), boxes[1].max(axis=0))
    if (hi - lo <= 0).any():
        raise InputError("CT and PET do not overlap in physical space (check their origins and directions)")
    return lo, hi


def _centroid_mm(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


def locate_brain(
    pet: sitk.Image, extent: tuple[np.ndarray, np.ndarray], config: PreprocessConfig
) -> BrainLocation | None:
    """Find the brain as the largest z-score > threshold component in the cranial part of the PET."""
    values = sitk.GetArrayViewFromImage(pet)
    lo, hi = extent
    fields = [physical_coordinate_field(pet, a) for a in range(3)]
    inside = np.ones(values.shape, dtype=bool)
    for axis in range(3):
        inside &= (fields[axis] >= lo[axis]) & (fields[axis] <= hi[axis])
    slab = inside & (fields[2] >= hi[2] - config.brain_search_fraction * (hi[2] - lo[2]))
    if slab.sum() < 10:
        return None
    slab_values = values[slab]
    std = float(slab_values.std())
    if std <= 0:
        return None
    threshold = float(slab_values.mean()) + config.brain_zscore * std
    candidate = slab & (values > threshold)
    if not candidate.any():
        return None
    largest = cc3d.largest_k(candidate, k=1, connectivity=26) > 0
    voxel_ml = float(np.prod(pet.GetSpacing())) / 1000.0
    volume_ml = float(largest.sum()) * voxel_ml
    median_suv = float(np.median(values[largest]))
    if volume_ml < MIN_BRAIN_ML or median_suv < MIN_BRAIN_MEDIAN_SUV:
        log.info("largest hot component in the cranial PET: %.1f mL, median SUV %.1f; a brain needs >= %.0f mL and "
                 ">= %.1f SUV", volume_ml, median_suv, MIN_BRAIN_ML, MIN_BRAIN_MEDIAN_SUV)
        return None
    centroid = _centroid_mm(pet, largest)
    # The cranial slab may cut the brain: follow the component through the whole volume.
    whole = cc3d.connected_components(inside & (values > threshold), connectivity=26)
    labels_in_brain = np.unique(whole[largest])
    brain = np.isin(whole, labels_in_brain[labels_in_brain > 0])
    bottom = max(float(fields[2][brain].min()), float(centroid[2]) - MAX_BRAIN_HEIGHT_MM)
    return BrainLocation(centroid_mm=centroid, bottom_mm=bottom, volume_ml=volume_ml)


def _grid_size_along_axes(direction: np.ndarray, roi_size_mm: tuple[float, float, float], spacing: float) -> list[int]:
    """Voxels per grid axis: each grid axis takes the ROI size of the physical axis it runs along."""
    physical_axis = np.abs(direction).argmax(axis=0)
    return [round(roi_size_mm[p] / spacing) for p in physical_axis]


def roi_grid(
    ct: sitk.Image, center_xy: np.ndarray, top_z: float, extent: tuple[np.ndarray, np.ndarray], config: PreprocessConfig
) -> sitk.Image:
    """The 1 mm ROI grid (CT's direction) with its top at ``top_z``, clipped to the common extent."""
    direction = direction_matrix(ct)
    size = _grid_size_along_axes(direction, config.roi_size_mm, config.spacing_mm)
    center = np.array([center_xy[0], center_xy[1], top_z - config.roi_size_mm[2] / 2.0])
    full = make_grid(center, (size[0], size[1], size[2]), config.spacing_mm, direction)
    lo, hi = extent
    box_corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = continuous_index_of(full, box_corners)
    start = np.clip(np.ceil(index.min(axis=0) - 1e-6), 0, np.asarray(size))
    stop = np.clip(np.floor(index.max(axis=0) + 1e-6) + 1, 0, np.asarray(size))
    if (stop - start < 1).any():
        raise InputError("the head-and-neck ROI does not intersect the common PET/CT extent")
    return sub_grid(full, start, stop)


def extract_roi(case: Case, config: PreprocessConfig) -> Roi:
    """Locate the ROI on the PET and resample CT (HU) and PET (SUV) inside it to 1 mm."""
    extent = common_extent(case.ct, case.pet)
    brain = locate_brain(case.pet, extent, config)
    if brain is not None:
        center_xy = brain.centroid_mm[:2]
        top_z = float(brain.centroid_mm[2]) + config.roi_above_brain_mm
        located_by = "pet-brain"
        log.info("ROI anchored on the brain (%.0f mL) at %s mm", brain.volume_ml, np.round(brain.centroid_mm, 1))
    else:
        center_xy = (extent[0][:2] + extent[1][:2]) / 2.0
        top_z = float(extent[1][2])
        located_by = "fallback-extent-centre"
        log.warning(
            "%s: no brain found on the PET (small field of view or brain not imaged); ROI centred on the "
            "common PET/CT extent with its top at the top of the extent",
            case.pet_path,
        )
    grid = roi_grid(case.ct, center_xy, top_z, extent, config)
    ct_roi = resample_to_grid(case.ct, grid, config.interpolator, CT_AIR_HU)
    pet_roi = resample_to_grid(case.pet, grid, config.interpolator, 0.0)
    log.info("ROI grid %s voxels at %.1f mm", grid.GetSize(), config.spacing_mm)
    center = grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in grid.GetSize()])
    return Roi(
        grid=grid,
        ct_hu=sitk.GetArrayFromImage(ct_roi),
        pet_suv=np.maximum(sitk.GetArrayFromImage(pet_roi), 0.0),
        center_mm=tuple(float(c) for c in center),
        located_by=located_by,
        brain_bottom_mm=brain.bottom_mm if brain is not None else None,
    )
