"""The Task 2/3 model families: fit on a :class:`~training.clinical_cohorts.Cohorts` subset, return the runtime's
own model object (:mod:`hecktor.outcome.predict`), and write it as the JSON the runtime reads.

Every fit returns the object the container scores with, built from parameters already rounded by
:func:`stable_float`, so what cross-validation scores is exactly what would be shipped.

Missing values, and why they cannot identify a cohort:

- Linear models impute the training mean of the observed values (standardised value 0): an unknown
  value contributes nothing, and there are no missing indicators. M-stage is recorded by RADCURE only,
  image measurements by HECKTOR only, tobacco and performance status by RADCURE and one HECKTOR centre:
  an indicator for any of them would be a cohort identifier.
- Gradient-boosted trees route missing values natively. Trained as they come, "missing" would mean
  "RADCURE" (images) or "HECKTOR" (M-stage), so every training row also enters once with all those
  cohort-dependent features masked (each copy at half weight): the missing branches then learn the
  relation of every cohort together, not one cohort's.
- The random forest (seed 001's recipe) needs complete rows for SMOTE: mean imputation, as linear models.

HPV prevalence differs between cohorts (HECKTOR development centres 74-99 % positive, RADCURE 66 %): HPV
fits weight the two classes equally WITHIN each cohort, so no cohort's prevalence can be learnt through
features that differ between cohorts, and probability 0.5 is the prevalence-neutral point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sksurv.ensemble import GradientBoostingSurvivalAnalysis
from sksurv.linear_model import CoxPHSurvivalAnalysis

from hecktor.outcome.predict import (
    HPV_PREDICTED,
    LinearModel,
    Tree,
    TreeEnsemble,
    WithPredictedHpv,
    design_matrix,
    sigmoid,
)
from training.clinical_cohorts import Cohorts

__all__ = [
    "FAMILIES",
    "Candidate",
    "Model",
    "cohort_balanced_weights",
    "fit",
    "model_json",
    "stable_float",
]

Model = LinearModel | TreeEnsemble | WithPredictedHpv
Z_CLIP = 5.0
SEED = 20250
# Fitted parameters keep this many significant digits (|value| < ZERO_BELOW is 0): the last bits of a fit
# depend on the BLAS kernel the CPU selects, so rounding makes model files byte-identical on every machine.
SIGNIFICANT_DIGITS = 10
ZERO_BELOW = 1e-12


@dataclass(frozen=True)
class Candidate:
    """One configuration the selection may choose: a family, its feature columns and its settings."""

    family: str
    feature_set: str
    columns: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        shown = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings.items())
        return f"{self.family}/{self.feature_set}" + (f"@{shown}" if shown else "")


def stable_float(value: float) -> float:
    """``value`` to SIGNIFICANT_DIGITS significant digits; ``|value| < ZERO_BELOW`` (and -0.0) gives 0.0."""
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"non-finite model parameter {value!r}")
    if abs(value) < ZERO_BELOW:
        return 0.0
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}") + 0.0


def _stable(values: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    return tuple(stable_float(v) for v in np.asarray(values, dtype=float).ravel())


# --------------------------------------------------------------------------- shared preprocessing


def usable_columns(columns: Sequence[str], raws: Sequence[Mapping[str, float | None]]) -> tuple[str, ...]:
    """The columns with at least two distinct observed values in this training subset (others carry nothing:
    e.g. M-stage when training on HECKTOR alone)."""
    return tuple(c for c in columns if len({r.get(c) for r in raws} - {None}) >= 2)


def _scaling(
    columns: Sequence[str], raws: Sequence[Mapping[str, float | None]]
) -> tuple[np.ndarray, dict, tuple, tuple]:
    """The observed values (NaN = unknown) and, from them, the mean imputation values and standardisation."""
    observed = design_matrix(columns, {}, raws)
    means = np.nanmean(observed, axis=0)
    stds = np.nanstd(observed, axis=0)
    stds[~(stds > 1e-8)] = 1.0
    means_t, stds_t = _stable(means), _stable(stds)
    return observed, dict(zip(columns, means_t, strict=True)), means_t, stds_t


def cohort_balanced_weights(y: np.ndarray, cohorts: np.ndarray) -> np.ndarray:
    """Sample weights giving the two classes equal weight within each cohort (a cohort keeps its size)."""
    weights = np.zeros(len(y))
    for cohort in np.unique(cohorts):
        in_cohort = cohorts == cohort
        for label in (0, 1):
            cell = in_cohort & (y == label)
            if cell.any():
                weights[cell] = in_cohort.sum() / (2.0 * cell.sum())
    return weights


def _survival_target(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    return np.array(list(zip(event.astype(bool), time, strict=True)), dtype=[("event", bool), ("time", float)])


# --------------------------------------------------------------------------- linear families


def _linear(
    kind: str, columns: tuple[str, ...], impute: dict, means: tuple, stds: tuple, coefs: np.ndarray, intercept: float
) -> LinearModel:
    return LinearModel(kind=kind, columns=columns, impute_values=impute, means=means, stds=stds,
                       coefs=_stable(coefs), intercept=stable_float(intercept), z_clip=Z_CLIP)  # fmt: skip


def _standardised(model_columns: tuple[str, ...], raws: Sequence[Mapping]) -> tuple[dict, tuple, tuple, np.ndarray]:
    observed, impute, means, stds = _scaling(model_columns, raws)
    x = np.where(np.isnan(observed), np.asarray(means), observed)  # the imputation values are the means
    return impute, means, stds, np.clip((x - np.asarray(means)) / np.asarray(stds), -Z_CLIP, Z_CLIP)


def fit_logistic(data: Cohorts, cand: Candidate) -> LinearModel:
    """L2 logistic regression, classes balanced within each cohort; Newton steps to a gradient below 1e-10, so
    the fit stops at the optimum rather than wherever a looser solver met its stopping rule."""
    columns = usable_columns(cand.columns, data.raws)
    impute, means, stds, z = _standardised(columns, data.raws)
    y = data.hpv.astype(int)
    clf = LogisticRegression(C=cand.settings["C"], solver="newton-cholesky", tol=1e-10, max_iter=100)
    clf.fit(z, y, sample_weight=cohort_balanced_weights(y, data.cohorts))
    return _linear("logistic_l2_balanced", columns, impute, means, stds, clf.coef_[0], clf.intercept_[0])


def fit_cox(data: Cohorts, cand: Candidate) -> LinearModel:
    """Ridge Cox PH (scikit-survival, Breslow ties); the linear predictor is the risk."""
    columns = usable_columns(cand.columns, data.raws)
    impute, means, stds, z = _standardised(columns, data.raws)
    cox = CoxPHSurvivalAnalysis(alpha=cand.settings["alpha"], ties="breslow")
    cox.fit(z, _survival_target(data.time, data.event))
    return _linear("cox_ph_ridge", columns, impute, means, stds, cox.coef_, 0.0)


# --------------------------------------------------------------------------- tree families


def _threshold(value: float) -> float:
    """A split threshold; +inf (histogram boosting's "every observed value goes left, NaN goes right") becomes the
    largest float, which orders every finite value the same way and is valid JSON."""
    return float(np.finfo(float).max) if value == np.inf else stable_float(value)


def _tree_from_sklearn(tree: Any, leaf_value: np.ndarray) -> Tree:
    """A scikit-learn ``tree_`` (DecisionTree*) as node arrays; leaves get ``leaf_value``."""
    feature = np.where(tree.children_left >= 0, tree.feature, -1).astype(np.int64)
    inner = feature >= 0
    return Tree(
        feature=feature,
        threshold=np.where(inner, [_threshold(t) for t in tree.threshold], 0.0),
        left=np.where(inner, tree.children_left, 0).astype(np.int64),
        right=np.where(inner, tree.children_right, 0).astype(np.int64),
        missing_left=np.where(inner, tree.missing_go_to_left.astype(bool), False),
        value=np.where(inner, 0.0, [stable_float(v) for v in leaf_value]),
    )


def _tree_from_hist_predictor(nodes: np.ndarray) -> Tree:
    """A HistGradientBoosting predictor's node table as node arrays (leaf values already shrunk)."""
    inner = ~nodes["is_leaf"].astype(bool)
    return Tree(
        feature=np.where(inner, nodes["feature_idx"], -1).astype(np.int64),
        threshold=np.where(inner, [_threshold(t) for t in nodes["num_threshold"]], 0.0),
        left=np.where(inner, nodes["left"], 0).astype(np.int64),
        right=np.where(inner, nodes["right"], 0).astype(np.int64),
        missing_left=np.where(inner, nodes["missing_go_to_left"].astype(bool), False),
        value=np.where(inner, 0.0, [stable_float(v) for v in nodes["value"]]),
    )


def masked_copies(x: np.ndarray, masked: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every row twice, at half weight: as it is, and with the ``masked`` columns set to NaN (see module doc).

    Returns the stacked rows and the index of the original row of each (to carry labels and weights)."""
    copy = x.copy()
    copy[:, list(masked)] = np.nan
    return np.vstack([x, copy]), np.concatenate([np.arange(len(x)), np.arange(len(x))])


def cohort_dependent_columns(observed: np.ndarray, cohorts: np.ndarray) -> list[int]:
    """Indexes of the columns of ``observed`` (NaN = unknown) whose missing rate differs by more than 10 points
    between training cohorts."""
    missing = np.isnan(observed)
    rates = np.array([missing[cohorts == c].mean(axis=0) for c in np.unique(cohorts)])
    return [i for i in range(observed.shape[1]) if rates[:, i].max() - rates[:, i].min() > 0.10]


def fit_hist_gradient_boosting(data: Cohorts, cand: Candidate) -> TreeEnsemble:
    """scikit-learn's histogram gradient boosting, NaN routed natively, on masked copies (see module doc)."""
    columns = usable_columns(cand.columns, data.raws)
    observed, _, means, stds = _scaling(columns, data.raws)
    x = (observed - np.asarray(means)) / np.asarray(stds)
    rows, origin = masked_copies(x, cohort_dependent_columns(observed, data.cohorts))
    y = data.hpv.astype(int)
    weights = 0.5 * cohort_balanced_weights(y, data.cohorts)[origin]
    clf = HistGradientBoostingClassifier(
        max_iter=cand.settings["iterations"], learning_rate=0.05, max_depth=3, min_samples_leaf=20,
        l2_regularization=1.0, early_stopping=False, random_state=SEED,
    )  # fmt: skip
    clf.fit(rows, y[origin], sample_weight=weights)
    # scikit-learn has no public API for the fitted trees; test_clinical_models checks them against its predictions
    trees = tuple(_tree_from_hist_predictor(p[0].nodes) for p in clf._predictors)
    base = stable_float(np.ravel(clf._baseline_prediction)[0])
    return TreeEnsemble("hist_gradient_boosting", columns, {}, means, stds, trees, "sum", base)


def fit_random_forest_smote(data: Cohorts, cand: Candidate) -> TreeEnsemble:
    """Seed 001's recipe: SMOTE on the (mean-imputed, standardised) training rows, then a random forest."""
    columns = usable_columns(cand.columns, data.raws)
    impute, means, stds, z = _standardised(columns, data.raws)
    rows, labels = SMOTE(random_state=SEED).fit_resample(z, data.hpv.astype(int))
    forest = RandomForestClassifier(
        n_estimators=cand.settings["trees"], min_samples_leaf=10, max_features="sqrt", random_state=SEED, n_jobs=1
    ).fit(rows, labels)
    trees = []
    for estimator in forest.estimators_:
        value = estimator.tree_.value[:, 0, :]
        trees.append(_tree_from_sklearn(estimator.tree_, value[:, 1] / value.sum(axis=1)))
    return TreeEnsemble("random_forest_smote", columns, impute, means, stds, tuple(trees), "logit_of_mean", 0.0)


def fit_gradient_boosting_survival(data: Cohorts, cand: Candidate) -> TreeEnsemble:
    """scikit-survival's gradient boosting with the Cox loss (mean-imputed, standardised inputs)."""
    columns = usable_columns(cand.columns, data.raws)
    impute, means, stds, z = _standardised(columns, data.raws)
    rate = 0.05
    gbs = GradientBoostingSurvivalAnalysis(
        n_estimators=cand.settings["iterations"], learning_rate=rate, max_depth=2, subsample=0.8,
        min_samples_leaf=20, random_state=SEED,
    ).fit(z, _survival_target(data.time, data.event))  # fmt: skip
    trees = tuple(_tree_from_sklearn(est[0].tree_, rate * est[0].tree_.value[:, 0, 0]) for est in gbs.estimators_)
    return TreeEnsemble("gradient_boosting_survival", columns, impute, means, stds, trees, "sum", 0.0)


# --------------------------------------------------------------------------- seed 001 integration


def cross_fitted_hpv(data: Cohorts, submodel: Candidate) -> np.ndarray:
    """Predicted HPV probability of each training patient from a submodel that never saw that patient's group
    (leave-one-group-out; within a single group, 5 patient folds). RFS labels are never used."""
    prob = np.full(len(data.patient_ids), np.nan)
    for held in data.inner_folds():
        train = data.subset(~held & data.labelled("hpv"))
        prob[held] = sigmoid(fit_logistic(train, submodel).scores(data.subset(held).raws))
    return prob


def fit_cox_with_predicted_hpv(data: Cohorts, cand: Candidate) -> WithPredictedHpv:
    """Ridge Cox on the clinical record, the measurements and the predicted HPV probability (seed 001)."""
    submodel = Candidate("logistic", "hpv_submodel", cand.columns, {"C": 0.1})
    predicted = cross_fitted_hpv(data, submodel)
    with_hpv = data.with_raws([{**r, HPV_PREDICTED: float(p)} for r, p in zip(data.raws, predicted, strict=True)])
    cox = fit_cox(with_hpv, Candidate("cox", cand.feature_set, (*cand.columns, HPV_PREDICTED), cand.settings))
    return WithPredictedHpv(cox, fit_logistic(data.subset(data.labelled("hpv")), submodel))


FAMILIES: dict[str, Callable[[Cohorts, Candidate], Model]] = {
    "logistic": fit_logistic,
    "hist_gradient_boosting": fit_hist_gradient_boosting,
    "random_forest_smote": fit_random_forest_smote,
    "cox": fit_cox,
    "gradient_boosting_survival": fit_gradient_boosting_survival,
    "cox_predicted_hpv": fit_cox_with_predicted_hpv,
}


def fit(data: Cohorts, cand: Candidate) -> Model:
    """Fit ``cand`` on the patients of ``data`` with a known label (HPV families: HPV; RFS families: RFS)."""
    return FAMILIES[cand.family](data.subset(data.labelled("hpv" if cand.family in HPV_FAMILIES else "rfs")), cand)


HPV_FAMILIES = ("logistic", "hist_gradient_boosting", "random_forest_smote")
RFS_FAMILIES = ("cox", "gradient_boosting_survival", "cox_predicted_hpv")


# --------------------------------------------------------------------------- JSON


def _tree_json(tree: Tree) -> dict[str, list]:
    return {
        "feature": tree.feature.tolist(),
        "threshold": tree.threshold.tolist(),
        "left": tree.left.tolist(),
        "right": tree.right.tolist(),
        "missing_left": tree.missing_left.tolist(),
        "value": tree.value.tolist(),
    }


def _single_model_json(model: LinearModel | TreeEnsemble) -> dict[str, Any]:
    common = {
        "kind": model.kind,
        "columns": list(model.columns),
        "impute_values": dict(model.impute_values),
        "means": list(model.means),
        "stds": list(model.stds),
    }
    if isinstance(model, LinearModel):
        return {**common, "coefs": list(model.coefs), "intercept": model.intercept, "z_clip": model.z_clip}
    return {**common, "combine": model.combine, "base": model.base, "trees": [_tree_json(t) for t in model.trees]}


def model_json(model: Model, task: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON the runtime reads (:func:`hecktor.outcome.predict.load_score_model`), with ``extra`` provenance keys."""
    if isinstance(model, WithPredictedHpv):
        body = {**_single_model_json(model.model), "hpv_submodel": _single_model_json(model.hpv_submodel)}
    else:
        body = _single_model_json(model)
    return {"task": task, "format_version": 2, **body, **extra}
