"""The weight-free pet-threshold engine on a SYNTHETIC phantom and on real sarcoma PET, with the SHIPPED parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import STS_CASES, require_sts

from hecktor.core.manifest import Manifest
from hecktor.core.metrics import dice
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP, Case, ClinicalRecord
from hecktor.io.phantom import GTVN_SPHERES, GTVP_SPHERE
from hecktor.io.read import read_image
from hecktor.preprocess.roi import extract_roi
from hecktor.restore import restore_to_ct_grid
from hecktor.segment.pet_threshold import Lesion, PetThresholdEngine, assign_labels, find_lesions

MIN_STS_DICE = 0.35  # measured 0.48 / 0.46 / 0.66 (PET grid) with the shipped parameters


def _segment(manifest: Manifest, ct: sitk.Image, pet: sitk.Image) -> sitk.Image:
    case = Case("t", sitk.Cast(ct, sitk.sitkFloat32), pet, ClinicalRecord(), Path("ct"), Path("pet"))
    roi = extract_roi(case, manifest.preprocess)
    probabilities = PetThresholdEngine(manifest.pet_threshold).segment(roi)
    return restore_to_ct_grid(probabilities, ct, manifest.postprocess)


def _label_at(labels: sitk.Image, point_mm) -> int:
    return int(sitk.GetArrayViewFromImage(labels)[labels.TransformPhysicalPointToIndex(point_mm)[::-1]])


def test_phantom_tumour_and_nodes_are_found_and_labelled(shipped_manifest, phantom):
    labels = sitk.GetArrayFromImage(_segment(shipped_manifest, phantom.ct, phantom.pet))
    reference = sitk.GetArrayFromImage(phantom.labels)
    assert dice(labels, reference, LABEL_GTVP) > 0.8
    assert dice(labels, reference, LABEL_GTVN) > 0.7
    # The brain (SUV 8, far larger than any lesion) must not be segmented.
    brain_slices = labels[-20:]
    assert not brain_slices.any()


def test_midline_is_the_head_not_the_clipped_roi(shipped_manifest, phantom):
    """A CT cut 100 mm short on the patient's right moves the ROI's centre 40 mm left, onto the left node.

    The midline must stay at the brain (x = 0): GTVp stays the tumour at x = 8 mm and the node at
    x = 44 mm stays GTVn (with the ROI centre as midline they swapped).
    """
    cut_voxels = round(100.0 / phantom.ct.GetSpacing()[0])
    clipped = phantom.ct[cut_voxels:, :, :]
    labels = _segment(shipped_manifest, clipped, phantom.pet)
    assert _label_at(labels, GTVP_SPHERE[0]) == LABEL_GTVP
    left_node = max(GTVN_SPHERES, key=lambda sphere: sphere[0][0])[0]
    assert _label_at(labels, left_node) == LABEL_GTVN


def test_midline_falls_back_to_the_body_without_a_brain(shipped_manifest, headless_phantom):
    case = Case("t", sitk.Cast(headless_phantom.ct, sitk.sitkFloat32), headless_phantom.pet, ClinicalRecord(),
                Path("ct"), Path("pet"))
    roi = extract_roi(case, shipped_manifest.preprocess)
    assert roi.located_by == "fallback-extent-centre"
    assert roi.midline_from == "body centre on the CT"
    assert abs(roi.midline_x_mm) < 2.0  # the phantom's neck is centred on x = 0


def test_midline_lesion_is_primary_lateral_lesions_are_nodes(shipped_manifest):
    empty = np.zeros((1, 1, 1), dtype=bool)
    box = (slice(0, 1),) * 3
    lesions = [
        Lesion(box, empty, 8.0, 3.0, 20.0, (45.0, 0.0, 100.0)),  # lateral, hot
        Lesion(box, empty, 10.0, 10.0, 60.0, (5.0, -10.0, 130.0)),  # midline
        Lesion(box, empty, 6.0, 1.0, 5.0, (-3.0, 0.0, 90.0)),  # midline but less glycolytic
    ]
    config = shipped_manifest.pet_threshold
    assert config.midline_band_mm < 45.0  # the lateral lesion is outside the shipped band
    assert assign_labels(lesions, midline_x_mm=0.0, config=config) == [LABEL_GTVN, LABEL_GTVP, LABEL_GTVN]


def test_no_hot_spot_gives_empty_mask(shipped_manifest, phantom):
    cold = sitk.Clamp(sitk.Image(phantom.pet), upperBound=2.0)  # everything below the SUV 2.5 floor
    assert not sitk.GetArrayFromImage(_segment(shipped_manifest, phantom.ct, cold)).any()


def test_many_hot_spots_each_become_a_lesion_with_a_local_mask(shipped_manifest, phantom):
    """A lattice of 60 separate hot spots: every one is found, and no lesion carries a whole-ROI mask."""
    case = Case("t", sitk.Cast(phantom.ct, sitk.sitkFloat32), phantom.pet, ClinicalRecord(), Path("ct"), Path("pet"))
    roi = extract_roi(case, shipped_manifest.preprocess)
    pet = np.zeros_like(roi.pet_suv)
    starts = [(z, y, x) for z in range(20, 200, 60) for y in range(20, 180, 40) for x in range(20, 180, 40)][:60]
    for z, y, x in starts:
        pet[z:z + 10, y:y + 10, x:x + 10] = 6.0  # 1 mL cubes, 30 mm apart
    lesions = find_lesions(replace(roi, pet_suv=pet, brain_bottom_mm=None),
                           shipped_manifest.pet_threshold)
    assert len(lesions) == len(starts)
    assert all(lesion.mask.shape == (10, 10, 10) for lesion in lesions)
    assert sum(lesion.volume_ml for lesion in lesions) == pytest.approx(len(starts) * 1.0)


@pytest.mark.parametrize("case", STS_CASES)
def test_real_sarcoma_lesion_overlaps_expert_pet_mask(shipped_manifest, case):
    sts = require_sts()
    ct, _ = read_image(sts / f"{case}_CT_image.nii.gz", "CT")
    pet, _ = read_image(sts / f"{case}_PET_image.nii.gz", "PET")
    labels = _segment(shipped_manifest, ct, pet)
    expert = sitk.ReadImage(str(sts / f"{case}_PET_mask.nii.gz"))
    on_pet = sitk.GetArrayFromImage(sitk.Resample(labels, expert, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    lesion = (on_pet > 0).astype(np.uint8)
    score = dice(lesion, (sitk.GetArrayFromImage(expert) > 0).astype(np.uint8), 1)
    print(f"{case}: pet-threshold Dice vs expert PET mask = {score:.3f}")
    assert score > MIN_STS_DICE
