"""DICOM outputs (``--dicom-out``): DICOM-SEG and RTSTRUCT on the CT series, checked by independent means.

Labels: the real expert mask of the sarcoma case STS_001 (../shared/data/sts, skipped when absent) as GTVp, plus
SYNTHETIC parts, labelled as such: a sphere and a small blob as GTVn, and a hole carved into GTVp on one slice
with a GTVn island inside it (nested contours). The CT they reference is either the real DICOM CT series of
STS_001 (its real UIDs) or, for the NIfTI CT, the series the writer makes. Checks:

- the SEG read back with highdicom is the label image voxel for voxel, also through its own geometry;
- the RTSTRUCT rasterised back with skimage's polygon fill (even-odd across nested contours, on the geometry of the
  CT instances each contour references) gives Dice >= 0.95 per class and per lesion of >= 1 mL, and the same
  connected-component count (cc3d);
- both reference the CT's study, series, instances and frame of reference;
- ``dciodvfy`` (Debian's dicom3tools; skipped with a reason when absent) reports no error of our making;
- ``inference.py --dicom-out`` publishes them with the challenge outputs, and a rerun without removes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, STS_DIR, files_under, require_sts, run_inference

from hecktor.core.types import Case, ClinicalRecord, DicomSeriesRef, InputError
from hecktor.io.write import SEGMENTATION_PATH, StagedOutputs

pydicom = pytest.importorskip("pydicom", reason="requirements/dicom.txt is not installed")
hd = pytest.importorskip("highdicom", reason="requirements/dicom.txt is not installed")
skimage_draw = pytest.importorskip("skimage.draw", reason="scikit-image (the independent rasteriser) is missing")

from hecktor.io.contours import mask_contours  # noqa: E402 (after the skips: it needs contourpy only)
from hecktor.io.dicom_out import (  # noqa: E402
    CT_SERIES_DIR,
    RTSTRUCT_PATH,
    SEG_PATH,
    DicomOutputPlan,
    SegmentationSource,
    plan_dicom_outputs,
)

DICOM_CT_DIR = STS_DIR / "STS_001_dicom" / "CT_crop" / "image"
SOURCE = SegmentationSource(engine="pet-threshold", version="test", trained_on_real_data=False)
MIN_LESION_ML = 1.0


# --------------------------------------------------------------------------- fixtures


def sorted_ct_files(folder: Path) -> list[Path]:
    """A DICOM CT series' files in slice order along the slice normal (independent of the product's reader)."""
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.glob("*.dcm"))}

    def along_normal(path: Path) -> float:
        header = headers[path]
        orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
        return float(np.cross(orientation[:3], orientation[3:]) @ np.asarray(header.ImagePositionPatient, float))

    return sorted(headers, key=along_normal)


def with_synthetic_parts(gtvp: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The real GTVp mask plus SYNTHETIC parts: a ~3 mL sphere and a 4-voxel blob of GTVn away from it, and on
    GTVp's largest slice a hole holding a GTVn island (nested contours of two classes)."""
    labels = (gtvp > 0).astype(np.uint8)
    z, y, x = np.nonzero(labels)
    box_high = np.array([z.max(), y.max(), x.max()])
    shape = np.array(labels.shape)
    # Sphere of radius 9 mm centred beyond GTVp's bounding box along y (inside the CT).
    centre = np.array([int(np.median(z)), min(box_high[1] + 20, shape[1] - 15), int(np.median(x))])
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    sphere = (((zz - centre[0]) * spacing[2]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2
              + ((xx - centre[2]) * spacing[0]) ** 2) <= 9.0 ** 2
    assert not (sphere & (labels > 0)).any()
    labels[sphere] = 2
    labels[centre[0], 5:7, 5:7] = 2  # a small lesion (< 1 mL) in a corner
    biggest = int(np.argmax(labels.reshape(shape[0], -1).__eq__(1).sum(axis=1)))
    inside = np.argwhere(labels[biggest] == 1)
    cy, cx = np.median(inside, axis=0).astype(int)
    assert (labels[biggest, cy - 4:cy + 5, cx - 4:cx + 5] == 1).all(), "the hole must lie inside GTVp"
    labels[biggest, cy - 4:cy + 5, cx - 4:cx + 5] = 0
    labels[biggest, cy - 1:cy + 2, cx - 1:cx + 2] = 2
    return labels


def label_image(values: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    return image


def write_plan(plan: DicomOutputPlan, folder: Path) -> Path:
    for relative, data in plan.encoded():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


class Written:
    """One writer run: the labels, the CT instance files referenced (slice order) and the output folder."""

    def __init__(self, name: str, labels: np.ndarray, grid: sitk.Image, ct_files: list[Path], folder: Path,
                 plan: DicomOutputPlan) -> None:
        self.name, self.labels, self.grid, self.ct_files, self.folder, self.plan = (
            name, labels, grid, ct_files, folder, plan)

    @property
    def ct_headers(self) -> list:
        return [pydicom.dcmread(path, stop_before_pixels=True) for path in self.ct_files]


@pytest.fixture(scope="module")
def from_nifti(tmp_path_factory) -> Written:
    """NIfTI CT of STS_001: the writer makes the CT series too."""
    sts = require_sts()
    ct = sitk.ReadImage(str(sts / "STS_001_CT_image.nii.gz"))
    mask = sitk.ReadImage(str(sts / "STS_001_CT_mask.nii.gz"))
    labels = with_synthetic_parts(sitk.GetArrayFromImage(mask), ct.GetSpacing())
    case = Case("STS_001", ct, ct, ClinicalRecord(), sts / "STS_001_CT_image.nii.gz", sts / "STS_001_PET_image.nii.gz")
    plan = plan_dicom_outputs(case, label_image(labels, ct), SOURCE)
    folder = write_plan(plan, tmp_path_factory.mktemp("from_nifti"))
    ct_files = [folder / path for path in plan.paths if path.parent == CT_SERIES_DIR]
    return Written("nifti", labels, ct, ct_files, folder, plan)


def dicom_case(ct_files: list[Path], ct: sitk.Image) -> Case:
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct_files]
    first = headers[0]
    series = DicomSeriesRef(role="CT", patient_id=str(first.PatientID), study_instance_uid=first.StudyInstanceUID,
                            series_instance_uid=first.SeriesInstanceUID,
                            frame_of_reference_uid=first.FrameOfReferenceUID, sop_class_uid=first.SOPClassUID,
                            sop_instance_uids=tuple(h.SOPInstanceUID for h in headers), files=tuple(ct_files))
    return Case("STS_001", ct, ct, ClinicalRecord(), ct_files[0], ct_files[0], dicom_series=(series,))


@pytest.fixture(scope="module")
def from_dicom(tmp_path_factory) -> Written:
    """The real DICOM CT series of STS_001: SEG and RTSTRUCT reference its own instances."""
    sts = require_sts()
    if not DICOM_CT_DIR.is_dir():
        pytest.skip(f"{DICOM_CT_DIR} not found (../shared/data is not mounted)")
    ct_files = sorted_ct_files(DICOM_CT_DIR)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ct_files])
    ct = reader.Execute()
    mask = sitk.Resample(sitk.ReadImage(str(sts / "STS_001_CT_mask.nii.gz")), ct, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    labels = with_synthetic_parts(sitk.GetArrayFromImage(mask), ct.GetSpacing())
    plan = plan_dicom_outputs(dicom_case(ct_files, ct), label_image(labels, ct), SOURCE)
    folder = write_plan(plan, tmp_path_factory.mktemp("from_dicom"))
    return Written("dicom", labels, ct, ct_files, folder, plan)


@pytest.fixture(params=["nifti", "dicom"])
def written(request) -> Written:
    return request.getfixturevalue(f"from_{request.param}")


# --------------------------------------------------------------------------- independent readers


def rasterise_rtstruct(rtstruct, headers: list) -> dict[str, np.ndarray]:
    """Each ROI as a (slices, rows, columns) mask: every contour filled with skimage's polygon (pixel centres
    inside), XOR-ed into the slice of the instance it references (the even-odd rule for nested contours)."""
    slice_of = {h.SOPInstanceUID: index for index, h in enumerate(headers)}
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    masks = {}
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    for roi_contour in rtstruct.ROIContourSequence:
        mask = np.zeros((len(headers), rows, columns), dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            index = slice_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            header = headers[index]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            relative = points - np.asarray(header.ImagePositionPatient, dtype=float)
            orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
            normal = np.cross(orientation[:3], orientation[3:])
            assert np.abs(relative @ normal).max() < 1e-3, "a contour must lie in the plane of its CT instance"
            row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
            fill_rows, fill_columns = skimage_draw.polygon(relative @ orientation[3:] / row_spacing,
                                                           relative @ orientation[:3] / column_spacing,
                                                           shape=(rows, columns))
            filled = np.zeros((rows, columns), dtype=bool)
            filled[fill_rows, fill_columns] = True
            mask[index] ^= filled
        masks[names[roi_contour.ReferencedROINumber]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def seg_labels_on_grid(seg, grid: sitk.Image) -> np.ndarray:
    """The SEG's label volume placed by its OWN geometry (highdicom's affine) and resampled onto the CT grid."""
    volume = seg.get_volume(combine_segments=True)
    affine = np.asarray(volume.affine, dtype=float)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.astype(np.uint8)))  # axes (slice, row, col)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    # sitk's x, y, z are the array's axes 2, 1, 0.
    image.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    image.SetDirection((axes[:, [2, 1, 0]] / spacing[[2, 1, 0]]).ravel().tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    return sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8))


# --------------------------------------------------------------------------- SEG


def test_seg_reads_back_as_the_label_image_exactly(written):
    seg = hd.seg.segread(written.folder / SEG_PATH)
    uids = [h.SOPInstanceUID for h in written.ct_headers]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                             assert_missing_frames_are_empty=True)
    assert back.shape == written.labels.shape
    assert np.array_equal(back, written.labels), "the SEG must give the label image back voxel for voxel"
    assert np.array_equal(seg_labels_on_grid(seg, written.grid), written.labels), "SEG geometry is off the CT grid"
    segments = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert segments == {1: "GTVp", 2: "GTVn"}
    assert seg.SegmentationType == "BINARY"


def test_a_lesion_free_case_writes_empty_segments_and_empty_rois(from_nifti, tmp_path):
    empty = np.zeros_like(from_nifti.labels)
    case = Case("STS_001", from_nifti.grid, from_nifti.grid, ClinicalRecord(), Path("ct"), Path("pet"))
    folder = write_plan(plan_dicom_outputs(case, label_image(empty, from_nifti.grid), SOURCE), tmp_path)
    seg = hd.seg.segread(folder / SEG_PATH)
    uids = [h.SOPInstanceUID for h in from_nifti.ct_headers]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                             assert_missing_frames_are_empty=True)
    assert not back.any()
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["GTVp", "GTVn"]
    rtstruct = pydicom.dcmread(folder / RTSTRUCT_PATH)
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["GTVp", "GTVn"]
    assert all("ContourSequence" not in item for item in rtstruct.ROIContourSequence)
    if shutil.which("dciodvfy"):
        for path in (folder / SEG_PATH, folder / RTSTRUCT_PATH):
            assert error_lines(dciodvfy(path)) == [], dciodvfy(path)


# --------------------------------------------------------------------------- RTSTRUCT


def test_rtstruct_rasterised_back_gives_the_lesions(written):
    rtstruct = pydicom.dcmread(written.folder / RTSTRUCT_PATH)
    masks = rasterise_rtstruct(rtstruct, written.ct_headers)
    assert set(masks) == {"GTVp", "GTVn"}
    voxel_ml = float(np.prod(written.grid.GetSpacing())) / 1000.0
    for label, name in ((1, "GTVp"), (2, "GTVn")):
        reference, back = written.labels == label, masks[name]
        components, count = cc3d.connected_components(reference, connectivity=26, return_N=True)
        _, count_back = cc3d.connected_components(back, connectivity=26, return_N=True)
        big = [i for i in range(1, count + 1) if (components == i).sum() * voxel_ml >= MIN_LESION_ML]
        per_lesion = [dice(components == i, back & (components == i)) for i in big]
        in_big = np.isin(components, big)
        class_dice = dice(reference & in_big, back & in_big)
        print(f"{written.name} {name}: Dice {class_dice:.4f} over {len(big)} lesion(s) >= {MIN_LESION_ML} mL "
              f"(per lesion {[round(d, 4) for d in per_lesion]}; whole class {dice(reference, back):.4f}); "
              f"lesions {count} -> {count_back}; voxels {int(reference.sum())} -> {int(back.sum())}")
        assert big, f"the fixture must hold a {name} lesion of >= {MIN_LESION_ML} mL"
        assert class_dice >= 0.95 and min(per_lesion) >= 0.95
        assert count_back == count


def test_contours_give_their_mask_back_with_holes_edges_and_diagonals():
    """SYNTHETIC 2-D masks: a ring (hole), an island in the hole, pixels touching the edge and diagonal
    neighbours; the polygons filled by centre sampling with the even-odd rule give the mask exactly."""
    mask = np.zeros((12, 14), dtype=bool)
    mask[1:10, 1:10] = True
    mask[3:8, 3:8] = False
    mask[5, 5] = True
    mask[0, 12:14] = True
    mask[10, 11] = mask[11, 12] = True
    back = np.zeros_like(mask)
    for polygon in mask_contours(mask):
        rows, columns = skimage_draw.polygon(polygon[:, 1], polygon[:, 0], shape=mask.shape)
        filled = np.zeros_like(mask)
        filled[rows, columns] = True
        back ^= filled
    assert np.array_equal(back, mask)
    assert mask_contours(np.zeros((4, 4))) == []


# --------------------------------------------------------------------------- references


def test_both_reference_the_ct_series(written):
    headers = written.ct_headers
    first = headers[0]
    uids = [h.SOPInstanceUID for h in headers]
    seg = pydicom.dcmread(written.folder / SEG_PATH)
    rtstruct = pydicom.dcmread(written.folder / RTSTRUCT_PATH)
    for ds in (seg, rtstruct):
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert ds.PatientID == first.PatientID
        assert ds.SeriesInstanceUID not in {first.SeriesInstanceUID}
    referenced_series = seg.ReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced_series.ReferencedInstanceSequence) == sorted(uids)
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == uids
    assert {i.ReferencedSOPClassUID for i in series.ContourImageSequence} == {first.SOPClassUID}
    for roi in rtstruct.StructureSetROISequence:
        assert roi.ReferencedFrameOfReferenceUID == first.FrameOfReferenceUID
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                  for item in rtstruct.ROIContourSequence for c in item.get("ContourSequence", [])}
    assert referenced and referenced <= set(uids)
    if written.name == "dicom":
        assert written.plan.references_input_series and written.plan.paths == (SEG_PATH, RTSTRUCT_PATH)
        assert first.SeriesInstanceUID == pydicom.dcmread(sorted_ct_files(DICOM_CT_DIR)[0]).SeriesInstanceUID


def test_the_written_ct_series_is_the_ct(from_nifti):
    """NIfTI input: the CT series written for the contours to reference holds the CT's HU on its grid."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in sorted_ct_files(from_nifti.folder / CT_SERIES_DIR)])
    back = reader.Execute()
    assert back.GetSize() == from_nifti.grid.GetSize()
    assert np.allclose(back.GetOrigin(), from_nifti.grid.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), from_nifti.grid.GetSpacing(), atol=1e-4)
    assert np.allclose(back.GetDirection(), from_nifti.grid.GetDirection(), atol=1e-6)
    expected = np.rint(sitk.GetArrayFromImage(from_nifti.grid))
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
    # The same CT gives the same UIDs (a planning system that holds it already attaches new contours to it).
    again = plan_dicom_outputs(Case("STS_001", from_nifti.grid, from_nifti.grid, ClinicalRecord(), Path("ct"),
                                    Path("pet")), label_image(from_nifti.labels, from_nifti.grid), SOURCE)
    assert [h.SOPInstanceUID for h in again.headers] == [h.SOPInstanceUID for h in from_nifti.plan.headers]


def test_a_dicom_series_off_the_label_grid_gets_a_written_series_in_its_study(from_dicom, tmp_path):
    """A CT grid that is not the series' own (SYNTHETIC: the series' last slice dropped from the image): the
    writer joins the series' patient, study and frame of reference with a CT series of its own."""
    cropped = from_dicom.grid[:, :, :-1]
    case = dicom_case(from_dicom.ct_files, cropped)
    plan = plan_dicom_outputs(case, label_image(from_dicom.labels[:-1], cropped), SOURCE)
    assert not plan.references_input_series and len(plan.paths) == cropped.GetSize()[2] + 2
    first, written_first = from_dicom.ct_headers[0], plan.headers[0]
    assert written_first.StudyInstanceUID == first.StudyInstanceUID
    assert written_first.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert written_first.SeriesInstanceUID != first.SeriesInstanceUID


def test_a_sheared_ct_grid_is_refused_with_a_reason():
    grid = sitk.Image(8, 8, 4, sitk.sitkFloat32)
    grid.SetDirection((1.0, 0.3, 0.0, 0.0, 0.95, 0.0, 0.0, 0.0, 1.0))
    case = Case("sheared", grid, grid, ClinicalRecord(), Path("ct"), Path("pet"))
    with pytest.raises(InputError, match="not perpendicular"):
        plan_dicom_outputs(case, label_image(np.zeros((4, 8, 8), np.uint8), grid), SOURCE)


# --------------------------------------------------------------------------- dciodvfy


def dciodvfy(path: Path) -> str:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def error_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("Error")]


def test_dciodvfy_finds_no_error(written):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found (Debian: apt-get install dicom3tools)")
    # The real CT series has an error of its own (a 17-character Study ID, SH allows 16); our files must not
    # inherit it: values invalid for their VR are not copied (written empty when Type 2).
    source_errors = set(error_lines(dciodvfy(written.ct_files[0]))) if written.name == "dicom" else set()
    files = [written.folder / SEG_PATH, written.folder / RTSTRUCT_PATH]
    if written.name == "nifti":
        files += written.ct_files
    warnings = set()
    for path in files:
        report = dciodvfy(path)
        if path.parent.name != "ct" or path == written.ct_files[0]:
            print(f"--- dciodvfy {path.relative_to(written.folder)} ({written.name} input)\n{report}")
        assert error_lines(report) == [], f"{path}: {report}"
        warnings |= {line for line in report.splitlines() if line.startswith("Warning")}
    print(f"{written.name}: source CT errors {sorted(source_errors)}; warnings in ours {sorted(warnings)}")


# --------------------------------------------------------------------------- the commands


def test_run_with_dicom_out_publishes_them_with_the_outputs_and_a_rerun_without_removes_them(tmp_path):
    out = tmp_path / "out"
    result = run_inference(REPO / "test" / "sample-case", out, "--dicom-out")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "case.json").read_text())
    listed = set(record["outputs"])
    on_disk = {p.relative_to(out).as_posix() for p in files_under(out)}
    assert on_disk == listed | {"case.json"}, "case.json lists exactly the published files"
    assert {SEGMENTATION_PATH.as_posix(), "rfs.json", "hpv-status.json", SEG_PATH.as_posix(),
            RTSTRUCT_PATH.as_posix()} <= listed
    ct_files = sorted(p for p in listed if p.startswith(f"{CT_SERIES_DIR.as_posix()}/"))
    labels = sitk.ReadImage(str(out / SEGMENTATION_PATH))
    assert len(ct_files) == labels.GetSize()[2], "the sample case is not DICOM: its CT is written as a series"
    # The SEG gives the published segmentation back exactly.
    headers = [pydicom.dcmread(out / p, stop_before_pixels=True) for p in ct_files]
    back = hd.seg.segread(out / SEG_PATH).get_pixels_by_source_instance(
        source_sop_instance_uids=[h.SOPInstanceUID for h in headers], combine_segments=True,
        assert_missing_frames_are_empty=True)
    assert np.array_equal(back, sitk.GetArrayFromImage(labels))

    rerun = run_inference(REPO / "test" / "sample-case", out)
    assert rerun.returncode == 0, rerun.stderr
    assert not (out / "dicom").exists(), "a run without --dicom-out leaves none of the earlier DICOM files"
    assert not any(p.startswith("dicom/") for p in json.loads((out / "case.json").read_text())["outputs"])


def test_dicom_out_without_task_1_is_refused_before_any_work(tmp_path):
    result = run_inference(REPO / "test" / "sample-case", tmp_path / "out", "--dicom-out", "--tasks", "2")
    assert result.returncode == 2
    assert "needs Task 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_batch_with_dicom_out_resumes_by_the_dicom_choice(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "P1").symlink_to(REPO / "test" / "sample-case", target_is_directory=True)
    out = tmp_path / "out"

    def batch(*extra: str) -> str:
        result = subprocess.run([sys.executable, "-m", "hecktor", "batch", str(cohort), str(out), "--no-qc", *extra],
                                capture_output=True, text=True, cwd=REPO, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr
        return result.stderr

    batch("--dicom-out")
    assert (out / "P1" / SEG_PATH).is_file() and (out / "P1" / RTSTRUCT_PATH).is_file()
    assert json.loads((out / "summary.json").read_text())["dicom_out"] is True
    assert "1 skipped" in batch("--dicom-out"), "the same choice again: the case is complete"
    log = batch()
    assert "1 ok" in log, "without --dicom-out the case is recomputed"
    assert not (out / "P1" / "dicom").exists()


# --------------------------------------------------------------------------- the staged set


def test_a_staged_set_replaces_every_earlier_file_of_a_replaced_folder(tmp_path):
    """A CT series of 5 files, then one of 3, then none: each commit leaves exactly its own set; added targets
    are published before the one named (case.json stays last)."""
    out = tmp_path / "out"

    def commit(ct_count: int) -> list[Path]:
        with StagedOutputs(out, [Path("rfs.json"), Path("case.json")], replaces_folders=[Path("dicom")]) as outputs:
            added = [Path(f"dicom/ct/{i:04d}.dcm") for i in range(ct_count)]
            outputs.add_targets(added, before=Path("case.json"))
            assert outputs.targets[-1] == Path("case.json")
            for path in (*added, Path("rfs.json"), Path("case.json")):
                outputs.stage_bytes(path, path.name.encode())
            return [p.relative_to(out) for p in outputs.commit()]

    for count in (5, 3, 0):
        published = commit(count)
        assert {p.relative_to(out) for p in files_under(out)} == set(published)
    assert not (out / "dicom").exists(), "folders the last set left empty are removed"


def test_run_on_the_real_dicom_study_references_its_own_ct_series(tmp_path):
    """The whole chain on the real DICOM study of STS_001 (the product's DICOM reader picks its CT and PET): the
    SEG and RTSTRUCT reference the CT series read, no CT is written, and both give the published labels back."""
    study = require_sts() / "STS_001_dicom"
    if not DICOM_CT_DIR.is_dir():
        pytest.skip(f"{DICOM_CT_DIR} not found (../shared/data is not mounted)")
    out = tmp_path / "out"
    result = run_inference(study, out, "--dicom-out")
    assert result.returncode == 0, result.stderr
    assert not (out / CT_SERIES_DIR).exists(), "a DICOM CT is referenced, not written again"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / SEGMENTATION_PATH)))
    ct_files = sorted_ct_files(DICOM_CT_DIR)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]
    seg = hd.seg.segread(out / SEG_PATH)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=[h.SOPInstanceUID for h in headers],
                                             combine_segments=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(back, labels)
    masks = rasterise_rtstruct(pydicom.dcmread(out / RTSTRUCT_PATH), headers)
    for label, name in ((1, "GTVp"), (2, "GTVn")):
        print(f"real DICOM study, pet-threshold labels: {name} {int((labels == label).sum())} voxels, Dice "
              f"{dice(labels == label, masks[name]):.4f}")
        assert np.array_equal(masks[name], labels == label)
