"""Find the cases of a cohort: the *case sources* a batch run reads, one per patient.

A batch INPUT is one of four layouts (tried in this order by :func:`find_cases`):

1. **CSV list** -- INPUT is a ``.csv`` file. Columns (header row required, names case-insensitive):

   - ``path``: a case folder (platform or training layout), *or* ``ct`` and ``pet`` (image files) with an optional
     ``ehr`` (an ``ehr.json``-like file); relative paths are relative to the CSV's folder;
   - ``case_id`` (alias ``PatientID``), optional: the case ID; without it the ID is the case folder's name, or
     ``<ID>`` of a ``<ID>__CT.nii.gz`` file, or the CT file's name without its suffix.

2. **Flat pairs** (HECKTOR / nnU-Net convention) -- INPUT is a folder holding ``<ID>__CT.nii.gz`` and
   ``<ID>__PT.nii.gz`` side by side, with an optional ``<ID>__ehr.json`` (the ``__`` suffix convention of the
   images, so an ``<ID>.nii.gz`` label next to them is never mistaken for clinical data).

3. **DICOM studies** -- INPUT is a folder tree holding DICOM files (any depth, any names, mixed series; one
   patient per folder or several patients in one tree) and no case folder in the image layouts. The files are
   grouped by (PatientID, StudyInstanceUID), one case per study; the case ID is the PatientID, or its pseudonym
   from ``--id-from`` (a CSV with ``PatientID`` and ``case_id`` columns); several studies of one patient are
   ``<ID>_study1``, ``<ID>_study2``, ... by study date. The CT and the attenuation-corrected PET of each study
   are chosen by the rules of :mod:`hecktor.io.dicom.select`, and an ``ehr.json`` in a patient's own folder
   is used (:mod:`hecktor.io.dicom.case`). A study without a usable CT or PET fails alone.

4. **Case folders** -- INPUT is a folder of folders, one per patient, each in the platform layout
   (``images/ct``, ``images/pet``, ``ehr.json``) or the training layout (``<ID>__CT.nii.gz``, ``<ID>__PT.nii.gz``,
   ``ehr.json``); the case ID is the folder's name. Hidden entries and plain files beside the folders are ignored.
   A folder in neither image layout that holds one DICOM study is read as that study (case ID: its PatientID or
   pseudonym), so a cohort may mix the two; so may a CSV list (its ``case_id``, when given, names the case).

Each layout is a :class:`CaseFinder`; :func:`default_finders` lists them. The DICOM layout's sources are
:class:`~hecktor.io.dicom.case.DicomCaseSource` objects whose ``read`` converts the series: the runner only sees
the :class:`CaseSource` protocol. A DICOM series is an input of many files: ``input_paths`` gives their tuple,
hashed as one input (:mod:`hecktor.apps.case_record`). pydicom is imported only when DICOM files are met.

Case IDs name output folders, so :func:`checked_case_ids` makes them safe (characters outside
``[A-Za-z0-9._-]`` become ``_``, with a warning naming both spellings) and unique (two sources with the same ID,
compared without regard to letter case because some file systems ignore it, are an error naming both).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from hecktor.core.types import Case, InputError, RecoverableProblem
from hecktor.io.read import (
    CaseFiles,
    dicom_study_source,
    find_case_files,
    has_image_layout,
    holds_dicom,
    is_dicom_study_folder,
    read_case_files,
)

__all__ = [
    "DEFAULT_FINDERS",
    "RESERVED_NAMES",
    "BrokenCaseSource",
    "CaseFinder",
    "CaseFolders",
    "CaseListCsv",
    "CaseSource",
    "DicomStudies",
    "FileCaseSource",
    "FlatPairs",
    "checked_case_ids",
    "default_finders",
    "find_cases",
    "safe_case_id",
]

log = logging.getLogger(__name__)

CT_SUFFIX = "__CT.nii.gz"
PET_SUFFIX = "__PT.nii.gz"
FLAT_EHR_SUFFIX = "__ehr.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_ID_LENGTH = 128
# Names the batch writes beside the case folders: no case may be called that.
RESERVED_NAMES = frozenset({"summary.csv", "summary.json", "index.html"})
_ID_COLUMNS = ("case_id", "patientid")


@runtime_checkable
class CaseSource(Protocol):
    """One patient's inputs, located but not read. Picklable (the Ray executor ships it to its workers)."""

    @property
    def case_id(self) -> str: ...

    @property
    def origin(self) -> str:
        """Where the case comes from, for messages (a folder, a CSV row)."""
        ...

    def input_paths(self) -> Mapping[str, Path | Sequence[Path] | None]:
        """The files whose contents define the case (role -> a path, or a DICOM series' paths), hashed to decide
        whether it is done."""
        ...

    def read(self) -> Case:
        """Read and validate the case; raises :class:`~hecktor.core.types.InputError` naming the file."""
        ...


@dataclass(frozen=True)
class FileCaseSource:
    """A case whose image files are known (every layout above)."""

    case_id: str
    origin: str
    files: CaseFiles
    problems: tuple[RecoverableProblem, ...] = ()

    def input_paths(self) -> Mapping[str, Path | None]:
        return {"ct": self.files.ct, "pet": self.files.pet, "ehr": self.files.ehr}

    def read(self) -> Case:
        return dataclasses.replace(read_case_files(self.files, self.problems), case_id=self.case_id)


@dataclass(frozen=True)
class BrokenCaseSource:
    """A case whose files could not even be located (no PET, two CTs...): reading it raises the error found, so
    the batch reports it as that case's failure and goes on with the others."""

    case_id: str
    origin: str
    error: str

    def input_paths(self) -> Mapping[str, Path | None]:
        return {}

    def read(self) -> Case:
        raise InputError(self.error)


class CaseFinder(Protocol):
    """One input layout: whether it applies to INPUT, and its case sources."""

    name: str

    def claims(self, input_path: Path) -> bool: ...

    def find(self, input_path: Path) -> list[CaseSource]: ...


def _case_folder_source(folder: Path, case_id: str, origin: str, id_from: Path | None = None,
                        id_given: bool = False) -> CaseSource:
    """The case in ``folder``: an image layout, else the one DICOM study it holds (case ID: ``case_id`` when
    ``id_given``, else the study's PatientID or its pseudonym from ``id_from``)."""
    if is_dicom_study_folder(folder):
        try:
            study = dicom_study_source(folder, id_from)
        except InputError as exc:
            return BrokenCaseSource(case_id, origin, str(exc))
        return dataclasses.replace(study, case_id=case_id, origin=origin) if id_given else study
    try:
        files, problems = find_case_files(folder)
    except InputError as exc:
        return BrokenCaseSource(case_id, origin, str(exc))
    return FileCaseSource(case_id, origin, dataclasses.replace(files, case_id=case_id), tuple(problems))


def _image_pair_source(case_id: str, origin: str, ct: Path, pet: Path, ehr: Path | None) -> CaseSource:
    missing = [f"{path}: {role} file does not exist" for role, path in (("CT", ct), ("PET", pet), ("ehr", ehr))
               if path is not None and not path.is_file()]
    if missing:
        return BrokenCaseSource(case_id, origin, "; ".join(missing))
    # The readers refuse image headers that draw pixel data from outside ``root``: the pair's common folder.
    root = Path(os.path.commonpath([ct.parent, pet.parent]))
    files = CaseFiles(case_id=case_id, root=root, ct=ct, pet=pet, ehr=ehr, planning_ct=None, rt_dose=None)
    return FileCaseSource(case_id, origin, files)


def _visible(entries: Sequence[Path]) -> list[Path]:
    return [p for p in entries if not p.name.startswith(".")]


@dataclass(frozen=True)
class CaseListCsv:
    name: str = "csv"
    id_from: Path | None = None  # PatientID -> pseudonym table for rows that point at DICOM study folders

    def claims(self, input_path: Path) -> bool:
        return input_path.is_file() and input_path.suffix.lower() == ".csv"

    def find(self, input_path: Path) -> list[CaseSource]:
        try:
            with open(input_path, newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"{input_path}: cannot read the case list ({exc})") from exc
        return [_csv_row_source(input_path, number, row, self.id_from) for number, row in enumerate(rows, start=2)]


def _csv_row_source(csv_path: Path, line: int, raw: Mapping[str | None, object], id_from: Path | None = None
                    ) -> CaseSource:
    row = {str(k).strip().lower(): str(v or "").strip() for k, v in raw.items() if k is not None}
    origin = f"{csv_path} line {line}"

    def resolved(text: str) -> Path:
        return (csv_path.parent / text) if not Path(text).is_absolute() else Path(text)

    given_id = next((row[c] for c in _ID_COLUMNS if row.get(c)), "")
    if row.get("path"):
        folder = resolved(row["path"])
        case_id = given_id or folder.name
        if not folder.is_dir():
            return BrokenCaseSource(case_id or f"line-{line}", origin, f"{folder}: case folder does not exist")
        return _case_folder_source(folder, case_id, origin, id_from, id_given=bool(given_id))
    if row.get("ct") and row.get("pet"):
        ct, pet = resolved(row["ct"]), resolved(row["pet"])
        case_id = given_id or (ct.name[: -len(CT_SUFFIX)] if ct.name.endswith(CT_SUFFIX) else ct.name.split(".")[0])
        return _image_pair_source(case_id, origin, ct, pet, resolved(row["ehr"]) if row.get("ehr") else None)
    raise InputError(f"{origin}: needs a 'path' column (a case folder) or 'ct' and 'pet' columns, got "
                     f"{sorted(k for k, v in row.items() if v)}")


@dataclass(frozen=True)
class FlatPairs:
    name: str = "flat pairs"

    def claims(self, input_path: Path) -> bool:
        return input_path.is_dir() and any(_visible(sorted(input_path.glob(f"*{CT_SUFFIX}"))))

    def find(self, input_path: Path) -> list[CaseSource]:
        sources: list[CaseSource] = []
        cts = _visible(sorted(input_path.glob(f"*{CT_SUFFIX}")))
        for ct in cts:
            case_id = ct.name[: -len(CT_SUFFIX)]
            pet = input_path / f"{case_id}{PET_SUFFIX}"
            ehr = input_path / f"{case_id}{FLAT_EHR_SUFFIX}"
            origin = f"{ct}"
            if not pet.is_file():
                sources.append(BrokenCaseSource(case_id, origin, f"{pet}: PET image is missing (found {ct.name})"))
                continue
            sources.append(_image_pair_source(case_id, origin, ct, pet, ehr if ehr.exists() else None))
        known = {ct.name[: -len(CT_SUFFIX)] for ct in cts}
        for pet in _visible(sorted(input_path.glob(f"*{PET_SUFFIX}"))):
            case_id = pet.name[: -len(PET_SUFFIX)]
            if case_id not in known:
                sources.append(BrokenCaseSource(case_id, str(pet), f"{pet}: CT image is missing "
                                                f"(expected {case_id}{CT_SUFFIX})"))
        return sources


@dataclass(frozen=True)
class DicomStudies:
    name: str = "dicom studies"
    id_from: Path | None = None  # PatientID -> pseudonym table (hecktor.io.dicom.ids)

    def claims(self, input_path: Path) -> bool:
        if not input_path.is_dir() or (input_path / "images").is_dir():
            return False
        # Image-layout case folders make it a folder of case folders (whose DICOM folders are read too).
        if any(has_image_layout(p) for p in _visible(sorted(input_path.iterdir())) if p.is_dir()):
            return False
        return holds_dicom(input_path)

    def find(self, input_path: Path) -> list[CaseSource]:
        try:
            # Imported here: pydicom is not in the platform image.
            from hecktor.io.dicom.case import locate_studies
        except ImportError as exc:
            raise InputError(f"{input_path}: holds DICOM files, and reading them needs pydicom ({exc}); install "
                             f"requirements/dicom.txt") from exc
        return [study.source if study.source is not None else
                BrokenCaseSource(study.case_id, study.origin, study.error or "unusable DICOM study")
                for study in locate_studies(input_path, self.id_from)]


@dataclass(frozen=True)
class CaseFolders:
    name: str = "case folders"
    id_from: Path | None = None  # PatientID -> pseudonym table for folders holding a DICOM study

    def claims(self, input_path: Path) -> bool:
        return input_path.is_dir()

    def find(self, input_path: Path) -> list[CaseSource]:
        if (input_path / "images").is_dir():
            raise InputError(f"{input_path}: this is one case (it holds images/); a batch INPUT is a folder of case "
                             f"folders, a folder of <ID>__CT.nii.gz/<ID>__PT.nii.gz pairs or a CSV list (give the "
                             f"parent folder, or use 'run' for one case)")
        folders = [p for p in _visible(sorted(input_path.iterdir())) if p.is_dir()]
        return [_case_folder_source(folder, folder.name, str(folder), self.id_from) for folder in folders]


def default_finders(id_from: Path | None = None) -> tuple[CaseFinder, ...]:
    """The layouts in the order :func:`find_cases` tries them; ``id_from``: ``--id-from``'s table, for DICOM."""
    return (CaseListCsv(id_from=id_from), FlatPairs(), DicomStudies(id_from=id_from), CaseFolders(id_from=id_from))


DEFAULT_FINDERS: tuple[CaseFinder, ...] = default_finders()


def safe_case_id(case_id: str) -> str:
    """``case_id`` as a folder name: characters outside ``[A-Za-z0-9._-]`` become ``_``; no leading dot."""
    safe = _UNSAFE.sub("_", case_id.strip())[:_MAX_ID_LENGTH]
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return safe


def checked_case_ids(sources: Sequence[CaseSource],
                     renamed: Callable[[CaseSource, str], CaseSource] | None = None) -> list[CaseSource]:
    """``sources`` with safe IDs (renamed with a warning), or :class:`InputError` for duplicates or reserved names.

    ``renamed(source, new_id)`` gives a source its new ID (default: ``dataclasses.replace``; a DICOM source
    that is not a dataclass passes its own).
    """
    rename = renamed or (lambda source, new_id: dataclasses.replace(source, case_id=new_id))  # type: ignore[type-var]
    checked: list[CaseSource] = []
    for source in sources:
        safe = safe_case_id(source.case_id)
        if not safe or set(safe) <= {"_", "."}:
            raise InputError(f"{source.origin}: case ID {source.case_id!r} has no usable character for a folder name")
        if safe != source.case_id:
            log.warning("%s: case ID %r is not a safe folder name; using %r", source.origin, source.case_id, safe)
            source = rename(source, safe)
        if safe.lower() in RESERVED_NAMES:
            raise InputError(f"{source.origin}: case ID {safe!r} is reserved for the batch's own files")
        checked.append(source)
    seen: dict[str, CaseSource] = {}
    problems = []
    for source in checked:
        key = source.case_id.lower()
        if key in seen:
            problems.append(f"case ID {source.case_id!r} is given twice: {seen[key].origin} and {source.origin}")
        else:
            seen[key] = source
    if problems:
        raise InputError("; ".join(problems))
    return checked


def find_cases(input_path: Path, finders: Sequence[CaseFinder] = DEFAULT_FINDERS) -> tuple[str, list[CaseSource]]:
    """The layout's name and the case sources of ``input_path`` (IDs checked); :class:`InputError` when INPUT does
    not exist, matches no layout, holds no case, or names a case twice."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path}: batch input does not exist")
    for finder in finders:
        if finder.claims(input_path):
            sources = finder.find(input_path)
            if not sources:
                raise InputError(f"{input_path}: no case found ({finder.name} layout)")
            return finder.name, checked_case_ids(sources)
    raise InputError(f"{input_path}: not a folder of cases, a folder of <ID>__CT.nii.gz/<ID>__PT.nii.gz pairs, "
                     f"a folder of DICOM studies or a .csv case list")
