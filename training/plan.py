"""``python -m training plan``: nnU-Net planning and preprocessing with this product's fixed choices, and splits.

nnU-Net extracts the dataset fingerprint (including the CT foreground intensity statistics that its
``CT`` normalisation uses and that ``export`` copies into the manifest), plans, and preprocesses, with
these choices fixed instead of planned:

- spacing 1 mm isotropic (the ROI grid: nnU-Net resamples nothing);
- one configuration, ``3d_fullres``, with the STU-Net-S patch (128^3) and batch size 2 of seed 000 and the
  product's STU-Net-S as its network (``train`` derives one configuration per network and loss from it);
- normalisation: CT with nnU-Net's ``CTNormalization``; PET ``NoNormalization`` (``prepare`` already wrote
  the container's z-scored PET). The container computes exactly the same inputs (parity test).

Splits (``splits_final.json``, nnU-Net's file, reused by every training): 5 and 10 patient folds and the
centre-out folds of seed 001 (one large centre or a pair of small ones held out per fold), concatenated;
``splits_index.json`` says which fold index is which, and ``train --split NAME --fold K`` looks it up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hecktor.core.validation import Fold, centre_out_folds, folds_to_nnunet_splits, patient_kfold
from hecktor.segment.torch_backend.networks import STUNET_S_DEFAULTS
from training.workspace import Workspace, write_json

__all__ = [
    "BASE_CONFIGURATION",
    "PLANS_NAME",
    "SPLIT_NAMES",
    "PlanSettings",
    "fold_index",
    "make_splits",
    "plan_and_preprocess",
    "stunet_architecture",
]

log = logging.getLogger(__name__)

PLANS_NAME = "HecktorPlans"
BASE_CONFIGURATION = "3d_fullres"
SPLIT_NAMES = ("kfold5", "kfold10", "centre-out")
SPLIT_SEED = 12345  # nnU-Net's own seed for its 5-fold split


@dataclass(frozen=True)
class PlanSettings:
    patch_size: tuple[int, int, int] = (128, 128, 128)  # z, y, x (seed 000 reports 192 x 112 x 112 for its GPUs)
    batch_size: int = 2
    stunet_dims: tuple[int, ...] = tuple(STUNET_S_DEFAULTS["dims"])  # STU-Net-S widths; tests use tiny ones
    num_processes: int = 2


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value))


def stunet_architecture(dims: Sequence[int]) -> dict[str, Any]:
    """The plans' architecture block of the product's STU-Net (``strides`` is nnU-Net's bookkeeping: its
    deep-supervision scales are read from it)."""
    kwargs = {k: v for k, v in STUNET_S_DEFAULTS.items() if k not in ("input_channels", "num_classes",
                                                                     "deep_supervision")}
    kwargs["dims"] = tuple(dims)
    strides = [(1, 1, 1), *kwargs["pool_op_kernel_sizes"]]
    return _json_ready({"network_class_name": "hecktor.segment.torch_backend.networks.STUNet",
                        "arch_kwargs": {**kwargs, "strides": strides}, "_kw_requires_import": []})


def _dataset_id(workspace: Workspace) -> int:
    return int(workspace.dataset[len("Dataset"):len("Dataset") + 3])


def _fix_plans(plans: dict[str, Any], settings: PlanSettings, spacing_mm: float) -> dict[str, Any]:
    if BASE_CONFIGURATION not in plans["configurations"]:
        raise RuntimeError(f"nnU-Net planned no {BASE_CONFIGURATION} configuration: {sorted(plans['configurations'])}")
    config = plans["configurations"][BASE_CONFIGURATION]
    expected = ["CTNormalization", "NoNormalization"]
    if config["normalization_schemes"] != expected:
        raise RuntimeError(f"nnU-Net chose the normalisation {config['normalization_schemes']}, expected {expected}: "
                           "is dataset.json's channel_names {'0': 'CT', '1': 'noNorm'}?")
    if any(abs(s - spacing_mm) > 1e-6 for s in config["spacing"]):
        raise RuntimeError(f"planned spacing {config['spacing']} is not the ROI grid's {spacing_mm} mm")
    config.update({
        "patch_size": list(settings.patch_size),
        "batch_size": settings.batch_size,
        "spacing": [spacing_mm] * 3,
        "use_mask_for_norm": [False, False],
        "architecture": stunet_architecture(settings.stunet_dims),
    })
    plans["configurations"] = {BASE_CONFIGURATION: config}  # 2d and the cascade are never used
    return plans


def plan_and_preprocess(workspace: Workspace, settings: PlanSettings) -> Path:
    """Fingerprint, plan (with the fixed choices) and preprocess the workspace's dataset; returns the plans file."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    dataset_json = workspace.raw_dataset / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(f"{dataset_json}: no prepared dataset; run `python -m training prepare` first")
    spacing_mm = float(json.loads(dataset_json.read_text())["hecktor"]["preprocess"]["spacing_mm"])
    dataset_id = _dataset_id(workspace)
    extract_fingerprint_dataset(dataset_id, num_processes=settings.num_processes, check_dataset_integrity=True,
                                clean=True, verbose=False, show_progress_bar=False)
    plan_experiment_dataset(dataset_id, overwrite_target_spacing=(spacing_mm,) * 3, overwrite_plans_name=PLANS_NAME)
    plans_file = workspace.preprocessed_dataset / f"{PLANS_NAME}.json"
    plans = _fix_plans(json.loads(plans_file.read_text()), settings, spacing_mm)
    write_json(plans_file, plans)
    preprocess_dataset(dataset_id, PLANS_NAME, (BASE_CONFIGURATION,), num_processes=[settings.num_processes],
                       verbose=False, show_progress_bar=False)
    write_splits(workspace, make_splits(prepared_centres(workspace)))
    return plans_file


def prepared_centres(workspace: Workspace) -> dict[str, str]:
    """Case id -> centre of the prepared cases (``cases.json`` of ``prepare``; only those nnU-Net has)."""
    records = json.loads((workspace.raw_dataset / "cases.json").read_text())
    labels = workspace.raw_dataset / "labelsTr"
    return {case: record["centre"] for case, record in records.items() if (labels / f"{case}.nii.gz").is_file()}


def make_splits(centre_of: Mapping[str, str], seed: int = SPLIT_SEED) -> dict[str, list[Fold]]:
    """The three split schemes; centre-out uses min(5, number of centres) folds."""
    ids = sorted(centre_of)
    splits = {"kfold5": patient_kfold(ids, 5, seed), "kfold10": patient_kfold(ids, min(10, len(ids)), seed)}
    centres = len(set(centre_of.values()))
    if centres >= 2:
        splits["centre-out"] = centre_out_folds(centre_of, min(5, centres))
    else:
        log.warning("one centre only: no centre-out folds")
    return splits


def write_splits(workspace: Workspace, splits: Mapping[str, list[Fold]]) -> Path:
    """``splits_final.json`` (all schemes concatenated) and ``splits_index.json`` (scheme -> fold indices)."""
    folds: list[Fold] = []
    index: dict[str, list[dict[str, Any]]] = {}
    for name, scheme in splits.items():
        index[name] = [{"index": len(folds) + k, "name": f.name, "validation": list(f.validation)}
                       for k, f in enumerate(scheme)]
        folds += scheme
    target = workspace.preprocessed_dataset / "splits_final.json"
    write_json(target, folds_to_nnunet_splits(folds))
    write_json(workspace.preprocessed_dataset / "splits_index.json", index)
    return target


def fold_index(workspace: Workspace, split: str, fold: int) -> int:
    """nnU-Net's fold number of fold ``fold`` of scheme ``split``."""
    path = workspace.preprocessed_dataset / "splits_index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no splits yet; run `python -m training plan` first")
    index = json.loads(path.read_text())
    if split not in index:
        raise ValueError(f"split {split!r} not planned (planned: {', '.join(index)})")
    if not 0 <= fold < len(index[split]):
        raise ValueError(f"split {split!r} has folds 0..{len(index[split]) - 1}, not {fold}")
    return int(index[split][fold]["index"])
