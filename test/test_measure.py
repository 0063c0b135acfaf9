"""Measurements against an independent computation (scipy interpolation, numpy geometry), also under
allocator stress: a view of a freed SimpleITK image once made SUVmax depend on the allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, STS_CASES, require_sts
from scipy import ndimage

from hecktor.io.phantom import PhantomGeometry, make_phantom
from hecktor.io.read import read_image
from hecktor.measure.lesions import measure

ALLOCATOR_STRESS = {
    "perturb": {"MALLOC_PERTURB_": "165"},
    "small-mmap-threshold": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}
_MEASURE_SCRIPT = """
import json, sys
import SimpleITK as sitk
from hecktor.measure.lesions import measure
m = measure(sitk.ReadImage(sys.argv[1]), sitk.Cast(sitk.ReadImage(sys.argv[2]), sitk.sitkFloat32))
print(json.dumps(m.as_dict()))
"""


def independent_measurements(labels_image: sitk.Image, pet_image: sitk.Image) -> dict[str, float | int | None]:
    """Volumes from voxel counts and |det| x spacing; SUV by scipy's trilinear interpolation at CT voxel centres."""
    labels = sitk.GetArrayFromImage(labels_image)
    pet = sitk.GetArrayFromImage(pet_image).astype(np.float64)
    ct_matrix = np.asarray(labels_image.GetDirection()).reshape(3, 3) * np.asarray(labels_image.GetSpacing())
    pet_matrix = np.asarray(pet_image.GetDirection()).reshape(3, 3) * np.asarray(pet_image.GetSpacing())
    voxel_ml = abs(np.linalg.det(ct_matrix)) / 1000.0
    out: dict[str, float | int | None] = {}
    for label, name in ((1, "gtvp"), (2, "gtvn")):
        zyx = np.argwhere(labels == label)
        out[f"{name}_volume_ml"] = len(zyx) * voxel_ml
        if len(zyx) == 0:
            out[f"{name}_suvmax"] = out[f"{name}_suvmean"] = None
            continue
        physical = np.asarray(labels_image.GetOrigin()) + zyx[:, ::-1] @ ct_matrix.T
        pet_index_xyz = np.linalg.solve(pet_matrix, (physical - np.asarray(pet_image.GetOrigin())).T)
        values = ndimage.map_coordinates(pet, pet_index_xyz[::-1], order=1, mode="nearest")
        out[f"{name}_suvmax"] = float(values.max())
        out[f"{name}_suvmean"] = float(values.mean())
    out["node_count"] = int(cc3d.connected_components(labels == 2, connectivity=26).max())
    return out


def _assert_matches(measured: dict, expected: dict) -> None:
    for key, value in expected.items():
        if value is None:
            assert measured[key] is None, key
        else:
            assert measured[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def _cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(labels, PET) files: the SYNTHETIC phantom (z-flipped CT, sheared CT) and, when present, real sarcoma cases."""
    folder = tmp_path_factory.mktemp("measure_cases")
    cases = {}
    for name, geometry in (("phantom-flipped", PhantomGeometry(flip_ct_z=True)),
                           ("phantom-sheared", PhantomGeometry(ct_direction=(1, 0, 0, 0, 1, 0.4, 0, 0, 0.9)))):
        phantom = make_phantom(geometry)
        cases[name] = (folder / f"{name}_labels.mha", folder / f"{name}_pet.mha")
        sitk.WriteImage(phantom.labels, str(cases[name][0]))
        sitk.WriteImage(phantom.pet, str(cases[name][1]))
    return cases


@pytest.fixture(scope="module")
def measure_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    return _cases(tmp_path_factory)


@pytest.mark.parametrize("name", ["phantom-flipped", "phantom-sheared"])
def test_measurements_match_an_independent_computation(name, measure_cases):
    labels_path, pet_path = measure_cases[name]
    labels, pet = sitk.ReadImage(str(labels_path)), sitk.ReadImage(str(pet_path))
    expected = independent_measurements(labels, pet)
    assert expected["gtvp_suvmax"] > 8.0  # the phantom's tumour is hot: a meaningful comparison
    _assert_matches(measure(labels, pet).as_dict(), expected)


@pytest.mark.parametrize("case", STS_CASES)
def test_real_sarcoma_measurements_match_an_independent_computation(case):
    sts = require_sts()
    labels = sitk.ReadImage(str(sts / f"{case}_CT_mask.nii.gz"))
    pet, _ = read_image(sts / f"{case}_PET_image.nii.gz", "PET")
    labels = sitk.Cast(labels > 0, sitk.sitkUInt8)
    expected = independent_measurements(labels, pet)
    _assert_matches(measure(labels, pet).as_dict(), expected)


def _measure_in_child(labels: Path, pet: Path, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE_SCRIPT, str(labels), str(pet)],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stress", list(ALLOCATOR_STRESS))
def test_measurements_do_not_depend_on_the_allocator(stress, measure_cases, tmp_path):
    cases = dict(measure_cases)
    sts = Path(REPO.parent / "shared" / "data" / "sts")
    if (sts / "STS_001_CT_mask.nii.gz").is_file():
        mask = sitk.Cast(sitk.ReadImage(str(sts / "STS_001_CT_mask.nii.gz")) > 0, sitk.sitkUInt8)
        sitk.WriteImage(mask, str(tmp_path / "sts_labels.mha"))
        cases["STS_001"] = (tmp_path / "sts_labels.mha", sts / "STS_001_PET_image.nii.gz")
    for name, (labels, pet) in cases.items():
        expected = independent_measurements(sitk.ReadImage(str(labels)), sitk.ReadImage(str(pet)))
        measured = _measure_in_child(labels, pet, ALLOCATOR_STRESS[stress])
        try:
            _assert_matches(measured, expected)
        except AssertionError as exc:
            raise AssertionError(f"{name} under {stress}: {measured} != {expected}") from exc
