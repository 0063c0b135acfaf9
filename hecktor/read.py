"""Read one case from disk: the platform layout or the HECKTOR training layout.

Platform layout (Grand Challenge)::

    INPUT/images/ct/<uuid>.mha|.tif|.tiff|.nii.gz
    INPUT/images/pet/<uuid>.mha ...
    INPUT/ehr.json                       (optional)
    INPUT/images/ct-planning/*.mha       (optional)
    INPUT/images/rt-dose/*.mha           (optional)

Training layout (local use)::

    INPUT/<ID>__CT.nii.gz, INPUT/<ID>__PT.nii.gz [, INPUT/ehr.json]

Every problem raises :class:`~hecktor.types.InputError` naming the file and what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hecktor.clinical import parse_ehr
from hecktor.suv import to_suv
from hecktor.types import Case, ClinicalRecord, InputError

__all__ = ["CaseFiles", "find_case_files", "read_case", "read_image"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".mha", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd")


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    ct: Path
    pet: Path
    ehr: Path | None
    planning_ct: Path | None
    rt_dose: Path | None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _case_id_of(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _single_image_in(folder: Path, role: str, required: bool) -> Path | None:
    if not folder.is_dir():
        if required:
            raise InputError(f"{folder}: folder for the {role} is missing")
        return None
    images = sorted(p for p in folder.iterdir() if _is_image(p))
    if not images:
        if required:
            raise InputError(f"{folder}: no {role} image found (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return None
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(f"{folder}: expected exactly one {role} image, found {len(images)} ({names})")
    return images[0]


def _training_layout(input_dir: Path) -> CaseFiles | None:
    cts = sorted(input_dir.glob("*__CT.nii.gz"))
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
    return CaseFiles(
        case_id=case_id,
        ct=cts[0],
        pet=pet,
        ehr=ehr if ehr.is_file() else None,
        planning_ct=planning if planning.is_file() else None,
        rt_dose=dose if dose.is_file() else None,
    )


def find_case_files(input_dir: Path) -> CaseFiles:
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
    ct = _single_image_in(images / "ct", "CT", required=True)
    pet = _single_image_in(images / "pet", "PET", required=True)
    assert ct is not None and pet is not None
    ehr = input_dir / "ehr.json"
    return CaseFiles(
        case_id=_case_id_of(ct),
        ct=ct,
        pet=pet,
        ehr=ehr if ehr.is_file() else None,
        planning_ct=_single_image_in(images / "ct-planning", "planning CT", required=False),
        rt_dose=_single_image_in(images / "rt-dose", "RT dose", required=False),
    )


def read_image(path: Path, role: str) -> sitk.Image:
    """Read a 3-D scalar image and check it is usable; returns it as float32."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise InputError(f"{path}: cannot read the {role} image ({first_line})") from exc
    if image.GetDimension() != 3:
        raise InputError(f"{path}: the {role} image is {image.GetDimension()}-D, a 3-D volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: the {role} image has {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"{path}: the {role} image has size {image.GetSize()}, too small to be a volume")
    image = sitk.Cast(image, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise InputError(f"{path}: the {role} image has {bad} NaN or infinite voxels")
    return image


def _pet_in_suv(pet: sitk.Image, path: Path) -> tuple[sitk.Image, str | None]:
    values = sitk.GetArrayViewFromImage(pet)
    if float(values.max()) <= 0.0:
        raise InputError(f"{path}: the PET image has no positive uptake (max {float(values.max())})")
    conversion = to_suv(values)
    if conversion.detected_units == "SUV":
        return pet, None
    return pet * conversion.factor, f"PET rescaled from Bq/mL to approximate SUV (factor {conversion.factor:.3g})"


def read_case(input_dir: Path) -> Case:
    """Read and validate one case; PET is returned in SUV."""
    files = find_case_files(input_dir)
    log.info("case %s: CT %s, PET %s, ehr %s", files.case_id, files.ct.name, files.pet.name, files.ehr)
    ct = read_image(files.ct, "CT")
    pet, note = _pet_in_suv(read_image(files.pet, "PET"), files.pet)
    clinical = parse_ehr(files.ehr) if files.ehr is not None else ClinicalRecord()
    if files.ehr is None:
        log.warning("%s: no ehr.json; clinical variables are treated as unknown", input_dir)
    return Case(
        case_id=files.case_id,
        ct=ct,
        pet=pet,
        clinical=clinical,
        ct_path=files.ct,
        pet_path=files.pet,
        planning_ct=read_image(files.planning_ct, "planning CT") if files.planning_ct else None,
        rt_dose=read_image(files.rt_dose, "RT dose") if files.rt_dose else None,
        notes=(note,) if note else (),
    )
