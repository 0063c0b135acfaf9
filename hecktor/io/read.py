"""Read one case from disk: the platform layout or the HECKTOR training layout.

Platform layout (Grand Challenge)::

    INPUT/images/ct/<uuid>.mha|.tif|.tiff|.nii.gz
    INPUT/images/pet/<uuid>.mha ...
    INPUT/ehr.json                       (optional)
    INPUT/images/ct-planning/*.mha       (optional)
    INPUT/images/rt-dose/*.mha           (optional)

Training layout (local use)::

    INPUT/<ID>__CT.nii.gz, INPUT/<ID>__PT.nii.gz [, INPUT/ehr.json]

A folder in neither layout that holds DICOM files is one DICOM study (any depth, any names, mixed series; see
:mod:`hecktor.io.dicom.case`): :func:`read_case` reads it through :func:`dicom_study_source`.

Problems come in two kinds (the README's input-policy table lists them all):

- unrecoverable (no CT or PET, an unreadable or 2-D image, unusable geometry, an image header that
  points outside the input folder): :class:`~hecktor.core.types.InputError` naming the file;
- recoverable (an unusable ``ehr.json`` or unknown keys in it, NaN/inf voxels, CT and PET given the wrong
  way round, a PET without uptake or in Bq/mL, a broken optional image, junk files beside the images): the
  reader applies the documented fallback and
  records a :class:`~hecktor.core.types.RecoverableProblem` in ``Case.problems``; whether the run goes on
  with it (default) or refuses (``--strict``) is decided by :mod:`hecktor.core.policy`, not here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import direction_matrix, direction_problem, orthonormality_error
from hecktor.core.types import Case, ClinicalRecord, InputError, RecoverableProblem
from hecktor.io.clinical import read_ehr_keys, unknown_keys_summary
from hecktor.io.plausibility import check_ct_pet_roles
from hecktor.io.suv import to_suv

if TYPE_CHECKING:
    from hecktor.io.dicom.case import DicomCaseSource

__all__ = [
    "MAX_VOXELS",
    "CaseFiles",
    "dicom_study_source",
    "find_case_files",
    "has_image_layout",
    "holds_dicom",
    "is_dicom_study_folder",
    "pet_no_uptake_problem",
    "read_case",
    "read_case_files",
    "read_clinical",
    "read_image",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".mha", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd")
# 1e9 float32 voxels are 4 GB; the platform gives a case 16 GB. Checked from the header, before any
# pixel is read, so a header that claims 10^18 voxels is refused instead of exhausting memory.
MAX_VOXELS = 1_000_000_000
MIN_ORTHONORMALITY_ERROR_TO_MENTION = 1e-3
# Value that replaces NaN/inf voxels: air for a CT, no uptake for a PET (and the optional images).
_FILL_VALUE = {"CT": -1024.0}
_HEADER_BYTES = 65536
MAX_VALUE_PROBLEMS_SHOWN = 5
# What ITK's MetaImage reader prints (and does not raise) when pixel data is damaged.
_CORRUPT_DATA_SIGNS = ("Uncompress failed", "not read completely", "M_ReadElementsData")


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    root: Path  # the input folder; no image may draw data from outside it
    ct: Path
    pet: Path
    ehr: Path | None
    planning_ct: Path | None
    rt_dose: Path | None


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _case_id_of(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _junk(path: Path, reason: str) -> RecoverableProblem:
    return RecoverableProblem("junk-file", path, reason, "ignored")


def _single_image_in(folder: Path, role: str, required: bool) -> tuple[Path | None, list[RecoverableProblem]]:
    """The one image of ``folder``; hidden files (``._x.mha``, ``.DS_Store``) and non-images are junk."""
    if not folder.is_dir():
        if required:
            raise InputError(f"{folder}: folder for the {role} is missing")
        return None, []
    images, junk = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            junk.append(_junk(entry, "hidden file next to the images"))
        elif not entry.is_file():
            junk.append(_junk(entry, "not a regular file"))
        elif not _is_image_name(entry.name):
            junk.append(_junk(entry, f"not an image (expected one of {', '.join(IMAGE_SUFFIXES)})"))
        else:
            images.append(entry)
    if not images:
        if required:
            raise InputError(f"{folder}: no {role} image found (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return None, junk
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(f"{folder}: expected exactly one {role} image, found {len(images)} ({names})")
    return images[0], junk


def _training_layout(input_dir: Path) -> tuple[CaseFiles, list[RecoverableProblem]] | None:
    found = sorted(input_dir.glob("*__CT.nii.gz"))
    junk = [_junk(p, "hidden file next to the images") for p in found if p.name.startswith(".")]
    cts = [p for p in found if not p.name.startswith(".")]
    if not cts:
        return None
    if len(cts) > 1:
        raise InputError(f"{input_dir}: expected one <ID>__CT.nii.gz, found {len(cts)}")
    case_id = cts[0].name[: -len("__CT.nii.gz")]
    pet = input_dir / f"{case_id}__PT.nii.gz"
    if not pet.is_file():
        raise InputError(f"{pet}: PET image is missing (found {cts[0].name})")
    planning = input_dir / f"{case_id}__CTPlanning.nii.gz"
    dose = input_dir / f"{case_id}__RTDOSE.nii.gz"
    ehr = input_dir / "ehr.json"
    files = CaseFiles(
        case_id=case_id,
        root=input_dir,
        ct=cts[0],
        pet=pet,
        ehr=ehr if ehr.exists() else None,
        planning_ct=planning if planning.is_file() else None,
        rt_dose=dose if dose.is_file() else None,
    )
    return files, junk


def find_case_files(input_dir: Path) -> tuple[CaseFiles, list[RecoverableProblem]]:
    """Locate the case's files in ``input_dir`` (platform layout first, then training layout)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder does not exist")
    images = input_dir / "images"
    if not images.is_dir():
        training = _training_layout(input_dir)
        if training is not None:
            return training
        raise InputError(
            f"{input_dir}: no 'images/ct' and 'images/pet' folders and no <ID>__CT.nii.gz/<ID>__PT.nii.gz pair"
        )
    ct, ct_junk = _single_image_in(images / "ct", "CT", required=True)
    pet, pet_junk = _single_image_in(images / "pet", "PET", required=True)
    assert ct is not None and pet is not None
    problems = [*ct_junk, *pet_junk]
    optional: dict[str, Path | None] = {}
    for folder, role in (("ct-planning", "planning CT"), ("rt-dose", "RT dose")):
        try:
            optional[folder], junk = _single_image_in(images / folder, role, required=False)
            problems += junk
        except InputError as exc:
            optional[folder] = None
            problems.append(RecoverableProblem("optional-image-unusable", images / folder, _problem_text(exc),
                                               "ignored (no model uses it)"))
    ehr = input_dir / "ehr.json"
    files = CaseFiles(
        case_id=_case_id_of(ct),
        root=input_dir,
        ct=ct,
        pet=pet,
        ehr=ehr if ehr.exists() else None,
        planning_ct=optional["ct-planning"],
        rt_dose=optional["rt-dose"],
    )
    return files, problems


def _problem_text(exc: InputError) -> str:
    """An InputError's message without its leading ``path: `` (the problem records the path itself)."""
    return str(exc).split(": ", 1)[-1]


def _itk_message(exc: RuntimeError) -> str:
    """ITK's exception text without the C++ source locations and object addresses, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    text = " ".join(kept) or "unreadable"
    text = re.sub(r"(ITK|sitk)::?\s*ERROR:\s*", "", text)
    text = re.sub(r"ITK ERROR:\s*", "", text)
    return re.sub(r"\w+\(0x[0-9a-f]+\):\s*", "", text)


# --------------------------------------------------------------------------- header checks


def _detached_data_references(path: Path) -> list[str]:
    """Files a MetaImage (``ElementDataFile``) or NRRD (``data file``) header says hold its pixels."""
    name = path.name.lower()
    if not name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        return []
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES).decode("latin-1")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the image header ({exc.strerror or exc})") from exc
    lines = head.splitlines()
    if name.endswith((".mha", ".mhd")):
        for i, line in enumerate(lines):
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile":
                value = value.strip()
                if value.upper() == "LOCAL":
                    return []
                if value.upper().startswith("LIST"):
                    return [entry.strip() for entry in lines[i + 1:] if entry.strip()]
                return [value.split()[0]] if value else []
        return []
    for line in lines:
        if not line.strip():
            break  # the end of a NRRD header
        key, _, value = line.partition(":")
        if key.strip().lower() in ("data file", "datafile"):
            value = value.strip()
            return [] if value.upper().startswith("LIST") else [value.split()[0]] if value else []
    return []


def _check_data_stays_inside(path: Path, root: Path) -> None:
    """Refuse a header whose pixel data lives outside the input folder (it could read any file)."""
    base = Path(root).resolve()
    for reference in _detached_data_references(path):
        target = (path.parent / reference).resolve()
        if target != base and base not in target.parents:
            raise InputError(
                f"{path}: the image header takes its pixel data from {reference!r}, outside the input folder {root}; "
                "refused"
            )


def _check_header(reader: sitk.ImageFileReader, path: Path, role: str) -> None:
    dimension = reader.GetDimension()
    if dimension != 3:
        raise InputError(f"{path}: the {role} image is {dimension}-D, a 3-D volume is required")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"{path}: the {role} image has {reader.GetNumberOfComponents()} components per voxel")
    size = reader.GetSize()
    if min(size) < 2:
        raise InputError(f"{path}: the {role} image has size {size}, too small to be a volume")
    voxels = int(np.prod(np.asarray(size, dtype=np.float64)))
    if voxels > MAX_VOXELS:
        raise InputError(f"{path}: the {role} image has {voxels:.3g} voxels (size {size}), more than the "
                         f"{MAX_VOXELS:.0e} this product reads")
    spacing = reader.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: the {role} image has spacing {spacing}; every spacing must be positive and finite")
    if not all(math.isfinite(o) for o in reader.GetOrigin()):
        raise InputError(f"{path}: the {role} image has a non-finite origin {reader.GetOrigin()}")
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    problem = direction_problem(direction)
    if problem is not None:
        raise InputError(f"{path}: the {role} image's direction matrix {problem}; its geometry cannot be trusted")


# --------------------------------------------------------------------------- pixels


def _replace_non_finite(image: sitk.Image, path: Path, role: str) -> tuple[sitk.Image, list[RecoverableProblem]]:
    view = sitk.GetArrayViewFromImage(image)  # ``image`` outlives this view
    # min/max propagate NaN and show +-inf without a whole-image boolean temporary.
    if np.isfinite(view.min()) and np.isfinite(view.max()):
        return image, []
    values = sitk.GetArrayFromImage(image)
    bad = ~np.isfinite(values)
    count = int(np.count_nonzero(bad))
    fill = _FILL_VALUE.get(role, 0.0)
    values[bad] = fill
    fixed = sitk.GetImageFromArray(values)
    fixed.CopyInformation(image)
    problem = RecoverableProblem(
        "non-finite-voxels", path, f"the {role} image has {count} NaN or infinite voxels ({count / values.size:.2%})",
        f"replaced by {fill:g}",
    )
    return fixed, [problem]


def _execute_capturing_native_errors(reader: sitk.ImageFileReader) -> tuple[sitk.Image, str]:
    """Read the pixels, capturing what the C++ readers print on file descriptor 2.

    ITK's MetaImage reader reports a corrupt compressed stream only by printing "Uncompress failed"
    and returns an image of partly undefined voxels; without this the damage would pass silently.
    """
    sys.stderr.flush()
    try:
        capture = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the with below; may fail without /tmp)
    except OSError:  # no usable temporary folder: read without the extra check
        return reader.Execute(), ""
    with capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            image = reader.Execute()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return image, capture.read(_HEADER_BYTES).decode("utf-8", "replace").strip()


def read_image(path: Path, role: str, root: Path | None = None) -> tuple[sitk.Image, list[RecoverableProblem]]:
    """Read a 3-D scalar image as float32 after checking its header; NaN/inf voxels are replaced and reported.

    ``root``: the input folder; a header whose pixel data lies outside it is refused.
    """
    path = Path(path)
    _check_data_stays_inside(path, root if root is not None else path.parent)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the {role} image ({_itk_message(exc)})") from exc
    _check_header(reader, path, role)
    try:
        image, native_messages = _execute_capturing_native_errors(reader)
    except RuntimeError as exc:
        raise InputError(
            f"{path}: the {role} image's header is readable but its pixel data is not (truncated or corrupt file?): "
            f"{_itk_message(exc)}"
        ) from exc
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to read the {role} image of size {reader.GetSize()}") from exc
    if native_messages:
        one_line = " ".join(native_messages.split())
        if any(sign in native_messages for sign in _CORRUPT_DATA_SIGNS):
            raise InputError(f"{path}: the {role} image's pixel data is corrupt (the reader reported: {one_line})")
        log.warning("%s: the image reader reported: %s", path, one_line)
    error = orthonormality_error(direction_matrix(image))
    if error > MIN_ORTHONORMALITY_ERROR_TO_MENTION:
        log.warning("%s: the %s image has a non-orthonormal (sheared) direction matrix (|D^T D - I| = %.3g); "
                    "handled with its exact inverse", path, role, error)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)  # Cast copies even to the same type: only when needed
    return _replace_non_finite(image, path, role)


def pet_no_uptake_problem(pet: sitk.Image, path: Path) -> RecoverableProblem | None:
    """The ``pet-no-uptake`` problem when the PET has no positive voxel, else None."""
    peak = float(sitk.GetArrayViewFromImage(pet).max())  # ``pet`` outlives the view
    if peak > 0.0:
        return None
    return RecoverableProblem("pet-no-uptake", path, f"the PET image has no positive uptake (max {peak:g})",
                              "empty segmentation; Tasks 2/3 from the clinical record alone")


def _pet_in_suv(
    pet: sitk.Image, path: Path, known_suv_factor: float | None = None
) -> tuple[sitk.Image, list[RecoverableProblem]]:
    if known_suv_factor is not None:
        if not (math.isfinite(known_suv_factor) and known_suv_factor > 0):
            raise InputError(f"{path}: the Bq/mL-to-SUV factor must be a positive number, got {known_suv_factor!r}")
        log.info("%s: PET converted to SUV with the known factor %.6g (no unit detection)", path, known_suv_factor)
        return pet * known_suv_factor, []
    no_uptake = pet_no_uptake_problem(pet, path)
    if no_uptake is not None:
        return pet, [no_uptake]
    conversion = to_suv(sitk.GetArrayViewFromImage(pet))  # ``pet`` outlives this view
    if conversion.detected_units == "SUV":
        return pet, []
    problem = RecoverableProblem(
        "pet-bqml", path, f"PET values look like Bq/mL (99.9th percentile {conversion.p999:.0f})",
        f"rescaled by {conversion.factor:.3g} to approximate SUV (body tissue median {conversion.body_median_suv:.2f})",
    )
    return pet * conversion.factor, [problem]


def read_clinical(ehr: Path | None, root: Path) -> tuple[ClinicalRecord, list[RecoverableProblem]]:
    """The clinical record of ``ehr`` (an ehr.json, or None: none given for the case in ``root``) and its problems
    under the input policy."""
    if ehr is None:
        log.info("%s: no ehr.json; clinical variables are treated as unknown", root)
        return ClinicalRecord(), []
    try:
        record, unreadable, unknown = read_ehr_keys(ehr)
    except InputError as exc:
        return ClinicalRecord(), [RecoverableProblem("ehr-unusable", ehr, _problem_text(exc),
                                                     "clinical values unknown; Tasks 2/3 from the images")]
    problems = []
    if unreadable:
        hidden = len(unreadable) - MAX_VALUE_PROBLEMS_SHOWN
        shown = "; ".join(unreadable[:MAX_VALUE_PROBLEMS_SHOWN]) + (f" (and {hidden} more)" if hidden > 0 else "")
        problems.append(RecoverableProblem("ehr-values-unreadable", ehr, f"{len(unreadable)} unusable "
                                           f"value(s): {shown}", "those values unknown (imputed by the models)"))
    if unknown:
        # A misspelt key would otherwise pass silently and its value be imputed.
        problems.append(RecoverableProblem("ehr-unknown-key", ehr, f"{len(unknown)} unknown key(s): "
                                           f"{unknown_keys_summary(unknown)}", "ignored (the value is not used)"))
    return record, problems


def _read_optional(path: Path | None, role: str, root: Path) -> tuple[sitk.Image | None, list[RecoverableProblem]]:
    """An optional image no model uses: any problem with it is reported and the image ignored."""
    if path is None:
        return None, []
    try:
        image, problems = read_image(path, role, root)
    except InputError as exc:
        return None, [RecoverableProblem("optional-image-unusable", path, _problem_text(exc),
                                         "ignored (no model uses it)")]
    return image, problems


def read_case(input_dir: Path, known_suv_factor: float | None = None, id_from: Path | None = None) -> Case:
    """Read and validate one case; PET is returned in SUV. Recoverable problems are in ``Case.problems``.

    ``known_suv_factor``: the PET's Bq/mL-to-SUVbw factor when it is known from its DICOM tags (training
    data of patients delivered in Bq/mL); it replaces the run-time unit detection, which must estimate it.
    A folder in neither image layout that holds DICOM files is read as one DICOM study
    (:mod:`hecktor.io.dicom.case`; ``id_from``: its PatientID -> pseudonym table).
    """
    if is_dicom_study_folder(input_dir):
        return dicom_study_source(input_dir, id_from).read()
    files, problems = find_case_files(input_dir)
    return read_case_files(files, problems, known_suv_factor)


def holds_dicom(input_dir: Path) -> bool:
    """Whether ``input_dir`` is a folder with a DICOM file somewhere below it (needs no pydicom)."""
    from hecktor.io.dicom.detect import first_dicom_file

    return Path(input_dir).is_dir() and first_dicom_file(Path(input_dir)) is not None


def has_image_layout(folder: Path) -> bool:
    """Whether ``folder`` is laid out for image files: an ``images/`` folder, or a visible ``<ID>__CT.nii.gz``."""
    folder = Path(folder)
    return (folder / "images").is_dir() or any(not p.name.startswith(".") for p in folder.glob("*__CT.nii.gz"))


def is_dicom_study_folder(input_dir: Path) -> bool:
    """A folder in neither image layout with a DICOM file below it: read as one DICOM study. (A folder in an
    image layout is read as such, its errors reported as such, whatever DICOM files lie in it.)"""
    folder = Path(input_dir)
    return folder.is_dir() and not has_image_layout(folder) and holds_dicom(folder)


def dicom_study_source(input_dir: Path, id_from: Path | None = None) -> DicomCaseSource:
    """The one DICOM study of ``input_dir`` as a case source (:class:`InputError` when pydicom is missing)."""
    try:
        # Imported here: pydicom is not in the platform image, whose inputs are never DICOM.
        from hecktor.io.dicom.case import single_study_source
    except ImportError as exc:
        raise InputError(f"{input_dir}: holds DICOM files, and reading them needs pydicom ({exc}); install "
                         f"requirements/dicom.txt") from exc
    return single_study_source(input_dir, id_from)


def read_case_files(files: CaseFiles, problems: Sequence[RecoverableProblem] = (),
                    known_suv_factor: float | None = None) -> Case:
    """Read and validate a case from already located files (``problems``: those met while locating them);
    what :func:`read_case` does after :func:`find_case_files`. Batch readers locate cases their own way."""
    problems = list(problems)
    log.info("case %s: CT %s, PET %s, ehr %s", files.case_id, files.ct.name, files.pet.name, files.ehr)
    ct, ct_problems = read_image(files.ct, "CT", files.root)
    pet, pet_problems = read_image(files.pet, "PET", files.root)
    # Before the unit detection: a CT in the PET's place would otherwise read as a PET in Bq/mL.
    swapped = check_ct_pet_roles(ct, pet, files.ct, files.pet)
    if swapped is not None:
        ct, pet, files = pet, ct, dataclasses.replace(files, ct=files.pet, pet=files.ct)
        ct_problems, pet_problems = pet_problems, [swapped, *ct_problems]
    pet, unit_problems = _pet_in_suv(pet, files.pet, known_suv_factor)
    clinical, clinical_problems = read_clinical(files.ehr, files.root)
    planning_ct, planning_problems = _read_optional(files.planning_ct, "planning CT", files.root)
    rt_dose, dose_problems = _read_optional(files.rt_dose, "RT dose", files.root)
    problems += [*ct_problems, *pet_problems, *unit_problems, *clinical_problems, *planning_problems,
                 *dose_problems]
    return Case(
        case_id=files.case_id,
        ct=ct,
        pet=pet,
        clinical=clinical,
        ct_path=files.ct,
        pet_path=files.pet,
        ehr_path=files.ehr,
        planning_ct=planning_ct,
        rt_dose=rt_dose,
        problems=tuple(problems),
    )
