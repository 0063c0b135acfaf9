"""Reference labels through the inference ROI extraction (what training prepares its data with).

Real masks: the three sarcoma cases of ../shared/data/sts (expert tumour masks on the CT grid, 0.98 x 0.98 x
3.27 mm), resampled onto the 1 mm ROI grid. The lesion volume is checked against the mask's own voxel count times
its voxel volume (an independent computation: numpy on the source grid), within 5 %.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import STS_CASES, require_sts

from hecktor.core.geometry import image_on_grid, make_grid
from hecktor.core.manifest import load_manifest
from hecktor.core.types import Case, ClinicalRecord
from hecktor.io.read import read_image
from hecktor.preprocess.roi import extract_roi, label_volumes_ml, resample_labels_to_grid


def _source_volume_ml(mask: sitk.Image, label: int) -> float:
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    voxel_ml = abs(np.linalg.det(direction)) * float(np.prod(mask.GetSpacing())) / 1000.0
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask) == label)) * voxel_ml


@pytest.mark.parametrize("case_id", STS_CASES)
def test_lesion_volume_is_kept_on_the_roi_grid(case_id: str) -> None:
    sts = require_sts()
    ct, _ = read_image(sts / f"{case_id}_CT_image.nii.gz", "CT")
    pet, _ = read_image(sts / f"{case_id}_PET_image.nii.gz", "PET")
    mask = sitk.ReadImage(str(sts / f"{case_id}_CT_mask.nii.gz"))
    case = Case(case_id, ct, pet, ClinicalRecord(), sts / f"{case_id}_CT_image.nii.gz",
                sts / f"{case_id}_PET_image.nii.gz")
    roi = extract_roi(case, load_manifest().preprocess, labels=mask)
    assert roi.labels is not None and roi.labels.shape == roi.ct_hu.shape and roi.labels.dtype == np.uint8
    assert set(np.unique(roi.labels)) <= {0, 1}
    expected = _source_volume_ml(mask, 1)
    got = label_volumes_ml(roi.labels, roi.grid)[1]
    assert got == pytest.approx(expected, rel=0.05), f"{case_id}: {got:.2f} mL on the ROI vs {expected:.2f} mL"
    # The lesion is where the mask says: its centroid moves by less than a source voxel.
    src = np.argwhere(sitk.GetArrayViewFromImage(mask) == 1).mean(axis=0)[::-1]
    src_mm = np.array(mask.TransformContinuousIndexToPhysicalPoint(src.tolist()))
    dst = np.argwhere(roi.labels == 1).mean(axis=0)[::-1]
    dst_mm = np.array(roi.grid.TransformContinuousIndexToPhysicalPoint(dst.tolist()))
    assert np.linalg.norm(dst_mm - src_mm) < 1.0


def test_two_labels_keep_their_identity_and_volumes() -> None:
    """Hand-checkable SYNTHETIC case: two boxes (labels 1 and 2) on 3 mm slices, onto 1 mm slices.

    x and y voxel centres coincide (1 mm both), so only z is interpolated: a box of slices i0..i1 (centres
    3 i) ends half-way to the next slice, at 3 i0 - 1.5 and 3 i1 + 1.5 mm. The target slices lie at k - 0.75
    mm, none on a boundary, so every box keeps exactly 3 x its slice count of 1 mm slices.
    """
    source_grid = sitk.Image([20, 20, 12], sitk.sitkUInt8)
    source_grid.SetSpacing([1.0, 1.0, 3.0])
    values = np.zeros((12, 20, 20), dtype=np.uint8)
    values[2:6, 4:10, 4:10] = 1  # 4 slices (12 mm) x 6 x 6 mm = 0.432 mL
    values[6:10, 12:16, 12:16] = 2  # 12 x 4 x 4 mm = 0.192 mL
    labels = image_on_grid(values, source_grid)
    target = make_grid(np.array([9.5, 9.5, 16.75]), (20, 20, 36), 1.0, np.eye(3))  # origin (0, 0, -0.75)
    out = resample_labels_to_grid(labels, target)
    volumes = label_volumes_ml(out, target)
    assert volumes[1] == pytest.approx(0.432) and volumes[2] == pytest.approx(0.192)
    z1 = np.flatnonzero((out == 1).any(axis=(1, 2))) - 0.75  # slice positions in mm
    assert (z1.min(), z1.max()) == (5.25, 16.25)  # the first and last 1 mm slices inside [4.5, 16.5]
    assert out[0, 0, 0] == 0 and not ((out == 1) & (out == 2)).any()
