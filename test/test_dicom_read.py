"""Reading DICOM studies: series choice, the volume's geometry and values, geometry problems, transfer syntaxes,
SUV from the header, the single-case command and the batch on DICOM trees.

The studies are built in tmp from the real STS_001 DICOM files of ../shared/data/sts/STS_001_dicom (CT_crop,
PET_crop, PET_raw; skipped with a reason when absent), rewritten with pydicom under random nested file names and
with extra series (a localiser, a PET without attenuation correction, a second CT of another frame of reference),
or edited to show each geometry problem. The NIfTI files beside them (STS_001_{CT,PET}_image.nii.gz) are the
crops' known answer: the same slices, as float32 volumes.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_study import copy_series, random_path
from helpers import REPO, STS_DIR, require_sts, sts_training_layout
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, RLELossless, generate_uid

from hecktor.apps.case_record import files_sha256
from hecktor.core.policy import RECOVERABLE, apply_input_policy
from hecktor.core.types import Case, InputError
from hecktor.io.dicom.case import DicomCaseSource, locate_studies
from hecktor.io.dicom.select import choose_series
from hecktor.io.dicom.series import DicomSeries, scan_dicom_tree
from hecktor.io.dicom.volume import read_series
from hecktor.io.layouts import BrokenCaseSource, default_finders, find_cases
from hecktor.io.read import read_case

# Rewriting the real files re-encodes an SH element that they hold 18 characters long: pydicom warns, harmlessly.
pytestmark = pytest.mark.filterwarnings("ignore:The value length .* allowed for VR SH:UserWarning")

DICOM_DIR = STS_DIR / "STS_001_dicom"
CT_NIFTI = STS_DIR / "STS_001_CT_image.nii.gz"
PET_NIFTI = STS_DIR / "STS_001_PET_image.nii.gz"
GEOMETRY_TOLERANCE_MM = 1e-4
FLOAT32_ULP = float(np.finfo(np.float32).eps)


def _require_dicom() -> Path:
    require_sts()
    if not (DICOM_DIR / "CT_crop" / "image").is_dir():
        pytest.skip(f"the STS_001 DICOM series are not in {DICOM_DIR} (../shared/data is not mounted)")
    return DICOM_DIR


def _files(series: str) -> list[Path]:
    return sorted((_require_dicom() / series / "image").glob("*.dcm"))


def _masks() -> list[Path]:
    return sorted(_require_dicom().glob("*_crop/mask/*.dcm"))


def _real_uid(series: str) -> str:
    return str(pydicom.dcmread(_files(series)[0], stop_before_pixels=True).SeriesInstanceUID)


def _copy_real(series: str, root: Path, rng: random.Random, **kwargs) -> list[Path]:
    """The real series under ``root`` (its own series and instance UIDs unless ``kwargs`` change them)."""
    kwargs.setdefault("series_uid", _real_uid(series))
    kwargs.setdefault("new_instances", False)
    return copy_series(_files(series), root, rng, **kwargs)


def _crop_study(root: Path, seed: int = 0, ct_edit=None, pet_series: str = "PET_crop", pet_edit=None) -> Path:
    """CT_crop and a PET series of STS_001 (edited per slice when asked) under random names in ``root``."""
    rng = random.Random(seed)
    _copy_real("CT_crop", root, rng, edit=ct_edit, **({"series_uid": generate_uid()} if ct_edit else {}))
    _copy_real(pet_series, root, rng, edit=pet_edit, **({"series_uid": generate_uid()} if pet_edit else {}))
    return root


def _nifti(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _geometry_error_mm(image: sitk.Image, reference: sitk.Image) -> float:
    """The largest distance between corresponding corner voxel centres of two grids of one size (mm)."""
    assert image.GetSize() == reference.GetSize()
    size = image.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return max(float(np.linalg.norm(np.subtract(image.TransformIndexToPhysicalPoint(c),
                                                reference.TransformIndexToPhysicalPoint(c)))) for c in corners)


def _codes(case: Case) -> list[str]:
    return [p.code for p in case.problems]


def _strict_refuses(case: Case, fragment: str) -> None:
    apply_input_policy(case.problems, strict=False)  # the default: logged, answered
    with pytest.raises(InputError, match=fragment):
        apply_input_policy(case.problems, strict=True)


# --------------------------------------------------------------------------- the built study


def _set_localiser(ds: pydicom.Dataset, index: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.SeriesNumber = 100


def _set_not_corrected(ds: pydicom.Dataset, index: int) -> None:
    ds.CorrectedImage = ["DECY", "RADL", "DCAL", "NORM"]
    ds.SeriesDescription = "PET NAC"
    ds.SeriesNumber = 101


@pytest.fixture(scope="module")
def built_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STS_001's CT_crop and PET_crop with their RTSTRUCTs, a localiser, a non-corrected PET and a second CT of
    another frame of reference (80 slices: more than the real CT), mixed under random nested names."""
    _require_dicom()
    root = tmp_path_factory.mktemp("built_study")
    rng = random.Random(15)
    _copy_real("CT_crop", root, rng)
    _copy_real("PET_crop", root, rng)
    copy_series(_files("CT_crop")[:2], root, rng, edit=_set_localiser)
    copy_series(_files("PET_crop"), root, rng, edit=_set_not_corrected)
    other_frame = generate_uid()

    def second_ct(ds: pydicom.Dataset, index: int) -> None:
        ds.FrameOfReferenceUID = other_frame
        ds.SeriesDescription = "CT diagnostic venous"
        ds.SeriesNumber = 102

    ct_files = _files("CT_crop")
    copy_series(ct_files, root, rng, edit=second_ct, series_uid=(second := generate_uid()))

    def above(ds: pydicom.Dataset, index: int) -> None:
        second_ct(ds, index)
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 59 * 3.27]

    copy_series(ct_files[:21], root, rng, edit=above, series_uid=second)
    for mask in _masks():
        pydicom.dcmread(mask).save_as(random_path(root, rng), enforce_file_format=True)
    (root / "README.txt").write_text("exported by a PACS\n")
    return root


def test_built_study_takes_the_real_ct_and_attenuation_corrected_pet(built_study: Path) -> None:
    (study,) = locate_studies(built_study)
    assert study.source is not None and study.case_id == "STS_001"
    choice = study.source.choice
    print(f"\nseries found in the built study:\n{choice.table()}")
    assert choice.ct.series_instance_uid == _real_uid("CT_crop")
    assert choice.pet.series_instance_uid == _real_uid("PET_crop")
    assert choice.ambiguity is None and choice.frame_mismatch is None and study.source.problems == ()
    reasons = {v.series.description: (v.taken_as, v.reason) for v in choice.verdicts}
    assert reasons["Topogram 0.6 T20f"][1].startswith("a localiser")
    assert "not attenuation-corrected" in reasons["PET NAC"][1] and "no ATTN" in reasons["PET NAC"][1]
    assert reasons["CT diagnostic venous"] == (None, "no PET shares its frame of reference (others do)")
    assert reasons["IBSI_1_STS_001_CT_mask"][1] == "modality RTSTRUCT is neither CT nor PT"
    assert reasons["IBSI_1_STS_001_CT_image"][0] == "CT" and reasons["IBSI_1_STS_001_PET_image"][0] == "PET"
    assert len(choice.verdicts) == 7


@pytest.fixture(scope="module")
def built_case(built_study: Path) -> Case:
    return read_case(built_study)


def test_crops_read_as_the_nifti_files_hold(built_case: Case) -> None:
    """CT_crop/PET_crop give the NIfTI images: geometry to 1e-4 mm, CT values equal, PET values within one
    float32 rounding (PET_crop is Units GML: already SUVbw, factor 1)."""
    assert _codes(built_case) == []
    for role, image, path in (("CT", built_case.ct, CT_NIFTI), ("PET", built_case.pet, PET_NIFTI)):
        reference, expected = _nifti(path)
        error = _geometry_error_mm(image, reference)
        values = sitk.GetArrayFromImage(image)
        relative = float(np.max(np.abs(values.astype(np.float64) - expected) / np.maximum(np.abs(expected), 1e-6)))
        print(f"\n{role}: size {image.GetSize()}, corner positions within {error:.2g} mm of the NIfTI, spacing "
              f"{image.GetSpacing()}, values: {np.mean(values == expected):.1%} identical, max relative "
              f"difference {relative:.3g}")
        assert error < GEOMETRY_TOLERANCE_MM
        np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), rtol=0, atol=GEOMETRY_TOLERANCE_MM)
        np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-9)
        if role == "CT":
            np.testing.assert_array_equal(values, expected)
        else:
            np.testing.assert_allclose(values, expected, rtol=FLOAT32_ULP, atol=0)


def test_case_records_the_series_it_read(built_case: Case) -> None:
    ct, pet = built_case.dicom_series
    assert (ct.role, pet.role) == ("CT", "PET")
    assert ct.series_instance_uid == _real_uid("CT_crop") and pet.series_instance_uid == _real_uid("PET_crop")
    assert ct.patient_id == "STS_001" and ct.frame_of_reference_uid == pet.frame_of_reference_uid
    assert len(ct.files) == built_case.ct.GetSize()[2] == 59
    # Stacking order: index z, inferior to superior.
    heights = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in ct.files]
    assert heights == sorted(heights)
    assert ct.sop_instance_uids == tuple(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                                         for f in ct.files)


def test_gdcm_reads_the_same_ct() -> None:
    """SimpleITK's own DICOM reader (GDCM) on the original CT_crop folder: the same volume."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(_require_dicom() / "CT_crop" / "image")))
    gdcm = reader.Execute()
    (study,) = scan_dicom_tree(DICOM_DIR / "CT_crop" / "image").studies
    _, image = read_series(study.series[0], "CT")
    assert _geometry_error_mm(image, gdcm) < 1e-6
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(gdcm).astype(np.float32))


# --------------------------------------------------------------------------- SUV from the header


def test_suv_known_answer_on_the_raw_whole_body_pet(tmp_path: Path) -> None:
    """PET_raw (Units BQML, START) through the reader, on the NIfTI's grid: the SUVbw the crop holds."""
    _require_dicom()
    study = tmp_path / "study"
    study.mkdir()
    for name in ("CT_crop", "PET_raw"):
        (study / name).symlink_to(DICOM_DIR / name / "image")
    case = read_case(study)
    assert _codes(case) == []
    reference, expected = _nifti(PET_NIFTI)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(case.pet, reference, sitk.Transform(), sitk.sitkLinear, 0.0))
    body = expected > 0.1
    relative = np.abs(on_grid[body] - expected[body]) / expected[body]
    absolute = np.abs(on_grid.astype(np.float64) - expected)
    # PET_crop stores each slice as int16 with its own slope (about the slice's peak / 32767): the crop's own
    # rounding of the raw SUVs reaches 1.1 of that quantum (it truncates rather than rounds, measured per slice).
    quantum = expected.reshape(expected.shape[0], -1).max(axis=1) / 32767.0
    print(f"\nSUVbw of PET_raw through the reader vs STS_001_PET_image.nii.gz ({int(body.sum())} voxels > 0.1 SUV): "
          f"relative error median {np.median(relative):.2g}, 99th percentile {np.percentile(relative, 99):.2g}, "
          f"max {relative.max():.2g}; absolute max {absolute.max():.2g} SUV (the crop's int16 quantum up to "
          f"{quantum.max():.2g})")
    assert np.median(relative) < 1e-5
    assert np.all(absolute <= quantum[:, None, None] * 1.25 + 1e-5)


def test_pet_header_without_weight_is_a_named_problem(tmp_path: Path) -> None:
    def no_weight(ds: pydicom.Dataset, index: int) -> None:
        del ds.PatientWeight

    case = read_case(_crop_study(tmp_path, pet_series="PET_raw", pet_edit=no_weight))
    (problem,) = case.problems
    assert problem.code == "dicom-suv-tags" and "PatientWeight (0010,1030)" in problem.problem
    assert "SUV estimated from the image" in problem.fallback
    # The run-time estimate, not Bq/mL: body tissue near SUV 0.58, the values far below Bq/mL.
    assert float(sitk.GetArrayViewFromImage(case.pet).max()) < 100
    _strict_refuses(case, "PatientWeight")


# --------------------------------------------------------------------------- geometry problems


def test_missing_slice_is_interpolated(tmp_path: Path) -> None:
    root = tmp_path / "study"
    _crop_study(root)
    ct_files = {float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]): f
                for f in root.rglob("IM*") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"}
    heights = sorted(ct_files)
    ct_files[heights[30]].unlink()
    case = read_case(root)
    assert _codes(case) == ["dicom-missing-slices"]
    assert "misses 1 slice" in case.problems[0].problem
    reference, expected = _nifti(CT_NIFTI)
    assert _geometry_error_mm(case.ct, reference) < GEOMETRY_TOLERANCE_MM
    values = sitk.GetArrayFromImage(case.ct)
    kept = [k for k in range(59) if k != 30]
    np.testing.assert_array_equal(values[kept], expected[kept])
    np.testing.assert_allclose(values[30], (expected[29] + expected[31]) / 2, atol=1e-3)
    _strict_refuses(case, "misses 1 slice")


def test_uneven_spacing_is_resampled(tmp_path: Path) -> None:
    def lift_upper_half(ds: pydicom.Dataset, index: int) -> None:
        if index > 30:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 1.0]  # one gap of 4.27 mm among 3.27 mm ones

    case = read_case(_crop_study(tmp_path, ct_edit=lift_upper_half))
    assert _codes(case) == ["dicom-uneven-spacing"]
    assert "resampled linearly" in case.problems[0].fallback
    _, expected = _nifti(CT_NIFTI)
    assert case.ct.GetSpacing()[2] == pytest.approx(3.27, abs=1e-9)
    assert case.ct.GetSize()[2] == 59  # floor(190.66 / 3.27) + 1
    # Below the uneven gap the regular grid meets the acquired slices: their values exactly.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.ct)[:31], expected[:31])
    _strict_refuses(case, "uneven")


def test_gantry_tilt_is_kept_with_a_sheared_direction(tmp_path: Path) -> None:
    tilt = math.radians(12.0)

    def tilted(ds: pydicom.Dataset, index: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + index * 3.27 * math.tan(tilt), z]

    root = _crop_study(tmp_path, ct_edit=tilted)
    case = read_case(root)
    assert _codes(case) == ["dicom-gantry-tilt"]
    assert "12.00 degrees" in case.problems[0].problem
    ct_series = case.dicom_series[0]
    for k, path in enumerate(ct_series.files):
        position = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
        assert np.linalg.norm(np.subtract(case.ct.TransformIndexToPhysicalPoint((0, 0, k)), position)) < 1e-6
    _, expected = _nifti(CT_NIFTI)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.ct), expected)  # no resampling
    _strict_refuses(case, "gantry tilt")


def test_mixed_orientation_keeps_the_largest_group(tmp_path: Path) -> None:
    turn = math.radians(30.0)

    def turned_top(ds: pydicom.Dataset, index: int) -> None:
        if index >= 56:
            ds.ImageOrientationPatient = [math.cos(turn), math.sin(turn), 0.0, -math.sin(turn), math.cos(turn), 0.0]

    case = read_case(_crop_study(tmp_path, ct_edit=turned_top))
    assert _codes(case) == ["dicom-mixed-orientation"]
    assert "56 slices of the largest group stacked, the other 3 left out" in case.problems[0].fallback
    _, expected = _nifti(CT_NIFTI)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.ct), expected[:56])
    _strict_refuses(case, "different orientation")


# --------------------------------------------------------------------------- transfer syntaxes


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_series_read_as_uncompressed(tmp_path: Path, syntax: str) -> None:
    def compressed(ds: pydicom.Dataset, index: int) -> None:
        ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "pylibjpeg")

    case = read_case(_crop_study(tmp_path, ct_edit=compressed))
    assert _codes(case) == []
    _, expected = _nifti(CT_NIFTI)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.ct), expected)


def test_undecodable_transfer_syntax_is_refused_by_name(tmp_path: Path) -> None:
    def as_mpeg2(ds: pydicom.Dataset, index: int) -> None:
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG2MPML

    with pytest.raises(InputError, match=r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\)"):
        read_case(_crop_study(tmp_path, ct_edit=as_mpeg2))


# --------------------------------------------------------------------------- choice rules (headers only)


def _series(modality: str, count: int, frame: str = "F1", number: int = 1, **fields) -> DicomSeries:
    return DicomSeries(
        patient_id="P", study_instance_uid="S", series_instance_uid=f"U{number}", series_number=number,
        modality=modality, sop_class_uid={"CT": "1.2.840.10008.5.1.4.1.1.2", "PT": "1.2.840.10008.5.1.4.1.1.128"}
        .get(modality, "1.2.840.10008.5.1.4.1.1.481.3"), image_type=fields.get("image_type", ("ORIGINAL", "PRIMARY")),
        corrected_image=fields.get("corrected_image", ("DECY", "ATTN")), description=fields.get("description", ""),
        frame_of_reference_uid=frame, transfer_syntax_uids=("1.2.840.10008.1.2.1",), max_frames=1,
        files=tuple(Path(f"/x/{number}/{i}") for i in range(count)))


def test_equal_pets_are_ambiguous_and_the_lowest_series_number_is_taken() -> None:
    choice = choose_series([_series("CT", 100, number=2), _series("PT", 80, number=5), _series("PT", 80, number=4)])
    assert choice.pet.series_number == 4
    assert choice.ambiguity is not None and "2 PET series qualify with 80 slices" in choice.ambiguity
    verdicts = {v.series.series_number: v.reason for v in choice.verdicts}
    assert verdicts[5] == "as many slices as the chosen PET (80): ambiguous"


def test_ambiguous_study_is_a_problem_strict_refuses(tmp_path: Path) -> None:
    root = _crop_study(tmp_path)
    copy_series(_files("PET_crop"), root, random.Random(3),
                edit=lambda ds, i: setattr(ds, "SeriesNumber", 7))
    case = read_case(root)
    assert _codes(case) == ["dicom-series-ambiguous"]
    assert "IBSI_1_STS_001_PET_image" in case.problems[0].problem
    assert case.dicom_series[1].series_instance_uid == _real_uid("PET_crop")  # series 1 before series 7
    _strict_refuses(case, "2 PET series qualify")


def test_choice_rules_without_corrected_image_or_shared_frame() -> None:
    nac = _series("PT", 90, number=3, corrected_image=(), description="WB NAC")
    ac = _series("PT", 60, frame="F2", number=4, corrected_image=())
    choice = choose_series([_series("CT", 100, number=2), nac, ac])
    assert choice.pet is ac  # the NAC description excludes the larger series; the frames differ
    assert choice.frame_mismatch is not None and "different" in choice.frame_mismatch
    with pytest.raises(InputError, match="no attenuation-corrected PET series") as refused:
        choose_series([_series("CT", 100), nac, _series("PT", 2, number=9)])
    assert "fewer than 10" in str(refused.value) and "'WB NAC'" in str(refused.value)


# --------------------------------------------------------------------------- commands and layouts


def _set_patient(patient_id: str, study_uid: str) -> object:
    def edit(ds: pydicom.Dataset, index: int) -> None:
        ds.PatientID = patient_id
        ds.PatientName = "Doe^Jane"
        ds.PatientBirthDate = "19610203"
        ds.StudyInstanceUID = study_uid

    return edit


def _patient_study(root: Path, patient_id: str, seed: int) -> Path:
    rng, study_uid = random.Random(seed), generate_uid()
    copy_series(_files("CT_crop"), root, rng, edit=_set_patient(patient_id, study_uid))
    copy_series(_files("PET_crop"), root, rng, edit=_set_patient(patient_id, study_uid))
    return root


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hecktor", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=900)


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_dicom()
    tree = tmp_path_factory.mktemp("two_patients")
    _patient_study(tree / "site-a", "PAT-A", 1)
    _patient_study(tree / "site-a", "PAT-B", 2)  # two patients mixed in one folder tree
    (tree / "site-a" / "ehr.json").write_text(json.dumps({"Age": 99}))  # shared: nobody's
    return tree


def test_single_case_command_on_a_dicom_study(tmp_path: Path) -> None:
    _require_dicom()
    study = _patient_study(tmp_path / "study", "PAT-A", 4)
    (study / "ehr.json").write_text(json.dumps({"Age": 61, "Gender": 1}))
    done = _run("run", "--input", study, "--output", tmp_path / "out", "--tasks", "1,2,3")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "case.json").read_text())
    assert record["case_id"] == "PAT-A"
    (source,) = locate_studies(study)
    assert source.source is not None
    expected = {"CT": source.source.choice.ct, "PET": source.source.choice.pet}
    assert [(s["role"], s["series_instance_uid"], s["instances"]) for s in record["dicom_series"]] == [
        (role, series.series_instance_uid, 59) for role, series in expected.items()]
    inputs = {entry["role"]: entry for entry in record["inputs"]}
    assert inputs["ct"]["sha256"] == files_sha256(expected["CT"].files)
    assert inputs["pet"]["sha256"] == files_sha256(expected["PET"].files)
    assert inputs["ehr"]["path"] == str(study / "ehr.json")
    text = done.stderr + json.dumps(record)
    for identifying in ("Doe", "Jane", "19610203"):
        assert identifying not in text
    assert "series found" in done.stderr and "taken as CT" in done.stderr


def test_batch_finds_one_case_per_patient_named_by_patient_id(two_patients: Path) -> None:
    layout, sources = find_cases(two_patients)
    assert layout == "dicom studies"
    assert sorted(s.case_id for s in sources) == ["PAT-A", "PAT-B"]
    assert all(isinstance(s, DicomCaseSource) and s.ehr is None for s in sources)  # the shared ehr.json: no one's


def test_batch_runs_a_tree_of_two_patients(two_patients: Path, tmp_path: Path) -> None:
    done = _run("batch", two_patients, tmp_path / "out", "--tasks", "1", "--no-qc")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sorted((row["case_id"], row["status"]) for row in summary["cases"]) == [("PAT-A", "ok"), ("PAT-B", "ok")]
    for patient in ("PAT-A", "PAT-B"):
        record = json.loads((tmp_path / "out" / patient / "case.json").read_text())
        assert [s["role"] for s in record["dicom_series"]] == ["CT", "PET"]


def test_id_from_names_cases_by_pseudonym(two_patients: Path, tmp_path: Path) -> None:
    table = tmp_path / "ids.csv"
    table.write_text("PatientID,case_id\nPAT-A,HN-0001\n")
    _, sources = find_cases(two_patients, default_finders(table))
    by_id = {s.case_id: s for s in sources}
    assert set(by_id) == {"HN-0001", "unmapped-1"}
    broken = by_id["unmapped-1"]
    assert isinstance(broken, BrokenCaseSource) and "not in the --id-from table" in broken.error
    assert "PAT-B" not in broken.error  # the PatientID the table is there to hide
    with pytest.raises(InputError, match="not in the --id-from table"):
        broken.read()


def test_case_folders_and_csv_rows_may_hold_dicom_studies(tmp_path: Path) -> None:
    """A cohort mixing image-layout folders and DICOM study folders; a CSV row naming a DICOM folder and an ID."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    sts_training_layout(cohort, "STS_002")
    _patient_study(cohort / "scan-0042", "PAT-C", 5)
    layout, sources = find_cases(cohort)
    assert layout == "case folders"
    assert sorted(s.case_id for s in sources) == ["PAT-C", "STS_002"]
    table = tmp_path / "cases.csv"
    table.write_text("path,case_id\ncohort/scan-0042,CSV-ID\n")
    _, (row,) = find_cases(table)
    assert isinstance(row, DicomCaseSource) and row.case_id == "CSV-ID"
    assert row.read().case_id == "CSV-ID"


def test_ehr_json_beside_a_single_study_is_used(tmp_path: Path) -> None:
    _require_dicom()
    study = _crop_study(tmp_path / "study")
    (study / "ehr.json").write_text(json.dumps({"Age": 61}))
    assert read_case(study).clinical.age == 61


def test_every_dicom_problem_code_is_documented() -> None:
    codes = {"dicom-series-ambiguous", "dicom-frame-of-reference", "dicom-suv-tags", "dicom-missing-slices",
             "dicom-uneven-spacing", "dicom-gantry-tilt", "dicom-mixed-orientation"}
    assert codes <= set(RECOVERABLE)


def test_the_package_imports_without_pydicom(tmp_path: Path) -> None:
    """The platform image has no pydicom: importing the readers and faces needs none, and a DICOM input then is
    an input error naming what to install."""
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    code = ("import sys\nsys.modules['pydicom'] = None\n"
            "import hecktor.io.read, hecktor.io.layouts, hecktor.apps.cli, hecktor.apps.batch, hecktor.pipeline\n"
            "from hecktor.core.types import InputError\n"
            "try:\n    hecktor.io.read.read_case(sys.argv[1])\nexcept InputError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "requirements/dicom.txt" in done.stdout
