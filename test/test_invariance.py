"""The same physical case stored differently gives the same answers (SYNTHETIC phantom).

Storing a case with any index axis reversed (CT, PET or both), or rotating the whole scene rigidly
by 20 degrees, changes nothing physical: the label image must be identical voxel for voxel in
physical space, and rfs.json / hpv-status.json identical to 1e-6. A sheared (non-orthonormal) CT
direction must place and measure the lesions right.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from case_variants import rigidly_rotated, rotation, stored_flipped, unflip_array

from hecktor.core.manifest import load_manifest, write_manifest
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP
from hecktor.io.phantom import GTVP_SPHERE, Phantom, PhantomGeometry, make_phantom, write_platform_case
from hecktor.pipeline import CaseResult, Pipeline

ALL_FLIPS = [axes for r in range(4) for axes in itertools.combinations(range(3), r)]
MIXED_FLIPS = [((0,), ()), ((), (2,)), ((1, 2), (0,)), ((0, 1, 2), (1,))]  # (CT axes, PET axes)
ROTATIONS = {"20deg-about-x": ((1, 0, 0), 20.0), "20deg-about-z": ((0, 0, 1), 20.0),
             "20deg-oblique-axis": ((1, 2, 0.5), 20.0)}
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_manifest())


def _run(pipeline: Pipeline, folder: Path, ct: sitk.Image, pet: sitk.Image, labels: sitk.Image) -> CaseResult:
    write_platform_case(Phantom(ct=ct, pet=pet, labels=labels), folder)
    return pipeline.run(folder)


@pytest.fixture(scope="module")
def reference(pipeline: Pipeline, phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> CaseResult:
    result = _run(pipeline, tmp_path_factory.mktemp("reference"), phantom.ct, phantom.pet, phantom.labels)
    assert result.measurements is not None and result.measurements.gtvp_volume_ml > 5.0  # a real answer to compare
    return result


def _assert_same_answers(result: CaseResult, reference: CaseResult, labels: np.ndarray) -> None:
    expected = sitk.GetArrayFromImage(reference.labels)
    differing = int(np.count_nonzero(labels != expected))
    assert differing == 0, f"{differing} label voxels differ in physical space"
    assert abs(result.predictions.rfs_risk - reference.predictions.rfs_risk) <= TOLERANCE
    assert abs(result.predictions.hpv_probability - reference.predictions.hpv_probability) <= TOLERANCE
    assert result.predictions.hpv_positive == reference.predictions.hpv_positive


@pytest.mark.parametrize("axes", ALL_FLIPS, ids=lambda a: "flip-" + ("".join("xyz"[i] for i in a) or "none"))
def test_flipped_storage_gives_identical_answers(axes, pipeline, phantom, reference, tmp_path):
    result = _run(pipeline, tmp_path, stored_flipped(phantom.ct, axes), stored_flipped(phantom.pet, axes),
                  stored_flipped(phantom.labels, axes))
    _assert_same_answers(result, reference, unflip_array(sitk.GetArrayFromImage(result.labels), axes))


@pytest.mark.parametrize(("ct_axes", "pet_axes"), MIXED_FLIPS, ids=lambda a: "".join("xyz"[i] for i in a) or "-")
def test_ct_and_pet_flipped_differently_give_identical_answers(ct_axes, pet_axes, pipeline, phantom, reference,
                                                                tmp_path):
    result = _run(pipeline, tmp_path, stored_flipped(phantom.ct, ct_axes), stored_flipped(phantom.pet, pet_axes),
                  stored_flipped(phantom.labels, ct_axes))
    _assert_same_answers(result, reference, unflip_array(sitk.GetArrayFromImage(result.labels), ct_axes))


@pytest.mark.parametrize("name", list(ROTATIONS))
def test_rigidly_rotated_scene_gives_identical_answers(name, pipeline, phantom, reference, tmp_path):
    axis, degrees = ROTATIONS[name]
    q = rotation(axis, degrees)
    centre = phantom.ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in phantom.ct.GetSize()])
    ct, pet, labels = (rigidly_rotated(image, q, centre) for image in (phantom.ct, phantom.pet, phantom.labels))
    result = _run(pipeline, tmp_path, ct, pet, labels)
    assert np.allclose(np.asarray(result.labels.GetDirection()).reshape(3, 3), q, atol=1e-9)  # output on the CT grid
    _assert_same_answers(result, reference, sitk.GetArrayFromImage(result.labels))


def _label_centroid_mm(labels: sitk.Image, label: int) -> np.ndarray:
    zyx = np.argwhere(sitk.GetArrayFromImage(labels) == label).mean(axis=0)
    return np.asarray(labels.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


@pytest.mark.parametrize("shear_degrees", [15.0, 30.0])
def test_sheared_ct_places_and_measures_the_lesions_right(shear_degrees, pipeline, reference, tmp_path):
    """A CT whose z axis leans (a non-orthonormal direction) is rendered from the same analytic phantom."""
    t = math.radians(shear_degrees)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, math.sin(t), 0.0, 0.0, math.cos(t))
    sheared = make_phantom(PhantomGeometry(ct_direction=direction))
    result = _run(pipeline, tmp_path, sheared.ct, sheared.pet, sheared.labels)
    m, ref = result.measurements, reference.measurements
    # The sphere of radius 14 mm is 11.5 mL; the threshold engine's volume on the plain grid is the yardstick.
    assert m.gtvp_volume_ml == pytest.approx(ref.gtvp_volume_ml, rel=0.08)
    assert m.gtvn_volume_ml == pytest.approx(ref.gtvn_volume_ml, rel=0.15)
    assert m.node_count == ref.node_count
    centre, radius = GTVP_SPHERE
    assert np.linalg.norm(_label_centroid_mm(result.labels, LABEL_GTVP) - np.asarray(centre)) < 0.2 * radius
    assert np.count_nonzero(sitk.GetArrayFromImage(result.labels) == LABEL_GTVN) > 0
    assert m.gtvp_suvmax == pytest.approx(ref.gtvp_suvmax, rel=0.05)


@pytest.fixture(scope="module")
def ensemble_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Two tiny random (NOT trained) networks: the network path must be as storage-invariant as the rule."""
    import shutil

    from training.make_random_weights import make_random_weights

    weights = tmp_path_factory.mktemp("tiny_ensemble")
    tiny = {"dims": (4, 8, 8, 8), "depth": (1, 1, 1, 1), "pool_op_kernel_sizes": ((2, 2, 2),) * 3,
            "conv_kernel_sizes": ((3, 3, 3),) * 4}
    make_random_weights(weights, members=2, arch_kwargs=tiny, patch_size=(64, 64, 64),
                        ensemble_options={"overlap": 0.25})
    for name in ("rfs_model.json", "hpv_model.json"):
        shutil.copy(load_manifest().weights_dir / name, weights / name)
    manifest = load_manifest(weights)
    # A smaller ROI (still holding the phantom's lesions) keeps the network passes of this test short.
    write_manifest(replace(manifest, preprocess=replace(manifest.preprocess, roi_size_mm=(140.0, 120.0, 220.0))))
    return Pipeline(load_manifest(weights), device="cpu")


def test_network_engine_is_storage_invariant_too(ensemble_pipeline, phantom, tmp_path):
    reference = _run(ensemble_pipeline, tmp_path / "reference", phantom.ct, phantom.pet, phantom.labels)
    assert np.count_nonzero(sitk.GetArrayViewFromImage(reference.labels)) > 0
    axes = (0, 1, 2)
    flipped = _run(ensemble_pipeline, tmp_path / "flipped", stored_flipped(phantom.ct, axes),
                   stored_flipped(phantom.pet, axes), stored_flipped(phantom.labels, axes))
    _assert_same_answers(flipped, reference, unflip_array(sitk.GetArrayFromImage(flipped.labels), axes))
    q = rotation((1, 2, 0.5), 20.0)
    centre = phantom.ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in phantom.ct.GetSize()])
    rotated = _run(ensemble_pipeline, tmp_path / "rotated",
                   *(rigidly_rotated(image, q, centre) for image in (phantom.ct, phantom.pet, phantom.labels)))
    _assert_same_answers(rotated, reference, sitk.GetArrayFromImage(rotated.labels))
