"""Task 2 (RFS risk) and Task 3 (HPV status) from the clinical record and the image measurements.

Both models are linear (ridge Cox for RFS, class-balanced L2 logistic regression for HPV) and
are stored as plain JSON written by ``training/train_clinical_models.py``; the runtime is numpy
only. The features are computed in ONE place, :func:`raw_features`, which both the training
script and the runtime call, so training and inference cannot drift apart.

Missing values (unknown clinical fields, an SUVmax that is absent or implausible) are imputed with
the training median; a model may also carry ``<feature>_missing`` indicator columns. Standardised
values are clipped (``z_clip``) so that a measurement far outside the training range, e.g. a
failed segmentation, moves the score a bounded amount instead of producing an extreme output.
Without image measurements (``predict(..., measurements=None)``, e.g. a PET without uptake) every
image feature is unknown and imputed the same way, so Tasks 2/3 rest on the clinical record alone.
``CenterID`` is never a feature: test centres are unseen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hecktor.manifest import ManifestError, read_model_json
from hecktor.types import ClinicalRecord, Measurements, Predictions

__all__ = [
    "MISSING_SUFFIX",
    "RAW_FEATURES",
    "ClinicalModels",
    "LinearModel",
    "design_matrix",
    "load_clinical_models",
    "load_linear_model",
    "predict",
    "predict_from_features",
    "raw_features",
]

MISSING_SUFFIX = "_missing"

# Plausible ranges for image measurements; outside them the value is treated as unknown. A
# lesion SUVmax below 1 is below blood pool (a unit or mask problem), above 100 it is almost
# certainly Bq/mL that escaped conversion; volumes above 3 L are not a head-and-neck tumour.
_VOLUME_RANGE_ML = (0.0, 3000.0)
_SUVMAX_RANGE = (1.0, 100.0)

RAW_FEATURES: dict[str, str] = {
    "age": "age in years (ehr.json)",
    "gender_male": "1 male, 0 female (ehr.json)",
    "tobacco": "tobacco consumption 0/1 (ehr.json)",
    "alcohol": "alcohol consumption 0/1 (ehr.json)",
    "performance_status": "performance status 0-4 (ehr.json)",
    "treatment_chemoradiotherapy": "1 chemoradiotherapy, 0 radiotherapy alone (ehr.json)",
    "m_stage": "M-stage 0/1 (ehr.json; absent from the training table)",
    "hpv_positive": "HPV status 0/1 (ehr.json, Task 2 only; never an input of the HPV model)",
    "log_gtvp_volume": "log(1 + GTVp volume in mL) (measured)",
    "log_gtvn_volume": "log(1 + total GTVn volume in mL) (measured)",
    "log_total_volume": "log(1 + GTVp + GTVn volume in mL) (measured)",
    "log_gtvp_suvmax": "log SUVmax inside GTVp, unknown outside [1, 100] (measured)",
    "log_gtvn_suvmax": "log SUVmax inside GTVn, unknown outside [1, 100] (measured)",
}


def _finite_in(value: Any, low: float, high: float) -> float | None:
    if value is None or isinstance(value, bool):  # a yes/no value is no measurement
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond the float range
        return None
    if not math.isfinite(number) or not low <= number <= high:
        return None
    return number


def _log1p_or_none(value: float | None) -> float | None:
    return None if value is None else math.log1p(value)


def _log_or_none(value: float | None) -> float | None:
    return None if value is None else math.log(value)


def raw_features(record: ClinicalRecord, measured: Mapping[str, Any]) -> dict[str, float | None]:
    """All candidate features of one patient; ``None`` = unknown.

    ``measured`` is ``Measurements.as_dict()`` at run time, or the columns of a training table
    (``gtvp_volume_ml``, ``gtvn_volume_ml``, ``gtvp_suvmax``, ``gtvn_suvmax``); absent keys are
    unknown. Log transforms tame the heavy right tail of volumes and SUV.
    """
    vol_p = _finite_in(measured.get("gtvp_volume_ml"), *_VOLUME_RANGE_ML)
    vol_n = _finite_in(measured.get("gtvn_volume_ml"), *_VOLUME_RANGE_ML)
    total = None if vol_p is None or vol_n is None else vol_p + vol_n
    return {
        "age": record.age,
        "gender_male": record.gender_male,
        "tobacco": record.tobacco,
        "alcohol": record.alcohol,
        "performance_status": record.performance_status,
        "treatment_chemoradiotherapy": record.treatment_chemoradiotherapy,
        "m_stage": record.m_stage,
        "hpv_positive": record.hpv_positive,
        "log_gtvp_volume": _log1p_or_none(vol_p),
        "log_gtvn_volume": _log1p_or_none(vol_n),
        "log_total_volume": _log1p_or_none(total),
        "log_gtvp_suvmax": _log_or_none(_finite_in(measured.get("gtvp_suvmax"), *_SUVMAX_RANGE)),
        "log_gtvn_suvmax": _log_or_none(_finite_in(measured.get("gtvn_suvmax"), *_SUVMAX_RANGE)),
    }


def _column_value(column: str, raw: Mapping[str, float | None], medians: Mapping[str, float]) -> float:
    if column.endswith(MISSING_SUFFIX):
        return 1.0 if raw.get(column.removesuffix(MISSING_SUFFIX)) is None else 0.0
    value = raw.get(column)
    return medians[column] if value is None else float(value)


def design_matrix(
    columns: Sequence[str], medians: Mapping[str, float], raws: Sequence[Mapping[str, float | None]]
) -> np.ndarray:
    """Unstandardised design matrix (n, len(columns)): median imputation and missing indicators.

    Shared by training (to fit) and by :class:`LinearModel` (to predict) so both see identical columns.
    """
    return np.array([[_column_value(c, raw, medians) for c in columns] for raw in raws], dtype=float).reshape(
        len(raws), len(columns)
    )


@dataclass(frozen=True)
class LinearModel:
    """``intercept + sum(coef * clip((x - mean) / std))`` over ``columns``."""

    kind: str
    columns: tuple[str, ...]
    medians: Mapping[str, float]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    coefs: tuple[float, ...]
    intercept: float
    z_clip: float

    def linear_predictor(self, raw: Mapping[str, float | None]) -> float:
        x = design_matrix(self.columns, self.medians, [raw])[0]
        z = np.clip((x - np.asarray(self.means)) / np.asarray(self.stds), -self.z_clip, self.z_clip)
        return float(self.intercept + z @ np.asarray(self.coefs))


@dataclass(frozen=True)
class ClinicalModels:
    rfs: LinearModel
    hpv: LinearModel
    hpv_threshold: float
    provenance: str = ""  # one line for the run log: what the models were trained on, how well they do


def _require(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise ManifestError(f"{path}: {problem}")


def _finite_tuple(values: Any, n: int, name: str, path: Path) -> tuple[float, ...]:
    _require(isinstance(values, list) and len(values) == n, path, f"'{name}' must be a list of {n} numbers")
    out = tuple(float(v) for v in values)
    _require(all(math.isfinite(v) for v in out), path, f"'{name}' has a non-finite value")
    return out


def _linear_model_from_json(data: dict[str, Any], path: Path) -> LinearModel:
    columns = data.get("columns")
    _require(isinstance(columns, list) and columns, path, "'columns' must be a non-empty list")
    for col in columns:
        base = col.removesuffix(MISSING_SUFFIX)
        _require(base in RAW_FEATURES, path, f"unknown feature {col!r} (known: {sorted(RAW_FEATURES)})")
    medians = {k: float(v) for k, v in dict(data.get("medians", {})).items()}
    needed = [c for c in columns if not c.endswith(MISSING_SUFFIX)]
    _require(all(c in medians and math.isfinite(medians[c]) for c in needed), path, "a column lacks a finite median")
    n = len(columns)
    stds = _finite_tuple(data.get("stds"), n, "stds", path)
    _require(all(s > 0 for s in stds), path, "'stds' must be positive")
    return LinearModel(
        kind=str(data.get("kind")),
        columns=tuple(columns),
        medians=medians,
        means=_finite_tuple(data.get("means"), n, "means", path),
        stds=stds,
        coefs=_finite_tuple(data.get("coefs"), n, "coefs", path),
        intercept=float(data.get("intercept", 0.0)),
        z_clip=float(data.get("z_clip", 5.0)),
    )


def load_linear_model(path: Path, kind: str) -> tuple[LinearModel, dict[str, Any]]:
    """Read one model JSON, check it is of ``kind``; return the model and the raw JSON (for extras)."""
    path = Path(path)
    data = read_model_json(path, "model file")
    _require(isinstance(data, dict), path, "model file must hold a JSON object")
    _require(data.get("kind") == kind, path, f"expected kind {kind!r}, got {data.get('kind')!r}")
    return _linear_model_from_json(data, path), data


def load_clinical_models(rfs_path: Path, hpv_path: Path) -> ClinicalModels:
    """Load both models (plain JSON, no pickle); :class:`ManifestError` names the bad file."""
    rfs, rfs_json = load_linear_model(rfs_path, "cox_ph_ridge")
    hpv, hpv_json = load_linear_model(hpv_path, "logistic_l2_balanced")
    threshold = float(hpv_json.get("threshold", 0.5))
    _require(0.0 < threshold < 1.0, Path(hpv_path), f"threshold must lie in (0, 1), got {threshold}")
    if "hpv_positive" in hpv.columns:
        raise ManifestError(f"{hpv_path}: the HPV model must not use HPV status as an input")
    return ClinicalModels(rfs=rfs, hpv=hpv, hpv_threshold=threshold, provenance=_provenance(rfs_json, hpv_json))


def _provenance(rfs_json: dict[str, Any], hpv_json: dict[str, Any]) -> str:
    """Training data and nested leave-one-centre-out figures, as recorded by the training script."""
    try:
        centres = ", ".join(rfs_json["training"]["centres"])
        c_index = rfs_json["loco"]["nested"]["pooled"]["value"]
        balanced = hpv_json["loco"]["nested"]["pooled"]["balanced_accuracy"]["value"]
    except (KeyError, TypeError):
        return "Task 2/3 models without recorded provenance"
    return (f"Task 2/3 models trained on real HECKTOR clinical data of {centres} (image features from reference "
            f"masks); nested leave-one-centre-out: RFS C-index {c_index:.3f}, HPV balanced accuracy {balanced:.3f}")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def predict_from_features(models: ClinicalModels, raw: Mapping[str, float | None]) -> Predictions:
    """Predictions from :func:`raw_features` output (used directly for table rows)."""
    rfs_lp = models.rfs.linear_predictor(raw)
    hpv_logit = models.hpv.linear_predictor(raw)
    prob = _sigmoid(hpv_logit)
    used = {c.removesuffix(MISSING_SUFFIX) for c in (*models.rfs.columns, *models.hpv.columns)}
    n_missing = float(sum(raw.get(c) is None for c in used))
    return Predictions(
        rfs_risk=rfs_lp,
        hpv_probability=prob,
        hpv_positive=bool(prob >= models.hpv_threshold),
        details={"hpv_logit": hpv_logit, "hpv_threshold": models.hpv_threshold, "n_imputed_features": n_missing},
    )


def predict(models: ClinicalModels, record: ClinicalRecord, measurements: Measurements | None) -> Predictions:
    """RFS risk (higher = earlier relapse) and HPV probability/decision for one case.

    ``measurements=None`` means no image measurement is available (e.g. the PET shows no uptake and
    segmentation was skipped): every image feature is then unknown and imputed like any unknown
    value, so the prediction rests on the clinical record alone.
    """
    measured = {} if measurements is None else measurements.as_dict()
    return predict_from_features(models, raw_features(record, measured))
