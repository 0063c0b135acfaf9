"""HECKTOR 2025 evaluation metrics as pure functions.

Segmentation arrays are integer label maps in (z, y, x) order with the labels of
``hecktor.core.types`` (0 background, 1 GTVp, 2 GTVn). Every function here takes arrays and
returns numbers; nothing reads files (see ``hecktor.apps.evaluate`` for that).

Conventions for undefined values: a ratio whose denominator is zero is ``nan`` (never 0 or 1),
so that callers can tell "no data" from "bad result". Aggregation helpers ignore nothing: they
sum counts first and divide once, exactly as the challenge aggregates.

Task 1 (challenge website): GTVp and GTVn aggregated Dice, and GTVn aggregated detection F1
where a predicted node matches a reference node when their IoU > 0.3.
Task 2: Harrell's C-index of a risk score (higher = earlier relapse) against (RFS, Relapse).
Task 3: balanced accuracy of the HPV status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

__all__ = [
    "DEFAULT_IOU_THRESHOLD",
    "DetectionCounts",
    "OverlapCounts",
    "aggregated_dice",
    "balanced_accuracy",
    "case_detection_counts",
    "detection_counts",
    "detection_f1",
    "dice",
    "harrell_c_index",
    "hd95",
    "overlap_counts",
]

DEFAULT_IOU_THRESHOLD = 0.3
"""HECKTOR 2025 node-matching threshold; the website states the rule as IoU > 0.3 (strict)."""

LabelPairs = Iterable[tuple[np.ndarray, np.ndarray]]


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``nan`` when the denominator is zero."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def _check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")


# --------------------------------------------------------------------------- Dice


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one label: |P ∩ R|, |P| and |R|. Counts from several cases add up."""

    intersection: int = 0
    pred: int = 0
    ref: int = 0

    def __add__(self, other: OverlapCounts) -> OverlapCounts:
        return OverlapCounts(self.intersection + other.intersection, self.pred + other.pred, self.ref + other.ref)

    @property
    def dice(self) -> float:
        """2|P ∩ R| / (|P| + |R|); ``nan`` when both are empty (Dice is undefined there)."""
        return _ratio(2 * self.intersection, self.pred + self.ref)


def overlap_counts(pred: np.ndarray, ref: np.ndarray, label: int) -> OverlapCounts:
    """Counts of ``label`` in ``pred``, in ``ref`` and in both (arrays of the same shape)."""
    _check_same_shape(pred, ref)
    p = pred == label
    r = ref == label
    return OverlapCounts(int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r)))


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    """Per-case Dice of ``label``.

    Returns:
        2|P ∩ R| / (|P| + |R|) in [0, 1]; 0.0 when exactly one of P, R is empty; ``nan`` when
        both are empty (a per-case mean should skip those cases, e.g. ``np.nanmean``).
    """
    return overlap_counts(pred, ref, label).dice


def aggregated_dice(pairs: LabelPairs, label: int) -> float:
    """HECKTOR aggregated Dice: 2 Σ|P_i ∩ R_i| / Σ(|P_i| + |R_i|) over all cases.

    Args:
        pairs: ``(pred, ref)`` label arrays, one pair per case; a generator is fine (each pair is
            reduced to three counts before the next one is read).
        label: the class to score (1 GTVp, 2 GTVn).

    Returns:
        The aggregated Dice; ``nan`` when ``label`` is absent from every prediction and every
        reference (or ``pairs`` is empty), because the ratio is then undefined.
    """
    total = OverlapCounts()
    for pred, ref in pairs:
        total = total + overlap_counts(pred, ref, label)
    return total.dice


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetectionCounts:
    """Lesion-level true positives, false positives and false negatives; counts add up."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); ``nan`` with no predicted component."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); ``nan`` with no reference component."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); ``nan`` when there is no component in predictions or references."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def _component_iou(pred_cc: np.ndarray, n_pred: int, ref_cc: np.ndarray, n_ref: int) -> np.ndarray:
    """IoU matrix (n_pred, n_ref) between labelled components (labels 1..n, 0 background)."""
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)[1:]
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)[1:]
    both = (pred_cc > 0) & (ref_cc > 0)
    joint = pred_cc[both].astype(np.int64) * (n_ref + 1) + ref_cc[both].astype(np.int64)
    inter = np.bincount(joint, minlength=(n_pred + 1) * (n_ref + 1)).reshape(n_pred + 1, n_ref + 1)[1:, 1:]
    union = pred_sizes[:, None] + ref_sizes[None, :] - inter
    return inter / np.maximum(union, 1)


def _greedy_matches(iou: np.ndarray, iou_threshold: float, inclusive: bool) -> int:
    """Number of one-to-one matches taken greedily by IoU descending (ties: lower labels first)."""
    passes = iou >= iou_threshold if inclusive else iou > iou_threshold
    rows, cols = np.nonzero(passes & (iou > 0))
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_pred: set[int] = set()
    used_ref: set[int] = set()
    for k in order:
        p, r = int(rows[k]), int(cols[k])
        if p not in used_pred and r not in used_ref:
            used_pred.add(p)
            used_ref.add(r)
    return len(used_pred)


def case_detection_counts(
    pred: np.ndarray,
    ref: np.ndarray,
    label: int = 2,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    inclusive: bool = False,
) -> DetectionCounts:
    """Lesion detection counts of one case.

    Components are the 26-connected components (``cc3d``) of ``label`` in each array. A
    predicted and a reference component may match when IoU > ``iou_threshold`` (the HECKTOR 2025
    website's rule), or IoU >= ``iou_threshold`` with ``inclusive=True`` (one issue's wording);
    in both cases an IoU of 0 never matches. Matching is one-to-one, greedy by IoU descending.
    Unmatched predicted components are false positives, unmatched reference ones false negatives.
    """
    _check_same_shape(pred, ref)
    pred_cc, n_pred = cc3d.connected_components((pred == label).astype(np.uint8), connectivity=26, return_N=True)
    ref_cc, n_ref = cc3d.connected_components((ref == label).astype(np.uint8), connectivity=26, return_N=True)
    n_pred, n_ref = int(n_pred), int(n_ref)
    if n_pred == 0 or n_ref == 0:
        return DetectionCounts(0, n_pred, n_ref)
    tp = _greedy_matches(_component_iou(pred_cc, n_pred, ref_cc, n_ref), iou_threshold, inclusive)
    return DetectionCounts(tp, n_pred - tp, n_ref - tp)


def detection_counts(
    pairs: LabelPairs,
    label: int = 2,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    inclusive: bool = False,
) -> DetectionCounts:
    """TP/FP/FN summed over all cases (see :func:`case_detection_counts` for the matching rule)."""
    total = DetectionCounts()
    for pred, ref in pairs:
        total = total + case_detection_counts(pred, ref, label, iou_threshold, inclusive)
    return total


def detection_f1(
    pairs: LabelPairs,
    label: int = 2,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    inclusive: bool = False,
) -> float:
    """HECKTOR aggregated detection F1 = 2TP / (2TP + FP + FN) with TP/FP/FN summed over cases.

    Returns ``nan`` when no case has a component of ``label`` in prediction or reference.
    """
    return detection_counts(pairs, label, iou_threshold, inclusive).f1


# --------------------------------------------------------------------------- HD95


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (outside the array counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_p95(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]) -> float:
    distances = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return float(np.percentile(distances[from_surface], 95))


def hd95(
    pred: np.ndarray, ref: np.ndarray, label: int, spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of ``label``, in mm.

    The larger of the two directed 95th percentiles of surface-to-surface distances (the MONAI
    convention; medpy pools both directions instead, which gives a value no larger). The
    computation is cropped to the bounding box of both masks, which is exact and keeps it cheap.

    Args:
        spacing_zyx: voxel size in (z, y, x) order, i.e. SimpleITK's ``GetSpacing()`` reversed.

    Returns:
        HD95 in mm; ``nan`` when ``label`` is absent from ``pred`` or from ``ref``.
    """
    _check_same_shape(pred, ref)
    p = pred == label
    r = ref == label
    if not p.any() or not r.any():
        return float("nan")
    coords = np.nonzero(p | r)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    p_surf, r_surf = _surface(p[box]), _surface(r[box])
    spacing = tuple(float(s) for s in spacing_zyx)
    return max(_directed_p95(p_surf, r_surf, spacing), _directed_p95(r_surf, p_surf, spacing))


# --------------------------------------------------------------------------- clinical


def _as_1d_float(values: np.ndarray | Iterable[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def harrell_c_index(times: Iterable[float], events: Iterable[bool], risk: Iterable[float]) -> float:
    """Harrell's concordance index of a risk score; higher risk means an earlier event.

    A pair (i, j) is comparable when subject i has an event and either ``times[i] < times[j]``,
    or the times are equal and j is censored (j is known to have lasted at least as long). It is
    concordant when ``risk[i] > risk[j]``; tied risks count 0.5. Pairs of events at the same time
    are not comparable. This matches ``sksurv.metrics.concordance_index_censored`` (up to its
    1e-8 risk-tie tolerance; ties here are exact). Note that lifelines' ``concordance_index``
    expects a survival-time-like score instead, i.e. the negative of ``risk``.

    O(n^2) time and memory (vectorised); fine for a few thousand subjects.

    Args:
        times: follow-up times (e.g. RFS in days), finite.
        events: 1/True when the event (relapse) was observed, 0/False when censored.
        risk: predicted risk scores, finite.

    Returns:
        C in [0, 1]; 1.0 orders every comparable pair correctly. ``nan`` with no comparable pair.
    """
    t = _as_1d_float(times, "times")
    r = _as_1d_float(risk, "risk")
    e = _as_1d_float(events, "events")
    if not (len(t) == len(r) == len(e)):
        raise ValueError(f"times, events and risk differ in length: {len(t)}, {len(e)}, {len(r)}")
    if not np.all(np.isin(e, (0.0, 1.0))):
        raise ValueError("events must be 0/1 or booleans")
    event = e.astype(bool)
    earlier = t[:, None] < t[None, :]
    same_time_censored_j = (t[:, None] == t[None, :]) & ~event[None, :]
    comparable = event[:, None] & (earlier | same_time_censored_j)
    concordant = np.count_nonzero(comparable & (r[:, None] > r[None, :]))
    tied = np.count_nonzero(comparable & (r[:, None] == r[None, :]))
    return _ratio(concordant + 0.5 * tied, np.count_nonzero(comparable))


def balanced_accuracy(y_true: Iterable[object], y_pred: Iterable[object]) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (as scikit-learn computes it).

    For binary HPV status this is (sensitivity + specificity) / 2. When ``y_true`` holds a single
    class it is that class's recall. ``nan`` for empty inputs.
    """
    truth = np.asarray(list(y_true))
    guess = np.asarray(list(y_pred))
    if truth.shape != guess.shape:
        raise ValueError(f"y_true and y_pred differ in length: {truth.shape} vs {guess.shape}")
    if truth.size == 0:
        return float("nan")
    recalls = [np.mean(guess[truth == cls] == cls) for cls in np.unique(truth)]
    return float(np.mean(recalls))
