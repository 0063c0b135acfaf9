"""Task 2 (RFS risk) and Task 3 (HPV status) from the clinical record and the image measurements.

Each model is plain JSON written by ``training/train_clinical_models.py`` (no pickle) and scored
with numpy only. Two kinds of model exist, whichever the training's nested selection chose:

- :class:`LinearModel`: ``intercept + sum(coef * clip((x - mean) / std))`` (ridge Cox for RFS,
  L2 logistic regression for HPV). An unknown value takes the column's imputation value (the
  training mean of the observed values: its standardised value is 0, so an unknown feature adds
  nothing); a model may also carry ``<feature>_missing`` indicator columns.
- :class:`TreeEnsemble`: a sum or mean of decision trees (gradient boosting for HPV or RFS, random
  forest for HPV) stored as node arrays. Unknown values either take an imputation value or, where
  the trees learnt it, follow each split's learnt "missing" branch.

An RFS model may carry an HPV submodel (``hpv_submodel``): its predicted HPV probability is then one
input of the RFS model (feature ``hpv_probability_predicted``, seed 001's integration). HPV status
itself is never an input: the 2025 container does not receive it.

The features are computed in ONE place, :func:`raw_features`, which both the training script and the
runtime call, so training and inference cannot drift apart. Standardised values of linear models are
clipped (``z_clip``) so that a measurement far outside the training range, e.g. a failed
segmentation, moves the score a bounded amount. Without image measurements
(``predict(..., measurements=None)``, e.g. a PET without uptake) every image feature is unknown, so
Tasks 2/3 rest on the clinical record alone. ``CenterID`` is never a feature: test centres are unseen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hecktor.core.features import CASE_FEATURES, case_features, finite_in
from hecktor.core.manifest import ManifestError, read_model_json
from hecktor.core.types import ClinicalRecord, Measurements, Predictions
from hecktor.measure.radiomics import FEATURE_NAMES as RADIOMICS_FEATURES

__all__ = [
    "HPV_PREDICTED",
    "MISSING_SUFFIX",
    "RAW_FEATURES",
    "ClinicalModels",
    "LinearModel",
    "ScoreModel",
    "Tree",
    "TreeEnsemble",
    "WithPredictedHpv",
    "design_matrix",
    "load_clinical_models",
    "load_score_model",
    "predict",
    "predict_from_features",
    "radiomics_columns",
    "raw_features",
    "score_model_from_json",
    "sigmoid",
]

MISSING_SUFFIX = "_missing"
HPV_PREDICTED = "hpv_probability_predicted"

# Radiomics (measure stage, when the manifest enables it) under their own names: available to any model trained
# on a table that has them (``python -m training radiomics`` writes that table with the same function).
RAW_FEATURES: dict[str, str] = {
    **CASE_FEATURES,
    **{name: "radiomics feature of the segmentation (hecktor.measure.radiomics; measured)"
       for name in RADIOMICS_FEATURES},
}
# Not in RAW_FEATURES (not a property of the case): the HPV submodel's output, an input of an RFS model.
_DERIVED_FEATURES = {HPV_PREDICTED: "predicted HPV probability of the RFS model's own HPV submodel"}


def raw_features(record: ClinicalRecord, measured: Mapping[str, Any]) -> dict[str, float | None]:
    """All candidate features of one patient; ``None`` = unknown.

    ``measured`` is ``Measurements.as_dict()`` at run time, or the columns of a training table
    (``gtvp_volume_ml``, ``gtvn_volume_ml``, ``gtvp_suvmax``, ``gtvn_suvmax``, radiomics by name); absent
    keys are unknown. Log transforms tame the heavy right tail of volumes and SUV.
    """
    return {**case_features(record, measured),
            **{name: finite_in(measured.get(name), -math.inf, math.inf) for name in RADIOMICS_FEATURES}}


def _column_value(column: str, raw: Mapping[str, float | None], impute_values: Mapping[str, float]) -> float:
    if column.endswith(MISSING_SUFFIX):
        return 1.0 if raw.get(column.removesuffix(MISSING_SUFFIX)) is None else 0.0
    value = raw.get(column)
    if value is not None:
        return float(value)
    return impute_values.get(column, math.nan)  # NaN: left to the trees' learnt missing branch


def design_matrix(
    columns: Sequence[str], impute_values: Mapping[str, float], raws: Sequence[Mapping[str, float | None]]
) -> np.ndarray:
    """Unstandardised design matrix (n, len(columns)): imputation values, missing indicators, and NaN for an
    unknown value of a column without imputation value (tree models route it down their missing branch).

    Shared by training (to fit) and by the models (to predict) so both see identical columns.
    """
    return np.array([[_column_value(c, raw, impute_values) for c in columns] for raw in raws], dtype=float).reshape(
        len(raws), len(columns)
    )


class ScoreModel(Protocol):
    """A fitted model: a score per patient (RFS: higher = earlier relapse; HPV: the logit of positive)."""

    kind: str
    columns: tuple[str, ...]

    def score(self, raw: Mapping[str, float | None]) -> float: ...


@dataclass(frozen=True)
class _StandardisedInputs:
    """What every model does first: ``design_matrix`` over ``columns``, then ``(x - mean) / std``."""

    kind: str
    columns: tuple[str, ...]
    impute_values: Mapping[str, float]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def standardised(self, raws: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        x = design_matrix(self.columns, self.impute_values, raws)
        return (x - np.asarray(self.means)) / np.asarray(self.stds)


@dataclass(frozen=True)
class LinearModel(_StandardisedInputs):
    """``intercept + sum(coef * clip((x - mean) / std))`` over ``columns``."""

    coefs: tuple[float, ...]
    intercept: float
    z_clip: float

    def scores(self, raws: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        z = np.clip(self.standardised(raws), -self.z_clip, self.z_clip)
        return self.intercept + z @ np.asarray(self.coefs)

    def score(self, raw: Mapping[str, float | None]) -> float:
        return float(self.scores([raw])[0])


@dataclass(frozen=True)
class Tree:
    """One binary decision tree as node arrays (scikit-learn's layout): at node ``i`` a sample goes left
    when ``x[feature[i]] <= threshold[i]``, or when that value is NaN and ``missing_left[i]``; a node with
    ``feature[i] < 0`` is a leaf worth ``value[i]``."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray

    def leaf_values(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        for _ in range(len(self.feature)):  # a path is never longer than the node count
            inner = self.feature[node] >= 0
            if not inner.any():
                break
            feature = np.where(inner, self.feature[node], 0)
            value = x[rows, feature]
            go_left = np.where(np.isnan(value), self.missing_left[node], value <= self.threshold[node])
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.value[node]


@dataclass(frozen=True)
class TreeEnsemble(_StandardisedInputs):
    """``base + sum`` (boosting) or ``logit(mean)`` (a forest's class-1 fraction) of tree leaf values.

    Inputs: ``design_matrix`` over ``columns`` (a column in ``impute_values`` is imputed, any other keeps NaN
    for the trees' missing branches), then ``(x - mean) / std``.
    """

    trees: tuple[Tree, ...]
    combine: str  # "sum" or "logit_of_mean"
    base: float

    def scores(self, raws: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        x = self.standardised(raws)
        total = np.sum([tree.leaf_values(x) for tree in self.trees], axis=0)
        if self.combine == "sum":
            return self.base + total
        fraction = np.clip(total / len(self.trees), 1e-4, 1.0 - 1e-4)  # a unanimous forest is not certainty
        return np.log(fraction / (1.0 - fraction))

    def score(self, raw: Mapping[str, float | None]) -> float:
        return float(self.scores([raw])[0])


@dataclass(frozen=True)
class WithPredictedHpv:
    """An RFS model whose input ``hpv_probability_predicted`` is the probability of its own HPV submodel."""

    model: LinearModel | TreeEnsemble
    hpv_submodel: LinearModel | TreeEnsemble

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.model.columns, *self.hpv_submodel.columns)))

    def scores(self, raws: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        hpv = sigmoid(self.hpv_submodel.scores(raws))
        return self.model.scores([{**raw, HPV_PREDICTED: float(p)} for raw, p in zip(raws, hpv, strict=True)])

    def score(self, raw: Mapping[str, float | None]) -> float:
        return float(self.scores([raw])[0])


AnyModel = LinearModel | TreeEnsemble | WithPredictedHpv


@dataclass(frozen=True)
class ClinicalModels:
    rfs: AnyModel
    hpv: LinearModel | TreeEnsemble
    hpv_threshold: float
    provenance: str = ""  # one line for the run log: what the models were trained on, how well they do


def _require(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise ManifestError(f"{path}: {problem}")


def _finite_tuple(values: Any, n: int, name: str, path: Path) -> tuple[float, ...]:
    _require(isinstance(values, list) and len(values) == n, path, f"'{name}' must be a list of {n} numbers")
    _require(all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), path,
             f"'{name}' must hold numbers")  # fmt: skip
    out = tuple(float(v) for v in values)
    _require(all(math.isfinite(v) for v in out), path, f"'{name}' has a non-finite value")
    return out


def _columns_and_scaling(data: dict[str, Any], path: Path, derived: bool) -> tuple[tuple[str, ...], dict, tuple, tuple]:
    columns = data.get("columns")
    _require(isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns), path,
             "'columns' must be a non-empty list of names")  # fmt: skip
    known = {**RAW_FEATURES, **(_DERIVED_FEATURES if derived else {})}
    for col in columns:
        _require(col.removesuffix(MISSING_SUFFIX) in known, path, f"unknown feature {col!r} (known: {sorted(known)})")
    impute = data.get("impute_values", {})
    _require(isinstance(impute, dict), path, "'impute_values' must be an object")
    impute_values = dict(zip(impute, _finite_tuple(list(impute.values()), len(impute), "impute_values", path),
                             strict=True))  # fmt: skip
    _require(set(impute_values) <= set(columns), path, "'impute_values' names a column the model does not use")
    n = len(columns)
    stds = _finite_tuple(data.get("stds"), n, "stds", path)
    _require(all(s > 0 for s in stds), path, "'stds' must be positive")
    return tuple(columns), impute_values, _finite_tuple(data.get("means"), n, "means", path), stds


def _linear_model_from_json(data: dict[str, Any], path: Path, derived: bool) -> LinearModel:
    columns, impute_values, means, stds = _columns_and_scaling(data, path, derived)
    needed = [c for c in columns if not c.endswith(MISSING_SUFFIX)]
    _require(all(c in impute_values for c in needed), path, "a column of a linear model lacks an imputation value")
    return LinearModel(
        kind=str(data["kind"]),
        columns=columns,
        impute_values=impute_values,
        means=means,
        stds=stds,
        coefs=_finite_tuple(data.get("coefs"), len(columns), "coefs", path),
        intercept=_finite_tuple([data.get("intercept", 0.0)], 1, "intercept", path)[0],
        z_clip=_finite_tuple([data.get("z_clip", 5.0)], 1, "z_clip", path)[0],
    )


def _tree_from_json(data: Any, n_columns: int, path: Path, index: int) -> Tree:
    where = f"tree {index}"
    _require(isinstance(data, dict), path, f"{where} must be an object")
    try:
        arrays = {key: np.asarray(data[key], dtype=dtype) for key, dtype in (
            ("feature", np.int64), ("threshold", float), ("left", np.int64), ("right", np.int64),
            ("missing_left", bool), ("value", float))}  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: {where} lacks or garbles a node array ({exc})") from exc
    n = len(arrays["feature"])
    _require(n > 0 and all(a.shape == (n,) for a in arrays.values()), path, f"{where}: node arrays differ in length")
    inner = arrays["feature"] >= 0
    _require(bool((arrays["feature"] < n_columns).all()), path, f"{where}: a split names a column the model lacks")
    for side in ("left", "right"):
        child = arrays[side][inner]
        # Children come after their parent (scikit-learn's depth-first order): no cycle, every path ends.
        _require(bool(((child > np.flatnonzero(inner)) & (child < n)).all()), path, f"{where}: bad {side} child")
    _require(bool(np.isfinite(arrays["value"]).all() and np.isfinite(arrays["threshold"][inner]).all()), path,
             f"{where}: non-finite value or threshold")  # fmt: skip
    return Tree(**arrays)


def _tree_ensemble_from_json(data: dict[str, Any], path: Path, derived: bool) -> TreeEnsemble:
    columns, impute_values, means, stds = _columns_and_scaling(data, path, derived)
    trees = data.get("trees")
    _require(isinstance(trees, list) and trees, path, "'trees' must be a non-empty list")
    combine = data.get("combine")
    _require(combine in ("sum", "logit_of_mean"), path, f"'combine' must be 'sum' or 'logit_of_mean', got {combine!r}")
    return TreeEnsemble(
        kind=str(data["kind"]),
        columns=columns,
        impute_values=impute_values,
        means=means,
        stds=stds,
        trees=tuple(_tree_from_json(t, len(columns), path, i) for i, t in enumerate(trees)),
        combine=combine,
        base=_finite_tuple([data.get("base", 0.0)], 1, "base", path)[0],
    )


LINEAR_KINDS = ("cox_ph_ridge", "logistic_l2_balanced")
TREE_KINDS = ("hist_gradient_boosting", "random_forest_smote", "gradient_boosting_survival")


def score_model_from_json(data: Any, path: Path, derived: bool = False) -> LinearModel | TreeEnsemble:
    """One model object (not its submodel); ``derived``: may use ``hpv_probability_predicted``."""
    _require(isinstance(data, dict), path, "a model must be a JSON object")
    kind = data.get("kind")
    if kind in LINEAR_KINDS:
        return _linear_model_from_json(data, path, derived)
    if kind in TREE_KINDS:
        return _tree_ensemble_from_json(data, path, derived)
    raise ManifestError(f"{path}: unknown model kind {kind!r} (known: {', '.join(LINEAR_KINDS + TREE_KINDS)})")


def load_score_model(path: Path, task: str) -> tuple[AnyModel, dict[str, Any]]:
    """Read one model JSON of ``task`` ("rfs" or "hpv"); return the model and the raw JSON (for extras)."""
    path = Path(path)
    data = read_model_json(path, "model file")
    _require(isinstance(data, dict), path, "model file must hold a JSON object")
    _require(data.get("task") == task, path, f"expected a model of task {task!r}, got {data.get('task')!r}")
    submodel = data.get("hpv_submodel")
    if task == "hpv":
        _require(submodel is None, path, "an HPV model has no HPV submodel")
    model = score_model_from_json(data, path, derived=submodel is not None)
    if submodel is None:
        _require(HPV_PREDICTED not in model.columns, path, f"{HPV_PREDICTED!r} needs an 'hpv_submodel'")
        return model, data
    return WithPredictedHpv(model, score_model_from_json(submodel, path)), data


def load_clinical_models(rfs_path: Path, hpv_path: Path) -> ClinicalModels:
    """Load both models (plain JSON, no pickle); :class:`ManifestError` names the bad file."""
    rfs, rfs_json = load_score_model(rfs_path, "rfs")
    hpv, hpv_json = load_score_model(hpv_path, "hpv")
    threshold = hpv_json.get("threshold", 0.5)
    _require(isinstance(threshold, int | float) and 0.0 < threshold < 1.0, Path(hpv_path),
             f"threshold must be a number in (0, 1), got {threshold!r}")  # fmt: skip
    if isinstance(hpv, WithPredictedHpv):  # load_score_model refuses that already; this narrows the type
        raise ManifestError(f"{hpv_path}: an HPV model has no HPV submodel")
    return ClinicalModels(rfs=rfs, hpv=hpv, hpv_threshold=float(threshold),
                          provenance=_provenance(rfs_json, hpv_json))  # fmt: skip


def _provenance(rfs_json: dict[str, Any], hpv_json: dict[str, Any]) -> str:
    """The training script's one-line summaries: training data and the nested, centre-disjoint figures."""
    lines = [j.get("summary") for j in (rfs_json, hpv_json)]
    if not all(isinstance(line, str) and line for line in lines):
        return "Task 2/3 models without recorded provenance"
    return " | ".join(lines)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function, without overflow for large |x|."""
    x = np.asarray(x, dtype=float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _used_features(model: AnyModel) -> set[str]:
    return {c.removesuffix(MISSING_SUFFIX) for c in model.columns} - {HPV_PREDICTED}


def radiomics_columns(models: ClinicalModels) -> frozenset[str]:
    """The radiomics features the loaded models read (none for the shipped ones): the only reason to compute any."""
    return frozenset((_used_features(models.rfs) | _used_features(models.hpv)) & set(RADIOMICS_FEATURES))


def predict_from_features(models: ClinicalModels, raw: Mapping[str, float | None]) -> Predictions:
    """Predictions from :func:`raw_features` output (used directly for table rows)."""
    rfs_risk = models.rfs.score(raw)
    hpv_logit = models.hpv.score(raw)
    prob = float(sigmoid(hpv_logit))
    n_missing = float(sum(raw.get(c) is None for c in _used_features(models.rfs) | _used_features(models.hpv)))
    return Predictions(
        rfs_risk=rfs_risk,
        hpv_probability=prob,
        hpv_positive=bool(prob >= models.hpv_threshold),
        details={"hpv_logit": hpv_logit, "hpv_threshold": models.hpv_threshold, "n_imputed_features": n_missing},
    )


def predict(models: ClinicalModels, record: ClinicalRecord, measurements: Measurements | None) -> Predictions:
    """RFS risk (higher = earlier relapse) and HPV probability/decision for one case.

    ``measurements=None`` means no image measurement is available (e.g. the PET shows no uptake and
    segmentation was skipped): every image feature is then unknown, so the prediction rests on the
    clinical record alone.
    """
    measured = {} if measurements is None else measurements.as_dict()
    return predict_from_features(models, raw_features(record, measured))
