"""Reading cases: both layouts, header checks before any pixel is read, and what is recoverable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import require_sts

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, load_manifest
from hecktor.core.policy import apply_input_policy
from hecktor.core.types import InputError
from hecktor.io.read import MAX_VOXELS, find_case_files, read_case, read_image
from hecktor.pipeline import Pipeline


def test_platform_layout_is_read(phantom_case_dir):
    case = read_case(phantom_case_dir)
    assert case.case_id == "phantom"
    assert case.ct.GetSize() == (120, 120, 110)
    assert case.clinical.age == 56
    assert case.problems == ()


def test_training_layout_is_read(tmp_path, phantom):
    sitk.WriteImage(phantom.ct, str(tmp_path / "CHUM-001__CT.nii.gz"))
    sitk.WriteImage(phantom.pet, str(tmp_path / "CHUM-001__PT.nii.gz"))
    files, problems = find_case_files(tmp_path)
    assert files.case_id == "CHUM-001" and files.ehr is None and problems == []


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
    ],
    ids=["missing-pet", "empty-ct-folder", "two-pet-files", "corrupt-ct"],
)
def test_unrecoverable_inputs_raise_input_error_naming_the_problem(tmp_path, phantom_case_dir, damage, message):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    damage(case_dir)
    with pytest.raises(InputError, match=message):
        read_case(case_dir)


def test_nan_voxels_are_replaced_and_reported(tmp_path, phantom_case_dir, phantom):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    array = sitk.GetArrayFromImage(phantom.pet)
    array[10, 10, 10] = np.nan
    array[11, 10, 10] = np.inf
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(phantom.pet)
    sitk.WriteImage(bad, str(case_dir / "images/pet/phantom.mha"))
    case = read_case(case_dir)
    (problem,) = case.problems
    assert problem.code == "non-finite-voxels" and "2 NaN or infinite" in problem.problem
    values = sitk.GetArrayFromImage(case.pet)
    assert np.isfinite(values).all() and values[10, 10, 10] == 0.0 and values[11, 10, 10] == 0.0


def test_missing_ehr_is_not_a_problem(tmp_path, phantom_case_dir):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    (case_dir / "ehr.json").unlink()
    case = read_case(case_dir)
    assert case.clinical.age is None and case.problems == ()


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2, 3]), "[" * 5000 + "]" * 5000])
def test_unusable_ehr_is_recoverable(tmp_path, phantom_case_dir, content):
    case_dir = _copy_case(phantom_case_dir, tmp_path / "case")
    (case_dir / "ehr.json").write_text(content)
    case = read_case(case_dir)
    assert [p.code for p in case.problems] == ["ehr-unusable"]
    assert case.problems[0].path == case_dir / "ehr.json"
    assert case.clinical.age is None


def _meta_header(data_file: str, size=(4, 4, 4)) -> str:
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\n"
            f"DimSize = {size[0]} {size[1]} {size[2]}\nElementType = MET_UCHAR\nElementDataFile = {data_file}\n")


@pytest.mark.parametrize("reference", ["../outside.raw", "{outside}", "LIST\n../outside.raw"],
                         ids=["relative", "absolute", "list"])
def test_header_taking_pixels_from_outside_the_input_folder_is_refused(tmp_path, reference):
    outside = tmp_path / "outside.raw"
    outside.write_bytes(bytes(64))
    root = tmp_path / "input"
    root.mkdir()
    header = root / "ct.mha"
    header.write_text(_meta_header(reference.format(outside=outside)))
    with pytest.raises(InputError, match=r"ct\.mha: the image header takes its pixel data from .*outside the input"):
        read_image(header, "CT", root)


def test_detached_pixels_inside_the_input_folder_are_read(tmp_path):
    root = tmp_path / "input"
    (root / "data").mkdir(parents=True)
    (root / "data" / "pixels.raw").write_bytes(bytes(range(64)))
    header = root / "ct.mha"
    header.write_text(_meta_header("data/pixels.raw"))
    image, problems = read_image(header, "CT", root)
    assert problems == [] and float(sitk.GetArrayViewFromImage(image).max()) == 63.0


def test_a_header_claiming_too_many_voxels_is_refused_before_reading(tmp_path):
    header = tmp_path / "ct.mha"
    side = round(MAX_VOXELS ** (1 / 3)) + 10
    header.write_text(_meta_header("LOCAL", (side, side, side)))  # no pixel data follows
    with pytest.raises(InputError, match="voxels"):
        read_image(header, "CT", tmp_path)


def test_truncated_pixel_data_is_reported_with_the_whole_itk_reason(tmp_path, phantom):
    path = tmp_path / "ct.mha"
    sitk.WriteImage(phantom.ct, str(path))
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(InputError) as error:
        read_image(path, "CT", tmp_path)
    message = str(error.value)
    assert "ct.mha" in message and "pixel data" in message
    assert "\n" not in message and "0x" not in message  # one line, no C++ object addresses


def test_a_known_bqml_factor_replaces_the_unit_detection(tmp_path, phantom):
    """Training data of patients delivered in Bq/mL: the factor from their DICOM tags, not the run-time estimate."""
    factor = 4.0e-4
    bqml = phantom.pet / factor  # SYNTHETIC: the phantom's SUV PET stored as Bq/mL
    sitk.WriteImage(phantom.ct, str(tmp_path / "MDA-001__CT.nii.gz"))
    sitk.WriteImage(bqml, str(tmp_path / "MDA-001__PT.nii.gz"))
    known = read_case(tmp_path, known_suv_factor=factor)
    assert not any(p.code == "pet-bqml" for p in known.problems)
    np.testing.assert_allclose(sitk.GetArrayFromImage(known.pet), sitk.GetArrayFromImage(phantom.pet), rtol=1e-5,
                               atol=1e-6)
    estimated = read_case(tmp_path)  # without it: detected and rescaled by an estimate, and reported
    assert any(p.code == "pet-bqml" for p in estimated.problems)
    with pytest.raises(InputError, match="factor must be a positive number"):
        read_case(tmp_path, known_suv_factor=-1.0)


# --- CT and PET given the wrong way round ------------------------------------------------------------------


def _swapped_training_case(folder: Path, ct: Path, pet: Path, case_id: str) -> Path:
    """A training-layout case whose __CT file is the PET and whose __PT file is the CT."""
    folder.mkdir()
    (folder / f"{case_id}__CT.nii.gz").symlink_to(pet)
    (folder / f"{case_id}__PT.nii.gz").symlink_to(ct)
    return folder


def _arrays(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_swap_recognised(swapped_dir: Path, reference_dir: Path, case_id: str) -> None:
    reference, case = read_case(reference_dir), read_case(swapped_dir)
    [problem] = [p for p in case.problems if p.code == "ct-pet-swapped"]
    ct_file, pet_file = swapped_dir / f"{case_id}__CT.nii.gz", swapped_dir / f"{case_id}__PT.nii.gz"
    assert "wrong way round" in problem.problem
    assert str(ct_file) in problem.problem and str(pet_file) in problem.problem
    assert not [p for p in case.problems if p.code == "pet-bqml"], "the old, misleading Bq/mL warning"
    # Swapped back: exactly the images (and geometry) of the case given the right way round.
    np.testing.assert_array_equal(_arrays(case.ct), _arrays(reference.ct))
    np.testing.assert_array_equal(_arrays(case.pet), _arrays(reference.pet))
    assert case.ct.GetSpacing() == reference.ct.GetSpacing() and case.ct.GetOrigin() == reference.ct.GetOrigin()
    assert case.ct_path == pet_file and case.pet_path == ct_file
    with pytest.raises(InputError) as refused:
        apply_input_policy(case.problems, strict=True)
    message = str(refused.value)
    assert "wrong way round" in message and str(ct_file) in message and str(pet_file) in message
    assert "Bq/mL" not in message


def _training_case(folder: Path, ct: Path, pet: Path, case_id: str) -> Path:
    folder.mkdir()
    (folder / f"{case_id}__CT.nii.gz").symlink_to(ct)
    (folder / f"{case_id}__PT.nii.gz").symlink_to(pet)
    return folder


@pytest.fixture(scope="module")
def phantom_images(tmp_path_factory: pytest.TempPathFactory, phantom) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("phantom_images")
    sitk.WriteImage(phantom.ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(phantom.pet, str(folder / "pet.nii.gz"))
    return folder / "ct.nii.gz", folder / "pet.nii.gz"


def test_swapped_phantom_is_swapped_back_by_default_and_refused_in_strict(tmp_path, phantom_images):
    ct, pet = phantom_images
    swapped = _swapped_training_case(tmp_path / "swapped", ct, pet, "P1")
    _assert_swap_recognised(swapped, _training_case(tmp_path / "right", ct, pet, "P1"), "P1")


def test_swapped_phantom_gives_the_labels_of_the_unswapped_run(tmp_path, phantom_images):
    ct, pet = phantom_images
    pipeline = Pipeline(load_manifest(DEFAULT_WEIGHTS_DIR))
    right = pipeline.run(_training_case(tmp_path / "right", ct, pet, "P1"), frozenset({1}))
    swapped = pipeline.run(_swapped_training_case(tmp_path / "swapped", ct, pet, "P1"), frozenset({1}))
    assert _arrays(right.labels).any()
    np.testing.assert_array_equal(_arrays(swapped.labels), _arrays(right.labels))
    assert swapped.labels.GetSize() == right.labels.GetSize()


def test_a_pet_in_the_cts_place_beside_a_pet_is_refused_naming_the_ct(tmp_path, phantom_images):
    _, pet = phantom_images
    folder = _training_case(tmp_path / "two-pets", pet, pet, "P1")
    with pytest.raises(InputError, match=r"P1__CT\.nii\.gz.*does not look like a CT in Hounsfield units"):
        read_case(folder)


def test_swapped_real_case_is_recognised(tmp_path):
    sts = require_sts()
    ct, pet = sts / "STS_001_CT_image.nii.gz", sts / "STS_001_PET_image.nii.gz"
    swapped = _swapped_training_case(tmp_path / "swapped", ct, pet, "STS_001")
    _assert_swap_recognised(swapped, _training_case(tmp_path / "right", ct, pet, "STS_001"), "STS_001")


@pytest.mark.slow
def test_swapped_real_case_gives_the_labels_of_the_unswapped_run(tmp_path):
    sts = require_sts()
    ct, pet = sts / "STS_001_CT_image.nii.gz", sts / "STS_001_PET_image.nii.gz"
    pipeline = Pipeline(load_manifest(DEFAULT_WEIGHTS_DIR))
    right = pipeline.run(_training_case(tmp_path / "right", ct, pet, "STS_001"), frozenset({1}))
    swapped = pipeline.run(_swapped_training_case(tmp_path / "swapped", ct, pet, "STS_001"), frozenset({1}))
    np.testing.assert_array_equal(_arrays(swapped.labels), _arrays(right.labels))
