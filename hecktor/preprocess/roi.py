"""Locate the head-and-neck ROI on the PET, then resample only that ROI of CT and PET to 1 mm.

Following seeds 000/001 (after Myronenko et al., HECKTOR 2022): in the cranial quarter of the
common PET/CT extent, PET is z-scored and thresholded at z > 1; the centroid of the largest
connected component (normally the brain) anchors a 200 x 200 x 310 mm box. Unlike the
organisers' template, nothing outside that box is ever resampled, which is what makes this
stage take about a second instead of tens of seconds.

Everything anatomical is measured in the patient frame (:func:`hecktor.core.geometry.patient_frame`):
"cranial" is +z of the frame and the ROI grid's axes are the frame's axes, so a case stored with
reversed axes, or rotated as a whole, gives the same ROI. The brain search only ever touches the
voxels of the cranial slab (and the 100 mm below the brain's centroid), never coordinate arrays of
the whole PET, so a 512 x 512 x 600 whole-body PET costs what its head costs.

Fallback (small field of view, or a PET without a brain): when the largest component is
smaller than ``MIN_BRAIN_ML`` or its median SUV is below ``MIN_BRAIN_MEDIAN_SUV`` the box
is centred on the common extent in x and y and its top is put at the top of the common
extent. ``Roi.located_by`` records which rule was used and the run log says so.

The midline (used to tell the primary tumour from nodes) is the brain's centroid when the brain
was found, else the centre of the body on the ROI's CT, else the ROI's centre: never the centre of
a box that the field of view may have clipped on one side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import (
    frame_bounds,
    frame_coordinates_of_indices,
    image_on_grid,
    index_box_in_frame_box,
    make_grid,
    patient_frame,
    resample_to_grid,
    sub_grid,
    voxel_volume_ml,
    voxels_in_frame_box,
)
from hecktor.core.manifest import PreprocessConfig
from hecktor.core.types import Case, InputError, Roi

__all__ = [
    "MIN_BRAIN_ML",
    "BrainLocation",
    "RoiPlacement",
    "common_extent",
    "extract_roi",
    "label_volumes_ml",
    "locate_brain",
    "place_roi",
    "resample_labels_to_grid",
    "roi_grid",
]

log = logging.getLogger(__name__)

MIN_BRAIN_ML = 100.0  # an adult brain is ~1200 mL; the z>1 part of its upper quarter is > 100 mL
MIN_BRAIN_MEDIAN_SUV = 3.0  # grey matter is SUV 6-12; body tissue cut by the slab is ~1-2
MAX_BRAIN_HEIGHT_MM = 100.0  # bound on centroid-to-bottom distance when the brain merges with neighbours
CT_AIR_HU = -1024.0
BODY_HU = -500.0  # CT voxels above this are body (soft tissue, bone), below it air
MIN_BODY_FRACTION = 0.01  # fewer body voxels than this in the ROI: no usable body midline


@dataclass(frozen=True)
class BrainLocation:
    """The brain on the PET, in patient-frame coordinates (mm)."""

    centroid: np.ndarray  # (x, y, z)
    bottom: float  # z of the lowest brain voxel (at most MAX_BRAIN_HEIGHT_MM below the centroid)
    volume_ml: float


def common_extent(ct: sitk.Image, pet: sitk.Image, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame-aligned box (lo, hi) covered by both images, or ``None`` when they do not overlap."""
    (ct_lo, ct_hi), (pet_lo, pet_hi) = frame_bounds(ct, frame), frame_bounds(pet, frame)
    lo, hi = np.maximum(ct_lo, pet_lo), np.minimum(ct_hi, pet_hi)
    if (hi - lo <= 0).any():
        return None
    return lo, hi


def _component_voxels(
    values: np.ndarray, mask: np.ndarray | None, threshold: float
) -> np.ndarray:
    """Voxels above ``threshold`` (inside ``mask`` when given)."""
    above = values > threshold
    if mask is not None:
        above &= mask
    return above


def locate_brain(
    pet: sitk.Image, frame: np.ndarray, extent: tuple[np.ndarray, np.ndarray], config: PreprocessConfig
) -> BrainLocation | None:
    """Find the brain as the largest z-score > threshold component in the cranial part of ``extent``.

    ``extent`` is a frame-aligned (lo, hi) box; the cranial slab is its top ``brain_search_fraction``.
    """
    values = sitk.GetArrayViewFromImage(pet)  # read-only view; ``pet`` outlives every use below
    lo, hi = extent
    slab_lo = lo.copy()
    slab_lo[2] = hi[2] - config.brain_search_fraction * (hi[2] - lo[2])
    slab = voxels_in_frame_box(pet, frame, slab_lo, hi)
    if slab is None:
        return None
    slab_slices, slab_mask = slab
    slab_values = values[slab_slices]
    inside = slab_values if slab_mask is None else slab_values[slab_mask]
    if inside.size < 10:
        return None
    std = float(inside.std(dtype=np.float64))
    if std <= 0:
        return None
    threshold = float(inside.mean(dtype=np.float64)) + config.brain_zscore * std
    candidate = _component_voxels(slab_values, slab_mask, threshold)
    if not candidate.any():
        return None
    largest = cc3d.largest_k(candidate, k=1, connectivity=26) > 0
    volume_ml = float(np.count_nonzero(largest)) * voxel_volume_ml(pet)
    median_suv = float(np.median(slab_values[largest]))
    if volume_ml < MIN_BRAIN_ML or median_suv < MIN_BRAIN_MEDIAN_SUV:
        log.info("largest hot component in the cranial PET: %.1f mL, median SUV %.1f; a brain needs >= %.0f mL and "
                 ">= %.1f SUV", volume_ml, median_suv, MIN_BRAIN_ML, MIN_BRAIN_MEDIAN_SUV)
        return None
    slab_start = np.array([s.start for s in slab_slices])
    brain_zyx = np.argwhere(largest) + slab_start
    centroid = frame_coordinates_of_indices(pet, frame, brain_zyx.mean(axis=0, keepdims=True))[0]
    bottom = _brain_bottom(pet, frame, extent, slab_lo[2], centroid, brain_zyx[:1], threshold)
    return BrainLocation(centroid=centroid, bottom=bottom, volume_ml=volume_ml)


def _brain_bottom(
    pet: sitk.Image,
    frame: np.ndarray,
    extent: tuple[np.ndarray, np.ndarray],
    slab_bottom: float,
    centroid: np.ndarray,
    seed_zyx: np.ndarray,
    threshold: float,
) -> float:
    """Frame z of the brain's lowest voxel, following its component below the cranial slab.

    Only the region from ``MAX_BRAIN_HEIGHT_MM`` below the centroid upwards is labelled: the
    result is clamped there anyway, and this keeps memory bounded by the head, not the PET.
    """
    lo, hi = extent
    floor = centroid[2] - MAX_BRAIN_HEIGHT_MM
    region_lo = lo.copy()
    region_lo[2] = max(lo[2], min(slab_bottom, floor))
    region = voxels_in_frame_box(pet, frame, region_lo, hi)
    assert region is not None  # it contains the slab, which holds the brain
    slices, mask = region
    values = sitk.GetArrayViewFromImage(pet)[slices]
    labels = cc3d.connected_components(_component_voxels(values, mask, threshold), connectivity=26)
    start = np.array([s.start for s in slices])
    seed_label = labels[tuple(seed_zyx[0] - start)]
    brain_zyx = np.argwhere(labels == seed_label) + start
    lowest = float(frame_coordinates_of_indices(pet, frame, brain_zyx)[:, 2].min())
    return max(lowest, floor)


def roi_grid(
    frame: np.ndarray,
    center_xy: np.ndarray,
    top_z: float,
    extent: tuple[np.ndarray, np.ndarray],
    config: PreprocessConfig,
) -> sitk.Image | None:
    """The 1 mm ROI grid along the frame's axes, top at frame ``top_z``, clipped to the common extent.

    ``center_xy`` and ``top_z`` are frame coordinates. ``None`` when the box misses the extent.
    """
    size = [round(s / config.spacing_mm) for s in config.roi_size_mm]
    center = np.array([center_xy[0], center_xy[1], top_z - config.roi_size_mm[2] / 2.0])
    full = make_grid(frame @ center, (size[0], size[1], size[2]), config.spacing_mm, frame)
    box = index_box_in_frame_box(full, frame, *extent)
    if box is None:
        return None
    return sub_grid(full, *box)


def _brain_search_box(
    pet: sitk.Image, frame: np.ndarray, extent: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The common extent's z range, but the PET's whole x/y range: the brain is found on the PET, and a CT
    that stops short on one side must not cut it (its centroid is the midline)."""
    pet_lo, pet_hi = frame_bounds(pet, frame)
    return (np.array([pet_lo[0], pet_lo[1], extent[0][2]]), np.array([pet_hi[0], pet_hi[1], extent[1][2]]))


def _body_midline_x(ct_hu: np.ndarray, grid: sitk.Image, frame: np.ndarray) -> float | None:
    """Frame x of the body's centre on the ROI's CT (voxels above ``BODY_HU``), if there is a body."""
    body = ct_hu > BODY_HU
    if np.count_nonzero(body) < MIN_BODY_FRACTION * body.size:
        return None
    mean_x_index = float(np.count_nonzero(body, axis=(0, 1)) @ np.arange(body.shape[2]) / np.count_nonzero(body))
    return float(frame_coordinates_of_indices(grid, frame, np.array([[0.0, 0.0, mean_x_index]]))[0, 0])


def _describe_extent(image: sitk.Image, frame: np.ndarray) -> str:
    lo, hi = frame_bounds(image, frame)
    return " x ".join(f"[{a:.0f}, {b:.0f}]" for a, b in zip(lo, hi, strict=True)) + " mm"


@dataclass(frozen=True)
class RoiPlacement:
    """Where the ROI goes: its 1 mm grid (along the patient frame), the brain found (if any) and the rule used."""

    grid: sitk.Image
    frame: np.ndarray
    brain: BrainLocation | None
    located_by: str


def place_roi(case: Case, config: PreprocessConfig) -> RoiPlacement:
    """Locate the ROI on the PET (no resampling yet); refuses CT and PET that do not overlap."""
    frame = patient_frame(np.asarray(case.ct.GetDirection(), dtype=np.float64).reshape(3, 3))
    extent = common_extent(case.ct, case.pet, frame)
    if extent is None:
        raise InputError(
            f"{case.ct_path} and {case.pet_path}: CT and PET do not overlap in physical space (CT spans "
            f"{_describe_extent(case.ct, frame)}, PET spans {_describe_extent(case.pet, frame)}; check their "
            "origins and directions)"
        )
    brain = locate_brain(case.pet, frame, _brain_search_box(case.pet, frame, extent), config)
    if brain is not None:
        center_xy = brain.centroid[:2]
        top_z = float(brain.centroid[2]) + config.roi_above_brain_mm
        located_by = "pet-brain"
        log.info("ROI anchored on the brain (%.0f mL) at frame %s mm", brain.volume_ml, np.round(brain.centroid, 1))
    else:
        center_xy = (extent[0][:2] + extent[1][:2]) / 2.0
        top_z = float(extent[1][2])
        located_by = "fallback-extent-centre"
        log.warning(
            "%s: no brain found on the PET (small field of view or brain not imaged); ROI centred on the "
            "common PET/CT extent with its top at the top of the extent",
            case.pet_path,
        )
    grid = roi_grid(frame, center_xy, top_z, extent, config)
    if grid is None:
        raise InputError(f"{case.ct_path} and {case.pet_path}: the head-and-neck ROI misses the common PET/CT extent")
    return RoiPlacement(grid=grid, frame=frame, brain=brain, located_by=located_by)


def resample_labels_to_grid(labels: sitk.Image, grid: sitk.Image, num_labels: int = 2) -> np.ndarray:
    """A label image (0 = background, 1..``num_labels``) on ``grid``, as uint8 (z, y, x).

    nnU-Net's way of resampling segmentations: every label's binary mask is resampled with linear
    interpolation and each voxel takes the label of largest interpolated value (background included).
    Unlike nearest neighbour this does not shift boundaries by up to half a source voxel (a 3.3 mm
    slice), so lesion volumes are kept (checked on real masks in ``test/test_preprocess_labels.py``).
    Outside ``labels``' extent is background.
    """
    values = sitk.GetArrayFromImage(labels)
    best: np.ndarray | None = None
    out = np.zeros(tuple(reversed(grid.GetSize())), dtype=np.uint8)
    for label in range(num_labels + 1):
        mask = image_on_grid((values == label).astype(np.float32), labels)
        resampled = sitk.GetArrayFromImage(resample_to_grid(mask, grid, "linear", 1.0 if label == 0 else 0.0))
        if best is None:
            best = resampled
            continue
        wins = resampled > best
        out[wins] = label
        np.maximum(best, resampled, out=best)
    return out


def label_volumes_ml(labels: np.ndarray, grid: sitk.Image, num_labels: int = 2) -> dict[int, float]:
    """Volume (mL) of each label 1..``num_labels`` of a (z, y, x) label array on ``grid`` (any direction)."""
    voxel_ml = voxel_volume_ml(grid)
    counts = np.bincount(labels.ravel(), minlength=num_labels + 1)
    return {label: float(counts[label]) * voxel_ml for label in range(1, num_labels + 1)}


def extract_roi(case: Case, config: PreprocessConfig, labels: sitk.Image | None = None) -> Roi:
    """Locate the ROI on the PET and resample CT (HU) and PET (SUV) inside it to 1 mm.

    ``labels``: an optional reference label image (any grid in the same physical frame, normally the
    CT's), returned on the ROI grid in ``Roi.labels`` by :func:`resample_labels_to_grid`; training
    prepares its data through this same function, so networks see exactly the inference ROI.
    """
    placement = place_roi(case, config)
    grid, frame, brain = placement.grid, placement.frame, placement.brain
    ct_hu = sitk.GetArrayFromImage(resample_to_grid(case.ct, grid, config.interpolator, CT_AIR_HU))
    pet_suv = np.maximum(sitk.GetArrayFromImage(resample_to_grid(case.pet, grid, config.interpolator, 0.0)), 0.0)
    midline_x, midline_from = _midline(brain, ct_hu, grid, frame)
    log.info("ROI grid %s voxels at %.1f mm; midline at frame x = %.1f mm (%s)", grid.GetSize(), config.spacing_mm,
             midline_x, midline_from)
    center = grid.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in grid.GetSize()])
    return Roi(
        grid=grid,
        ct_hu=ct_hu,
        pet_suv=pet_suv,
        center_mm=tuple(float(c) for c in center),
        located_by=placement.located_by,
        midline_x_mm=midline_x,
        midline_from=midline_from,
        brain_bottom_mm=brain.bottom if brain is not None else None,
        labels=resample_labels_to_grid(labels, grid) if labels is not None else None,
    )


def _midline(
    brain: BrainLocation | None, ct_hu: np.ndarray, grid: sitk.Image, frame: np.ndarray
) -> tuple[float, str]:
    if brain is not None:
        return float(brain.centroid[0]), "brain centroid"
    body_x = _body_midline_x(ct_hu, grid, frame)
    if body_x is not None:
        return body_x, "body centre on the CT"
    centre = frame_coordinates_of_indices(grid, frame, (np.array(ct_hu.shape, dtype=float)[None, :] - 1) / 2.0)
    return float(centre[0, 0]), "ROI centre (no brain, no body on the CT)"
