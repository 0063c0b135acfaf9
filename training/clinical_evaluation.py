"""Nested, centre- and cohort-disjoint evaluation of the Task 2/3 model families, and the final selection.

Outer folds (:func:`outer_folds`): each HECKTOR development centre held out in turn (trained on the other
centres and RADCURE), RADCURE held out (trained on HECKTOR), and HECKTOR held out (trained on RADCURE).
Inside each outer fold, every choice is re-made on the outer training patients alone
(:func:`select`): the candidate (family, feature set, penalty) by an inner leave-one-group-out over the
training groups (5 random patient folds when the training set is one group), and the HPV threshold from the
same inner out-of-group probabilities. The held-out group is scored once, by a model fitted on the whole
outer training set. No held-out patient is seen by any choice; :func:`outer_folds` and :func:`select` are
what the tests check for that.

Criteria (chosen before any result was seen): RFS, the mean over training cohorts of Harrell's C of the
inner out-of-group risks within the cohort; HPV, the mean over training cohorts of the AUC of the inner
out-of-group scores within the cohort. Within-cohort figures, because a score pooled over cohorts would
reward separating the cohorts' baseline risk or prevalence, which says nothing about an unseen centre.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hecktor.core.metrics import balanced_accuracy, harrell_c_index
from hecktor.core.validation import bootstrap_ci
from hecktor.outcome.predict import sigmoid
from training.clinical_cohorts import Cohorts
from training.clinical_families import HPV_FAMILIES, RFS_FAMILIES, Candidate, Model, fit

__all__ = [
    "OuterFold",
    "Selection",
    "choose_threshold",
    "evaluate_task",
    "hpv_entry",
    "outer_folds",
    "rfs_entry",
    "select",
]

logger = logging.getLogger(__name__)

N_BOOT = 1000
SEED = 20250
THRESHOLD_GRID = np.round(np.arange(0.30, 0.701, 0.01), 2)


@dataclass(frozen=True)
class OuterFold:
    name: str
    kind: str  # "centre" (a HECKTOR centre, LOCO) or "cohort" (leave-one-cohort-out)
    held_out: np.ndarray  # boolean mask over the patients


def outer_folds(data: Cohorts) -> list[OuterFold]:
    """One fold per centre of every cohort with several centres (leave-one-centre-out), then, when there are
    several cohorts, one fold per cohort (leave-one-cohort-out), each in name order."""
    folds = []
    for cohort in sorted(set(data.cohorts)):
        centres = sorted(set(data.groups[data.cohorts == cohort]))
        if len(centres) >= 2:
            folds += [OuterFold(str(g), "centre", data.groups == g) for g in centres]
    if len(set(data.cohorts)) >= 2:
        folds += [OuterFold(str(c), "cohort", data.cohorts == c) for c in sorted(set(data.cohorts))]
    return folds


# --------------------------------------------------------------------------- metrics


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    return harrell_c_index(time, event.astype(bool), risk)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def bal_acc(y: np.ndarray, prob: np.ndarray, threshold: np.ndarray | float) -> float:
    return balanced_accuracy(y.astype(int), (prob >= threshold).astype(int))


def _per_cohort_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def rfs_criterion(data: Cohorts, risk: np.ndarray) -> float:
    return _per_cohort_mean([c_index(data.time[m], data.event[m], risk[m])
                             for m in (data.cohorts == c for c in np.unique(data.cohorts))])  # fmt: skip


def hpv_criterion(data: Cohorts, score: np.ndarray) -> float:
    return _per_cohort_mean([auc(data.hpv[m], score[m]) for m in (data.cohorts == c for c in np.unique(data.cohorts))])


def choose_threshold(data: Cohorts, prob: np.ndarray) -> float:
    """The threshold in [0.30, 0.70] maximising the mean over cohorts of the balanced accuracy of ``prob``
    (inner out-of-group probabilities); ties go to the one closest to 0.5, the prevalence-neutral point."""
    cohorts = [data.cohorts == c for c in np.unique(data.cohorts)]
    cohorts = [m for m in cohorts if len(np.unique(data.hpv[m])) == 2]

    def quality(t: float) -> tuple[float, float]:
        return round(_per_cohort_mean([bal_acc(data.hpv[m], prob[m], t) for m in cohorts]), 9), -abs(t - 0.5)

    return float(max(THRESHOLD_GRID, key=quality)) if cohorts else 0.5


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Selection:
    """What the inner folds chose on one training set: per family and overall, with the inner figures."""

    best: Candidate
    best_per_family: dict[str, Candidate]
    criterion: dict[str, float]  # candidate name -> inner criterion
    thresholds: dict[str, float]  # candidate name -> HPV threshold (HPV only)


def inner_scores(data: Cohorts, cand: Candidate) -> np.ndarray:
    """Out-of-group scores of ``cand`` on ``data`` (each inner fold scored by a fit on the rest)."""
    out = np.full(len(data), np.nan)
    for held in data.inner_folds():
        model = fit(data.subset(~held), cand)
        out[held] = model.scores(data.subset(held).raws)
    return out


def _best(names: Sequence[str], criterion: dict[str, float]) -> str:
    """Highest criterion; ties go to the earlier (simpler) candidate."""
    return max(names, key=lambda n: (round(criterion[n], 9) if np.isfinite(criterion[n]) else -1.0,
                                     -names.index(n)))  # fmt: skip


def select(data: Cohorts, cands: Sequence[Candidate], task: str) -> Selection:
    """Choose among ``cands`` using ``data`` only (the patients with a known label of ``task``)."""
    labelled = data.subset(data.labelled(task))
    criterion_of = hpv_criterion if task == "hpv" else rfs_criterion
    scores = {c.name: inner_scores(labelled, c) for c in cands}
    criterion = {name: criterion_of(labelled, s) for name, s in scores.items()}
    names = [c.name for c in cands]
    by_name = {c.name: c for c in cands}
    best_per_family = {}
    for family in dict.fromkeys(c.family for c in cands):
        best_per_family[family] = by_name[_best([c.name for c in cands if c.family == family], criterion)]
    best = by_name[_best(names, criterion)]
    thresholds = {}
    if task == "hpv":
        thresholds = {c.name: choose_threshold(labelled, sigmoid(scores[c.name]))
                      for c in (best, *best_per_family.values())}  # fmt: skip
    return Selection(best, best_per_family, criterion, thresholds)


# --------------------------------------------------------------------------- reports


def _round(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def _with_ci(stat: Callable[..., float], *arrays: np.ndarray, strata: np.ndarray | None = None) -> dict:
    value = stat(*arrays)
    low, high = bootstrap_ci(stat, *arrays, n_resamples=N_BOOT, seed=SEED, alpha=0.05, strata=strata)
    return {"value": _round(value), "ci95": [_round(low), _round(high)]}


def rfs_entry(time: np.ndarray, event: np.ndarray, risk: np.ndarray, strata: np.ndarray | None = None) -> dict:
    return {"n": len(time), "events": int(event.sum()), "c_index": _with_ci(c_index, time, event, risk, strata=strata)}


def calibration(y: np.ndarray, prob: np.ndarray) -> dict:
    """Calibration of the HPV probability on one held-out group: mean predicted vs observed prevalence, Brier
    score, and the intercept/slope of the logistic recalibration ``logit P(y) = a + b logit(p)`` (ideal 0, 1)."""
    entry = {"prevalence": _round(y.mean()), "mean_probability": _round(prob.mean()),
             "brier": _round(np.mean((prob - y) ** 2))}  # fmt: skip
    if len(np.unique(y)) == 2:
        logit = np.log(np.clip(prob, 1e-6, 1 - 1e-6) / np.clip(1 - prob, 1e-6, 1))
        fit_ = LogisticRegression(C=np.inf, solver="newton-cholesky").fit(logit[:, None], y.astype(int))
        entry.update(intercept=_round(fit_.intercept_[0]), slope=_round(fit_.coef_[0, 0]))
    return entry


def hpv_entry(y: np.ndarray, prob: np.ndarray, thr: np.ndarray, strata: np.ndarray | None = None) -> dict:
    n_neg = int((y == 0).sum())
    entry = {
        "n": len(y),
        "n_negative": n_neg,
        "balanced_accuracy": _with_ci(bal_acc, y, prob, thr, strata=strata),
        "auc": _with_ci(auc, y, prob, strata=strata),
        "sensitivity": _round(np.mean(prob[y == 1] >= thr[y == 1])) if (y == 1).any() else None,
        "specificity": _round(np.mean(prob[y == 0] < thr[y == 0])) if n_neg else None,
        "calibration": calibration(y, prob),
    }
    if n_neg == 0 or n_neg == len(y):
        entry["note"] = "one class only: balanced accuracy is the sensitivity (or specificity), AUC undefined"
    return entry


@dataclass(frozen=True)
class TaskResult:
    """Held-out scores of one task, per outer fold, for the overall choice ("selected") and each family's best."""

    scores: dict[str, dict[str, np.ndarray]]  # key -> outer fold -> score per patient (NaN outside the fold)
    thresholds: dict[str, dict[str, float]]  # HPV: key -> outer fold -> threshold chosen inside that fold
    choices: dict[str, dict[str, str]]  # outer fold -> key -> candidate name (and threshold)


def evaluate_task(data: Cohorts, cands: Sequence[Candidate], task: str) -> TaskResult:
    """Nested evaluation over :func:`outer_folds`: every choice re-made on each outer training set."""
    families = HPV_FAMILIES if task == "hpv" else RFS_FAMILIES
    labelled = data.labelled(task)
    keys = ("selected", *[f for f in families if any(c.family == f for c in cands)])
    scores: dict[str, dict[str, np.ndarray]] = {k: {} for k in keys}
    thresholds: dict[str, dict[str, float]] = {k: {} for k in keys}
    choices: dict[str, dict[str, str]] = {}
    for fold in outer_folds(data):
        train, held = data.subset(~fold.held_out), fold.held_out & labelled
        chosen = select(train, cands, task)
        picks = {"selected": chosen.best, **chosen.best_per_family}
        choices[fold.name] = {}
        fitted: dict[str, Model] = {}
        for key in keys:
            cand = picks[key]
            if cand.name not in fitted:
                fitted[cand.name] = fit(train, cand)
            score = np.full(len(data), np.nan)
            score[held] = fitted[cand.name].scores(data.subset(held).raws)
            scores[key][fold.name] = score
            shown = cand.name
            if task == "hpv":
                thresholds[key][fold.name] = chosen.thresholds[cand.name]
                shown += f" t={chosen.thresholds[cand.name]:.2f}"
            choices[fold.name][key] = shown
        logger.info("%s outer fold %s: %s", task.upper(), fold.name, choices[fold.name])
    return TaskResult(scores, thresholds, choices)


def pooled_name(cohort: str) -> str:
    """The row that pools the held-out centres of ``cohort`` (each scored by its own outer fold's model)."""
    return f"{cohort} centres pooled (LOCO)"


def report(data: Cohorts, result: TaskResult, task: str) -> dict:
    """Per held-out centre/cohort, and pooled over the held-out centres of each cohort, for every key."""
    folds = outer_folds(data)
    out: dict[str, dict] = {}
    for key, per_fold in result.scores.items():
        threshold = {name: np.full(len(data), result.thresholds[key].get(name, 0.5)) for name in per_fold}
        views = []
        for cohort in sorted(set(data.cohorts)):
            centre_folds = [f.name for f in folds if f.kind == "centre" and (data.cohorts[f.held_out] == cohort).all()]
            if not centre_folds:
                continue
            views += [(name, per_fold[name], threshold[name], None) for name in centre_folds]
            pooled = np.full(len(data), np.nan)
            pooled_thr = np.full(len(data), np.nan)
            for name in centre_folds:
                held = np.isfinite(per_fold[name])
                pooled[held], pooled_thr[held] = per_fold[name][held], threshold[name][held]
            views.append((pooled_name(cohort), pooled, pooled_thr, data.groups))
        views += [(f.name, per_fold[f.name], threshold[f.name], None) for f in folds if f.kind == "cohort"]
        rows: dict[str, dict] = {}
        for name, score, thr, strata in views:
            m = np.isfinite(score)
            if not m.any():
                continue
            s = None if strata is None else strata[m]
            if task == "rfs":
                rows[name] = rfs_entry(data.time[m], data.event[m], score[m], s)
            else:
                rows[name] = hpv_entry(data.hpv[m], sigmoid(score[m]), thr[m], s)
        out[key] = rows
    return {"per_held_out": out, "choices": result.choices}
