"""ROI location and 1 mm resampling, on SYNTHETIC phantoms and real sarcoma cases, with the SHIPPED parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from case_variants import stored_flipped
from helpers import STS_CASES, require_sts

from hecktor.core.geometry import frame_bounds, patient_frame
from hecktor.core.types import Case, ClinicalRecord, InputError
from hecktor.io.phantom import PhantomGeometry, make_phantom
from hecktor.io.read import read_image
from hecktor.preprocess.roi import common_extent, extract_roi, locate_brain


def _case(ct: sitk.Image, pet: sitk.Image) -> Case:
    return Case("t", sitk.Cast(ct, sitk.sitkFloat32), pet, ClinicalRecord(), Path("ct.mha"), Path("pet.mha"))


def test_brain_found_on_phantom_and_roi_is_1mm_in_the_patient_frame(shipped_manifest, phantom):
    config = shipped_manifest.preprocess
    frame = patient_frame(np.eye(3))
    brain = locate_brain(phantom.pet, frame, common_extent(phantom.ct, phantom.pet, frame), config)
    assert brain is not None
    # The phantom brain is centred at x=0, y=10 mm, between z=190 and z~327 (clipped by the FOV).
    assert abs(brain.centroid[0]) < 3 and abs(brain.centroid[1] - 10) < 5
    assert 230 < brain.centroid[2] < 290
    roi = extract_roi(_case(phantom.ct, phantom.pet), config)
    assert roi.located_by == "pet-brain" and roi.midline_from == "brain centroid"
    assert roi.grid.GetSpacing() == (1.0, 1.0, 1.0)
    assert roi.grid.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert roi.ct_hu.shape == roi.pet_suv.shape == roi.grid.GetSize()[::-1]
    assert roi.grid.GetSize()[:2] == (200, 200)


def test_roi_contains_the_tumour_whatever_the_ct_direction(shipped_manifest):
    for flip in (False, True):
        ph = make_phantom(PhantomGeometry(flip_ct_z=flip))
        roi = extract_roi(_case(ph.ct, ph.pet), shipped_manifest.preprocess)
        # GTVp is the hottest thing outside the brain: SUV 12 in the phantom.
        index = roi.grid.TransformPhysicalPointToIndex((8.0, -10.0, 140.0))
        assert all(0 <= i < s for i, s in zip(index, roi.grid.GetSize(), strict=True))
        assert roi.pet_suv[index[::-1]] > 8.0


@pytest.mark.parametrize("axes", [(2,), (0, 1), (0, 1, 2)])
def test_flipped_storage_gives_the_identical_roi(shipped_manifest, phantom, axes):
    config = shipped_manifest.preprocess
    a = extract_roi(_case(phantom.ct, phantom.pet), config)
    b = extract_roi(_case(stored_flipped(phantom.ct, axes), stored_flipped(phantom.pet, axes)), config)
    assert a.grid.GetOrigin() == b.grid.GetOrigin() and a.grid.GetDirection() == b.grid.GetDirection()
    np.testing.assert_array_equal(a.ct_hu, b.ct_hu)
    np.testing.assert_array_equal(a.pet_suv, b.pet_suv)
    assert a.midline_x_mm == pytest.approx(b.midline_x_mm, abs=1e-9)


def test_no_brain_falls_back_to_extent_centre(shipped_manifest, headless_phantom):
    roi = extract_roi(_case(headless_phantom.ct, headless_phantom.pet), shipped_manifest.preprocess)
    assert roi.located_by == "fallback-extent-centre"
    assert roi.brain_bottom_mm is None
    assert roi.pet_suv.max() > 8.0  # the tumour is still inside


def test_brain_search_does_not_need_the_ct_to_cover_the_head_sideways(shipped_manifest, phantom):
    """The brain's centroid is the midline: a CT cut short on one side must not move it."""
    clipped = phantom.ct[50:, :, :]  # 100 mm less on the patient's right
    frame = patient_frame(np.eye(3))
    assert frame_bounds(clipped, frame)[0][0] > -25.0
    roi = extract_roi(_case(clipped, phantom.pet), shipped_manifest.preprocess)
    assert roi.located_by == "pet-brain"
    assert abs(roi.midline_x_mm) < 1.0


def test_disjoint_ct_and_pet_is_an_input_error_naming_both_files(shipped_manifest, phantom):
    pet = sitk.Image(phantom.pet)
    pet.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"ct\.mha and pet\.mha: CT and PET do not overlap.*CT spans"):
        extract_roi(_case(phantom.ct, pet), shipped_manifest.preprocess)


@pytest.mark.parametrize("case", STS_CASES)
def test_small_real_field_of_view_does_not_crash(shipped_manifest, case):
    sts = require_sts()
    ct, _ = read_image(sts / f"{case}_CT_image.nii.gz", "CT")
    pet, _ = read_image(sts / f"{case}_PET_image.nii.gz", "PET")
    roi = extract_roi(_case(ct, pet), shipped_manifest.preprocess)
    # A limb sarcoma has no brain: the documented fallback must be used, and the tumour kept.
    assert roi.located_by == "fallback-extent-centre"
    assert roi.pet_suv.max() == pytest.approx(float(sitk.GetArrayViewFromImage(pet).max()), rel=0.35)
