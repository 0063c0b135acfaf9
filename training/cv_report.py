"""``python -m training evaluate``: the cross-validation report of a trained configuration, in the challenge's
metrics, computed by the product's own :mod:`hecktor.core.metrics` on nnU-Net's fold validation predictions.

Each fold's nnU-Net validation (``fold_K/validation/<case>.nii.gz``: the predicted labels on the ROI grid,
which is what training validated) is compared with the prepared reference (``gt_segmentations``): GTVp
Dice (mean over cases with GTVp in the reference or the prediction), GTVn aggregated Dice and GTVn
detection F1 at IoU > 0.3, per fold and pooled over all folds. The figures are on the ROI grid, not on the
native CT grid the challenge scores (the container's restore step is tested separately).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hecktor.core import metrics
from hecktor.core.types import LABEL_GTVN, LABEL_GTVP
from training.plan import PLANS_NAME
from training.workspace import Workspace, write_json

__all__ = ["FoldFigures", "cross_validation_report", "find_configuration", "fold_figures", "format_report",
           "json_ready", "write_report"]

TRAINER_PREFIX = f"HecktorTrainer__{PLANS_NAME}__"


@dataclass(frozen=True)
class FoldFigures:
    fold: str
    cases: int
    gtvp_dice: float  # mean per case over cases with GTVp in reference or prediction
    gtvn_aggregated_dice: float
    gtvn_detection_f1: float  # IoU > 0.3, TP/FP/FN summed over cases

    @property
    def challenge_mean(self) -> float:
        values = [v for v in (self.gtvp_dice, self.gtvn_aggregated_dice) if math.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)


def _figures(name: str, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> FoldFigures:
    gtvp = [d for d in (metrics.dice(p, r, LABEL_GTVP) for p, r in pairs) if math.isfinite(d)]
    return FoldFigures(
        fold=name,
        cases=len(pairs),
        gtvp_dice=float(np.mean(gtvp)) if gtvp else float("nan"),
        gtvn_aggregated_dice=metrics.aggregated_dice(pairs, LABEL_GTVN),
        gtvn_detection_f1=metrics.detection_f1(pairs, LABEL_GTVN),
    )


def _validation_pairs(validation_dir: Path, reference_dir: Path, cases: Sequence[str]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    missing = [c for c in cases if not (validation_dir / f"{c}.nii.gz").is_file()]
    if missing:
        raise FileNotFoundError(f"{validation_dir}: no validation prediction for {missing} (did training finish?)")
    return [(_labels(validation_dir / f"{c}.nii.gz"), _labels(reference_dir / f"{c}.nii.gz")) for c in cases]


def fold_figures(name: str, validation_dir: Path, reference_dir: Path, cases: Sequence[str]) -> FoldFigures:
    """The fold's figures from its validation predictions (all of ``cases`` must have one)."""
    return _figures(name, _validation_pairs(validation_dir, reference_dir, cases))


def find_configuration(workspace: Workspace, configuration: str | None) -> str:
    """The trained configuration (the only one when ``configuration`` is ``None``)."""
    trained = sorted(p.name[len(TRAINER_PREFIX):] for p in workspace.results_dataset.glob(f"{TRAINER_PREFIX}*"))
    if not trained:
        raise ValueError(f"{workspace.results_dataset}: nothing has been trained yet; run `python -m training train`")
    if configuration is not None:
        if configuration not in trained:
            raise ValueError(f"configuration {configuration!r} has not been trained (trained: {trained})")
        return configuration
    if len(trained) != 1:
        raise ValueError(f"several configurations are trained: choose one with --configuration ({trained})")
    return trained[0]


def split_folds(workspace: Workspace, split: str) -> list[dict[str, Any]]:
    index = json.loads((workspace.preprocessed_dataset / "splits_index.json").read_text())
    if split not in index:
        raise ValueError(f"split {split!r} not planned (planned: {', '.join(index)})")
    return list(index[split])


def cross_validation_report(workspace: Workspace, configuration: str | None, split: str) -> dict[str, Any]:
    configuration = find_configuration(workspace, configuration)
    folder = workspace.results_dataset / f"{TRAINER_PREFIX}{configuration}"
    reference = workspace.preprocessed_dataset / "gt_segmentations"
    entries = split_folds(workspace, split)
    folds, pooled = [], []
    for entry in entries:
        validation = folder / f"fold_{entry['index']}" / "validation"
        if not validation.is_dir():
            continue
        pairs = _validation_pairs(validation, reference, entry["validation"])
        folds.append(_figures(entry["name"], pairs))
        pooled += pairs
    if not folds:
        raise FileNotFoundError(f"{folder}: no fold of split {split!r} has finished training")
    return {"configuration": configuration, "split": split, "folds_trained": len(folds),
            "folds_planned": len(entries),
            "folds": [asdict(f) for f in folds], "pooled": asdict(_figures("all", pooled))}


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "  n/a "


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['configuration']}, split {report['split']}: {report['folds_trained']} of "
             f"{report['folds_planned']} folds trained (figures on the ROI grid)",
             f"{'fold':<28} {'cases':>5} {'GTVp Dice':>10} {'GTVn aggDice':>12} {'GTVn F1':>8}"]
    for row in [*report["folds"], report["pooled"]]:
        lines.append(f"{row['fold']:<28} {row['cases']:>5} {_fmt(row['gtvp_dice']):>10} "
                     f"{_fmt(row['gtvn_aggregated_dice']):>12} {_fmt(row['gtvn_detection_f1']):>8}")
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """NaN (a metric undefined on a fold, e.g. no GTVn anywhere) as JSON null."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_report(path: Path, report: dict[str, Any]) -> None:
    write_json(path, json_ready(report))
