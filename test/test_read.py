"""Reading cases: both layouts, and every kind of bad input gives a clear InputError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor.read import find_case_files, read_case
from hecktor.types import InputError


def test_platform_layout_is_read(phantom_case_dir):
    case = read_case(phantom_case_dir)
    assert case.case_id == "phantom"
    assert case.ct.GetSize() == (120, 120, 110)
    assert case.clinical.age == 56
    assert case.notes == ()


def test_training_layout_is_read(tmp_path, phantom):
    sitk.WriteImage(phantom.ct, str(tmp_path / "CHUM-001__CT.nii.gz"))
    sitk.WriteImage(phantom.pet, str(tmp_path / "CHUM-001__PT.nii.gz"))
    files = find_case_files(tmp_path)
    assert files.case_id == "CHUM-001" and files.ehr is None


def _copy_case(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d / "images" / "pet"), "folder for the PET is missing"),
        (lambda d: [p.unlink() for p in (d / "images" / "ct").iterdir()], "no CT image found"),
        (lambda d: shutil.copy(next((d / "images/pet").iterdir()), d / "images/pet/second.mha"),
         "exactly one PET image, found 2"),
        (lambda d: (d / "images/ct/phantom.mha").write_bytes(b"not an image"), "cannot read the CT image"),
        (lambda d: (d / "ehr.json").write_text("{not json"), "ehr.json"),
    ],
    ids=["missing-pet", "empty-ct-folder", "two-pet-files", "corrupt-ct", "unparsable-ehr"],
)
def test_bad_inputs_raise_input_error_naming_the_problem(tmp_path, phantom_case_dir, damage, message):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    damage(case_dir)
    with pytest.raises(InputError, match=message):
        read_case(case_dir)


def test_nan_voxels_are_refused(tmp_path, phantom_case_dir, phantom):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    array = sitk.GetArrayFromImage(phantom.pet)
    array[10, 10, 10] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(phantom.pet)
    sitk.WriteImage(bad, str(case_dir / "images/pet/phantom.mha"))
    with pytest.raises(InputError, match=r"phantom\.mha: the PET image has 1 NaN"):
        read_case(case_dir)


def test_2d_image_is_refused(tmp_path, phantom_case_dir):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(case_dir / "images/ct/phantom.mha"))
    with pytest.raises(InputError, match="the CT image is 2-D"):
        read_case(case_dir)


def test_missing_ehr_is_tolerated(tmp_path, phantom_case_dir):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    (case_dir / "ehr.json").unlink()
    assert read_case(case_dir).clinical.age is None


def test_ehr_that_is_not_an_object_is_refused(tmp_path, phantom_case_dir):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    (case_dir / "ehr.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(InputError, match=r"ehr\.json"):
        read_case(case_dir)
