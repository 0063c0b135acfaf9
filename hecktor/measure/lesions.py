"""Quantitative PET measurements from the final label image (native CT grid).

SUV statistics sample the PET (already in SUV) at the CT voxel centres of the lesions' bounding
box only, with linear interpolation. This is the product's one definition of SUVmax: the maximum,
over the CT voxels of the final mask, of the PET linearly interpolated at their centres. The mask
is the Task 1 output and lives on the CT grid, SUVmean and TLG come from the same samples, and
training (``training/outcome_data.py``) measures the reference masks with this same function.
Interpolation averages neighbouring PET voxels, so SUVmax can be a little below the brightest PET
voxel a viewer shows. The segmentation engine's own peaks (on the 1 mm ROI grid, before restore)
are logged as such, never as SUVmax.

TLG/NLG = SUVmean x volume (SUV*mL). The node count is the number of 26-connected GTVn
components. Volumes use the true voxel volume (|det(direction)| x spacing product), so sheared
grids measure right too.

Every array here is a copy owned by numpy (``GetArrayFromImage``), never a view of a temporary
SimpleITK image: a view outlives nothing, and reading one after its image is freed returns
whatever the allocator left there (seen as SUVmax 0.0 or 1.5e16 for the same case).
"""

from __future__ import annotations

from dataclasses import replace

import cc3d
import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import resample_to_grid, sub_grid, voxel_volume_ml
from hecktor.core.manifest import RadiomicsConfig
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Measurements
from hecktor.measure.radiomics import radiomics_features

__all__ = ["measure", "with_radiomics"]


def _pet_on_label_box(labels: np.ndarray, label_image: sitk.Image, pet: sitk.Image) -> tuple[np.ndarray, tuple]:
    """PET (SUV) at the CT voxels of the lesions' bounding box, as an owned array, and that box's slices."""
    zyx = np.argwhere(labels > 0)
    lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
    grid = sub_grid(label_image, lo[::-1], hi[::-1])
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return sitk.GetArrayFromImage(resample_to_grid(pet, grid, "linear", 0.0)), box


def measure(
    label_image: sitk.Image, pet_suv: sitk.Image, ct_hu: sitk.Image | None = None,
    radiomics: RadiomicsConfig | None = None,
) -> Measurements:
    """Volumes (mL), SUVmax/SUVmean, TLG, NLG and node count of the label image; with ``radiomics`` (the
    manifest's section) and the CT, also the radiomics features (:func:`with_radiomics`)."""
    measured = _measure_pet(label_image, pet_suv)
    if radiomics is None:
        return measured
    if ct_hu is None:
        raise ValueError("radiomics need the CT image")
    return with_radiomics(measured, label_image, pet_suv, ct_hu, radiomics)


def with_radiomics(
    measured: Measurements, label_image: sitk.Image, pet_suv: sitk.Image, ct_hu: sitk.Image, config: RadiomicsConfig
) -> Measurements:
    """``measured`` with the radiomics features of :func:`hecktor.measure.radiomics.radiomics_features` added."""
    return replace(measured, radiomics=radiomics_features(ct_hu, pet_suv, label_image, config))


def _measure_pet(label_image: sitk.Image, pet_suv: sitk.Image) -> Measurements:
    labels = sitk.GetArrayFromImage(label_image)
    if not labels.any():
        return Measurements(0.0, 0.0, None, None, None, None, 0.0, 0.0, 0)
    voxel_ml = voxel_volume_ml(label_image)
    pet_box, box = _pet_on_label_box(labels, label_image, pet_suv)
    stats: dict[int, tuple[float, float | None, float | None]] = {}
    for label in (LABEL_GTVP, LABEL_GTVN):
        values = pet_box[labels[box] == label]
        stats[label] = (values.size * voxel_ml, float(values.max()), float(values.mean())) if values.size else (
            0.0, None, None)
    node_count = int(cc3d.connected_components(labels[box] == LABEL_GTVN, connectivity=26).max())
    (p_vol, p_max, p_mean), (n_vol, n_max, n_mean) = stats[LABEL_GTVP], stats[LABEL_GTVN]
    return Measurements(
        gtvp_volume_ml=p_vol,
        gtvn_volume_ml=n_vol,
        gtvp_suvmax=p_max,
        gtvp_suvmean=p_mean,
        gtvn_suvmax=n_max,
        gtvn_suvmean=n_mean,
        tlg=p_vol * (p_mean or 0.0),
        nlg=n_vol * (n_mean or 0.0),
        node_count=node_count,
    )
