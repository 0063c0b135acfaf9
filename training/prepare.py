"""``python -m training prepare``: contoured PET/CT cases -> an nnU-Net raw dataset on the 1 mm ROI grid.

Every case goes through the container's own code, so a network is trained on exactly what it will be
given at inference: :func:`hecktor.io.read.read_case` (header checks, PET to SUV; for the patients whose
PET was delivered in Bq/mL, the factor from their DICOM tags replaces the run-time estimate) and
:func:`hecktor.preprocess.roi.extract_roi` with the manifest's preprocessing settings, which also brings the
reference labels onto the ROI grid (linear interpolation of each label's mask, nnU-Net's way; the label
volumes before and after are recorded per case and a change over 5 % is reported).

What is written (``nnUNet_raw/DatasetXXX_Name``):

- ``imagesTr/<ID>_0000.nii.gz``: CT in HU on the ROI grid; nnU-Net normalises it with its ``CT`` scheme
  (dataset foreground percentiles, mean and std), whose statistics ``export`` copies into the manifest.
- ``imagesTr/<ID>_0001.nii.gz``: the PET already normalised by :func:`hecktor.preprocess.normalise.normalise_pet` (the
  container's per-case z-score over non-zero voxels), declared ``noNorm`` so that nnU-Net leaves it alone:
  nnU-Net's own z-score would take different voxels into the statistics.
- ``labelsTr/<ID>.nii.gz``: uint8 labels 0/1/2 on the same grid.
- ``dataset.json`` (nnU-Net's, plus a ``hecktor`` block: preprocessing settings, synthetic or real data) and
  ``cases.json`` (per case: centre, how the ROI was placed, PET units, label volumes before and after).

Input layouts: the HECKTOR 2025 training layout (``Task 1/<ID>/<ID>__CT.nii.gz``, ``<ID>__PT.nii.gz``,
``<ID>.nii.gz``) and case folders in the Grand-Challenge layout (``images/ct``, ``images/pet``) with a
``label.nii.gz`` or ``label.mha`` next to ``images``. A case that cannot be read is named, skipped and
listed at the end; nothing else is lost. A case's three files are written to a staging folder and moved
into place together, so a re-run skips exactly the finished cases.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hecktor.core.geometry import image_on_grid
from hecktor.core.manifest import CHALLENGE_LABELS, PreprocessConfig, load_manifest
from hecktor.core.types import InputError
from hecktor.io.read import read_case, read_image
from hecktor.preprocess.normalise import normalise_pet
from hecktor.preprocess.roi import extract_roi, label_volumes_ml
from training.workspace import write_json

__all__ = [
    "CHANNELS",
    "FILE_ENDING",
    "PrepareSummary",
    "SkippedCase",
    "SourceCase",
    "find_source_cases",
    "is_synthetic_source",
    "prepare_dataset",
    "read_reference_labels",
    "read_suv_factors",
]

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
# nnU-Net picks the normalisation from the channel name: "CT" -> CTNormalization, "noNorm" -> NoNormalization.
CHANNELS: Mapping[str, str] = {"0": "CT", "1": "noNorm"}
TASK1_CSV = "HECKTOR_2025_Training_Task_1.csv"
LABEL_NAMES = ("label.nii.gz", "label.mha")
SYNTHETIC_MARKER = "README_SYNTHETIC.txt"
VOLUME_TOLERANCE = 0.05
_STAGING = ".staging"


@dataclass(frozen=True)
class SourceCase:
    case_id: str
    folder: Path  # what hecktor.io.read.read_case reads (training or platform layout)
    labels: Path
    centre: str


@dataclass(frozen=True)
class SkippedCase:
    case_id: str
    path: Path
    reason: str


@dataclass(frozen=True)
class PrepareSummary:
    dataset_dir: Path
    prepared: tuple[str, ...]  # this run
    already_done: tuple[str, ...]  # finished by an earlier run, left as they were
    skipped: tuple[SkippedCase, ...]
    volume_warnings: tuple[str, ...] = field(default=())

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(sorted((*self.prepared, *self.already_done)))


def read_suv_factors(path: Path | None) -> dict[str, float]:
    """``pid`` -> ``bqml_to_suvbw_factor`` of a table like ``hecktor_pet_bqml_suv_factors.csv``."""
    if path is None:
        return {}
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"pid", "bqml_to_suvbw_factor"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: Bq/mL factor table lacks the column(s) {sorted(missing)}")
    factors = {row["pid"].strip(): float(row["bqml_to_suvbw_factor"]) for row in rows}
    bad = [pid for pid, f in factors.items() if not (math.isfinite(f) and f > 0)]
    if bad:
        raise ValueError(f"{path}: non-positive Bq/mL-to-SUV factors for {bad}")
    return factors


def _centre_table(folder: Path) -> dict[str, str]:
    """PatientID -> CenterID from the HECKTOR Task 1 table, when there is one."""
    table = folder / TASK1_CSV
    if not table.is_file():
        return {}
    with table.open(newline="") as handle:
        return {row["PatientID"].strip(): str(row["CenterID"]).strip()
                for row in csv.DictReader(handle) if row.get("PatientID") and row.get("CenterID")}


def _centre_of(case_id: str, table: Mapping[str, str]) -> str:
    """HECKTOR ids carry their centre (``CHUM-001``); otherwise the Task 1 table's CenterID, else "unknown"."""
    prefix = case_id.split("-", 1)[0]
    if "-" in case_id and prefix.isalpha():
        return prefix
    return table.get(case_id, "unknown")


def _training_case(folder: Path) -> Path | None:
    label = folder / f"{folder.name}{FILE_ENDING}"
    ct = folder / f"{folder.name}__CT{FILE_ENDING}"
    return label if ct.exists() or label.exists() else None


def _platform_case(folder: Path) -> Path | None:
    if not (folder / "images").is_dir():
        return None
    return next((folder / name for name in LABEL_NAMES if (folder / name).exists()), folder / LABEL_NAMES[0])


def find_source_cases(source: Path) -> tuple[list[SourceCase], list[SkippedCase]]:
    """Case folders under ``source`` (or under ``source/Task 1``), sorted by id; unusable folders are skipped."""
    source = Path(source)
    root = source / "Task 1" if (source / "Task 1").is_dir() else source
    if not root.is_dir():
        raise FileNotFoundError(f"{source}: training data folder not found")
    table = _centre_table(root)
    cases, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        labels = _training_case(folder) or _platform_case(folder)
        if labels is None:
            skipped.append(SkippedCase(folder.name, folder, "neither <ID>/<ID>__CT.nii.gz nor images/ct + images/pet"))
        elif not labels.is_file():
            skipped.append(SkippedCase(folder.name, labels, "the label image is missing"))
        else:
            cases.append(SourceCase(folder.name, folder, labels, _centre_of(folder.name, table)))
    return cases, skipped


def is_synthetic_source(source: Path) -> bool:
    """hecktor.io.phantom.write_training_dataset marks its datasets (``source`` may be the root or ``Task 1``)."""
    source = source.absolute()
    return any((folder / SYNTHETIC_MARKER).is_file() for folder in (source, source.parent))


def _output_paths(dataset_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    return (dataset_dir / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
            dataset_dir / "imagesTr" / f"{case_id}_0001{FILE_ENDING}",
            dataset_dir / "labelsTr" / f"{case_id}{FILE_ENDING}")


def _is_done(dataset_dir: Path, case_id: str) -> bool:
    return all(p.is_file() for p in _output_paths(dataset_dir, case_id))


def read_reference_labels(path: Path) -> sitk.Image:
    image, _ = read_image(path, "label", path.parent)
    values = np.unique(sitk.GetArrayViewFromImage(image))
    unexpected = sorted(set(values.tolist()) - {0.0, 1.0, 2.0})
    if unexpected:
        raise InputError(f"{path}: labels must be 0 (background), 1 (GTVp) or 2 (GTVn); found {unexpected[:5]}")
    return image


def prepare_case(case: SourceCase, config: PreprocessConfig, suv_factor: float | None, staging: Path) -> dict[str, Any]:
    """Read, place the ROI, resample and write one case into ``staging``; returns its ``cases.json`` record."""
    image_case = read_case(case.folder, known_suv_factor=suv_factor)
    labels = read_reference_labels(case.labels)
    roi = extract_roi(image_case, config, labels=labels)
    assert roi.labels is not None
    ct_path, pet_path, label_path = _output_paths(staging, case.case_id)
    for path, values in ((ct_path, roi.ct_hu), (pet_path, normalise_pet(roi.pet_suv)), (label_path, roi.labels)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image_on_grid(values, roi.grid), str(path), useCompression=True)
    before = label_volumes_ml(sitk.GetArrayViewFromImage(labels).astype(np.uint8), labels)  # a copy: no view kept
    after = label_volumes_ml(roi.labels, roi.grid)
    return {
        "case_id": case.case_id,
        "centre": case.centre,
        "source": str(case.folder),
        "roi_located_by": roi.located_by,
        "roi_size_xyz": list(roi.grid.GetSize()),
        "pet_units": ("Bq/mL, known factor" if suv_factor is not None
                      else "Bq/mL, estimated factor" if any(p.code == "pet-bqml" for p in image_case.problems)
                      else "SUV"),
        "suv_factor": suv_factor,
        "label_volume_ml_source": {CHALLENGE_LABELS[str(k)]: round(v, 4) for k, v in before.items()},
        "label_volume_ml_roi": {CHALLENGE_LABELS[str(k)]: round(v, 4) for k, v in after.items()},
    }


def _volume_warning(record: Mapping[str, Any]) -> str | None:
    problems = []
    for name, before in record["label_volume_ml_source"].items():
        after = record["label_volume_ml_roi"][name]
        if before > 0 and abs(after - before) > VOLUME_TOLERANCE * before:
            problems.append(f"{name} {before:.2f} -> {after:.2f} mL")
    if not problems:
        return None
    return (f"{record['case_id']}: label volume changed by more than {VOLUME_TOLERANCE:.0%} on the ROI grid "
            f"({'; '.join(problems)}): a lesion reaches outside the ROI, or is small for the ROI grid's voxels")


def _publish(staging: Path, dataset_dir: Path, case_id: str) -> None:
    """Move the case's three staged files into place; the label goes last, so its presence means done."""
    for source, target in zip(_output_paths(staging, case_id), _output_paths(dataset_dir, case_id), strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def _dataset_json(cases: Sequence[str], config: PreprocessConfig, synthetic: bool, source: Path) -> dict[str, Any]:
    return {
        "channel_names": dict(CHANNELS),
        "labels": {name: int(value) for value, name in CHALLENGE_LABELS.items()},
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "name": "HECKTOR 2025 head-and-neck ROI (hecktor training prepare)",
        "hecktor": {
            "synthetic": synthetic,
            "source": str(source),
            "preprocess": json.loads(json.dumps(asdict(config))),
            "pet_channel": "hecktor.preprocess.normalise.normalise_pet (z-score over non-zero ROI voxels), "
                           "not renormalised",
        },
    }


def prepare_dataset(
    source: Path,
    dataset_dir: Path,
    config: PreprocessConfig | None = None,
    suv_factors: Mapping[str, float] | None = None,
) -> PrepareSummary:
    """Prepare every case of ``source`` into ``dataset_dir``; see the module docstring."""
    config = config or load_manifest().preprocess
    suv_factors = dict(suv_factors or {})
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    cases, skipped = find_source_cases(source)
    records_path = dataset_dir / "cases.json"
    records: dict[str, Any] = json.loads(records_path.read_text()) if records_path.is_file() else {}
    staging = dataset_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's half-written case
    prepared, done_before, warnings = [], [], []
    for index, case in enumerate(cases, start=1):
        if _is_done(dataset_dir, case.case_id) and case.case_id in records:
            done_before.append(case.case_id)
            continue
        start = time.perf_counter()
        try:
            record = prepare_case(case, config, suv_factors.get(case.case_id), staging)
        except (InputError, RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("[%d/%d] %s: skipped: %s", index, len(cases), case.case_id, reason)
            skipped.append(SkippedCase(case.case_id, case.folder, reason))
            shutil.rmtree(staging, ignore_errors=True)
            continue
        _publish(staging, dataset_dir, case.case_id)
        records[case.case_id] = record
        write_json(records_path, records, sort_keys=True)
        warning = _volume_warning(record)
        if warning:
            log.warning(warning)
            warnings.append(warning)
        prepared.append(case.case_id)
        log.info("[%d/%d] %s (%s): ROI %s, PET %s, %.1f s", index, len(cases), case.case_id, case.centre,
                 "x".join(map(str, record["roi_size_xyz"])), record["pet_units"], time.perf_counter() - start)
    shutil.rmtree(staging, ignore_errors=True)
    finished = sorted(c for c in records if _is_done(dataset_dir, c))
    synthetic = is_synthetic_source(Path(source))
    write_json(dataset_dir / "dataset.json", _dataset_json(finished, config, synthetic, Path(source)), sort_keys=True)
    return PrepareSummary(dataset_dir, tuple(prepared), tuple(done_before), tuple(skipped), tuple(warnings))


def format_summary(summary: PrepareSummary) -> str:
    lines = [f"{summary.dataset_dir}: {len(summary.cases)} cases ready ({len(summary.prepared)} prepared now, "
             f"{len(summary.already_done)} from an earlier run), {len(summary.skipped)} skipped"]
    if summary.skipped:
        width = max(len(s.case_id) for s in summary.skipped)
        lines += ["", "Skipped cases:", f"  {'case':<{width}}  reason"]
        lines += [f"  {s.case_id:<{width}}  {s.reason} ({s.path})" for s in summary.skipped]
    if summary.volume_warnings:
        lines += ["", "Label volume checks:", *(f"  {w}" for w in summary.volume_warnings)]
    return "\n".join(lines)
