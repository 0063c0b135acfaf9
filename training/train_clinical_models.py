"""Fit the Task 2 (RFS) and Task 3 (HPV) models and judge them by leave-one-centre-out (LOCO).

Why LOCO: the challenge tests on centres never seen in training, and internal random-split
cross-validation overstated the final scores badly (interface.md). So every choice made here
(feature set, penalty, HPV threshold) is made by LOCO over the five development centres, and the
figures reported as "nested" re-make those choices inside each outer fold (inner LOCO over the four
training centres) before scoring the held-out centre: those are the honest estimates.

Features come from :func:`hecktor.predict.raw_features` (the runtime's own code): the clinical
record parsed by :func:`hecktor.clinical.clinical_record_from_mapping`, the GTVp/GTVn volumes of
the reference masks, and the HECKTOR 2022 SUVmax table where a patient is in it. ``CenterID`` is
used only to form the LOCO groups.

Run from the repository root::

    python training/train_clinical_models.py --out model_weights/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sksurv.linear_model import CoxPHSurvivalAnalysis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow `python training/train_clinical_models.py` without installing
    sys.path.insert(0, str(REPO))

from hecktor.clinical import clinical_record_from_mapping  # noqa: E402
from hecktor.metrics import balanced_accuracy, harrell_c_index  # noqa: E402
from hecktor.predict import MISSING_SUFFIX, LinearModel, design_matrix, raw_features  # noqa: E402
from hecktor.validation import bootstrap_ci, leave_one_group_out  # noqa: E402

logger = logging.getLogger("train_clinical_models")

DEFAULT_TABLE = REPO.parent / "shared/data/clinical/hecktor2025_training_dev_centers.csv"
DEFAULT_SUVMAX = REPO.parent / "shared/data/clinical/hecktor2022_suvmax_dev_centers.csv"
DEFAULT_OUT = REPO / "model_weights"
CENTRE_NAMES = {1: "CHUM", 2: "CHUP", 3: "CHUS", 4: "CHUV", 5: "MDA", 6: "HGJ", 7: "HMR", 8: "USZ"}
Z_CLIP = 5.0
N_BOOT = 1000
SEED = 20250
THRESHOLD_GRID = np.round(np.arange(0.20, 0.801, 0.01), 2)
# Fitted parameters are kept to this many significant digits (and |value| < ZERO_BELOW is 0). The last
# bits of a fit depend on the BLAS kernel the CPU selects (OpenBLAS picks AVX2 or AVX-512 code at load
# time, each summing in its own order): ~1e-16 relative, far below this quantum and far below any effect
# on a prediction, so the same data give byte-identical model files on every machine.
SIGNIFICANT_DIGITS = 10
ZERO_BELOW = 1e-12

_VOL = ("log_gtvp_volume", "log_gtvn_volume")
_SUV = ("log_gtvp_suvmax", "log_gtvn_suvmax")
_HPV = ("hpv_positive", "hpv_positive" + MISSING_SUFFIX)
_BASE = ("age", "gender_male", "treatment_chemoradiotherapy")
# Tobacco/alcohol/performance status exist only at MDA in this table, so their missingness
# identifies the centre: they are median-imputed WITHOUT missing indicators.
_LIFESTYLE = ("tobacco", "alcohol", "performance_status")

# Candidate feature sets, fixed before looking at any result.
RFS_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "volumes": _VOL,
    "volumes_suv": _VOL + _SUV,
    "clinical": _BASE + _HPV,
    "clinical_volumes": _BASE + _HPV + _VOL,
    "clinical_volumes_suv": _BASE + _HPV + _VOL + _SUV,
    "clinical_nohpv_volumes_suv": _BASE + _VOL + _SUV,
    "full": _BASE + _HPV + _VOL + _SUV + _LIFESTYLE,
}
# Ridge alpha of sksurv (on the summed partial likelihood). 1e4 was added after a first run picked
# 1e3, the edge of the grid; the nested LOCO figures re-make this choice and stay honest.
RFS_PENALTIES = (1.0, 10.0, 100.0, 1000.0, 10000.0)

HPV_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "demographics": ("age", "gender_male"),
    "volumes": _VOL,
    "demo_volumes": ("age", "gender_male", *_VOL),
    "demo_volumes_suv": ("age", "gender_male", *_VOL, *_SUV),
    "demo_volumes_suv_treatment": ("age", "gender_male", "treatment_chemoradiotherapy", *_VOL, *_SUV),
    "full": ("age", "gender_male", "treatment_chemoradiotherapy", *_VOL, *_SUV, *_LIFESTYLE),
}
HPV_PENALTIES = (0.01, 0.1, 1.0)  # inverse regularisation C of scikit-learn


@dataclass(frozen=True)
class Dataset:
    """Patients with their LOCO group, candidate features and the two labels (NaN = unknown)."""

    patient_ids: tuple[str, ...]
    centres: np.ndarray
    raws: tuple[dict[str, float | None], ...]
    time: np.ndarray
    event: np.ndarray
    hpv: np.ndarray

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(
            tuple(self.patient_ids[i] for i in idx),
            self.centres[idx],
            tuple(self.raws[i] for i in idx),
            self.time[idx],
            self.event[idx],
            self.hpv[idx],
        )


@dataclass(frozen=True)
class Candidate:
    feature_set: str
    columns: tuple[str, ...]
    penalty: float


# --------------------------------------------------------------------------- data


def _measured_from_row(row: dict) -> dict[str, float | None]:
    """The table's reference-mask measurements under the names ``Measurements`` uses."""
    return {
        "gtvp_volume_ml": row.get("GTVp_volume_ml"),
        "gtvn_volume_ml": row.get("GTVn_volume_ml"),
        "gtvp_suvmax": row.get("MaxLesionSUV"),
        "gtvn_suvmax": row.get("MaxLymphNodeSUV"),
    }


def load_dataset(table: Path, suvmax: Path | None) -> Dataset:
    """Join the training table with the 2022 SUVmax table and compute the runtime features."""
    df = pd.read_csv(table)
    if suvmax is not None and Path(suvmax).exists():
        df = df.merge(pd.read_csv(suvmax), on="PatientID", how="left", validate="one_to_one")
    rows = df.to_dict(orient="records")
    records = [clinical_record_from_mapping(r, source=f"{table.name}:{r['PatientID']}") for r in rows]
    raws = tuple(raw_features(rec, _measured_from_row(r)) for rec, r in zip(records, rows, strict=True))
    return Dataset(
        patient_ids=tuple(str(r["PatientID"]) for r in rows),
        centres=np.array([-1 if rec.center_id is None else rec.center_id for rec in records]),
        raws=raws,
        time=pd.to_numeric(df["RFS"], errors="coerce").to_numpy(float),
        event=pd.to_numeric(df["Relapse"], errors="coerce").to_numpy(float),
        hpv=pd.to_numeric(df["HPV Status"], errors="coerce").to_numpy(float),
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- fitting


def _standardised(columns: Sequence[str], raws: Sequence[dict]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Training medians, the standardised design matrix and its means/stds.

    A column with no observed value in this training subset gets median 0 and a constant column
    gets std 1: the ridge penalty then keeps its coefficient at 0 (it carries no information).
    """
    medians = {}
    for col in columns:
        if col.endswith(MISSING_SUFFIX):
            continue
        seen = [r[col] for r in raws if r.get(col) is not None]
        medians[col] = float(np.median(seen)) if seen else 0.0
    x = design_matrix(columns, medians, raws)
    means = x.mean(axis=0)
    stds = x.std(axis=0)
    stds[stds < 1e-8] = 1.0
    return medians, (x - means) / stds, means, stds


def stable_float(value: float) -> float:
    """``value`` rounded to SIGNIFICANT_DIGITS significant digits; ``|value| < ZERO_BELOW`` (and -0.0) gives 0.0.

    Drops the bits of a fitted parameter that are rounding noise of the arithmetic path (BLAS kernel,
    solver path), so that the model, its JSON and the figures computed from it do not depend on the CPU.
    """
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"non-finite model parameter {value!r}")
    if abs(value) < ZERO_BELOW:
        return 0.0
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}") + 0.0


def _linear_model(kind: str, cand: Candidate, medians: dict, means, stds, coefs, intercept: float) -> LinearModel:
    """The model with its parameters rounded by :func:`stable_float`: what is scored in memory is what is saved."""
    return LinearModel(
        kind=kind,
        columns=cand.columns,
        medians={k: stable_float(v) for k, v in medians.items()},
        means=tuple(stable_float(v) for v in means),
        stds=tuple(stable_float(v) for v in stds),
        coefs=tuple(stable_float(v) for v in coefs),
        intercept=stable_float(intercept),
        z_clip=Z_CLIP,
    )


def fit_rfs(data: Dataset, cand: Candidate) -> LinearModel:
    """Ridge Cox PH; the linear predictor is the risk (higher = earlier relapse)."""
    ok = np.isfinite(data.time) & np.isfinite(data.event)
    raws = [r for r, keep in zip(data.raws, ok, strict=True) if keep]
    medians, z, means, stds = _standardised(cand.columns, raws)
    y = np.array(list(zip(data.event[ok].astype(bool), data.time[ok], strict=True)), dtype=[("e", bool), ("t", float)])
    cox = CoxPHSurvivalAnalysis(alpha=cand.penalty, ties="breslow").fit(np.clip(z, -Z_CLIP, Z_CLIP), y)
    return _linear_model("cox_ph_ridge", cand, medians, means, stds, cox.coef_, 0.0)


def fit_hpv(data: Dataset, cand: Candidate) -> LinearModel:
    """Class-balanced L2 logistic regression: each class weighs the same in the loss, so the
    probability does not encode the training prevalence (centres differ, the test is ~80 % positive)."""
    ok = np.isfinite(data.hpv)
    raws = [r for r, keep in zip(data.raws, ok, strict=True) if keep]
    medians, z, means, stds = _standardised(cand.columns, raws)
    # Newton steps to a gradient below 1e-10: the fit stops at the optimum, not wherever L-BFGS (tol 1e-4) met
    # its stopping rule along a path that the BLAS kernel's rounding can change.
    clf = LogisticRegression(C=cand.penalty, class_weight="balanced", solver="newton-cholesky", tol=1e-10, max_iter=100)
    clf.fit(np.clip(z, -Z_CLIP, Z_CLIP), data.hpv[ok].astype(int))
    return _linear_model("logistic_l2_balanced", cand, medians, means, stds, clf.coef_[0], clf.intercept_[0])


def scores(model: LinearModel, data: Dataset) -> np.ndarray:
    return np.array([model.linear_predictor(r) for r in data.raws])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- metrics


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C over patients with a known outcome (higher risk = earlier event)."""
    ok = np.isfinite(time) & np.isfinite(event)
    return harrell_c_index(time[ok], event[ok].astype(bool), risk[ok])


def auc(y: np.ndarray, p: np.ndarray) -> float:
    ok = np.isfinite(y)
    y, p = y[ok], p[ok]
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def bal_acc(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    ok = np.isfinite(y)
    return balanced_accuracy(y[ok].astype(int), (p[ok] >= threshold).astype(int))


def mean_centre_bal_acc(y: np.ndarray, p: np.ndarray, centres: np.ndarray, threshold: float) -> float:
    """Mean over centres that have both classes: each centre counts once whatever its prevalence."""
    values = []
    for c in np.unique(centres):
        m = (centres == c) & np.isfinite(y)
        if len(np.unique(y[m])) == 2:
            values.append(bal_acc(y[m], p[m], threshold))
    return float(np.mean(values)) if values else float("nan")


def choose_threshold(y: np.ndarray, p: np.ndarray, centres: np.ndarray) -> float:
    """Threshold in [0.2, 0.8] maximising mean per-centre balanced accuracy; ties -> closest to 0.5."""
    best = max(THRESHOLD_GRID, key=lambda t: (round(mean_centre_bal_acc(y, p, centres, t), 9), -abs(t - 0.5)))
    return float(best)


def ci95(stat: Callable[..., float], *arrays: np.ndarray, strata: np.ndarray | None = None) -> tuple[float, float]:
    """95 % percentile interval of ``stat(*arrays)`` (:func:`hecktor.validation.bootstrap_ci`, N_BOOT resamples,
    seed SEED); with ``strata`` (the centre) patients are resampled within each centre, keeping centre sizes."""
    return bootstrap_ci(stat, *arrays, n_resamples=N_BOOT, seed=SEED, alpha=0.05, strata=strata)


# --------------------------------------------------------------------------- LOCO


def centre_name(centre: object) -> str:
    return CENTRE_NAMES.get(int(centre), str(centre))


def loco_folds(data: Dataset) -> list[tuple[str, np.ndarray]]:
    """Leave-one-centre-out folds (:func:`hecktor.validation.leave_one_group_out` over the patients' centres)
    as ``(centre name, held-out mask)`` in centre-id order, the order the reports list the centres in.

    Masks keep ``data``'s row order, so every fit sees its training patients in the table's order.
    """
    names = {c: centre_name(c) for c in np.unique(data.centres)}
    group_of = dict(zip(data.patient_ids, (names[c] for c in data.centres), strict=True))
    if len(group_of) != len(data.patient_ids):
        raise ValueError("duplicate patient ids in the training table")
    folds = {f.name: f for f in leave_one_group_out(group_of)}
    ids = np.asarray(data.patient_ids)
    return [(name, np.isin(ids, folds[name].validation)) for name in names.values()]


def candidates(feature_sets: dict[str, tuple[str, ...]], penalties: Sequence[float]) -> list[Candidate]:
    return [Candidate(name, cols, pen) for name, cols in feature_sets.items() for pen in penalties]


def loco_scores(data: Dataset, fit: Callable, cand: Candidate) -> np.ndarray:
    """Out-of-centre scores: each centre scored by a model fitted on the other centres."""
    out = np.full(len(data.patient_ids), np.nan)
    for _, held in loco_folds(data):
        model = fit(data.subset(np.flatnonzero(~held)), cand)
        out[held] = scores(model, data.subset(np.flatnonzero(held)))
    return out


def rfs_criterion(data: Dataset, risk: np.ndarray) -> float:
    """Pooled C-index of out-of-centre risks (the challenge pools its test centres too)."""
    return c_index(data.time, data.event, risk)


def hpv_criterion(data: Dataset, logit: np.ndarray) -> float:
    """Pooled AUC of out-of-centre scores (threshold-free; the threshold is chosen afterwards)."""
    return auc(data.hpv, logit)


def select(data: Dataset, fit: Callable, cands: list[Candidate], criterion: Callable) -> tuple[Candidate, dict]:
    """Best candidate by LOCO over ``data``'s centres; ties go to the earlier (simpler) candidate."""
    table = {}
    for cand in cands:
        table[f"{cand.feature_set}@{cand.penalty:g}"] = criterion(data, loco_scores(data, fit, cand))
    best_key = max(table, key=lambda k: (round(table[k], 9), -list(table).index(k)))
    return cands[list(table).index(best_key)], table


def nested_rfs(data: Dataset, cands: list[Candidate]) -> tuple[np.ndarray, dict]:
    """Outer LOCO whose inner LOCO picks the candidate: scores no choice has seen."""
    out = np.full(len(data.patient_ids), np.nan)
    chosen = {}
    for name, held in loco_folds(data):
        train = data.subset(np.flatnonzero(~held))
        cand, _ = select(train, fit_rfs, cands, rfs_criterion)
        out[held] = scores(fit_rfs(train, cand), data.subset(np.flatnonzero(held)))
        chosen[name] = f"{cand.feature_set}@{cand.penalty:g}"
    return out, chosen


def nested_hpv(data: Dataset, cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray, dict]:
    """As :func:`nested_rfs`, and the threshold too is chosen by the inner LOCO."""
    prob = np.full(len(data.patient_ids), np.nan)
    thresholds = np.full(len(data.patient_ids), np.nan)
    chosen = {}
    for name, held in loco_folds(data):
        train = data.subset(np.flatnonzero(~held))
        cand, _ = select(train, fit_hpv, cands, hpv_criterion)
        inner = sigmoid(loco_scores(train, fit_hpv, cand))
        thr = choose_threshold(train.hpv, inner, train.centres)
        prob[held] = sigmoid(scores(fit_hpv(train, cand), data.subset(np.flatnonzero(held))))
        thresholds[held] = thr
        chosen[name] = f"{cand.feature_set}@{cand.penalty:g}, threshold {thr:.2f}"
    return prob, thresholds, chosen


# --------------------------------------------------------------------------- reports


def _round(value: float) -> float | None:
    """JSON has no NaN: an undefined figure (e.g. AUC of a centre without negatives) is null."""
    return round(float(value), 4) if np.isfinite(value) else None


def _with_ci(value: float, ci: tuple[float, float]) -> dict:
    return {"value": _round(value), "ci95": [_round(ci[0]), _round(ci[1])]}


def _c_stat(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    return harrell_c_index(time, event.astype(bool), risk)


def rfs_report(data: Dataset, risk: np.ndarray) -> dict:
    """Per-centre and pooled C-index with stratified bootstrap 95 % CIs."""
    ok = np.isfinite(data.time) & np.isfinite(data.event)
    t, e, r, g = data.time[ok], data.event[ok], risk[ok], data.centres[ok]
    report = {"per_centre": {}}
    for c in np.unique(g):
        m = np.flatnonzero(g == c)
        entry = _with_ci(_c_stat(t[m], e[m], r[m]), ci95(_c_stat, t[m], e[m], r[m]))
        entry.update(n=len(m), events=int(e[m].sum()))
        report["per_centre"][centre_name(c)] = entry
    report["pooled"] = {
        **_with_ci(_c_stat(t, e, r), ci95(_c_stat, t, e, r, strata=g)),
        "n": int(ok.sum()),
        "events": int(e.sum()),
    }
    return report


def _ba_stat(y: np.ndarray, p: np.ndarray, thr: np.ndarray) -> float:
    return balanced_accuracy(y.astype(int), (p >= thr).astype(int))


def _hpv_entry(y: np.ndarray, p: np.ndarray, thr: np.ndarray, strata: np.ndarray | None) -> dict:
    n_neg = int((y == 0).sum())
    entry = {
        "n": len(y),
        "n_negative": n_neg,
        "balanced_accuracy": _with_ci(_ba_stat(y, p, thr), ci95(_ba_stat, y, p, thr, strata=strata)),
        "auc": _with_ci(auc(y, p), ci95(auc, y, p, strata=strata)),
        "sensitivity": round(float(np.mean(p[y == 1] >= thr[y == 1])), 4) if (y == 1).any() else None,
        "specificity": round(float(np.mean(p[y == 0] < thr[y == 0])), 4) if n_neg else None,
    }
    if n_neg == 0:
        entry["note"] = "no HPV-negative patient: balanced accuracy is the sensitivity, AUC undefined"
    return entry


def hpv_report(data: Dataset, prob: np.ndarray, thresholds: np.ndarray) -> dict:
    """Per-centre and pooled balanced accuracy and AUC with bootstrap 95 % CIs."""
    ok = np.isfinite(data.hpv)
    y, p, thr, g = data.hpv[ok], prob[ok], thresholds[ok], data.centres[ok]
    report = {"per_centre": {}}
    for c in np.unique(g):
        m = g == c
        report["per_centre"][centre_name(c)] = _hpv_entry(y[m], p[m], thr[m], None)
    report["pooled"] = _hpv_entry(y, p, thr, g)
    both = [c for c in np.unique(g) if len(np.unique(y[g == c])) == 2]
    per_centre = [balanced_accuracy(y[g == c].astype(int), (p[g == c] >= thr[g == c]).astype(int)) for c in both]
    report["mean_per_centre_balanced_accuracy"] = round(float(np.mean(per_centre)), 4)
    return report


# --------------------------------------------------------------------------- outputs


def _model_json(model: LinearModel, extra: dict) -> dict:
    return {
        "kind": model.kind,
        "format_version": 1,
        "columns": list(model.columns),
        "medians": model.medians,
        "means": list(model.means),
        "stds": list(model.stds),
        "coefs": list(model.coefs),
        "intercept": model.intercept,
        "z_clip": model.z_clip,
        **extra,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory, then rename: a reader never sees a half-written model."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the container runs as another, non-root user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(value: object) -> object:
    raise TypeError(f"not JSON serialisable: {value!r}")


# --------------------------------------------------------------------------- model card


def _fmt(entry: dict | None) -> str:
    if entry is None or entry.get("value") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    ci = "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"
    return f"{entry['value']:.3f}{ci}"


def _rfs_rows(report: dict) -> list[str]:
    rows = [f"| {c} | {e['n']} | {e['events']} | {_fmt(e)} |" for c, e in report["per_centre"].items()]
    p = report["pooled"]
    return [*rows, f"| **pooled** | {p['n']} | {p['events']} | {_fmt(p)} |"]


def _hpv_rows(report: dict) -> list[str]:
    rows = []
    for c, e in [*report["per_centre"].items(), ("**pooled**", report["pooled"])]:
        sens = "n/a" if e["sensitivity"] is None else f"{e['sensitivity']:.2f}"
        spec = "n/a" if e["specificity"] is None else f"{e['specificity']:.2f}"
        rows.append(
            f"| {c} | {e['n']} | {e['n_negative']} | {_fmt(e['balanced_accuracy'])} | {_fmt(e['auc'])} "
            f"| {sens} | {spec} |"
        )
    return rows


def _coef_rows(model: dict) -> list[str]:
    rows = []
    for col, coef, mean, std in zip(model["columns"], model["coefs"], model["means"], model["stds"], strict=True):
        median = model["medians"].get(col)
        med = "indicator" if median is None else f"{median:.3g}"
        rows.append(f"| `{col}` | {coef:+.4f} | {mean:.3g} | {std:.3g} | {med} |")
    return rows


_RFS_HEAD = ["| held-out centre | n | events | Harrell C [95 % CI] |", "|---|---|---|---|"]
_HPV_HEAD = [
    "| held-out centre | n | HPV- | balanced accuracy [95 % CI] | AUC [95 % CI] | sens | spec |",
    "|---|---|---|---|---|---|---|",
]
_COEF_HEAD = ["| feature | coefficient (per SD) | mean | SD | median (imputation) |", "|---|---|---|---|---|"]


def _top(table: dict, n: int = 8) -> list[str]:
    ordered = sorted(table.items(), key=lambda kv: -kv[1])[:n]
    return [f"| {k} | {v:.4f} |" for k, v in ordered]


_CARD_TEMPLATE = """# Model card: clinical models for Task 2 (RFS) and Task 3 (HPV status)

Generated by `training/train_clinical_models.py`; every figure below is read from `rfs_model.json` /
`hpv_model.json`. Runtime: `hecktor/predict.py` (numpy only, plain JSON, no pickle).

## Data
- `{table}` (sha256 `{table_sha}...`): five development centres ({centres}). RFS model: {n_rfs} patients
  with a known outcome ({n_events} relapses). HPV model: {n_hpv} patients with a known status, only
  {n_neg} HPV-negative ({neg_per_centre}); HPV prevalence per centre {prev_range}.
- `{suv_table}`: SUVmax inside the reference GTVp/GTVn (HECKTOR 2022 cases only; most 2025-only MDA
  patients have none and are median-imputed). SUVmax outside [1, 100] is treated as unknown (a few 2022
  values are below 1, i.e. below blood pool).
- Volumes: GTVp/GTVn volumes of the REFERENCE masks. At run time the same features come from the
  product's own segmentation (`Measurements`), so segmentation errors shift them.
- Not used: CenterID (LOCO groups only), T/N stage (not in `ehr.json`), M-stage (in `ehr.json` but absent
  from the training table), TLG/NLG/SUVmean/node count (not in the training table).

## Method
- Features from `hecktor.predict.raw_features`, shared by training and runtime. Unknown values -> training
  median; HPV status also gets a missing indicator in the RFS model. Tobacco, alcohol and performance
  status exist only at MDA, so they get NO missing indicator (it would identify the centre).
  Standardised values are clipped to +-{z_clip:g} SD.
- RFS: ridge Cox PH (scikit-survival, Breslow ties); risk = linear predictor, higher = earlier relapse.
  HPV: L2 logistic regression with class-balanced weights, so the probability does not carry the
  training prevalence.
- Selection by leave-one-centre-out (LOCO) over the 5 centres: feature set x penalty (RFS: pooled
  C-index of out-of-centre risks; HPV: pooled AUC of out-of-centre scores). The "chosen" figures are
  optimistic (the choice saw them); the **nested** figures re-make every choice by an inner LOCO on the
  four training centres before scoring the held-out centre: quote those.
- 95 % CIs: percentile bootstrap, {n_boot} resamples of patients within centre, seed {seed}.

## Task 2: RFS risk
Chosen: feature set `{rfs_set}`, ridge alpha {rfs_alpha:g}.

{rfs_coefs}

Best LOCO candidates (pooled C-index):

| candidate | pooled C |
|---|---|
{rfs_top}

LOCO, chosen configuration (selection-optimistic):

{rfs_chosen}

Nested LOCO (honest estimate). Choice per outer fold: {rfs_nested_choice}.

{rfs_nested}

## Task 3: HPV status
Chosen: feature set `{hpv_set}`, C = {hpv_c:g}, threshold **{thr:.2f}** ({thr_rule}).

Why this threshold survives prevalence changes: class-balanced training makes p = 0.5 the
prevalence-neutral point, and balanced accuracy (the challenge metric) does not depend on prevalence for
a fixed threshold. The threshold was tuned on per-centre balanced accuracy so that each centre counts once
whatever its HPV prevalence (the final test is ~80 % positive). The table at 0.5 is given for comparison.

{hpv_coefs}

Best LOCO candidates (pooled AUC):

| candidate | pooled AUC |
|---|---|
{hpv_top}

LOCO, chosen configuration at threshold {thr:.2f} (selection-optimistic; mean per-centre balanced
accuracy over centres with both classes {hpv_chosen_mean:.3f}):

{hpv_chosen}

Same scores at threshold 0.50 (mean per-centre balanced accuracy {hpv_half_mean:.3f}):

{hpv_half}

Nested LOCO (honest estimate; mean per-centre balanced accuracy {hpv_nested_mean:.3f}). Choice per outer
fold: {hpv_nested_choice}.

{hpv_nested}

## Intended use
Inside the HECKTOR 2025 container: Task 2 writes the RFS risk (a ranking score, not a calibrated
hazard); Task 3 writes the HPV decision. Research use only, not for clinical decisions.

## Limitations
- Trained on 5 development centres only; MDA is two thirds of the data. Test centres are unseen and
  per-centre CIs are wide (see n and events above).
- HPV: {n_neg} negatives in total, so every HPV figure is fragile; the nested LOCO shows that the choice
  among feature sets is itself unstable. Associations differ between centres in this table (CHUS
  negatives are younger than its positives, elsewhere older), which is why demographic features fail
  under LOCO. Expect balanced accuracy near the challenge's best final-test figure (0.56).
- Image measurements in training come from reference masks; at run time they come from the product's
  segmentation. A missed primary (volume 0) or a spurious node changes both scores.
- Tobacco, alcohol and performance status (if used) have coefficients learned from MDA alone (the only
  centre that records them); LOCO cannot test them on other centres.
- SUV in training comes from the 2022 subset; PET unit problems at run time are caught only by the
  [1, 100] plausibility range (then imputed).
"""


def _choices(choice: dict) -> str:
    return "; ".join(f"{k}: `{v}`" for k, v in choice.items())


def _hpv_data_summary(report: dict) -> dict[str, str]:
    per = report["per_centre"]
    neg = ", ".join(f"{c} {e['n_negative']}/{e['n']}" for c, e in per.items())
    prev = [1.0 - e["n_negative"] / e["n"] for e in per.values() if e["n"] >= 10]
    return {
        "neg_per_centre": f"negatives per centre: {neg}",
        "prev_range": f"{min(prev):.0%}-{max(prev):.0%} (centres with >= 10 labelled patients)",
    }


def model_card(rfs: dict, hpv: dict) -> str:
    """The clinical models' card, built from the JSONs so that it cannot disagree with them."""
    tr, ht, rl, hl = rfs["training"], hpv["training"], rfs["loco"], hpv["loco"]
    join = "\n".join
    return _CARD_TEMPLATE.format(
        table=tr["table"],
        table_sha=tr["table_sha256"][:16],
        centres=", ".join(tr["centres"]),
        n_rfs=tr["n_patients"],
        n_events=rl["nested"]["pooled"]["events"],
        n_hpv=ht["n_patients"],
        n_neg=ht["n_negative"],
        **_hpv_data_summary(hl["nested"]),
        suv_table=tr["suvmax_table"],
        z_clip=rfs["z_clip"],
        n_boot=tr["n_bootstrap"],
        seed=tr["seed"],
        rfs_set=rfs["feature_set"],
        rfs_alpha=rfs["penalty_alpha"],
        rfs_coefs=join([*_COEF_HEAD, *_coef_rows(rfs)]),
        rfs_top=join(_top(rl["candidates_pooled_c_index"])),
        rfs_chosen=join([*_RFS_HEAD, *_rfs_rows(rl["chosen_config"])]),
        rfs_nested_choice=_choices(rl["nested"]["choice_per_outer_fold"]),
        rfs_nested=join([*_RFS_HEAD, *_rfs_rows(rl["nested"])]),
        hpv_set=hpv["feature_set"],
        hpv_c=hpv["penalty_C"],
        thr=hpv["threshold"],
        thr_rule=hpv["threshold_rule"],
        hpv_coefs=join([*_COEF_HEAD, *_coef_rows(hpv)]),
        hpv_top=join(_top(hl["candidates_pooled_auc"])),
        hpv_chosen_mean=hl["chosen_config"]["mean_per_centre_balanced_accuracy"],
        hpv_chosen=join([*_HPV_HEAD, *_hpv_rows(hl["chosen_config"])]),
        hpv_half_mean=hl["chosen_config_at_0.5"]["mean_per_centre_balanced_accuracy"],
        hpv_half=join([*_HPV_HEAD, *_hpv_rows(hl["chosen_config_at_0.5"])]),
        hpv_nested_mean=hl["nested"]["mean_per_centre_balanced_accuracy"],
        hpv_nested_choice=_choices(hl["nested"]["choice_per_outer_fold"]),
        hpv_nested=join([*_HPV_HEAD, *_hpv_rows(hl["nested"])]),
    )


def provenance(table: Path, suvmax: Path | None, data: Dataset, label: str) -> dict:
    """Where the model came from: input hashes, centres, sizes, seed (no timestamps: reruns are identical)."""
    known = np.isfinite(data.hpv) if label == "hpv" else np.isfinite(data.time) & np.isfinite(data.event)
    return {
        "table": table.name,
        "table_sha256": _sha256(table),
        "suvmax_table": None if suvmax is None else Path(suvmax).name,
        "suvmax_sha256": None if suvmax is None or not Path(suvmax).exists() else _sha256(Path(suvmax)),
        "centres": sorted(centre_name(c) for c in np.unique(data.centres[known])),
        "n_patients": int(known.sum()),
        "measurements_source": "reference masks (training) vs the product's segmentation (run time)",
        "script": "training/train_clinical_models.py",
        "seed": SEED,
        "n_bootstrap": N_BOOT,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--suvmax", type=Path, default=DEFAULT_SUVMAX)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.table, args.suvmax)
    rfs_data = data.subset(np.flatnonzero(np.isfinite(data.time) & np.isfinite(data.event)))
    hpv_data = data.subset(np.flatnonzero(np.isfinite(data.hpv)))

    rfs_json = run_rfs(rfs_data, provenance(args.table, args.suvmax, data, "rfs"))
    hpv_json = run_hpv(hpv_data, provenance(args.table, args.suvmax, data, "hpv"))
    write_json_atomic(args.out / "rfs_model.json", rfs_json)
    write_json_atomic(args.out / "hpv_model.json", hpv_json)
    write_text_atomic(args.out / "MODEL_CARD_clinical.md", model_card(rfs_json, hpv_json))
    logger.info("wrote %s", ", ".join(str(args.out / n) for n in ("rfs_model.json", "hpv_model.json")))
    return 0


def run_rfs(data: Dataset, prov: dict) -> dict:
    cands = candidates(RFS_FEATURE_SETS, RFS_PENALTIES)
    best, table = select(data, fit_rfs, cands, rfs_criterion)
    logger.info("RFS LOCO selection: %s", best)
    nested, nested_choice = nested_rfs(data, cands)
    model = fit_rfs(data, best)
    return _model_json(
        model,
        {
            "feature_set": best.feature_set,
            "penalty_alpha": best.penalty,
            "output": "Cox linear predictor; higher = higher risk of relapse (earlier event)",
            "training": prov,
            "loco": {
                "selection_criterion": "pooled C-index of out-of-centre risks",
                "candidates_pooled_c_index": {k: round(v, 4) for k, v in table.items()},
                "chosen_config": rfs_report(data, loco_scores(data, fit_rfs, best)),
                "nested": {**rfs_report(data, nested), "choice_per_outer_fold": nested_choice},
            },
        },
    )


def run_hpv(data: Dataset, prov: dict) -> dict:
    cands = candidates(HPV_FEATURE_SETS, HPV_PENALTIES)
    best, table = select(data, fit_hpv, cands, hpv_criterion)
    oof = sigmoid(loco_scores(data, fit_hpv, best))
    threshold = choose_threshold(data.hpv, oof, data.centres)
    logger.info("HPV LOCO selection: %s, threshold %.2f", best, threshold)
    nested_p, nested_thr, nested_choice = nested_hpv(data, cands)
    model = fit_hpv(data, best)
    n = len(data.hpv)
    return _model_json(
        model,
        {
            "feature_set": best.feature_set,
            "penalty_C": best.penalty,
            "threshold": threshold,
            "threshold_rule": "maximise mean per-centre balanced accuracy of LOCO probabilities over centres "
            "with both classes, grid 0.20-0.80, ties -> closest to 0.5",
            "output": "probability of HPV positive (class-balanced fit: prevalence-neutral); positive if >= threshold",
            "training": {**prov, "n_negative": int((data.hpv == 0).sum()), "n_positive": int((data.hpv == 1).sum())},
            "loco": {
                "selection_criterion": "pooled AUC of out-of-centre scores",
                "candidates_pooled_auc": {k: round(v, 4) for k, v in table.items()},
                "chosen_config": hpv_report(data, oof, np.full(n, threshold)),
                "chosen_config_at_0.5": hpv_report(data, oof, np.full(n, 0.5)),
                "nested": {**hpv_report(data, nested_p, nested_thr), "choice_per_outer_fold": nested_choice},
            },
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
