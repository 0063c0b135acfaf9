"""Probabilities -> labels on the native CT grid, and post-processing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import make_grid
from hecktor.core.manifest import Manifest, PostprocessConfig
from hecktor.core.types import Probabilities
from hecktor.restore import compose_labels, postprocess_labels, restore_to_ct_grid


def test_ties_go_to_the_primary_tumour_first():
    p = np.array([[0.4, 0.3, 0.3], [0.2, 0.4, 0.4], [0.5, 0.0, 0.5], [0.2, 0.2, 0.6]], dtype=np.float32).T
    assert compose_labels(p.reshape(3, 1, 1, 4)).ravel().tolist() == [0, 1, 2, 2]


def test_holes_are_filled_and_small_components_removed():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:9, 2:9, 2:9] = 1
    labels[5, 5, 5] = 0  # a hole inside GTVp
    labels[15:17, 15:17, 15:17] = 2  # 8 voxels: under 50
    labels[12:18, 2:8, 2:8] = 2  # 216 voxels: kept
    out = postprocess_labels(labels, PostprocessConfig(fill_holes=True, min_component_voxels=50))
    assert out[5, 5, 5] == 1
    assert not (out[15:17, 15:17, 15:17] == 2).any()
    assert (out[12:18, 2:8, 2:8] == 2).all()


def _oblique_ct() -> sitk.Image:
    ct = sitk.Image([60, 50, 40], sitk.sitkInt16)
    ct.SetSpacing((0.9, 0.8, 3.0))
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    ct.SetDirection(rotation.flatten().tolist())
    ct.SetOrigin((-20.0, -15.0, 100.0))
    return ct


def test_restored_labels_have_exactly_the_ct_geometry_and_land_in_the_right_place(shipped_manifest: Manifest):
    ct = _oblique_ct()
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint([30, 25, 20]))
    grid = make_grid(centre, (40, 40, 60), 1.0, np.eye(3))
    values = np.zeros((3, 60, 40, 40), dtype=np.float32)
    values[0] = 1.0
    # A 16 mm cube of GTVp at the ROI centre.
    values[0, 22:38, 12:28, 12:28] = 0.0
    values[1, 22:38, 12:28, 12:28] = 1.0
    config = replace(shipped_manifest.postprocess, min_component_voxels=1)
    labels = restore_to_ct_grid(Probabilities(grid, values, "test"), ct, config)
    assert labels.GetSize() == ct.GetSize()
    assert labels.GetSpacing() == ct.GetSpacing()
    assert labels.GetOrigin() == ct.GetOrigin()
    assert labels.GetDirection() == ct.GetDirection()
    assert labels.GetPixelID() == sitk.sitkUInt8
    array = sitk.GetArrayFromImage(labels)
    assert array[20, 25, 30] == 1
    volume_ml = (array == 1).sum() * np.prod(ct.GetSpacing()) / 1000.0
    assert abs(volume_ml - 16**3 / 1000.0) < 0.35 * 16**3 / 1000.0


def test_empty_probabilities_give_an_all_background_image(shipped_manifest: Manifest):
    ct = _oblique_ct()
    grid = make_grid(np.asarray(ct.TransformContinuousIndexToPhysicalPoint([30, 25, 20])), (8, 8, 8), 1.0, np.eye(3))
    values = np.zeros((3, 8, 8, 8), dtype=np.float32)
    values[0] = 1.0
    labels = restore_to_ct_grid(Probabilities(grid, values, "test"), ct, shipped_manifest.postprocess)
    assert not sitk.GetArrayViewFromImage(labels).any()


def test_restoring_only_the_lesion_box_equals_restoring_the_whole_roi(shipped_manifest: Manifest):
    """The candidate-box shortcut must not change a single voxel (soft, overlapping probabilities)."""
    from hecktor.core.geometry import image_on_grid, resample_to_grid

    ct = _oblique_ct()
    grid = make_grid(np.asarray(ct.TransformContinuousIndexToPhysicalPoint([30, 25, 20])), (40, 40, 60), 1.0,
                     np.eye(3))
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (60, 40, 40)], indexing="ij")
    blob_p = np.exp(-(((zz - 30) / 6.0) ** 2 + ((yy - 18) / 5.0) ** 2 + ((xx - 20) / 5.0) ** 2))
    blob_n = np.exp(-(((zz - 24) / 4.0) ** 2 + ((yy - 26) / 4.0) ** 2 + ((xx - 24) / 3.0) ** 2))
    lesion = np.stack([blob_p, blob_n]) * 0.9
    values = np.concatenate([1.0 - lesion.sum(axis=0, keepdims=True).clip(max=1.0), lesion]).astype(np.float32)
    config = replace(shipped_manifest.postprocess, min_component_voxels=1)
    fast = sitk.GetArrayFromImage(restore_to_ct_grid(Probabilities(grid, values, "test"), ct, config))
    whole = np.stack([
        sitk.GetArrayFromImage(resample_to_grid(image_on_grid(values[c], grid), ct, "linear", 1.0 if c == 0 else 0.0))
        for c in range(3)
    ])
    reference = postprocess_labels(compose_labels(whole), config)
    assert (reference > 0).sum() > 100
    np.testing.assert_array_equal(fast, reference)
