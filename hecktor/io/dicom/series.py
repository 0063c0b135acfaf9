"""Scan a folder tree for DICOM files and group them into studies and series, reading headers only.

Any depth, any file names, several series (and several patients) mixed in one folder: every file with the
PS3.10 ``DICM`` magic is opened with ``stop_before_pixels`` and only the tags below, so a 1,000-file study
is scanned in about a second. Other files (``DICOMDIR``, reports, pictures, hidden files) are skipped and
counted, never read further.

- a **study** is the files sharing (PatientID, StudyInstanceUID): one case;
- a **series** is the files of a study sharing a SeriesInstanceUID; its descriptive tags (modality, image type,
  corrected image, description, frame of reference) come from its first file in path order.

A file whose SOPInstanceUID was already seen (the same instance copied twice into the tree) is counted and
ignored, so a duplicated instance does not look like two slices at one position.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from hecktor.io.dicom.detect import is_dicom_file, walk_files

__all__ = ["DicomScan", "DicomSeries", "DicomStudy", "scan_dicom_tree"]

log = logging.getLogger(__name__)

# What the scan reads of each file (besides the file meta, which carries the transfer syntax).
SCAN_TAGS = (
    "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "SeriesInstanceUID", "SeriesNumber",
    "SOPInstanceUID", "SOPClassUID", "Modality", "ImageType", "CorrectedImage", "SeriesDescription",
    "FrameOfReferenceUID", "NumberOfFrames",
)
# Media Storage Directory (DICOMDIR): an index of the files, not an image.
_MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class DicomSeries:
    """One series of a study, as far as its headers tell (no pixel read yet)."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    modality: str  # "CT", "PT", "RTSTRUCT", ...
    sop_class_uid: str
    image_type: tuple[str, ...]  # upper case, e.g. ("ORIGINAL", "PRIMARY", "AXIAL")
    corrected_image: tuple[str, ...]  # PET: e.g. ("DECY", "ATTN", "SCAT"); empty when absent
    description: str
    frame_of_reference_uid: str  # "" when absent
    transfer_syntax_uids: tuple[str, ...]  # every syntax its files use, sorted
    max_frames: int  # 1 for single-frame images
    files: tuple[Path, ...]  # one per instance, sorted by path

    @property
    def instance_count(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """How logs and messages name the series: number, modality, description and size (no UID, no name)."""
        number = "?" if self.series_number is None else str(self.series_number)
        description = f" {self.description!r}" if self.description else ""
        return f"series {number} ({self.modality}{description}, {self.instance_count} instance(s))"


@dataclass(frozen=True)
class DicomStudy:
    """The series one patient's study holds: what one case is read from."""

    patient_id: str
    study_instance_uid: str
    study_date: str  # "" when absent; orders a patient's studies, never logged
    study_time: str
    series: tuple[DicomSeries, ...]  # by series number, then UID

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for s in self.series for f in s.files)

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the study."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


@dataclass(frozen=True)
class DicomScan:
    studies: tuple[DicomStudy, ...]  # by folder, then StudyInstanceUID
    dicom_files: int  # DICOM instances grouped into the studies
    other_files: int  # files skipped: not DICOM, DICOMDIR, or DICOM without study/series/instance UIDs
    duplicates: int  # instances found more than once (same SOPInstanceUID), ignored after the first


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _words(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...]:
    """A multi-valued CS element as upper-case words (one value arrives as a plain string)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _integer(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _Instance:
    path: Path
    header: pydicom.Dataset
    transfer_syntax_uid: str


def _read_instance(path: Path) -> _Instance | None:
    """The scan tags of one file, or None when it is not a DICOM instance of a series (logged at debug)."""
    if not is_dicom_file(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(SCAN_TAGS))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        log.debug("%s: unreadable DICOM header (%s), skipped", path, exc)
        return None
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    if sop_class == _MEDIA_DIRECTORY_SOP_CLASS:
        return None
    if not all(_text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        log.debug("%s: DICOM file without study, series or instance UID, skipped", path)
        return None
    syntax = _text(meta, "TransferSyntaxUID") if meta is not None else ""
    return _Instance(path, ds, syntax)


def _series_of(instances: Sequence[_Instance]) -> DicomSeries:
    first = instances[0].header
    return DicomSeries(
        patient_id=_text(first, "PatientID"),
        study_instance_uid=_text(first, "StudyInstanceUID"),
        series_instance_uid=_text(first, "SeriesInstanceUID"),
        series_number=_integer(first, "SeriesNumber"),
        modality=_text(first, "Modality").upper(),
        sop_class_uid=_text(first, "SOPClassUID"),
        image_type=_words(first, "ImageType"),
        corrected_image=_words(first, "CorrectedImage"),
        description=_text(first, "SeriesDescription"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
        transfer_syntax_uids=tuple(sorted({i.transfer_syntax_uid for i in instances})),
        max_frames=max((_integer(i.header, "NumberOfFrames") or 1) for i in instances),
        files=tuple(i.path for i in instances),
    )


def _series_order(series: DicomSeries) -> tuple[int, str]:
    return (series.series_number if series.series_number is not None else 1 << 30, series.series_instance_uid)


def _group_instances(instances: Iterable[_Instance]) -> tuple[list[DicomStudy], int]:
    """Studies (PatientID, StudyInstanceUID) of series (SeriesInstanceUID); duplicated instances dropped."""
    by_series: dict[tuple[str, str, str], list[_Instance]] = defaultdict(list)
    seen: set[str] = set()
    duplicates = 0
    for instance in sorted(instances, key=lambda i: str(i.path)):
        uid = _text(instance.header, "SOPInstanceUID")
        if uid in seen:
            duplicates += 1
            continue
        seen.add(uid)
        key = tuple(_text(instance.header, k) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"))
        by_series[key].append(instance)  # type: ignore[index]
    by_study: dict[tuple[str, str], list[DicomSeries]] = defaultdict(list)
    study_header: dict[tuple[str, str], pydicom.Dataset] = {}
    for (patient_id, study_uid, _), members in by_series.items():
        by_study[(patient_id, study_uid)].append(_series_of(members))
        study_header.setdefault((patient_id, study_uid), members[0].header)
    studies = [
        DicomStudy(patient_id, study_uid, _text(study_header[(patient_id, study_uid)], "StudyDate"),
                   _text(study_header[(patient_id, study_uid)], "StudyTime"), tuple(sorted(series, key=_series_order)))
        for (patient_id, study_uid), series in by_study.items()
    ]
    studies.sort(key=lambda s: (str(s.folder), s.study_instance_uid))
    return studies, duplicates


def scan_dicom_tree(root: Path) -> DicomScan:
    """Every DICOM study under ``root`` (a folder, any depth), headers only."""
    instances: list[_Instance] = []
    other = 0
    for path in walk_files(Path(root)):
        instance = _read_instance(path)
        if instance is None:
            other += 1
        else:
            instances.append(instance)
    studies, duplicates = _group_instances(instances)
    if other:
        log.info("%s: %d file(s) that are not DICOM images skipped (DICOMDIR, reports, other files)", root, other)
    if duplicates:
        log.warning("%s: %d DICOM instance(s) found more than once (same SOPInstanceUID); each read once",
                    root, duplicates)
    return DicomScan(tuple(studies), len(instances) - duplicates, other, duplicates)
