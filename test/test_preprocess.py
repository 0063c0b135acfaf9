"""ROI location and 1 mm resampling, on SYNTHETIC phantoms and real sarcoma cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import STS_CASES, require_sts

from hecktor.manifest import PreprocessConfig
from hecktor.phantom import PhantomGeometry, make_phantom
from hecktor.preprocess import common_extent, extract_roi, locate_brain
from hecktor.read import read_image
from hecktor.types import Case, ClinicalRecord, InputError


def _case(ct: sitk.Image, pet: sitk.Image) -> Case:
    return Case("t", sitk.Cast(ct, sitk.sitkFloat32), pet, ClinicalRecord(), Path("ct.mha"), Path("pet.mha"))


def test_brain_found_on_phantom_and_roi_is_1mm_in_ct_direction(phantom):
    config = PreprocessConfig()
    brain = locate_brain(phantom.pet, common_extent(phantom.ct, phantom.pet), config)
    assert brain is not None
    # The phantom brain is centred at x=0, y=10 mm, between z=190 and z~327 (clipped by the FOV).
    assert abs(brain.centroid_mm[0]) < 3 and abs(brain.centroid_mm[1] - 10) < 5
    assert 230 < brain.centroid_mm[2] < 290
    roi = extract_roi(_case(phantom.ct, phantom.pet), config)
    assert roi.located_by == "pet-brain"
    assert roi.grid.GetSpacing() == (1.0, 1.0, 1.0)
    assert roi.grid.GetDirection() == phantom.ct.GetDirection()
    assert roi.ct_hu.shape == roi.pet_suv.shape == roi.grid.GetSize()[::-1]
    assert roi.grid.GetSize()[:2] == (200, 200)


def test_roi_contains_the_tumour_whatever_the_ct_direction():
    for flip in (False, True):
        ph = make_phantom(PhantomGeometry(flip_ct_z=flip))
        roi = extract_roi(_case(ph.ct, ph.pet), PreprocessConfig())
        # GTVp is the hottest thing outside the brain: SUV 12 in the phantom.
        z_top = roi.grid.TransformPhysicalPointToIndex((8.0, -10.0, 140.0))
        assert all(0 <= i < s for i, s in zip(z_top, roi.grid.GetSize(), strict=True))
        assert roi.pet_suv[z_top[::-1]] > 8.0


def test_flipped_ct_gives_the_same_physical_roi():
    a = make_phantom(PhantomGeometry(flip_ct_z=False))
    b = make_phantom(PhantomGeometry(flip_ct_z=True))
    roi_a = extract_roi(_case(a.ct, a.pet), PreprocessConfig())
    roi_b = extract_roi(_case(b.ct, b.pet), PreprocessConfig())
    np.testing.assert_allclose(roi_a.center_mm, roi_b.center_mm, atol=1.0)
    # Same physical content, stored with z reversed.
    np.testing.assert_allclose(roi_a.pet_suv.max(), roi_b.pet_suv.max(), rtol=1e-3)


def test_no_brain_falls_back_to_extent_centre(headless_phantom):
    roi = extract_roi(_case(headless_phantom.ct, headless_phantom.pet), PreprocessConfig())
    assert roi.located_by == "fallback-extent-centre"
    assert roi.brain_bottom_mm is None
    assert roi.pet_suv.max() > 8.0  # the tumour is still inside


def test_disjoint_ct_and_pet_is_an_input_error(phantom):
    pet = sitk.Image(phantom.pet)
    pet.SetOrigin((5000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="do not overlap"):
        extract_roi(_case(phantom.ct, pet), PreprocessConfig())


@pytest.mark.parametrize("case", STS_CASES)
def test_small_real_field_of_view_does_not_crash(case):
    sts = require_sts()
    ct = read_image(sts / f"{case}_CT_image.nii.gz", "CT")
    pet = read_image(sts / f"{case}_PET_image.nii.gz", "PET")
    roi = extract_roi(_case(ct, pet), PreprocessConfig())
    # A limb sarcoma has no brain: the documented fallback must be used, and the tumour kept.
    assert roi.located_by == "fallback-extent-centre"
    assert roi.pet_suv.max() == pytest.approx(float(sitk.GetArrayViewFromImage(pet).max()), rel=0.35)
