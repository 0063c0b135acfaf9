"""One definition of SUVmax (SYNTHETIC phantom): the maximum, over the CT voxels of the final mask, of the PET
in SUV linearly interpolated at their centres (``hecktor.measure.lesions``).

The run log used to print the pet-threshold engine's peak on the 1 mm ROI grid as "SUVmax" (e.g. 24.8 for
a lesion measured at 24.36). Both the measurements and every SUVmax the log names are checked against an
independent numpy computation (scipy's trilinear ``map_coordinates`` on the PET array, physical points
mapped to PET indices by hand).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from case_variants import stored_flipped
from scipy import ndimage

from hecktor.core.types import LABEL_GTVN, LABEL_GTVP
from hecktor.io.phantom import Phantom
from hecktor.measure.lesions import measure
from hecktor.pipeline import Pipeline

LOGGED_SUVMAX = re.compile(r"\b(GTV[pn])\b.*?\bSUVmax\b\D*?(\d+(?:\.\d+)?)")


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    return matrix, np.asarray(image.GetOrigin(), dtype=np.float64)


def independent_suvmax(labels: sitk.Image, pet: sitk.Image, label: int) -> float:
    """max of the PET, trilinear at the physical centres of the CT voxels labelled ``label``."""
    zyx = np.argwhere(sitk.GetArrayFromImage(labels) == label).astype(np.float64)
    ct_matrix, ct_origin = _index_to_physical(labels)
    points = ct_origin + zyx[:, ::-1] @ ct_matrix.T
    pet_matrix, pet_origin = _index_to_physical(pet)
    pet_xyz = np.linalg.solve(pet_matrix, (points - pet_origin).T)  # (3, n): x, y, z continuous indices
    values = ndimage.map_coordinates(sitk.GetArrayFromImage(pet).astype(np.float64), pet_xyz[::-1], order=1,
                                     mode="nearest")
    return float(values.max())


@pytest.mark.parametrize("pet_flips", [(), (0, 2)], ids=["pet-as-is", "pet-flipped-xz"])
def test_measured_suvmax_is_the_pet_maximum_at_the_mask_ct_voxels(phantom: Phantom, pet_flips):
    pet = stored_flipped(phantom.pet, pet_flips)
    measured = measure(phantom.labels, pet)
    assert measured.gtvp_suvmax == pytest.approx(independent_suvmax(phantom.labels, pet, LABEL_GTVP), rel=1e-5)
    assert measured.gtvn_suvmax == pytest.approx(independent_suvmax(phantom.labels, pet, LABEL_GTVN), rel=1e-5)


def test_every_suvmax_in_the_run_log_is_the_measured_one(phantom: Phantom, phantom_case_dir: Path, shipped_manifest,
                                                         caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="hecktor"):
        result = Pipeline(shipped_manifest).run(phantom_case_dir, tasks=frozenset({1}))
    expected = {"GTVp": independent_suvmax(result.labels, phantom.pet, LABEL_GTVP),
                "GTVn": independent_suvmax(result.labels, phantom.pet, LABEL_GTVN)}
    logged = [(m.group(1), float(m.group(2))) for r in caplog.records for m in LOGGED_SUVMAX.finditer(r.getMessage())]
    assert {name for name, _ in logged} == set(expected), f"log lines naming SUVmax: {logged}"
    for name, value in logged:
        decimals = len(str(value).split(".")[1]) if "." in str(value) else 0
        assert abs(value - expected[name]) <= 0.5 * 10 ** -decimals + 1e-9, (
            f"the log says {name} SUVmax {value}, the mask's PET maximum is {expected[name]:.4f}")
