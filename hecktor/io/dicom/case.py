"""One case per DICOM study: locate the studies of a folder tree, and read one into a :class:`Case`.

**Studies and case IDs.** The files under the input folder (any depth, any names) are grouped by (PatientID,
StudyInstanceUID) (:mod:`hecktor.io.dicom.series`); each study is one case, its CT and PET chosen by the rules of
:mod:`hecktor.io.dicom.select`. The case ID is the PatientID, or its pseudonym from the ``--id-from`` table
(:mod:`hecktor.io.dicom.ids`); a patient with several studies gets ``<ID>_study1``, ``<ID>_study2``, ... in
order of study date and time; a study without a PatientID takes its folder's name (when no ``--id-from`` table
is given: with one, it is refused like any PatientID the table lacks).

**ehr.json.** The nearest ``ehr.json`` in the study's own folder (the deepest folder holding all its files) or
above it, up to the input folder, in a folder that holds no other study: beside a single-patient study given to
the single-case command, or in each patient's folder of a cohort. One at the top of a cohort belongs to no one
patient and is not used.

**Reading.** The CT is read in HU and the PET in SUVbw from its header (:mod:`hecktor.io.dicom.suv`); a PET
header that lacks what SUV needs is the recoverable problem ``dicom-suv-tags`` naming the tag, whose fallback is
the run-time estimate of :mod:`hecktor.io.suv` (never silent Bq/mL). Geometry problems of either series follow
the input policy (:mod:`hecktor.io.dicom.volume`). The modalities come from the headers, so the swapped-CT/PET
check of the image layouts does not apply. ``Case.dicom_series`` records what was read (series and instance
UIDs, files in stacking order); ``Case.ct_path``/``pet_path`` are the series' folders, for messages.

**What is logged.** The case ID, folders, the series table (series number, modality, description, instance
count, taken or not and why) and the SUV summary; never the patient's name, birth date, or (with ``--id-from``)
the PatientID.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import direction_problem
from hecktor.core.types import Case, DicomSeriesRef, InputError, RecoverableProblem
from hecktor.io.dicom.ids import read_pseudonyms
from hecktor.io.dicom.select import SeriesChoice, choose_series
from hecktor.io.dicom.series import DicomScan, DicomSeries, DicomStudy, scan_dicom_tree
from hecktor.io.dicom.suv import MissingSuvTag, suv_from_header
from hecktor.io.dicom.volume import SeriesGrid, check_decodable, plan_grid, read_slice_headers, read_volume
from hecktor.io.read import MAX_VOXELS, pet_no_uptake_problem, read_clinical
from hecktor.io.suv import BQML_DETECTION_SUV, to_suv

__all__ = ["DicomCaseSource", "LocatedStudy", "locate_studies", "read_dicom_case", "single_study_source"]

log = logging.getLogger(__name__)

EHR_NAME = "ehr.json"


@dataclass(frozen=True)
class DicomCaseSource:
    """A case located in a DICOM study (a :class:`~hecktor.io.layouts.CaseSource`): its series are chosen, their
    pixels not yet read. ``problems``: what the choice met (ambiguity, frames of reference)."""

    case_id: str
    origin: str
    choice: SeriesChoice
    study_folder: Path
    ehr: Path | None
    problems: tuple[RecoverableProblem, ...] = ()

    def input_paths(self) -> Mapping[str, Path | tuple[Path, ...] | None]:
        """The files whose contents define the case: every instance of the CT and PET series, and ehr.json."""
        return {"ct": self.choice.ct.files, "pet": self.choice.pet.files, "ehr": self.ehr}

    def read(self) -> Case:
        return read_dicom_case(self)


@dataclass(frozen=True)
class LocatedStudy:
    """A study found under the input: its case source, or why it cannot be one (``error``)."""

    case_id: str
    origin: str
    source: DicomCaseSource | None
    error: str | None


# --------------------------------------------------------------------------- locating


def _ancestors(folder: Path, root: Path) -> set[Path]:
    """``folder`` and every folder above it up to ``root`` (inclusive)."""
    found = {folder}
    while folder != root and folder.parent != folder and root in folder.parents:
        folder = folder.parent
        found.add(folder)
    return found


def _study_ehr(study: DicomStudy, others: Sequence[DicomStudy], root: Path) -> Path | None:
    """The nearest ehr.json from the study's folder up to ``root`` in a folder holding no other study."""
    shared: set[Path] = set()
    for other in others:
        for parent in {f.parent for f in other.files}:
            shared |= _ancestors(parent, root)
    folder = study.folder
    while True:
        if folder in shared:
            return None
        candidate = folder / EHR_NAME
        if candidate.exists():
            return candidate
        if folder == root or root not in folder.parents:
            return None
        folder = folder.parent


def _selection_problems(choice: SeriesChoice, folder: Path) -> tuple[RecoverableProblem, ...]:
    problems = []
    if choice.ambiguity is not None:
        found = " | ".join(f"{'taken as ' + v.taken_as if v.taken_as else 'not taken'}: {v.series.label()} "
                           f"({v.reason})" for v in choice.verdicts)
        problems.append(RecoverableProblem("dicom-series-ambiguous", folder, f"{choice.ambiguity}. Series found: "
                                           f"{found}", f"took {choice.ct.label()} as the CT and {choice.pet.label()} "
                                           f"as the PET"))
    if choice.frame_mismatch is not None:
        problems.append(RecoverableProblem("dicom-frame-of-reference", folder, choice.frame_mismatch,
                                           "their coordinates taken as one frame (as for NIfTI inputs)"))
    return tuple(problems)


def _base_ids(studies: Sequence[DicomStudy], pseudonyms: Mapping[str, str] | None, id_from: Path | None
              ) -> list[tuple[str | None, str | None]]:
    """Per study: the case ID before the per-patient study suffix, or None and the reason it has none."""
    ids: list[tuple[str | None, str | None]] = []
    for study in studies:
        if pseudonyms is None:
            ids.append((study.patient_id or study.folder.name, None))
        elif study.patient_id in pseudonyms:
            ids.append((pseudonyms[study.patient_id], None))
        else:
            # The PatientID is not named: the table exists to keep it out of logs and outputs.
            ids.append((None, f"its PatientID is not in the --id-from table {id_from}"))
    return ids


def locate_studies(root: Path, id_from: Path | None = None, scan: DicomScan | None = None) -> list[LocatedStudy]:
    """A case per DICOM study under ``root`` (see the module docstring for IDs and ehr.json).

    ``id_from``: the PatientID -> pseudonym table; ``scan``: the tree's scan when already made.
    """
    root = Path(root)
    scan = scan or scan_dicom_tree(root)
    pseudonyms = read_pseudonyms(id_from) if id_from is not None else None
    studies = list(scan.studies)
    base_ids = _base_ids(studies, pseudonyms, id_from)
    per_patient: dict[str, list[int]] = defaultdict(list)
    for index, (base, _) in enumerate(base_ids):
        if base is not None:
            per_patient[base].append(index)
    case_ids: dict[int, str] = {}
    for base, indices in per_patient.items():
        ordered = sorted(indices, key=lambda i: (studies[i].study_date, studies[i].study_time,
                                                 studies[i].study_instance_uid))
        for number, index in enumerate(ordered, start=1):
            case_ids[index] = base if len(ordered) == 1 else f"{base}_study{number}"
    folders = [s.folder for s in studies]
    located = []
    unmapped = 0
    for index, study in enumerate(studies):
        folder = study.folder
        sharing = folders.count(folder)
        origin = str(folder) if sharing == 1 else \
            f"{folder} (study {folders[:index + 1].count(folder)} of {sharing} in this folder)"
        error = base_ids[index][1]
        if error is not None:
            unmapped += 1
            located.append(LocatedStudy(f"unmapped-{unmapped}", origin, None, f"{origin}: {error}"))
            continue
        case_id = case_ids[index]
        try:
            choice = choose_series(study.series, origin)
        except InputError as exc:
            located.append(LocatedStudy(case_id, origin, None, str(exc)))
            continue
        others = [s for s in studies if s is not study]
        source = DicomCaseSource(case_id, origin, choice, folder, _study_ehr(study, others, root),
                                 _selection_problems(choice, folder))
        located.append(LocatedStudy(case_id, origin, source, None))
    return located


def single_study_source(input_dir: Path, id_from: Path | None = None) -> DicomCaseSource:
    """The one study of ``input_dir`` as a case source; :class:`InputError` when it holds none, several, or one
    that cannot be a case."""
    input_dir = Path(input_dir)
    scan = scan_dicom_tree(input_dir)
    if not scan.studies:
        raise InputError(f"{input_dir}: no DICOM image series found ({scan.other_files} other file(s))")
    located = locate_studies(input_dir, id_from, scan)
    if len(located) > 1:
        raise InputError(f"{input_dir}: holds {len(located)} DICOM studies ({'; '.join(s.origin for s in located)}); "
                         f"give one study's folder, or use 'python -m hecktor batch' for several")
    (study,) = located
    if study.source is None:
        raise InputError(study.error or f"{input_dir}: unusable DICOM study")
    return study.source


# --------------------------------------------------------------------------- reading


def _checked_grid(series: DicomSeries, role: str, folder: Path) -> SeriesGrid:
    check_decodable(series)
    grid = plan_grid(read_slice_headers(series), role, folder)
    voxels = grid.size[0] * grid.size[1] * grid.size[2]
    if voxels > MAX_VOXELS:
        raise InputError(f"{folder}: the {role} series would make {voxels:.3g} voxels (size {grid.size}), more than "
                         f"the {MAX_VOXELS:.0e} this product reads")
    problem = direction_problem(np.asarray(grid.direction, dtype=np.float64).reshape(3, 3))
    if problem is not None:
        raise InputError(f"{folder}: the {role} series' direction matrix {problem}; its geometry cannot be trusted")
    return grid


def _pet_in_suv(grid: SeriesGrid, folder: Path) -> tuple[sitk.Image, list[RecoverableProblem]]:
    """The PET in SUVbw from its header; without the tags SUV needs, the run-time estimate and a problem naming
    the tag."""
    try:
        suv = suv_from_header([s.header for s in grid.slices])
    except MissingSuvTag as missing:
        pet = read_volume(grid)
        no_uptake = pet_no_uptake_problem(pet, folder)
        if no_uptake is not None:
            return pet, [no_uptake]
        conversion = to_suv(sitk.GetArrayViewFromImage(pet))
        if conversion.detected_units == "SUV":
            fallback = (f"values used as SUV as they are (99.9th percentile {conversion.p999:.3g} <= "
                        f"{BQML_DETECTION_SUV:g}, not Bq/mL)")
        else:
            fallback = (f"SUV estimated from the image: rescaled by {conversion.factor:.3g} so that body tissue has a "
                        f"median SUV of {conversion.body_median_suv:.2f} (approximate)")
            pet = pet * conversion.factor
        return pet, [RecoverableProblem("dicom-suv-tags", folder, f"the PET header cannot give SUVbw: {missing.tag}: "
                                        f"{missing.reason}", fallback)]
    factors = suv.per_slice_factor if suv.per_slice_factor is not None else (suv.factor,) * len(grid.slices)
    log.info("%s: %s", folder, suv.summary)
    pet = read_volume(grid, factors)
    no_uptake = pet_no_uptake_problem(pet, folder)
    return pet, [no_uptake] if no_uptake is not None else []


def _series_ref(role: str, series: DicomSeries, study_uid: str, grid: SeriesGrid) -> DicomSeriesRef:
    return DicomSeriesRef(
        role=role,
        patient_id=series.patient_id,
        study_instance_uid=study_uid,
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        sop_class_uid=series.sop_class_uid,
        sop_instance_uids=tuple(s.sop_instance_uid for s in grid.slices),
        files=tuple(s.path for s in grid.slices),
    )


def _common_folder(series: DicomSeries) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in series.files]))


def read_dicom_case(source: DicomCaseSource) -> Case:
    """Read the chosen CT (HU) and PET (SUVbw) of ``source``'s study; problems follow the input policy."""
    choice = source.choice
    log.info("case %s: DICOM study in %s; series found:\n%s", source.case_id, source.origin, choice.table())
    ct_folder, pet_folder = _common_folder(choice.ct), _common_folder(choice.pet)
    ct_grid = _checked_grid(choice.ct, "CT", ct_folder)
    pet_grid = _checked_grid(choice.pet, "PET", pet_folder)
    ct = read_volume(ct_grid)
    pet, pet_problems = _pet_in_suv(pet_grid, pet_folder)
    clinical, clinical_problems = read_clinical(source.ehr, source.study_folder)
    study_uid = choice.ct.study_instance_uid
    return Case(
        case_id=source.case_id,
        ct=ct,
        pet=pet,
        clinical=clinical,
        ct_path=ct_folder,
        pet_path=pet_folder,
        ehr_path=source.ehr,
        problems=(*source.problems, *ct_grid.problems, *pet_grid.problems, *pet_problems, *clinical_problems),
        dicom_series=(_series_ref("CT", choice.ct, study_uid, ct_grid),
                      _series_ref("PET", choice.pet, study_uid, pet_grid)),
    )
