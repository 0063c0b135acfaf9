"""Tests for hecktor.core.metrics and hecktor.apps.evaluate; expected values are computed by hand."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor.apps.evaluate import (
    EvaluationError,
    add_evaluate_arguments,
    evaluate_clinical,
    evaluate_folder,
    find_label_files,
    run_evaluate,
)
from hecktor.core import metrics


def line(*values: int) -> np.ndarray:
    """A (1, 1, n) label volume from a row of labels."""
    return np.array(values, dtype=np.uint8).reshape(1, 1, -1)


# --------------------------------------------------------------------------- Dice

# Case A: pred 1 1 1 0 2 0 / ref 0 1 1 1 2 2.
#   GTVp: P = {0,1,2}, R = {1,2,3}, |P∩R| = 2 -> Dice 2*2/(3+3) = 2/3.
#   GTVn: P = {4}, R = {4,5}, |P∩R| = 1 -> Dice 2*1/(1+2) = 2/3.
CASE_A = (line(1, 1, 1, 0, 2, 0), line(0, 1, 1, 1, 2, 2))
# Case B: four predicted GTVp voxels, no reference GTVp -> Dice 0; no GTVn anywhere.
CASE_B = (line(1, 1, 1, 1, 0, 0), line(0, 0, 0, 0, 0, 0))
BOTH_EMPTY = (line(0, 0, 0), line(0, 0, 0))


def test_dice_hand_computed() -> None:
    assert metrics.dice(*CASE_A, label=1) == pytest.approx(2 / 3)
    assert metrics.dice(*CASE_A, label=2) == pytest.approx(2 / 3)
    assert metrics.overlap_counts(*CASE_A, label=1) == metrics.OverlapCounts(2, 3, 3)


def test_dice_edge_cases() -> None:
    assert metrics.dice(line(0, 0), line(1, 1), 1) == 0.0  # empty prediction
    assert metrics.dice(line(1, 0), line(0, 0), 1) == 0.0  # empty reference
    assert math.isnan(metrics.dice(*BOTH_EMPTY, 1))  # both empty: undefined
    assert metrics.dice(line(2, 1), line(2, 1), 1) == 1.0
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(line(1, 1), line(1, 1, 1), 1)


def test_aggregated_dice_sums_before_dividing() -> None:
    # GTVp: 2*(2 + 0) / ((3+3) + (4+0)) = 0.4, not the per-case mean (2/3 + 0) / 2.
    assert metrics.aggregated_dice([CASE_A, CASE_B], 1) == pytest.approx(0.4)
    # GTVn: case B contributes nothing -> same as case A alone.
    assert metrics.aggregated_dice([CASE_A, CASE_B], 2) == pytest.approx(2 / 3)
    # A case empty in both adds nothing.
    assert metrics.aggregated_dice([CASE_A, BOTH_EMPTY], 1) == pytest.approx(2 / 3)
    # Generators are accepted.
    assert metrics.aggregated_dice((pair for pair in [CASE_A, CASE_B]), 1) == pytest.approx(0.4)


def test_aggregated_dice_all_empty_is_nan() -> None:
    assert math.isnan(metrics.aggregated_dice([BOTH_EMPTY, BOTH_EMPTY], 2))
    assert math.isnan(metrics.aggregated_dice([], 1))
    assert metrics.aggregated_dice([BOTH_EMPTY, (line(0, 2), line(0, 0))], 2) == 0.0


# --------------------------------------------------------------------------- detection


def two_node_case() -> tuple[np.ndarray, np.ndarray]:
    """Two reference nodes on rows 0 and 5 of a (1, 10, 12) slab.

    Row 0: ref cols 0-5 (6 voxels), pred cols 2-7 (6): |∩| = 4, |∪| = 8 -> IoU 0.5, a match.
    Row 5: ref cols 0-5 (6 voxels), pred cols 4-9 (6): |∩| = 2, |∪| = 10 -> IoU 0.2, no match.
    So TP 1, FP 1, FN 1 and F1 = 2*1 / (2*1 + 1 + 1) = 0.5.
    """
    pred = np.zeros((1, 10, 12), np.uint8)
    ref = np.zeros_like(pred)
    ref[0, 0, 0:6] = 2
    pred[0, 0, 2:8] = 2
    ref[0, 5, 0:6] = 2
    pred[0, 5, 4:10] = 2
    return pred, ref


def test_detection_one_match_one_miss() -> None:
    counts = metrics.case_detection_counts(*two_node_case())
    assert counts == metrics.DetectionCounts(tp=1, fp=1, fn=1)
    assert counts.f1 == pytest.approx(0.5)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(0.5)
    assert metrics.detection_f1([two_node_case()]) == pytest.approx(0.5)


def test_detection_threshold_is_strict_by_default() -> None:
    # ref cols 0-5 (6), pred cols 3-9 (7): |∩| = 3, |∪| = 10 -> IoU exactly 0.3.
    pred, ref = line(*([0] * 3 + [2] * 7)), line(*([2] * 6 + [0] * 4))
    assert metrics.case_detection_counts(pred, ref) == metrics.DetectionCounts(0, 1, 1)
    assert metrics.case_detection_counts(pred, ref, inclusive=True) == metrics.DetectionCounts(1, 0, 0)
    # A zero-IoU pair never matches, even with threshold 0 and inclusive comparison.
    assert metrics.case_detection_counts(line(2, 0, 0), line(0, 0, 2), iou_threshold=0.0, inclusive=True).tp == 0


def test_detection_uses_26_connectivity() -> None:
    # Reference: two voxels touching only at a corner -> ONE node under 26-connectivity.
    ref = np.zeros((2, 2, 2), np.uint8)
    ref[0, 0, 0] = ref[1, 1, 1] = 2
    pred = np.zeros_like(ref)
    pred[0, 0, 0] = 2  # IoU 1/2 with that node -> match, nothing missed
    assert metrics.case_detection_counts(pred, ref) == metrics.DetectionCounts(1, 0, 0)


def test_detection_is_one_to_one() -> None:
    # One predicted blob (cols 0-4) spans two reference nodes (cols 0-1 and 3-4): IoU 2/5 each.
    pred, ref = line(2, 2, 2, 2, 2), line(2, 2, 0, 2, 2)
    assert metrics.case_detection_counts(pred, ref) == metrics.DetectionCounts(tp=1, fp=0, fn=1)


def test_detection_reference_node_matched_once() -> None:
    # Two predicted blobs (cols 0-1 and 3-4) inside one reference node (cols 0-4): IoU 2/5 each.
    pred, ref = line(2, 2, 0, 2, 2), line(2, 2, 2, 2, 2)
    assert metrics.case_detection_counts(pred, ref) == metrics.DetectionCounts(tp=1, fp=1, fn=0)


def test_detection_aggregates_over_cases() -> None:
    # Case 1: TP 1, FP 1, FN 1. Case 2: nothing. Case 3: one predicted node, none in reference.
    cases = [two_node_case(), (line(0, 0), line(0, 0)), (line(2, 0), line(0, 0))]
    total = metrics.detection_counts(cases)
    assert total == metrics.DetectionCounts(tp=1, fp=2, fn=1)
    assert metrics.detection_f1(cases) == pytest.approx(2 / (2 + 2 + 1))


def test_detection_empty_cases() -> None:
    assert metrics.case_detection_counts(line(0, 0), line(2, 0)) == metrics.DetectionCounts(0, 0, 1)
    assert metrics.detection_f1([(line(0, 0), line(2, 0))]) == 0.0
    assert math.isnan(metrics.detection_f1([(line(0, 1), line(1, 0))]))  # no GTVn anywhere
    # Only the requested label forms nodes.
    assert metrics.case_detection_counts(line(1, 1), line(1, 1)) == metrics.DetectionCounts(0, 0, 0)


# --------------------------------------------------------------------------- HD95


def test_hd95_uses_physical_spacing_in_zyx_order() -> None:
    pred = np.zeros((4, 2, 2), np.uint8)
    ref = np.zeros_like(pred)
    pred[0, 0, 0] = 1
    ref[3, 0, 0] = 1  # 3 slices apart, slices 2.5 mm apart -> 7.5 mm
    assert metrics.hd95(pred, ref, 1, (2.5, 1.0, 1.0)) == pytest.approx(7.5)
    assert metrics.hd95(pred, ref, 1, (1.0, 1.0, 2.5)) == pytest.approx(3.0)
    assert metrics.hd95(ref, ref, 1) == 0.0
    assert math.isnan(metrics.hd95(np.zeros_like(ref), ref, 1))


def test_hd95_cube_shift() -> None:
    # 4x4x4 cubes shifted by 2 voxels (1 mm) along x. The 16 voxels of each cube's outer x face
    # lie 2 mm from the other cube's nearest face, all other surface voxels 0-1 mm: 16/56 > 5 %,
    # so the 95th percentile in both directions is 2 mm.
    ref = np.zeros((8, 8, 12), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[2:6, 2:6, 4:8] = 1
    assert metrics.hd95(pred, ref, 1) == pytest.approx(2.0)


def test_hd95_is_the_larger_directed_value() -> None:
    # pred voxels at x = 0 and x = 10, ref voxel at x = 0 (1 mm spacing).
    # pred -> ref distances [0, 10]: 95th percentile (linear) 9.5; ref -> pred: [0] -> 0. Max 9.5.
    pred, ref = line(1, *([0] * 9), 1), line(1, *([0] * 10))
    assert metrics.hd95(pred, ref, 1) == pytest.approx(9.5)
    assert metrics.hd95(ref, pred, 1) == pytest.approx(9.5)


# --------------------------------------------------------------------------- C-index


def test_c_index_sign() -> None:
    times = [1.0, 2.0, 3.0, 4.0]
    events = [1, 1, 1, 1]
    risk = np.array([4.0, 3.0, 2.0, 1.0])  # the earliest relapse has the highest risk
    assert metrics.harrell_c_index(times, events, risk) == 1.0
    assert metrics.harrell_c_index(times, events, -risk) == 0.0


def test_c_index_hand_computed_with_censoring_and_ties() -> None:
    times, events = [1.0, 2.0, 3.0], [True, False, True]
    # Comparable pairs: (0,1) and (0,2) only (1 is censored; nothing outlives subject 2).
    assert metrics.harrell_c_index(times, events, [3.0, 1.0, 2.0]) == 1.0  # both concordant
    assert metrics.harrell_c_index(times, events, [2.0, 3.0, 1.0]) == 0.5  # one of two
    assert metrics.harrell_c_index(times, events, [1.0, 1.0, 0.0]) == 0.75  # (0.5 + 1) / 2


def test_c_index_tied_times() -> None:
    # All at t = 2; subject 1 censored. Comparable: (0,1) and (2,1); (0,2), both events, is not.
    times, events = [2.0, 2.0, 2.0], [1, 0, 1]
    assert metrics.harrell_c_index(times, events, [1.0, 0.0, 1.0]) == 1.0
    assert metrics.harrell_c_index(times, events, [0.0, 1.0, 0.0]) == 0.0
    assert metrics.harrell_c_index(times, events, [5.0, 0.0, 0.0]) == 0.75  # (1 + 0.5) / 2


def test_c_index_undefined_and_invalid() -> None:
    assert math.isnan(metrics.harrell_c_index([1.0, 2.0], [0, 0], [1.0, 2.0]))
    with pytest.raises(ValueError, match="length"):
        metrics.harrell_c_index([1.0, 2.0], [1, 1], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.harrell_c_index([1.0, float("nan")], [1, 1], [1.0, 2.0])
    with pytest.raises(ValueError, match="events"):
        metrics.harrell_c_index([1.0, 2.0], [1, 2], [1.0, 2.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c_index_matches_sksurv(seed: int) -> None:
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    rng = np.random.default_rng(seed)
    n = 300
    times = rng.integers(1, 60, n).astype(float)  # many tied times
    events = rng.random(n) < 0.4
    risk = np.round(rng.normal(size=n), 1)  # many tied risks
    expected = sksurv_metrics.concordance_index_censored(events, times, risk)[0]
    assert metrics.harrell_c_index(times, events, risk) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- balanced accuracy


def test_balanced_accuracy_hand_computed() -> None:
    # Positives: 2 of 3 found (2/3); negatives: 1 of 1 (1) -> (2/3 + 1) / 2 = 5/6.
    assert metrics.balanced_accuracy([1, 1, 1, 0], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert metrics.balanced_accuracy([True, False], [True, True]) == 0.5
    assert metrics.balanced_accuracy([1, 1], [1, 0]) == 0.5  # one class present: its recall
    assert math.isnan(metrics.balanced_accuracy([], []))
    with pytest.raises(ValueError, match="length"):
        metrics.balanced_accuracy([1, 0], [1])


def test_balanced_accuracy_matches_sklearn() -> None:
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.random(200) < 0.8, rng.random(200) < 0.6
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx(
        sk_metrics.balanced_accuracy_score(y_true, y_pred)
    )


# --------------------------------------------------------------------------- evaluate_folder

SPACING = (1.0, 1.0, 2.0)  # SimpleITK (x, y, z)


def write_labels(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 5.0, 100.0))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def volume_pair(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2x2x2 GTVp cube and one 1x1x2 node; the prediction's cube is shifted by ``shift`` in x."""
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[0:2, 0:2, 0:2] = 1
    ref[3, 4, 5:7] = 2
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, shift : shift + 2] = 1
    pred[3, 4, 5:7] = 2
    return pred, ref


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Case A: reference <ID>.nii.gz, prediction in the container layout (cube shifted by 1).
    Case B: reference in the training layout <ID>/<ID>.nii.gz next to <ID>__CT.nii.gz,
    prediction <ID>.mha identical to the reference.
    """
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_a, ref_a = volume_pair(1)
    write_labels(ref_dir / "A.nii.gz", ref_a)
    write_labels(pred_dir / "A" / "images" / "tumor-lymph-node-segmentation" / "output.mha", pred_a)
    pred_b, ref_b = volume_pair(0)
    write_labels(ref_dir / "B" / "B.nii.gz", ref_b)
    write_labels(ref_dir / "B" / "B__CT.nii.gz", np.zeros((4, 6, 8)))
    write_labels(pred_dir / "B.mha", pred_b)
    return pred_dir, ref_dir


def test_find_label_files_layouts(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    assert set(find_label_files(pred_dir)) == {"A", "B"}
    refs = find_label_files(ref_dir)
    assert set(refs) == {"A", "B"}
    assert refs["B"].name == "B.nii.gz"


def test_find_label_files_duplicate(folders: tuple[Path, Path]) -> None:
    pred_dir, _ = folders
    write_labels(pred_dir / "B.nii.gz", np.zeros((4, 6, 8)))
    with pytest.raises(EvaluationError, match="two label files"):
        find_label_files(pred_dir)


def test_evaluate_folder_figures(folders: tuple[Path, Path]) -> None:
    result = evaluate_folder(*folders)
    assert result["n_cases"] == 2
    rows = {row["case_id"]: row for row in result["cases"]}
    # Case A GTVp: cubes of 8 voxels overlapping in 4 (shift 1 of 2 columns) -> 2*4/16 = 0.5.
    assert rows["A"]["dice_gtvp"] == pytest.approx(0.5)
    assert rows["B"]["dice_gtvp"] == 1.0
    assert rows["A"]["dice_gtvn"] == rows["B"]["dice_gtvn"] == 1.0
    # Volumes: 8 voxels of 1 x 1 x 2 mm = 16 mm^3 = 0.016 mL.
    assert rows["A"]["ref_ml_gtvp"] == pytest.approx(0.016)
    # HD95 of case A's GTVp: the shifted faces are 1 mm apart in x.
    assert rows["A"]["hd95_gtvp"] == pytest.approx(1.0)
    summary = result["summary"]
    # Aggregated GTVp: 2*(4 + 8) / (16 + 16) = 0.75; mean per-case (0.5 + 1) / 2 = 0.75 too.
    assert summary["aggregated_dice_gtvp"] == pytest.approx(0.75)
    assert summary["mean_dice_gtvp"] == pytest.approx(0.75)
    assert summary["aggregated_dice_gtvn"] == 1.0
    assert summary["gtvn_detection"]["tp"] == 2
    assert summary["gtvn_detection"]["f1"] == 1.0
    assert result["missing_predictions"] == [] and result["unmatched_predictions"] == []


def test_evaluate_folder_geometry_mismatch_names_file(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    bad = write_labels(pred_dir / "B.mha", volume_pair(0)[0], spacing=(1.0, 1.0, 3.0))
    with pytest.raises(EvaluationError, match="spacing") as excinfo:
        evaluate_folder(pred_dir, ref_dir)
    assert str(bad) in str(excinfo.value)
    assert "B.nii.gz" in str(excinfo.value)


def test_evaluate_folder_size_mismatch(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "B.mha", np.zeros((4, 6, 9)))
    with pytest.raises(EvaluationError, match="size"):
        evaluate_folder(pred_dir, ref_dir)


def test_evaluate_folder_rejects_unknown_labels(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "B.mha", np.full((4, 6, 8), 3))
    with pytest.raises(EvaluationError, match="labels"):
        evaluate_folder(pred_dir, ref_dir)


def test_evaluate_folder_missing_prediction(folders: tuple[Path, Path]) -> None:
    pred_dir, ref_dir = folders
    (pred_dir / "B.mha").unlink()
    result = evaluate_folder(pred_dir, ref_dir)
    assert result["n_cases"] == 1 and result["missing_predictions"] == ["B"]
    with pytest.raises(EvaluationError, match="no prediction"):
        evaluate_folder(pred_dir, ref_dir, require_all=True)


# --------------------------------------------------------------------------- clinical and CLI


@pytest.fixture
def clinical_csvs(tmp_path: Path) -> tuple[Path, Path]:
    """Reference: P1 relapses at 100 d, P2 censored at 200 d, P3 relapses at 300 d, P4 no RFS.

    Risks 0.9, 0.1, 0.5: comparable pairs (P1,P2) concordant, (P1,P3) concordant -> C = 1.0.
    HPV truth 1, 1, 0, 1 (P3 negative), predicted True, False, False, True:
    recall(+) = 2/3, recall(-) = 1 -> balanced accuracy 5/6.
    """
    pred = tmp_path / "pred.csv"
    ref = tmp_path / "ref.csv"
    pred.write_text("PatientID,rfs_risk,hpv_positive\nP1,0.9,True\nP2,0.1,False\nP3,0.5,False\nP4,0.3,True\n")
    ref.write_text(
        "PatientID,RFS,Relapse,HPV Status\nP1,100,1.0,1.0\nP2,200,0.0,1.0\nP3,300,1.0,0.0\nP4,,,1.0\nP5,50,1.0,\n"
    )
    return pred, ref


def test_evaluate_clinical(clinical_csvs: tuple[Path, Path]) -> None:
    result = evaluate_clinical(*clinical_csvs)
    assert result["n_matched"] == 4
    assert result["missing_predictions"] == ["P5"]
    assert result["rfs"] == {"c_index": 1.0, "n": 3, "events": 2}
    assert result["hpv"]["balanced_accuracy"] == pytest.approx(5 / 6)
    assert result["hpv"]["n"] == 4


def test_evaluate_clinical_rejects_unreadable_values(clinical_csvs: tuple[Path, Path]) -> None:
    pred, ref = clinical_csvs
    pred.write_text("PatientID,hpv_positive\nP1,maybe\n")
    with pytest.raises(EvaluationError, match="maybe"):
        evaluate_clinical(pred, ref)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(argv)


def test_run_evaluate_writes_json(folders: tuple[Path, Path], clinical_csvs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.json"
    argv = ["--pred", str(folders[0]), "--ref", str(folders[1]), "--out", str(out)]
    argv += ["--clinical-pred", str(clinical_csvs[0]), "--clinical-ref", str(clinical_csvs[1])]
    stream = io.StringIO()
    assert run_evaluate(parse(argv), stream) == 0
    report = json.loads(out.read_text())
    assert report["segmentation"]["summary"]["aggregated_dice_gtvp"] == pytest.approx(0.75)
    assert report["clinical"]["rfs"]["c_index"] == 1.0
    assert "aggregated Dice" in stream.getvalue() and "C-index" in stream.getvalue()


def test_run_evaluate_json_has_null_for_nan(tmp_path: Path) -> None:
    pred_dir, ref_dir = tmp_path / "p", tmp_path / "r"
    write_labels(pred_dir / "X.nii.gz", np.zeros((2, 2, 2)))
    write_labels(ref_dir / "X.nii.gz", np.zeros((2, 2, 2)))
    out = tmp_path / "r.json"
    assert run_evaluate(parse(["--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]), io.StringIO()) == 0
    report = json.loads(out.read_text())
    assert report["segmentation"]["summary"]["aggregated_dice_gtvp"] is None
    assert report["segmentation"]["cases"][0]["dice_gtvn"] is None


def test_run_evaluate_failures_return_2(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, ref_dir = folders
    write_labels(pred_dir / "B.mha", volume_pair(0)[0], spacing=(2.0, 1.0, 2.0))
    assert run_evaluate(parse(["--pred", str(pred_dir), "--ref", str(ref_dir)]), io.StringIO()) == 2
    assert run_evaluate(parse(["--pred", str(pred_dir)]), io.StringIO()) == 2
    assert run_evaluate(parse([]), io.StringIO()) == 2
