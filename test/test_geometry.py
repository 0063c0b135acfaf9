"""Geometry helpers against ITK's own transforms and hand-computed values, for general directions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from case_variants import rigidly_rotated, rotation, stored_flipped

from hecktor.core.geometry import (
    continuous_index_of,
    direction_matrix,
    direction_problem,
    patient_frame,
    physical_corners,
    voxel_volume_ml,
    voxels_in_frame_box,
)

SHEAR_DEGREES = 25.0


def _image(size=(7, 5, 6), spacing=(1.5, 2.0, 3.0), origin=(10.0, -4.0, 7.0), direction=None) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(np.asarray(direction, dtype=float).flatten().tolist())
    return image


def _sheared_direction(degrees: float = SHEAR_DEGREES) -> np.ndarray:
    """Unit columns; the z axis leans by ``degrees`` towards y (a gantry-tilt-like shear)."""
    t = np.deg2rad(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(t)], [0.0, 0.0, np.cos(t)]])


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped-z": np.diag([1.0, 1.0, -1.0]),
    "oblique-20": rotation((1, 2, 0.5), 20.0),
    "permuted": np.eye(3)[:, [2, 0, 1]],
    "sheared": _sheared_direction(),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_continuous_index_matches_itk(name):
    image = _image(direction=DIRECTIONS[name])
    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 40, size=(10, 3))
    ours = continuous_index_of(image, points)
    itk = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    np.testing.assert_allclose(ours, itk, atol=1e-9)


def test_sheared_voxel_volume_is_hand_computed():
    image = _image(spacing=(1.0, 2.0, 3.0), direction=_sheared_direction())
    # det of the unit-column shear is cos(theta): the voxel is a parallelepiped, not a box.
    expected_ml = 1.0 * 2.0 * 3.0 * np.cos(np.deg2rad(SHEAR_DEGREES)) / 1000.0
    assert voxel_volume_ml(image) == pytest.approx(expected_ml, rel=1e-12)
    assert voxel_volume_ml(_image(spacing=(1.0, 2.0, 3.0), direction=DIRECTIONS["oblique-20"])) == pytest.approx(
        6.0 / 1000.0, rel=1e-12)


@pytest.mark.parametrize(
    ("direction", "problem"),
    [(np.diag([1.0, 1.0, np.nan]), "non-finite"), (np.array([[1, 0, 0], [0, 1, 0.999], [0, 0, 0.01]]), "singular")],
)
def test_unusable_directions_are_named(direction, problem):
    assert problem in direction_problem(direction)


def test_usable_directions_have_no_problem():
    assert all(direction_problem(d) is None for d in DIRECTIONS.values())


@pytest.mark.parametrize("axes", [a for r in range(4) for a in itertools.combinations(range(3), r)])
def test_patient_frame_ignores_flips_and_permutations(axes):
    image = stored_flipped(_image(direction=DIRECTIONS["permuted"]), axes)
    np.testing.assert_allclose(patient_frame(direction_matrix(image)), np.eye(3), atol=1e-12)


def test_patient_frame_follows_a_rigid_rotation():
    q = rotation((0.3, 1.0, 0.2), 20.0)
    rotated = rigidly_rotated(stored_flipped(_image(), (0, 2)), q, (0, 0, 0))
    frame = patient_frame(direction_matrix(rotated))
    np.testing.assert_allclose(frame, q, atol=1e-12)
    assert np.linalg.det(frame) == pytest.approx(1.0)


def test_patient_frame_of_a_shear_is_a_rotation():
    frame = patient_frame(_sheared_direction())
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame) == pytest.approx(1.0)


def _brute_force_inside(image: sitk.Image, frame: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    size = image.GetSize()
    inside = np.zeros(size[::-1], dtype=bool)
    for x, y, z in itertools.product(*[range(s) for s in size]):
        u = np.asarray(image.TransformIndexToPhysicalPoint((x, y, z))) @ frame
        inside[z, y, x] = bool(np.all(u >= lo) and np.all(u <= hi))
    return inside


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_voxels_in_frame_box_match_a_brute_force_scan(name):
    image = _image(size=(9, 8, 7), direction=DIRECTIONS[name])
    frame = patient_frame(np.eye(3))
    corners = physical_corners(image)
    lo = corners.min(axis=0) + 4.0
    hi = corners.max(axis=0) - 3.0
    expected = _brute_force_inside(image, frame, lo, hi)
    found = voxels_in_frame_box(image, frame, lo, hi)
    assert found is not None
    slices, mask = found
    ours = np.zeros_like(expected)
    ours[slices] = True if mask is None else mask
    np.testing.assert_array_equal(ours, expected)
    if name in ("identity", "flipped-z", "permuted"):
        assert mask is None  # axis-aligned: an index box, no per-voxel test
