"""The clinical models at run time: the shipped JSONs, features, imputation, signs and load errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hecktor.manifest import DEFAULT_WEIGHTS_DIR, ManifestError
from hecktor.metrics import harrell_c_index
from hecktor.predict import (
    MISSING_SUFFIX,
    RAW_FEATURES,
    ClinicalModels,
    design_matrix,
    load_clinical_models,
    load_linear_model,
    predict,
    predict_from_features,
    raw_features,
)
from hecktor.types import ClinicalRecord, Measurements

RFS_JSON = DEFAULT_WEIGHTS_DIR / "rfs_model.json"
HPV_JSON = DEFAULT_WEIGHTS_DIR / "hpv_model.json"
TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "training" / "train_clinical_models.py"


@pytest.fixture(scope="module")
def models() -> ClinicalModels:
    return load_clinical_models(RFS_JSON, HPV_JSON)


def _measurements(**overrides: float | int | None) -> Measurements:
    values: dict = {
        "gtvp_volume_ml": 10.0,
        "gtvn_volume_ml": 10.0,
        "gtvp_suvmax": 12.0,
        "gtvp_suvmean": 6.0,
        "gtvn_suvmax": 9.0,
        "gtvn_suvmean": 5.0,
        "tlg": 60.0,
        "nlg": 50.0,
        "node_count": 2,
    }
    values.update(overrides)
    return Measurements(**values)


def _training_module() -> ModuleType:
    pytest.importorskip("sksurv", reason="scikit-survival (training dependency) is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn (training dependency) is not installed")
    if "train_clinical_models" in sys.modules:
        return sys.modules["train_clinical_models"]
    spec = importlib.util.spec_from_file_location("train_clinical_models", TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- shipped models


def test_shipped_models_are_plain_json_with_provenance() -> None:
    rfs = json.loads(RFS_JSON.read_text())
    hpv = json.loads(HPV_JSON.read_text())
    assert rfs["kind"] == "cox_ph_ridge" and hpv["kind"] == "logistic_l2_balanced"
    for model in (rfs, hpv):
        assert model["training"]["n_patients"] > 0
        assert "nested" in model["loco"]
        assert not any("center" in c.lower() or "centre" in c.lower() for c in model["columns"])
    assert "hpv_positive" not in hpv["columns"]
    assert 0.0 < hpv["threshold"] < 1.0


def test_shipped_models_give_finite_outputs(models: ClinicalModels) -> None:
    records = [
        ClinicalRecord(),
        ClinicalRecord(
            age=56,
            gender_male=1,
            tobacco=0,
            alcohol=1,
            performance_status=0,
            treatment_chemoradiotherapy=0,
            m_stage=0,
            center_id=5,
        ),
        ClinicalRecord(
            age=90,
            gender_male=0,
            tobacco=1,
            alcohol=1,
            performance_status=4,
            treatment_chemoradiotherapy=1,
            m_stage=1,
            hpv_positive=0,
            center_id=99,
        ),
    ]
    measured = [
        _measurements(),
        _measurements(gtvp_volume_ml=0.0, gtvn_volume_ml=0.0, gtvp_suvmax=None, gtvn_suvmax=None, node_count=0),
        _measurements(gtvp_volume_ml=5000.0, gtvn_volume_ml=1e9, gtvp_suvmax=25000.0, gtvn_suvmax=float("nan")),
        _measurements(gtvp_volume_ml=float("inf"), gtvn_volume_ml=-3.0, gtvp_suvmax=0.0, gtvn_suvmax=-1.0),
    ]
    for record in records:
        for m in measured:
            pred = predict(models, record, m)
            assert math.isfinite(pred.rfs_risk)
            assert 0.0 < pred.hpv_probability < 1.0
            assert pred.hpv_positive == (pred.hpv_probability >= models.hpv_threshold)


def _sweep(models: ClinicalModels, key: str, attr: str) -> np.ndarray:
    values = [0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
    record = ClinicalRecord(age=60, gender_male=1, treatment_chemoradiotherapy=1, hpv_positive=1)
    return np.array([getattr(predict(models, record, _measurements(**{key: v})), attr) for v in values])


@pytest.mark.parametrize(
    ("key", "feature"), [("gtvn_volume_ml", "log_gtvn_volume"), ("gtvp_volume_ml", "log_gtvp_volume")]
)
def test_rfs_risk_moves_with_volume_as_the_learned_sign_says(models: ClinicalModels, key: str, feature: str) -> None:
    """Larger volume must not lower the risk when the coefficient is positive (and vice versa)."""
    if feature not in models.rfs.columns:
        pytest.skip(f"the shipped RFS model does not use {feature}")
    coef = models.rfs.coefs[models.rfs.columns.index(feature)]
    steps = np.diff(_sweep(models, key, "rfs_risk"))
    assert np.all(steps * np.sign(coef) >= -1e-12)
    if coef != 0:
        assert np.any(steps != 0)


@pytest.mark.parametrize(
    ("key", "feature"), [("gtvn_volume_ml", "log_gtvn_volume"), ("gtvp_volume_ml", "log_gtvp_volume")]
)
def test_hpv_probability_moves_with_volume_as_the_learned_sign_says(
    models: ClinicalModels, key: str, feature: str
) -> None:
    if feature not in models.hpv.columns:
        pytest.skip(f"the shipped HPV model does not use {feature}")
    coef = models.hpv.coefs[models.hpv.columns.index(feature)]
    steps = np.diff(_sweep(models, key, "hpv_probability"))
    assert np.all(steps * np.sign(coef) >= -1e-12)


def test_hpv_status_lowers_rfs_risk_if_the_model_learned_so(models: ClinicalModels) -> None:
    if "hpv_positive" not in models.rfs.columns:
        pytest.skip("the shipped RFS model does not use HPV status")
    coef = models.rfs.coefs[models.rfs.columns.index("hpv_positive")]
    m = _measurements()
    pos = predict(models, ClinicalRecord(age=60, hpv_positive=1), m).rfs_risk
    neg = predict(models, ClinicalRecord(age=60, hpv_positive=0), m).rfs_risk
    assert np.sign(neg - pos) == -np.sign(coef)


# --------------------------------------------------------------------------- features and imputation


def test_raw_features_cover_exactly_the_declared_names() -> None:
    raw = raw_features(ClinicalRecord(), _measurements().as_dict())
    assert set(raw) == set(RAW_FEATURES)


def test_raw_features_reject_implausible_measurements() -> None:
    raw = raw_features(
        ClinicalRecord(), {"gtvp_volume_ml": -1.0, "gtvn_volume_ml": 4.0, "gtvp_suvmax": 0.5, "gtvn_suvmax": 3000.0}
    )
    assert raw["log_gtvp_volume"] is None and raw["log_total_volume"] is None
    assert raw["log_gtvn_volume"] == pytest.approx(math.log1p(4.0))
    assert raw["log_gtvp_suvmax"] is None and raw["log_gtvn_suvmax"] is None


def test_design_matrix_imputes_median_and_flags_missing() -> None:
    columns = ("age", "hpv_positive", "hpv_positive" + MISSING_SUFFIX)
    x = design_matrix(
        columns,
        {"age": 60.0, "hpv_positive": 1.0},
        [{"age": None, "hpv_positive": None}, {"age": 70.0, "hpv_positive": 0.0}],
    )
    np.testing.assert_array_equal(x, [[60.0, 1.0, 1.0], [70.0, 0.0, 0.0]])


def test_unknown_clinical_values_equal_median_values(models: ClinicalModels) -> None:
    """Imputation is by training median: an unknown age scores like the median age."""
    if "age" not in models.hpv.columns and "age" not in models.rfs.columns:
        pytest.skip("no model uses age")
    median = models.rfs.medians.get("age", models.hpv.medians.get("age"))
    m = _measurements()
    a = predict(models, ClinicalRecord(age=None), m)
    b = predict(models, ClinicalRecord(age=median), m)
    assert a.rfs_risk == pytest.approx(b.rfs_risk) and a.hpv_probability == pytest.approx(b.hpv_probability)


# --------------------------------------------------------------------------- C-index sign


def test_harrell_c_index_sign_hand_made() -> None:
    """Higher risk = earlier event gives C = 1; reversed gives 0 (the challenge's convention)."""
    times = np.array([100.0, 200.0, 300.0, 400.0])
    events = np.array([1, 1, 0, 1])
    risk = np.array([4.0, 3.0, 2.0, 1.0])
    assert harrell_c_index(times, events, risk) == pytest.approx(1.0)
    assert harrell_c_index(times, events, -risk) == pytest.approx(0.0)


def test_training_cox_fit_sign_and_json_round_trip(tmp_path: Path) -> None:
    """A feature that shortens survival gets a positive coefficient and the saved JSON reproduces the model."""
    train = _training_module()
    rng = np.random.default_rng(0)
    n = 300
    vol = rng.uniform(0.0, 60.0, n)
    hazard = np.exp(1.2 * (np.log1p(vol) - 2.5))
    time = rng.exponential(1000.0 / hazard)
    event = (time < 1500.0).astype(float)
    time = np.minimum(time, 1500.0)
    raws = tuple(raw_features(ClinicalRecord(age=60.0), {"gtvp_volume_ml": v, "gtvn_volume_ml": 0.0}) for v in vol)
    data = train.Dataset(tuple(f"P{i}" for i in range(n)), np.ones(n, int), raws, time, event, np.full(n, np.nan))
    cand = train.Candidate("test", ("log_gtvp_volume", "age"), 1.0)
    model = train.fit_rfs(data, cand)
    assert model.coefs[0] > 0.5
    risk = train.scores(model, data)
    assert harrell_c_index(time, event, risk) > 0.65

    path = tmp_path / "rfs_model.json"
    train.write_json_atomic(path, train._model_json(model, {"training": {}}))
    loaded, _ = load_linear_model(path, "cox_ph_ridge")
    np.testing.assert_allclose([loaded.linear_predictor(r) for r in raws[:20]], risk[:20])


def test_training_threshold_rule_prefers_half_on_ties() -> None:
    train = _training_module()
    y = np.array([1, 1, 0, 0, 1, 0], float)
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.95, 0.05])
    centres = np.array([1, 1, 1, 2, 2, 2])
    assert train.choose_threshold(y, p, centres) == pytest.approx(0.5)


# --------------------------------------------------------------------------- load errors


def _rewrite(tmp_path: Path, source: Path, **changes: object) -> Path:
    data = json.loads(source.read_text())
    data.update(changes)
    path = tmp_path / source.name
    path.write_text(json.dumps(data))
    return path


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "rfs_model.json"
    broken.write_text("{oops")
    with pytest.raises(ManifestError, match=r"rfs_model\.json"):
        load_clinical_models(broken, HPV_JSON)
    with pytest.raises(ManifestError, match=r"not_there\.json"):
        load_clinical_models(tmp_path / "not_there.json", HPV_JSON)


@pytest.mark.parametrize(
    ("source", "changes", "problem"),
    [
        (RFS_JSON, {"kind": "logistic_l2_balanced"}, "expected kind"),
        (RFS_JSON, {"columns": ["CenterID"], "means": [0], "stds": [1], "coefs": [1]}, "unknown feature"),
        (RFS_JSON, {"coefs": [1.0]}, "coefs"),
        (RFS_JSON, {"medians": {}}, "median"),
        (HPV_JSON, {"threshold": 1.5}, "threshold"),
        (
            HPV_JSON,
            {"columns": ["hpv_positive"], "medians": {"hpv_positive": 1}, "means": [0], "stds": [1], "coefs": [1]},
            "must not use HPV status",
        ),
    ],
)
def test_invalid_model_files(tmp_path: Path, source: Path, changes: dict, problem: str) -> None:
    bad = _rewrite(tmp_path, source, **changes)
    rfs, hpv = (bad, HPV_JSON) if source == RFS_JSON else (RFS_JSON, bad)
    with pytest.raises(ManifestError, match=problem):
        load_clinical_models(rfs, hpv)


def test_predict_from_features_matches_predict(models: ClinicalModels) -> None:
    record = ClinicalRecord(age=66, gender_male=1, hpv_positive=0)
    m = _measurements(gtvn_volume_ml=33.0)
    a = predict(models, record, m)
    b = predict_from_features(models, raw_features(record, m.as_dict()))
    assert (a.rfs_risk, a.hpv_probability, a.hpv_positive) == (b.rfs_risk, b.hpv_probability, b.hpv_positive)
