"""The committed SYNTHETIC sample case is what the project's generator makes."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from helpers import REPO

from hecktor.io.phantom import SAMPLE_EHR, make_phantom


def test_committed_sample_matches_the_generator(phantom):
    sample = REPO / "test" / "sample-case"
    assert json.loads((sample / "ehr.json").read_text()) == SAMPLE_EHR
    for folder, expected in (("ct", phantom.ct), ("pet", phantom.pet)):
        image = sitk.ReadImage(str(sample / "images" / folder / "phantom.mha"))
        assert image.GetSize() == expected.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin())
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))


def test_generator_is_deterministic():
    a, b = make_phantom(), make_phantom()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.pet), sitk.GetArrayViewFromImage(b.pet))
