"""The hostile-input suite: generated cases, each with its expected behaviour under both input policies.

Every case starts from the SYNTHETIC phantom case (``hecktor.io.phantom``) in the platform layout and
damages a copy of it; the ``dicom-*`` cases first write it as a DICOM study (``test/dicom_study.py``) and
damage the PET series, so that the label grid stays the phantom CT's. ``DEFAULT`` is the platform policy
(answer whenever the images can be read, with a warning), ``STRICT`` is ``--strict`` (refuse every
recoverable problem). The expected log fragments name the file or the problem code, so a refusal that does
not say what is wrong fails.

``test/test_hostile_inputs.py`` runs them; ``python test/hostile_cases.py`` prints the table
(case, default outcome, strict outcome) as measured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TEST_DIR = Path(__file__).resolve().parent
if str(TEST_DIR.parent) not in sys.path:  # run as a script
    sys.path.insert(0, str(TEST_DIR.parent))
if str(TEST_DIR) not in sys.path:
    sys.path.insert(0, str(TEST_DIR))

from case_variants import rigidly_rotated, rotation, stored_flipped  # noqa: E402
from dicom_study import Edit, write_image_series  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from hecktor.apps.cli import main  # noqa: E402
from hecktor.io.phantom import PhantomGeometry, make_phantom, write_platform_case  # noqa: E402

CT = Path("images/ct/phantom.mha")
PET = Path("images/pet/phantom.mha")
EHR = Path("ehr.json")
OUTPUTS = (Path("images/tumor-lymph-node-segmentation/output.mha"), Path("rfs.json"), Path("hpv-status.json"))


@dataclass(frozen=True)
class Outcome:
    """What a run must do: its exit code and fragments its log must contain."""

    exit_code: int
    log_contains: tuple[str, ...] = ()

    def describe(self) -> str:
        verdict = "answers" if self.exit_code == 0 else f"refuses (exit {self.exit_code})"
        return verdict + (f": {', '.join(self.log_contains)}" if self.log_contains else "")


def answers(*fragments: str) -> Outcome:
    return Outcome(0, fragments)


def refuses(*fragments: str) -> Outcome:
    return Outcome(2, fragments)


@dataclass(frozen=True)
class HostileCase:
    name: str
    damage: Callable[[Path], object]  # edits the case folder in place (its return value is ignored)
    default: Outcome
    strict: Outcome
    input_path: str = ""  # --input relative to the case folder ("" = the case folder itself)
    ct_folder: str = "images/ct"  # where the real CT lies after the damage (the label grid)


# --------------------------------------------------------------------------- damage helpers


def _image(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _write(image: sitk.Image, path: Path, compress: bool = True) -> None:
    sitk.WriteImage(image, str(path), useCompression=compress)


def _with_array(path: Path, change: Callable[[np.ndarray], np.ndarray], dtype: type = np.float32) -> None:
    image = _image(path)
    array = change(sitk.GetArrayFromImage(image).astype(dtype))
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    _write(out, path)


def _set(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    array[index] = value
    return array


def _truncate(relative: Path) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        _write(_image(d / relative), d / relative, compress=False)
        data = (d / relative).read_bytes()
        (d / relative).write_bytes(data[: len(data) - 5000])
    return damage


def _corrupt_compressed(d: Path) -> None:
    data = bytearray((d / PET).read_bytes())
    middle = len(data) * 2 // 3
    data[middle:middle + 64] = bytes(64)
    (d / PET).write_bytes(bytes(data))


def _replace_header_line(relative: Path, key: str, value: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        _write(_image(d / relative), d / relative, compress=False)
        data = (d / relative).read_bytes()
        head, sep, body = data.partition(b"ElementDataFile = LOCAL\n")
        lines = [f"{key} = {value}".encode() if line.startswith(key.encode()) else line for line in head.split(b"\n")]
        (d / relative).write_bytes(b"\n".join(lines) + sep + body)
    return damage


def _detached_pixels(reference: str) -> Callable[[Path], None]:
    """Rewrite the CT as a header whose ElementDataFile is ``reference`` (``{root}`` = the case's parent)."""
    def damage(d: Path) -> None:
        image = _image(d / CT)
        raw = d.parent / "outside.raw"
        raw.write_bytes(sitk.GetArrayFromImage(image).astype(np.int16).tobytes())
        _write(image, d / CT, compress=False)
        head = (d / CT).read_bytes().partition(b"ElementDataFile = LOCAL\n")[0]
        (d / CT).write_bytes(head + f"ElementDataFile = {reference.format(root=d.parent)}\n".encode())
    return damage


def _huge_header(d: Path) -> None:
    _replace_header_line(CT, "DimSize", "10000 10000 10000")(d)


def _two_dimensional(d: Path) -> None:
    _write(sitk.Image([32, 32], sitk.sitkInt16), d / CT)


def _four_dimensional(d: Path) -> None:
    _write(sitk.Image([16, 16, 16, 3], sitk.sitkFloat32), d / PET)


def _vector_ct(d: Path) -> None:
    _write(sitk.Image([16, 16, 16], sitk.sitkVectorFloat32, 3), d / CT)


def _single_slice(d: Path) -> None:
    _write(_image(d / CT)[:, :, 40:41], d / CT)


def _move_pet(offset_mm: tuple[float, float, float]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        pet = _image(d / PET)
        pet.SetOrigin(tuple(np.asarray(pet.GetOrigin()) + np.asarray(offset_mm)))
        _write(pet, d / PET)
    return damage


def _translate_scene(offset_mm: float) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        for relative in (CT, PET):
            image = _image(d / relative)
            image.SetOrigin(tuple(np.asarray(image.GetOrigin()) + offset_mm))
            _write(image, d / relative)
    return damage


def _flip(axes: tuple[int, ...], ct: bool = True, pet: bool = True) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        for relative, wanted in ((CT, ct), (PET, pet)):
            if wanted:
                _write(stored_flipped(_image(d / relative), axes), d / relative)
    return damage


def _rotate_scene(d: Path) -> None:
    ct = _image(d / CT)
    centre = ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()])
    q = rotation((1, 2, 0.5), 20.0)
    for relative in (CT, PET):
        _write(rigidly_rotated(_image(d / relative), q, centre), d / relative)


def _permute_ct_axes(d: Path) -> None:
    """Store the CT with its index axes in (z, x, y) order: same voxels, same physical places."""
    ct = _image(d / CT)
    array = np.transpose(sitk.GetArrayFromImage(ct), (1, 0, 2))  # numpy (z, y, x) -> (y, z, x)
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)[:, [0, 2, 1]]
    spacing = np.asarray(ct.GetSpacing())[[0, 2, 1]]
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(tuple(spacing))
    out.SetDirection(direction.flatten().tolist())
    out.SetOrigin(ct.GetOrigin())
    _write(out, d / CT)


def _phantom_ct(geometry: PhantomGeometry) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        _write(make_phantom(geometry).ct, d / CT)
    return damage


def _neck_only(d: Path) -> None:
    phantom = make_phantom(PhantomGeometry(ct_size=(120, 120, 55), pet_size=(64, 64, 55), z_bottom_mm=20.0))
    _write(phantom.ct, d / CT)
    _write(phantom.pet, d / PET)


def _coarse_pet(d: Path) -> None:
    pet = _image(d / PET)
    size = list(pet.GetSize())
    spacing = list(pet.GetSpacing())
    size[2] = int(size[2] * spacing[2] / 10.0)
    spacing[2] = 10.0
    _write(sitk.Resample(pet, size, sitk.Transform(), sitk.sitkLinear, pet.GetOrigin(), spacing,
                         pet.GetDirection(), 0.0, sitk.sitkFloat32), d / PET)


def _ehr_text(text: str | bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / EHR).write_bytes(text.encode() if isinstance(text, str) else text)
    return damage


def _ehr_object(content: dict) -> Callable[[Path], None]:
    return _ehr_text(json.dumps(content))


def _ehr_directory(d: Path) -> None:
    (d / EHR).unlink()
    (d / EHR).mkdir()


def _ehr_fifo(d: Path) -> None:
    (d / EHR).unlink()
    os.mkfifo(d / EHR)


def _ehr_dev_zero(d: Path) -> None:
    (d / EHR).unlink()
    (d / EHR).symlink_to("/dev/zero")


def _optional(folder: str, write: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        target = d / "images" / folder
        target.mkdir(parents=True)
        write(d, target)
    return damage


def _junk(relative: str, content: bytes = b"\x00\x05\x16\x07 Mac OS X resource fork") -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / relative).write_bytes(content)
    return damage


def _symlink_loop(d: Path) -> None:
    (d / CT).unlink()
    (d / CT).symlink_to(d / CT)


ORGANISER_VARIANTS = {"CenterID": "9", "Age": "61", "Gender": "M", "Tobacco": None, "Alcohol Consumption": "1",
                      "Performance": "0", "Treatment": "1", "M-stage": "Mx", "HPV Status": None,
                      "Tobacco Consumption:": 1}
OK = answers()


def _case(name: str, damage: Callable[[Path], object], default: Outcome, strict: Outcome | None = None,
          input_path: str = "", ct_folder: str = "images/ct") -> HostileCase:
    return HostileCase(name, damage, default, default if strict is None else strict, input_path, ct_folder)


def _swap_ct_and_pet(d: Path) -> None:
    """The CT's file in the PET's folder and the PET's in the CT's (same names: only the contents move)."""
    ct_bytes = (d / CT).read_bytes()
    (d / CT).write_bytes((d / PET).read_bytes())
    (d / PET).write_bytes(ct_bytes)


DICOM = "dicom"
# A DICOM case's --input is the study folder; the phantom's image files beside it are the label grid's reference.
_DICOM_CASE = {"input_path": DICOM, "ct_folder": "../images/ct"}


def _as_dicom(pet_edit: Edit | None = None, drop_pet: tuple[int, ...] = (), second_pet: bool = False,
              own_pet_frame: bool = False) -> Callable[[Path], None]:
    """The case as a DICOM study in ``dicom/`` (random nested names, ehr.json at its root), the PET damaged:
    ``pet_edit`` per slice, slices ``drop_pet`` deleted, a second equal PET series, or a frame of its own."""

    def damage(d: Path) -> None:
        rng, study = random.Random(7), d / DICOM
        common = {"patient_id": "HOSTILE-1", "study_uid": generate_uid()}
        frame = generate_uid()
        write_image_series(_image(d / CT), study, rng, modality="CT", frame_uid=frame, series_number=2,
                           description="CT", **common)
        pet = _image(d / PET)
        files = write_image_series(pet, study, rng, modality="PT", frame_uid=generate_uid() if own_pet_frame else frame,
                                   series_number=3, description="PET AC", edit=pet_edit, **common)
        for index in drop_pet:
            files[index].unlink()
        if second_pet:
            write_image_series(pet, study, rng, modality="PT", frame_uid=frame, series_number=4,
                               description="PET AC 2", **common)
        if (d / EHR).is_file():
            shutil.copy(d / EHR, study / EHR)

    return damage


def _shift(dz_from: int, dx: float = 0.0, dy_per_slice: float = 0.0, dz: float = 0.0) -> Edit:
    def edit(ds, index: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        lifted = dz if index >= dz_from else 0.0
        ds.ImagePositionPatient = [x + dx, y + index * dy_per_slice, z + lifted]

    return edit


def _turn_top(first: int, degrees: float) -> Edit:
    def edit(ds, index: int) -> None:
        if index >= first:
            c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
            ds.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]

    return edit


def _without_weight(ds, index: int) -> None:
    del ds.PatientWeight


def _undecodable(ds, index: int) -> None:
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder here
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"


CASES: tuple[HostileCase, ...] = (
    # ----- layout and files
    _case("missing-pet-folder", lambda d: shutil.rmtree(d / "images/pet"), refuses("images/pet", "PET is missing")),
    _case("missing-ct-folder", lambda d: shutil.rmtree(d / "images/ct"), refuses("images/ct", "CT is missing")),
    _case("empty-ct-folder", lambda d: (d / CT).unlink(), refuses("images/ct", "no CT image found")),
    _case("two-ct-images", lambda d: shutil.copy(d / CT, d / "images/ct/second.mha"),
          refuses("second.mha", "exactly one CT image, found 2")),
    _case("two-pet-images", lambda d: shutil.copy(d / PET, d / "images/pet/a.mha"),
          refuses("a.mha", "exactly one PET image, found 2")),
    _case("empty-input-folder", lambda d: [shutil.rmtree(d / "images"), (d / EHR).unlink()],
          refuses("no 'images/ct'")),
    _case("input-folder-missing", lambda d: None, refuses("does-not-exist", "does not exist"),
          input_path="does-not-exist"),
    _case("appledouble-junk-beside-ct", _junk("images/ct/._phantom.mha"),
          answers("junk-file", "._phantom.mha"), refuses("._phantom.mha", "strict")),
    _case("ds-store-beside-pet", _junk("images/pet/.DS_Store"), answers("junk-file", ".DS_Store"),
          refuses(".DS_Store", "strict")),
    _case("text-file-beside-ct", _junk("images/ct/notes.txt", b"scanned on Tuesday"), answers("junk-file", "notes.txt"),
          refuses("notes.txt", "strict")),
    _case("folder-beside-ct", lambda d: (d / "images/ct/extra").mkdir(), answers("junk-file", "extra"),
          refuses("extra", "strict")),
    _case("folder-named-like-an-image", lambda d: (d / "images/ct/extra.mha").mkdir(),
          answers("junk-file", "extra.mha"), refuses("extra.mha", "strict")),
    _case("ct-is-a-symlink-loop", _symlink_loop, refuses("images/ct", "no CT image found")),
    _case("zero-byte-ct", lambda d: (d / CT).write_bytes(b""), refuses("phantom.mha", "cannot read the CT")),
    _case("ct-is-text", lambda d: (d / CT).write_text("this is not an image\n"),
          refuses("phantom.mha", "cannot read the CT")),
    _case("truncated-ct", _truncate(CT), refuses("phantom.mha", "CT image's header is readable but its pixel data")),
    _case("truncated-pet", _truncate(PET), refuses("phantom.mha", "PET image's header is readable")),
    _case("corrupt-compressed-pet", _corrupt_compressed, refuses("phantom.mha", "PET")),
    _case("ct-is-2d", _two_dimensional, refuses("phantom.mha", "CT image is 2-D")),
    _case("pet-is-4d", _four_dimensional, refuses("phantom.mha", "PET image is 4-D")),
    _case("ct-has-3-components", _vector_ct, refuses("phantom.mha", "3 components per voxel")),
    _case("ct-single-slice", _single_slice, refuses("phantom.mha", "too small to be a volume")),
    _case("header-claims-1e12-voxels", _huge_header, refuses("phantom.mha", "voxels")),
    _case("pixels-from-outside-relative", _detached_pixels("../../../outside.raw"),
          refuses("phantom.mha", "outside the input folder")),
    _case("pixels-from-outside-absolute", _detached_pixels("{root}/outside.raw"),
          refuses("phantom.mha", "outside the input folder")),
    _case("pixels-file-missing", _detached_pixels("missing.raw"), refuses("phantom.mha", "CT")),
    _case("zero-spacing-ct", _replace_header_line(CT, "ElementSpacing", "0 2 3"), refuses("phantom.mha", "spacing")),
    _case("negative-spacing-pet", _replace_header_line(PET, "ElementSpacing", "4 -4 3"),
          refuses("phantom.mha", "spacing")),
    _case("singular-direction-ct", _replace_header_line(CT, "TransformMatrix", "1 0 0 1 0 0 0 0 1"),
          refuses("phantom.mha", "direction matrix")),
    _case("ct-and-pet-do-not-overlap", _move_pet((5000.0, 0.0, 0.0)),
          refuses("images/ct/phantom.mha and", "images/pet/phantom.mha", "do not overlap")),
    # ----- voxel values
    _case("nan-voxels-in-pet", lambda d: _with_array(d / PET, lambda a: _set(a, (50, 30, 30), np.nan)),
          answers("non-finite-voxels", "1 NaN or infinite"), refuses("phantom.mha", "NaN")),
    _case("inf-voxels-in-ct", lambda d: _with_array(d / CT, lambda a: _set(a, (slice(0, 3),), np.inf)),
          answers("non-finite-voxels"), refuses("phantom.mha", "infinite")),
    _case("pet-all-nan", lambda d: _with_array(d / PET, lambda a: np.full_like(a, np.nan)),
          answers("non-finite-voxels", "pet-no-uptake"), refuses("phantom.mha", "NaN")),
    _case("pet-all-zero", lambda d: _with_array(d / PET, np.zeros_like), answers("pet-no-uptake"),
          refuses("phantom.mha", "no positive uptake")),
    _case("pet-all-negative", lambda d: _with_array(d / PET, lambda a: np.full_like(a, -1.0)),
          answers("pet-no-uptake"), refuses("phantom.mha", "no positive uptake")),
    _case("ct-and-pet-swapped", _swap_ct_and_pet, answers("ct-pet-swapped", "wrong way round"),
          refuses("wrong way round", "images/ct/phantom.mha", "images/pet/phantom.mha"), ct_folder="images/pet"),
    _case("ct-is-a-pet-beside-a-pet", lambda d: shutil.copy(d / PET, d / CT),
          refuses("images/ct/phantom.mha", "but like a PET")),
    _case("pet-in-bqml", lambda d: _with_array(d / PET, lambda a: a * 4000.0), answers("pet-bqml"),
          refuses("phantom.mha", "Bq/mL")),
    _case("pet-values-1e30", lambda d: _with_array(d / PET, lambda a: a * 1e29), answers("pet-bqml"),
          refuses("phantom.mha", "Bq/mL")),
    _case("ct-constant-water", lambda d: _with_array(d / CT, np.zeros_like), OK),
    _case("ct-values-1e30", lambda d: _with_array(d / CT, lambda a: _set(a, (slice(0, 50),), 1e30)), OK),
    _case("ct-stored-float64", lambda d: _with_array(d / CT, lambda a: a, np.float64), OK),
    _case("pet-stored-float64", lambda d: _with_array(d / PET, lambda a: a, np.float64), OK),
    _case("ct-stored-uint8", lambda d: _with_array(d / CT, lambda a: np.clip(a + 100, 0, 255), np.uint8), OK),
    # ----- geometry and storage
    _case("both-stored-flipped-x", _flip((0,)), OK),
    _case("ct-stored-flipped-xyz", _flip((0, 1, 2), pet=False), OK),
    _case("pet-stored-flipped-yz", _flip((1, 2), ct=False), OK),
    _case("scene-rotated-20-degrees", _rotate_scene, OK),
    _case("ct-axes-permuted", _permute_ct_axes, OK),
    _case("ct-sheared-direction",
          _phantom_ct(PhantomGeometry(ct_direction=(1, 0, 0, 0, 1, 0.34, 0, 0, 0.94))), answers("sheared")),
    _case("pet-10mm-slices", _coarse_pet, OK),
    _case("neck-only-no-brain", _neck_only, answers("no brain found")),
    _case("ct-and-pet-overlap-20mm", _move_pet((0.0, 0.0, 310.0)), OK),
    _case("scene-translated-1e6mm", _translate_scene(1e6), OK),
    # ----- ehr.json
    _case("no-ehr", lambda d: (d / EHR).unlink(), answers("no ehr.json")),
    _case("ehr-not-json", _ehr_text("{'Age': 50,"), answers("ehr-unusable", "not valid JSON"),
          refuses("ehr.json", "not valid JSON")),
    _case("ehr-nested-10000-levels", _ehr_text('{"a": ' + "[" * 10000 + "]" * 10000 + "}"),
          answers("ehr-unusable", "nests deeper"), refuses("ehr.json", "nests deeper")),
    _case("ehr-top-level-array", _ehr_text("[1, 2, 3]"), answers("ehr-unusable"), refuses("ehr.json", "object")),
    _case("ehr-utf16", _ehr_text(json.dumps({"Age": 60}).encode("utf-16")), answers("ehr-unusable", "UTF-16"),
          refuses("ehr.json", "UTF-16")),
    _case("ehr-2-mib", _ehr_text('{"Age": 60, "pad": "' + "x" * (2 << 20) + '"}'), answers("ehr-unusable"),
          refuses("ehr.json")),
    _case("ehr-is-a-directory", _ehr_directory, answers("ehr-unusable"), refuses("ehr.json")),
    _case("ehr-is-a-fifo", _ehr_fifo, answers("ehr-unusable"), refuses("ehr.json")),
    _case("ehr-links-to-dev-zero", _ehr_dev_zero, answers("ehr-unusable"), refuses("ehr.json")),
    _case("ehr-age-true", _ehr_object({"Age": True, "Gender": 1}), answers("ehr-values-unreadable", "Age"),
          refuses("ehr.json", "Age")),
    _case("ehr-age-400-digits", _ehr_text('{"Age": ' + "9" * 400 + "}"), answers("ehr-values-unreadable", "Age"),
          refuses("ehr.json", "Age")),
    _case("ehr-age-5000-digits", _ehr_text('{"Age": ' + "9" * 5000 + "}"), answers("ehr-values-unreadable"),
          refuses("ehr.json", "Age")),
    _case("ehr-age-1e400", _ehr_text('{"Age": 1e400, "Gender": 0}'), answers("ehr-values-unreadable"),
          refuses("ehr.json", "Age")),
    _case("ehr-nan-literals", _ehr_text('{"Age": NaN, "Gender": 1}'), OK),
    _case("ehr-contradicting-duplicates", _ehr_text('{"Age": 60, "age": 70}'), answers("ehr-values-unreadable"),
          refuses("ehr.json")),
    _case("ehr-organiser-variants", _ehr_object(ORGANISER_VARIANTS), OK),
    _case("ehr-unseen-centre-99", _ehr_object({"CenterID": 99, "Age": 60}), OK),
    _case("ehr-empty-object", _ehr_object({}), OK),
    _case("ehr-misspelt-keys", _ehr_object({"Agee": 61, "Tobaco Consumption": 1, "CenterID": 3, "M-stage": "M0"}),
          answers("ehr-unknown-key", "'Agee': did you mean 'Age'?", "did you mean 'Tobacco Consumption'?"),
          refuses("ehr.json", "'Agee': did you mean 'Age'?")),
    # ----- optional images that no model uses
    _case("planning-ct-corrupt", _optional("ct-planning", lambda d, t: (t / "plan.mha").write_bytes(b"junk")),
          answers("optional-image-unusable", "plan.mha"), refuses("plan.mha")),
    _case("rt-dose-two-files", _optional("rt-dose", lambda d, t: [shutil.copy(d / PET, t / f"{n}.mha") for n in "ab"]),
          answers("optional-image-unusable", "rt-dose"), refuses("rt-dose")),
    _case("rt-dose-valid", _optional("rt-dose", lambda d, t: shutil.copy(d / PET, t / "dose.mha")), OK),
    _case("rt-dose-with-nan", _optional("rt-dose", lambda d, t: [
        shutil.copy(d / PET, t / "dose.mha"), _with_array(t / "dose.mha", lambda a: _set(a, (1, 1, 1), np.nan))]),
          answers("non-finite-voxels", "dose.mha"), refuses("dose.mha")),
    # ----- DICOM studies (the PET series damaged; 3 mm slices)
    _case("dicom-study", _as_dicom(), answers("taken as CT", "taken as PET", "SUVbw from DICOM header"), **_DICOM_CASE),
    _case("dicom-pet-missing-slice", _as_dicom(drop_pet=(55,)), answers("dicom-missing-slices"),
          refuses("misses 1 slice"), **_DICOM_CASE),
    _case("dicom-pet-uneven-spacing", _as_dicom(_shift(55, dz=1.2)), answers("dicom-uneven-spacing"),
          refuses("spacing is uneven"), **_DICOM_CASE),
    _case("dicom-pet-gantry-tilt", _as_dicom(_shift(0, dy_per_slice=3.0 * math.tan(math.radians(10)))),
          answers("dicom-gantry-tilt", "10.00 degrees"), refuses("gantry tilt"), **_DICOM_CASE),
    _case("dicom-pet-mixed-orientation", _as_dicom(_turn_top(108, 30.0)), answers("dicom-mixed-orientation"),
          refuses("different orientation"), **_DICOM_CASE),
    _case("dicom-pet-without-weight", _as_dicom(_without_weight), answers("dicom-suv-tags", "PatientWeight"),
          refuses("PatientWeight (0010,1030)"), **_DICOM_CASE),
    _case("dicom-two-equal-pets", _as_dicom(second_pet=True), answers("dicom-series-ambiguous"),
          refuses("2 PET series qualify"), **_DICOM_CASE),
    _case("dicom-pet-other-frame", _as_dicom(own_pet_frame=True), answers("dicom-frame-of-reference"),
          refuses("FrameOfReferenceUID"), **_DICOM_CASE),
    _case("dicom-pet-mpeg2", _as_dicom(_undecodable), refuses("MPEG2 Main Profile / Main Level"), **_DICOM_CASE),
)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    log: str
    input_dir: Path
    output_dir: Path


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def write_base_case(folder: Path) -> Path:
    write_platform_case(make_phantom(), folder)
    return folder


def run_hostile_case(case: HostileCase, base: Path, work: Path, strict: bool) -> RunResult:
    """Copy ``base`` into ``work``, damage it, and run the real command line on it in this process."""
    input_dir = work / "input"
    output_dir = work / "output"
    shutil.copytree(base, input_dir, symlinks=True)
    case.damage(input_dir)
    input_dir = input_dir / case.input_path
    handler = _ListHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO)
    try:
        code = main(["run", "--input", str(input_dir), "--output", str(output_dir), *(["--strict"] if strict else [])])
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    return RunResult(code, "\n".join(handler.lines), input_dir, output_dir)


def _print_table() -> None:
    logging.disable(logging.CRITICAL - 1)
    with tempfile.TemporaryDirectory() as tmp:
        base = write_base_case(Path(tmp) / "base")
        print("| case | default | strict |\n|---|---|---|")
        for index, case in enumerate(CASES):
            cells = []
            for strict in (False, True):
                result = run_hostile_case(case, base, Path(tmp) / f"{index}-{strict}", strict)
                expected = case.strict if strict else case.default
                verdict = "answers" if result.exit_code == 0 else f"refuses ({result.exit_code})"
                cells.append(verdict + ("" if result.exit_code == expected.exit_code else " **UNEXPECTED**"))
            print(f"| {case.name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    _print_table()
