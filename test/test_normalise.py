"""ROI intensity normalisation for the networks, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from hecktor.preprocess.normalise import normalise_ct, normalise_pet


def test_ct_is_clipped_then_z_scored():
    ct = np.array([[[-2000.0, 0.0, 50.0, 5000.0]]], dtype=np.float32)
    out = normalise_ct(ct, {"mean": 50.0, "std": 10.0, "lower": -100.0, "upper": 150.0})
    # clip to [-100, 150] -> [-100, 0, 50, 150]; minus 50, over 10.
    np.testing.assert_allclose(out, [[[-15.0, -5.0, 0.0, 10.0]]])
    assert out.dtype == np.float32 and ct[0, 0, 0] == -2000.0  # the input is left alone


@pytest.mark.parametrize(("params", "problem"), [({"mean": 0.0, "std": 1.0}, "lacks"),
                                                  ({"mean": 0.0, "std": 0.0, "lower": 0.0, "upper": 1.0}, "std > 0")])
def test_ct_parameters_are_checked(params, problem):
    with pytest.raises(ValueError, match=problem):
        normalise_ct(np.zeros((1, 1, 1), np.float32), params)


def test_pet_is_z_scored_over_non_zero_voxels():
    pet = np.array([[[0.0, 1.0, 3.0]]], dtype=np.float32)  # non-zero values 1 and 3: mean 2, std 1
    np.testing.assert_allclose(normalise_pet(pet), [[[-2.0, -1.0, 1.0]]])
    np.testing.assert_array_equal(normalise_pet(np.zeros((2, 2, 2), np.float32)), 0.0)
