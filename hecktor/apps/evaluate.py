"""Score predictions against references: segmentation folders and clinical CSVs.

Label files are matched by case ID. Accepted layouts, in either folder:

* ``<ID>.nii.gz``, ``<ID>.nii`` or ``<ID>.mha`` directly in the folder;
* ``<ID>/<ID>.nii.gz`` (or ``.nii``/``.mha``): the training layout, where ``<ID>/`` also holds
  ``<ID>__CT.nii.gz`` and ``<ID>__PT.nii.gz``, which are ignored;
* ``<ID>/images/tumor-lymph-node-segmentation/output.mha``: one container output per case.

Every prediction must lie on its reference's grid (size, spacing, origin, direction); a mismatch
is an :class:`EvaluationError` naming both files. Cases are read one at a time, so a folder of
any size fits in memory.

Clinical CSVs: predictions with ``PatientID, rfs_risk, hpv_positive`` (either score column may be
absent), references with ``PatientID, RFS, Relapse, HPV Status`` (the training CSV layout).

Undefined figures are ``nan`` in the returned dicts and ``null`` in the JSON written by the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import SimpleITK as sitk

from hecktor.core import metrics
from hecktor.core.types import LABEL_BACKGROUND, LABEL_GTVN, LABEL_GTVP

__all__ = [
    "EvaluationError",
    "GeometryTolerance",
    "add_evaluate_arguments",
    "check_same_geometry",
    "evaluate_case",
    "evaluate_clinical",
    "evaluate_folder",
    "find_label_files",
    "run_evaluate",
]

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".nii.gz", ".nii", ".mha")
CONTAINER_OUTPUT = Path("images") / "tumor-lymph-node-segmentation" / "output.mha"
CLASSES = {"gtvp": LABEL_GTVP, "gtvn": LABEL_GTVN}
VALID_LABELS = (LABEL_BACKGROUND, LABEL_GTVP, LABEL_GTVN)
TRUE_WORDS = {"1", "1.0", "true", "yes", "positive", "pos"}
FALSE_WORDS = {"0", "0.0", "false", "no", "negative", "neg"}


class EvaluationError(ValueError):
    """Inputs that cannot be scored; the message names the file(s) and the problem."""


@dataclass(frozen=True)
class GeometryTolerance:
    """Largest differences accepted between a prediction's grid and its reference's grid.

    The defaults absorb float32 rounding between NIfTI and MHA headers, nothing more.
    """

    spacing_mm: float = 1e-3
    origin_mm: float = 1e-2
    direction: float = 1e-4


# --------------------------------------------------------------------------- discovery


def _case_id(name: str) -> str | None:
    """The case ID of a label file name, or ``None`` when the name is not a label file."""
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _candidates(folder: Path) -> Iterator[tuple[str, Path]]:
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            case_id = _case_id(entry.name)
            if case_id:
                yield case_id, entry
        elif entry.is_dir():
            if (entry / CONTAINER_OUTPUT).is_file():
                yield entry.name, entry / CONTAINER_OUTPUT
            for suffix in LABEL_SUFFIXES:
                if (entry / f"{entry.name}{suffix}").is_file():
                    yield entry.name, entry / f"{entry.name}{suffix}"


def find_label_files(folder: Path) -> dict[str, Path]:
    """Map case ID to label file for every accepted layout in ``folder`` (see module docstring).

    Raises:
        EvaluationError: the folder does not exist, or one case ID has two files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a directory")
    found: dict[str, Path] = {}
    for case_id, path in _candidates(folder):
        if case_id in found:
            raise EvaluationError(f"case {case_id} has two label files: {found[case_id]} and {path}")
        found[case_id] = path
    return found


# --------------------------------------------------------------------------- geometry


def _geometry_problems(pred: sitk.Image, ref: sitk.Image, tol: GeometryTolerance) -> list[str]:
    problems = []
    if pred.GetSize() != ref.GetSize():
        problems.append(f"size {pred.GetSize()} vs {ref.GetSize()}")
    checks = (
        ("spacing", pred.GetSpacing(), ref.GetSpacing(), tol.spacing_mm),
        ("origin", pred.GetOrigin(), ref.GetOrigin(), tol.origin_mm),
        ("direction", pred.GetDirection(), ref.GetDirection(), tol.direction),
    )
    for name, a, b, atol in checks:
        if len(a) != len(b) or not np.allclose(a, b, rtol=0.0, atol=atol):
            problems.append(f"{name} {tuple(round(v, 6) for v in a)} vs {tuple(round(v, 6) for v in b)}")
    return problems


def check_same_geometry(
    pred: sitk.Image, ref: sitk.Image, pred_path: Path, ref_path: Path, tol: GeometryTolerance
) -> None:
    """Raise :class:`EvaluationError` naming both files unless the two grids agree within ``tol``."""
    problems = _geometry_problems(pred, ref, tol)
    if problems:
        # No resampling here: a reference moved onto another grid is a different reference (nearest neighbour
        # shifts boundaries by up to half a source voxel), and the figures would not be the challenge's.
        raise EvaluationError(
            f"prediction {pred_path} is not on the grid of reference {ref_path}: " + "; ".join(problems)
            + " (evaluate does not resample; give references on the CT grid the prediction was written on)"
        )


def _read_labels(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise EvaluationError(f"{path}: cannot read image ({exc})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise EvaluationError(f"{path}: expected a 3-D scalar label image")
    return image


def _label_array(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    bad = np.setdiff1d(np.unique(array), VALID_LABELS)
    if bad.size:
        raise EvaluationError(f"{path}: labels must be 0, 1, 2; found also {bad[:5].tolist()}")
    return array.astype(np.uint8)


# --------------------------------------------------------------------------- segmentation


def evaluate_case(
    pred_path: Path,
    ref_path: Path,
    *,
    iou_threshold: float = metrics.DEFAULT_IOU_THRESHOLD,
    iou_inclusive: bool = False,
    compute_hd95: bool = True,
    tolerance: GeometryTolerance | None = None,
) -> dict[str, Any]:
    """One row of figures for one case: per-class Dice, counts, volumes, HD95, node detection."""
    pred_image, ref_image = _read_labels(pred_path), _read_labels(ref_path)
    check_same_geometry(pred_image, ref_image, pred_path, ref_path, tolerance or GeometryTolerance())
    pred, ref = _label_array(pred_image, pred_path), _label_array(ref_image, ref_path)
    spacing_zyx = tuple(reversed(ref_image.GetSpacing()))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    row: dict[str, Any] = {}
    for name, label in CLASSES.items():
        counts = metrics.overlap_counts(pred, ref, label)
        row[f"dice_{name}"] = counts.dice
        row[f"intersection_{name}"] = counts.intersection
        row[f"pred_voxels_{name}"] = counts.pred
        row[f"ref_voxels_{name}"] = counts.ref
        row[f"pred_ml_{name}"] = counts.pred * voxel_ml
        row[f"ref_ml_{name}"] = counts.ref * voxel_ml
        if compute_hd95:
            row[f"hd95_{name}"] = metrics.hd95(pred, ref, label, spacing_zyx)
    nodes = metrics.case_detection_counts(pred, ref, LABEL_GTVN, iou_threshold, iou_inclusive)
    row.update(node_tp=nodes.tp, node_fp=nodes.fp, node_fn=nodes.fn)
    return row


def _pair_cases(
    preds: dict[str, Path], refs: dict[str, Path], pred_dir: Path, ref_dir: Path, require_all: bool
) -> list[str]:
    matched = sorted(set(preds) & set(refs))
    missing = sorted(set(refs) - set(preds))
    if not matched:
        raise EvaluationError(f"no case ID is shared by predictions in {pred_dir} and references in {ref_dir}")
    if missing and require_all:
        raise EvaluationError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {missing[:10]}")
    return matched


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else float("nan")


def _summarise(rows: list[dict[str, Any]], iou_threshold: float, iou_inclusive: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in CLASSES:
        total = metrics.OverlapCounts(
            sum(r[f"intersection_{name}"] for r in rows),
            sum(r[f"pred_voxels_{name}"] for r in rows),
            sum(r[f"ref_voxels_{name}"] for r in rows),
        )
        summary[f"aggregated_dice_{name}"] = total.dice
        summary[f"mean_dice_{name}"] = _nanmean([r[f"dice_{name}"] for r in rows])
        if f"hd95_{name}" in rows[0]:
            summary[f"median_hd95_{name}"] = _nanmedian([r[f"hd95_{name}"] for r in rows])
    nodes = metrics.DetectionCounts(
        sum(r["node_tp"] for r in rows), sum(r["node_fp"] for r in rows), sum(r["node_fn"] for r in rows)
    )
    summary["gtvn_detection"] = {
        "tp": nodes.tp,
        "fp": nodes.fp,
        "fn": nodes.fn,
        "precision": nodes.precision,
        "recall": nodes.recall,
        "f1": nodes.f1,
        "iou_rule": f"IoU {'>=' if iou_inclusive else '>'} {iou_threshold}",
    }
    return summary


def evaluate_folder(
    pred_dir: Path,
    ref_dir: Path,
    *,
    iou_threshold: float = metrics.DEFAULT_IOU_THRESHOLD,
    iou_inclusive: bool = False,
    compute_hd95: bool = True,
    require_all: bool = False,
    tolerance: GeometryTolerance | None = None,
) -> dict[str, Any]:
    """Score every prediction in ``pred_dir`` that has a reference in ``ref_dir``.

    Args:
        pred_dir, ref_dir: folders in any accepted layout (module docstring).
        iou_threshold, iou_inclusive: node-matching rule, IoU > threshold unless inclusive.
        compute_hd95: add per-case HD95 (mm) and its median over cases.
        require_all: fail when a reference case has no prediction; otherwise such cases are
            skipped and listed under ``missing_predictions``.
        tolerance: accepted grid differences; :class:`GeometryTolerance` defaults when ``None``.

    Returns:
        ``{"n_cases", "cases": [row per case, with "case_id"], "summary": {aggregated and mean
        Dice per class, median HD95, "gtvn_detection"}, "missing_predictions",
        "unmatched_predictions"}``. Per-case Dice is ``nan`` when a class is absent from both.

    Raises:
        EvaluationError: unreadable file, labels other than 0/1/2, grid mismatch (naming the
            files), no shared case, or a missing prediction with ``require_all``.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = find_label_files(pred_dir), find_label_files(ref_dir)
    matched = _pair_cases(preds, refs, pred_dir, ref_dir, require_all)
    rows = []
    for case_id in matched:
        row = evaluate_case(
            preds[case_id],
            refs[case_id],
            iou_threshold=iou_threshold,
            iou_inclusive=iou_inclusive,
            compute_hd95=compute_hd95,
            tolerance=tolerance,
        )
        rows.append({"case_id": case_id, **row})
    return {
        "n_cases": len(rows),
        "cases": rows,
        "summary": _summarise(rows, iou_threshold, iou_inclusive),
        "missing_predictions": sorted(set(refs) - set(preds)),
        "unmatched_predictions": sorted(set(preds) - set(refs)),
    }


# --------------------------------------------------------------------------- clinical


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"PatientID": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise EvaluationError(f"{path}: cannot read CSV ({exc})") from exc
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise EvaluationError(f"{path}: missing column(s) {absent}; has {list(frame.columns)}")
    if frame["PatientID"].duplicated().any():
        raise EvaluationError(
            f"{path}: duplicated PatientID(s) {frame['PatientID'][frame['PatientID'].duplicated()].tolist()[:5]}"
        )
    return frame


def _as_binary(values: pd.Series, where: str) -> pd.Series:
    """0/1 floats (NaN kept) from booleans, numbers or words such as 'True'/'positive'."""

    def convert(value: object) -> float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return float("nan")
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return 1.0
        if word in FALSE_WORDS:
            return 0.0
        if word in {"", "nan", "none"}:
            return float("nan")
        raise EvaluationError(f"{where}: cannot read {value!r} as a binary value")

    return values.map(convert).astype(float)


def _c_index_block(merged: pd.DataFrame, ref_csv: Path) -> dict[str, Any]:
    risk = pd.to_numeric(merged["rfs_risk"], errors="coerce")
    times = pd.to_numeric(merged["RFS"], errors="coerce")
    events = _as_binary(merged["Relapse"], f"{ref_csv} column Relapse")
    usable = risk.notna() & times.notna() & events.notna() & np.isfinite(risk)
    c_index = metrics.harrell_c_index(times[usable], events[usable], risk[usable]) if usable.any() else float("nan")
    return {"c_index": c_index, "n": int(usable.sum()), "events": int(events[usable].sum())}


def _hpv_block(merged: pd.DataFrame, pred_csv: Path, ref_csv: Path) -> dict[str, Any]:
    guess = _as_binary(merged["hpv_positive"], f"{pred_csv} column hpv_positive")
    truth = _as_binary(merged["HPV Status"], f"{ref_csv} column HPV Status")
    usable = guess.notna() & truth.notna()
    return {
        "balanced_accuracy": metrics.balanced_accuracy(truth[usable], guess[usable]),
        "n": int(usable.sum()),
        "positives": int(truth[usable].sum()),
    }


def evaluate_clinical(pred_csv: Path, ref_csv: Path) -> dict[str, Any]:
    """C-index (Task 2) and HPV balanced accuracy (Task 3) over patients present in both CSVs.

    Patients with a missing value in a needed column are left out of that figure only; the
    counts used are reported. A score column absent from ``pred_csv`` skips its figure.

    Returns:
        ``{"n_matched", "missing_predictions", "rfs": {"c_index", "n", "events"},
        "hpv": {"balanced_accuracy", "n", "positives"}}`` (``rfs``/``hpv`` only when scored).
    """
    pred = _read_csv(Path(pred_csv), ("PatientID",))
    ref = _read_csv(Path(ref_csv), ("PatientID", "RFS", "Relapse", "HPV Status"))
    scores = [c for c in ("rfs_risk", "hpv_positive") if c in pred.columns]
    if not scores:
        raise EvaluationError(f"{pred_csv}: needs a column rfs_risk and/or hpv_positive")
    merged = pred[["PatientID", *scores]].merge(ref, on="PatientID", how="inner")
    if merged.empty:
        raise EvaluationError(f"no PatientID is shared by {pred_csv} and {ref_csv}")
    result: dict[str, Any] = {
        "n_matched": len(merged),
        "missing_predictions": sorted(set(ref["PatientID"]) - set(pred["PatientID"])),
    }
    if "rfs_risk" in scores:
        result["rfs"] = _c_index_block(merged, Path(ref_csv))
    if "hpv_positive" in scores:
        result["hpv"] = _hpv_block(merged, Path(pred_csv), Path(ref_csv))
    return result


# --------------------------------------------------------------------------- command line


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to ``parser`` (a sub-command parser, typically)."""
    parser.add_argument("--pred", type=Path, help="folder of predicted label maps")
    parser.add_argument("--ref", type=Path, help="folder of reference label maps")
    parser.add_argument("--clinical-pred", type=Path, help="CSV: PatientID, rfs_risk, hpv_positive")
    parser.add_argument("--clinical-ref", type=Path, help="CSV: PatientID, RFS, Relapse, HPV Status")
    parser.add_argument("--out", type=Path, help="write all figures and per-case rows to this JSON file")
    parser.add_argument("--iou-threshold", type=float, default=metrics.DEFAULT_IOU_THRESHOLD)
    parser.add_argument("--iou-inclusive", action="store_true", help="match nodes at IoU >= threshold (default >)")
    parser.add_argument("--no-hd95", dest="hd95", action="store_false", help="skip HD95")
    parser.add_argument("--require-all", action="store_true", help="fail when a reference case has no prediction")


def _json_ready(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` and numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _print_summary(report: dict[str, Any], stream: TextIO) -> None:
    seg = report.get("segmentation")
    if seg:
        s = seg["summary"]
        det = s["gtvn_detection"]
        stream.write(f"cases scored: {seg['n_cases']}  (missing predictions: {len(seg['missing_predictions'])})\n")
        stream.write(f"{'metric':<28}{'GTVp':>10}{'GTVn':>10}\n")
        stream.write(
            f"{'aggregated Dice':<28}{_fmt(s['aggregated_dice_gtvp']):>10}{_fmt(s['aggregated_dice_gtvn']):>10}\n"
        )
        stream.write(f"{'mean per-case Dice':<28}{_fmt(s['mean_dice_gtvp']):>10}{_fmt(s['mean_dice_gtvn']):>10}\n")
        if "median_hd95_gtvp" in s:
            stream.write(
                f"{'median HD95 (mm)':<28}{_fmt(s['median_hd95_gtvp']):>10}{_fmt(s['median_hd95_gtvn']):>10}\n"
            )
        stream.write(
            f"GTVn detection F1 {_fmt(det['f1'])} (TP {det['tp']}, FP {det['fp']}, FN {det['fn']}; {det['iou_rule']})\n"
        )
    clinical = report.get("clinical")
    if clinical:
        if "rfs" in clinical:
            rfs = clinical["rfs"]
            stream.write(f"RFS C-index {_fmt(rfs['c_index'])} (n {rfs['n']}, events {rfs['events']})\n")
        if "hpv" in clinical:
            hpv = clinical["hpv"]
            stream.write(
                f"HPV balanced accuracy {_fmt(hpv['balanced_accuracy'])} (n {hpv['n']}, positive {hpv['positives']})\n"
            )


def _check_pairs(args: argparse.Namespace) -> str | None:
    seg = (args.pred is not None, args.ref is not None)
    clin = (args.clinical_pred is not None, args.clinical_ref is not None)
    if seg[0] != seg[1]:
        return "--pred and --ref go together"
    if clin[0] != clin[1]:
        return "--clinical-pred and --clinical-ref go together"
    if not seg[0] and not clin[0]:
        return "give --pred/--ref, --clinical-pred/--clinical-ref, or both"
    return None


def run_evaluate(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """Run the ``evaluate`` command; print a short table to ``stream`` (stdout); return an exit code.

    Returns 0 on success and 2 on unusable inputs (the reason is logged as an error).
    """
    stream = stream or sys.stdout
    problem = _check_pairs(args)
    if problem:
        log.error("evaluate: %s", problem)
        return 2
    report: dict[str, Any] = {}
    try:
        if args.pred is not None:
            report["segmentation"] = evaluate_folder(
                args.pred,
                args.ref,
                iou_threshold=args.iou_threshold,
                iou_inclusive=args.iou_inclusive,
                compute_hd95=args.hd95,
                require_all=args.require_all,
            )
            if report["segmentation"]["missing_predictions"]:
                log.warning(
                    "%d reference case(s) have no prediction and were skipped",
                    len(report["segmentation"]["missing_predictions"]),
                )
        if args.clinical_pred is not None:
            report["clinical"] = evaluate_clinical(args.clinical_pred, args.clinical_ref)
    except EvaluationError as exc:
        log.error("evaluate: %s", exc)
        return 2
    _print_summary(report, stream)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")
    return 0
