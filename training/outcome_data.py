"""``python -m training outcome-prepare``: cases + a Task 2/3 table -> the outcome network's training samples.

Every case goes through the container's own code: :func:`hecktor.io.read.read_case` (PET to SUV, known Bq/mL
factors), :func:`hecktor.preprocess.roi.extract_roi` with the manifest's preprocessing,
:func:`hecktor.measure.lesions.measure` on the reference mask (the container measures its final mask the same way) and
:func:`hecktor.outcome.inputs.lesion_patch`, the function the container calls, with the reference mask in place
of the segmentation. So a network is trained on exactly the inputs the container will give it.

The table (``--table``) has the HECKTOR 2025 Task 2 columns: ``PatientID``, the ``ehr.json`` fields (Age, Gender,
Tobacco Consumption, Alcohol Consumption, Performance Status, Treatment, M-stage; read by
:func:`hecktor.io.clinical.clinical_record_from_mapping`), ``RFS`` (days), ``Relapse`` (0/1) and ``HPV Status``
(0/1); missing outcomes are allowed (that loss then skips the case).

Written under ``W/outcome``: ``samples/<ID>.npz`` (image float32 (2, z, y, x), masks uint8 (2, z, y, x)),
``samples.json`` (per case: centre, outcomes, raw clinical values, how the patch was centred) and
``dataset.json`` (patch size, CT window, preprocessing, synthetic or real). A re-run skips finished cases; a
case that cannot be read is named and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hecktor.core.files import atomic_write
from hecktor.core.manifest import PreprocessConfig
from hecktor.core.types import Case, ClinicalRecord, InputError
from hecktor.io.clinical import clinical_record_from_mapping
from hecktor.io.read import read_case
from hecktor.measure.lesions import measure
from hecktor.outcome.features import clinical_values
from hecktor.outcome.inputs import lesion_patch
from hecktor.preprocess.roi import extract_roi
from training.prepare import find_source_cases, is_synthetic_source, read_reference_labels
from training.workspace import Workspace, write_json

__all__ = [
    "DEFAULT_CT_WINDOW_HU",
    "DEFAULT_PATCH_SIZE",
    "OutcomeSample",
    "load_samples",
    "make_sample",
    "outcome_dir",
    "prepare_outcome_samples",
    "read_outcome_table",
]

log = logging.getLogger(__name__)

DEFAULT_PATCH_SIZE = (96, 96, 96)  # seed 000
DEFAULT_CT_WINDOW_HU = (-1000.0, 3000.0)  # seed 000


@dataclass(frozen=True)
class OutcomeSample:
    """One case's network inputs and outcomes; ``None`` = unknown outcome."""

    case_id: str
    centre: str
    image: np.ndarray  # (2, z, y, x) float32
    masks: np.ndarray  # (2, z, y, x) float32 one-hot GTVp, GTVn
    clinical: Mapping[str, float | None]  # hecktor.outcome.features.clinical_values
    rfs_days: float | None
    relapse: int | None
    hpv: int | None


def outcome_dir(workspace: Workspace) -> Path:
    return workspace.root / "outcome"


def _number(value: Any) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def read_outcome_table(path: Path) -> dict[str, dict[str, str]]:
    """PatientID -> row of a Task 2/3 table (see the module docstring)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "PatientID" not in rows[0]:
        raise ValueError(f"{path}: a Task 2/3 table needs a PatientID column and at least one row")
    missing = {"RFS", "Relapse", "HPV Status"} - set(rows[0])
    if missing:
        raise ValueError(f"{path}: the Task 2/3 table lacks the column(s) {sorted(missing)}")
    return {row["PatientID"].strip(): row for row in rows}


def make_sample(
    case_id: str,
    centre: str,
    case: Case,
    labels: sitk.Image,
    record: ClinicalRecord,
    outcomes: tuple[float | None, int | None, int | None],
    config: PreprocessConfig,
    patch_size: Sequence[int] = DEFAULT_PATCH_SIZE,
    ct_window_hu: tuple[float, float] = DEFAULT_CT_WINDOW_HU,
) -> tuple[OutcomeSample, str]:
    """One sample from a read case and its reference mask (on any grid of the case's frame); also says how
    the patch was centred. ``outcomes``: RFS days, relapse 0/1, HPV 0/1."""
    roi = extract_roi(case, config)
    patch = lesion_patch(roi, labels, patch_size, ct_window_hu)
    values = clinical_values(record, measure(labels, case.pet))
    rfs, relapse, hpv = outcomes
    sample = OutcomeSample(case_id, centre, patch.image, patch.masks, values, rfs, relapse, hpv)
    return sample, patch.centred_on


def _outcomes(row: Mapping[str, str]) -> tuple[float | None, int | None, int | None]:
    rfs, relapse, hpv = (_number(row.get(k, "")) for k in ("RFS", "Relapse", "HPV Status"))
    if rfs is None or relapse is None or rfs < 0 or relapse not in (0.0, 1.0):
        rfs, relapse = None, None
    return rfs, None if relapse is None else int(relapse), None if hpv not in (0.0, 1.0) else int(hpv)


def _save_npz(path: Path, sample: OutcomeSample) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, image=sample.image.astype(np.float32), masks=sample.masks.astype(np.uint8))

    atomic_write(path, write)


def prepare_outcome_samples(
    workspace: Workspace,
    source: Path,
    table: Path,
    config: PreprocessConfig,
    suv_factors: Mapping[str, float] | None = None,
    patch_size: Sequence[int] = DEFAULT_PATCH_SIZE,
    ct_window_hu: tuple[float, float] = DEFAULT_CT_WINDOW_HU,
) -> dict[str, Any]:
    """Prepare every case of ``source`` that the table lists; returns ``dataset.json``'s content."""
    root = outcome_dir(workspace)
    samples_dir = root / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    dataset = {
        "patch_size": [int(s) for s in patch_size],
        "ct_window_hu": [float(v) for v in ct_window_hu],
        "preprocess": json.loads(json.dumps(asdict(config))),
        "synthetic": is_synthetic_source(Path(source)),
        "source": str(source),
        "table": str(table),
    }
    dataset_path = root / "dataset.json"
    if dataset_path.is_file():
        before = json.loads(dataset_path.read_text())
        changed = [k for k in ("patch_size", "ct_window_hu", "preprocess") if before.get(k) != dataset[k]]
        if changed:
            raise ValueError(f"{root}: prepared with other settings ({', '.join(changed)}); use a new --work folder")
    write_json(dataset_path, dataset, sort_keys=True)
    rows = read_outcome_table(table)
    index_path = root / "samples.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    cases, skipped = find_source_cases(source)
    for item in skipped:
        log.error("%s: skipped: %s", item.case_id, item.reason)
    if dataset["synthetic"]:
        log.warning("the source is SYNTHETIC (phantoms): the network trained on it is NOT a clinical model")
    for number, case in enumerate(cases, start=1):
        if case.case_id in index and (samples_dir / f"{case.case_id}.npz").is_file():
            continue
        row = rows.get(case.case_id)
        if row is None:
            log.error("[%d/%d] %s: not in %s: skipped", number, len(cases), case.case_id, table)
            continue
        start = time.perf_counter()
        try:
            image_case = read_case(case.folder, known_suv_factor=(suv_factors or {}).get(case.case_id))
            sample, centred_on = make_sample(
                case.case_id,
                case.centre,
                image_case,
                read_reference_labels(case.labels),
                clinical_record_from_mapping(row, f"{table}: {case.case_id}"),
                _outcomes(row),
                config,
                patch_size,
                ct_window_hu,
            )
        except (InputError, RuntimeError, ValueError, OSError) as exc:
            log.error("[%d/%d] %s: skipped: %s", number, len(cases), case.case_id, str(exc).splitlines()[0])
            continue
        _save_npz(samples_dir / f"{case.case_id}.npz", sample)
        index[case.case_id] = {
            "centre": sample.centre,
            "rfs_days": sample.rfs_days,
            "relapse": sample.relapse,
            "hpv": sample.hpv,
            "clinical": dict(sample.clinical),
            "centred_on": centred_on,
        }
        write_json(index_path, index, sort_keys=True)
        log.info(
            "[%d/%d] %s (%s): patch centred on %s, %.1f s",
            number,
            len(cases),
            case.case_id,
            case.centre,
            centred_on,
            time.perf_counter() - start,
        )
    dataset["cases"] = len(index)
    return dataset


def load_samples(workspace: Workspace) -> tuple[list[OutcomeSample], dict[str, Any]]:
    """The prepared samples (sorted by case id) and ``dataset.json``."""
    root = outcome_dir(workspace)
    if not (root / "samples.json").is_file():
        raise FileNotFoundError(f"{root}: no prepared outcome samples (run outcome-prepare first)")
    index = json.loads((root / "samples.json").read_text())
    samples = []
    for case_id in sorted(index):
        entry = index[case_id]
        with np.load(root / "samples" / f"{case_id}.npz") as data:
            image, masks = data["image"], data["masks"].astype(np.float32)
        samples.append(
            OutcomeSample(
                case_id,
                entry["centre"],
                image,
                masks,
                entry["clinical"],
                entry["rfs_days"],
                entry["relapse"],
                entry["hpv"],
            )
        )
    return samples, json.loads((root / "dataset.json").read_text())
