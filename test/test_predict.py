"""The clinical models at run time: the shipped JSONs, features, imputation, signs and load errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import clinical_training_module, independent_score

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, ManifestError
from hecktor.core.metrics import harrell_c_index
from hecktor.core.types import ClinicalRecord, Measurements
from hecktor.outcome.predict import (
    MISSING_SUFFIX,
    RAW_FEATURES,
    ClinicalModels,
    LinearModel,
    design_matrix,
    load_clinical_models,
    load_score_model,
    predict,
    predict_from_features,
    raw_features,
)

RFS_JSON = DEFAULT_WEIGHTS_DIR / "rfs_model.json"
HPV_JSON = DEFAULT_WEIGHTS_DIR / "hpv_model.json"


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


# --------------------------------------------------------------------------- shipped models


def test_shipped_models_are_plain_json_with_provenance() -> None:
    rfs = json.loads(RFS_JSON.read_text())
    hpv = json.loads(HPV_JSON.read_text())
    assert (rfs["task"], hpv["task"]) == ("rfs", "hpv")
    for model in (rfs, hpv):
        assert model["training"]["n_patients"] > 0 and "RADCURE" in model["training"]["groups"]
        assert set(model["nested_headline"]) >= {"HECKTOR centres pooled (LOCO)", "RADCURE", "HECKTOR"}
        assert "trained on real clinical data" in model["summary"]
        columns = {*model["columns"], *model.get("hpv_submodel", {}).get("columns", [])}
        assert not any("center" in c.lower() or "centre" in c.lower() for c in columns)
        assert "hpv_positive" not in columns  # HPV status is no input of the 2025 container
        assert not any(c.endswith(MISSING_SUFFIX) for c in columns)  # no indicator may name a cohort
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


# The model card is written by the training script from the same fits; it is the documentation the
# shipped JSON must agree with (feature list, order, and coefficient per SD to the 4 decimals printed).
MODEL_CARD = DEFAULT_WEIGHTS_DIR / "MODEL_CARD_clinical.md"
CARD_SECTIONS = {"rfs": "## Task 2: full nested table", "hpv": "## Task 3: full nested table"}
VOLUME_SWEEP_ML = (0.0, 0.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
SHIPPED = {"rfs": RFS_JSON, "hpv": HPV_JSON}


def _card_section(task: str) -> str:
    return MODEL_CARD.read_text().split(CARD_SECTIONS[task], 1)[1].split("\n## ", 1)[0]


def _card_coefficients(task: str) -> dict[str, float]:
    """Feature -> coefficient per SD, from the first feature table of one task section of the model card."""
    table = _card_section(task).split("| feature | coefficient", 1)[1].split("\n\n", 1)[0]
    rows = re.finditer(r"^\| `(\w+)` \| ([+-]\d+\.\d+) \|", table, flags=re.MULTILINE)
    return {row[1]: float(row[2]) for row in rows}


def _linear_tasks() -> list[str]:
    return [task for task, path in SHIPPED.items() if "coefs" in json.loads(path.read_text())]


@pytest.mark.parametrize("task", ["rfs", "hpv"])
def test_shipped_models_are_the_documented_ones(task: str) -> None:
    model = json.loads(SHIPPED[task].read_text())
    section = _card_section(task)
    if "coefs" in model:
        card = _card_coefficients(task)
        assert list(card) == model["columns"]
        assert [round(c, 4) for c in model["coefs"]] == pytest.approx(list(card.values()), abs=1e-9)
    else:
        nodes = sum(len(t["feature"]) for t in model["trees"])
        assert f"`{model['kind']}`: {len(model['trees'])} trees, {nodes} nodes" in section
    assert f"`{model['candidate']}`" in MODEL_CARD.read_text()


def _sweep(models: ClinicalModels, key: str, attr: str) -> np.ndarray:
    record = ClinicalRecord(age=60, gender_male=1, treatment_chemoradiotherapy=1, tobacco=0)
    return np.array([getattr(predict(models, record, _measurements(**{key: v})), attr) for v in VOLUME_SWEEP_ML])


@pytest.mark.parametrize(("task", "attr"), [("rfs", "rfs_risk"), ("hpv", "hpv_probability")])
@pytest.mark.parametrize(
    ("key", "feature"), [("gtvp_volume_ml", "log_gtvp_volume"), ("gtvn_volume_ml", "log_gtvn_volume")]
)
def test_shipped_linear_outputs_move_with_volume_as_documented(
    models: ClinicalModels, task: str, attr: str, key: str, feature: str
) -> None:
    """Strictly monotonic in the card's direction over a range the z-clip does not reach (linear models; a
    tree ensemble is a step function by construction). Fails for a constant output, for swapped GTVp/GTVn
    inputs and for a flipped risk sign."""
    if task not in _linear_tasks():
        pytest.skip(f"the shipped {task} model is a tree ensemble: monotonicity is not part of its definition")
    coefficient = _card_coefficients(task).get(feature, 0.0)
    if coefficient == 0.0:
        pytest.skip(f"the shipped {task} model does not use {feature}")
    steps = np.diff(_sweep(models, key, attr))
    assert np.all(np.sign(coefficient) * steps > 0), steps


def test_hpv_status_in_the_record_changes_nothing(models: ClinicalModels) -> None:
    """HPV status is not an input of the 2025 container (the HPV task predicts it): an ehr.json that carries it
    anyway gets exactly the predictions of one that does not."""
    m = _measurements()
    base = predict(models, ClinicalRecord(age=60, gender_male=1), m)
    for status in (0, 1):
        other = predict(models, ClinicalRecord(age=60, gender_male=1, hpv_positive=status), m)
        assert (other.rfs_risk, other.hpv_probability) == (base.rfs_risk, base.hpv_probability)


@pytest.mark.parametrize(
    ("record", "measurements", "known"),
    [
        (
            ClinicalRecord(age=66, gender_male=1, tobacco=1, alcohol=0, performance_status=2,
                           treatment_chemoradiotherapy=1, m_stage=0, hpv_positive=0),
            _measurements(gtvp_volume_ml=12.0, gtvn_volume_ml=30.0, gtvp_suvmax=15.0, gtvn_suvmax=7.0),
            {"age": 66, "gender_male": 1, "tobacco": 1, "alcohol": 0, "performance_status": 2,
             "treatment_chemoradiotherapy": 1, "m_stage": 0, "log_gtvp_volume": math.log(13.0),
             "log_gtvn_volume": math.log(31.0), "log_gtvp_suvmax": math.log(15.0), "log_gtvn_suvmax": math.log(7.0)},
        ),
        (ClinicalRecord(age=48, hpv_positive=1), None, {"age": 48}),
        (ClinicalRecord(), None, {}),
        (ClinicalRecord(), _measurements(gtvp_volume_ml=0.0, gtvn_volume_ml=0.0, gtvp_suvmax=None, gtvn_suvmax=500.0),
         {"log_gtvp_volume": 0.0, "log_gtvn_volume": 0.0}),
        (ClinicalRecord(age=71, gender_male=0, tobacco=0, m_stage=1), _measurements(gtvp_volume_ml=80.0),
         {"age": 71, "gender_male": 0, "tobacco": 0, "m_stage": 1, "log_gtvp_volume": math.log(81.0),
          "log_gtvn_volume": math.log(11.0), "log_gtvp_suvmax": math.log(12.0), "log_gtvn_suvmax": math.log(9.0)}),
    ],
    ids=["all_known", "no_measurements", "nothing_known", "zero_volumes", "m1_large_primary"],
)  # fmt: skip
def test_shipped_predictions_equal_the_documented_formula(
    models: ClinicalModels, record: ClinicalRecord, measurements: Measurements | None, known: dict[str, float]
) -> None:
    rfs = json.loads(RFS_JSON.read_text())
    hpv = json.loads(HPV_JSON.read_text())
    pred = predict(models, record, measurements)
    assert pred.rfs_risk == pytest.approx(independent_score(rfs, known), rel=1e-12, abs=1e-12)
    probability = 1.0 / (1.0 + math.exp(-independent_score(hpv, known)))
    assert pred.hpv_probability == pytest.approx(probability, rel=1e-12)
    assert pred.hpv_positive == (probability >= hpv["threshold"])


# --------------------------------------------------------------------------- synthetic models, by hand
# Known coefficients, means 0 and SD 1 (age: mean 60, SD 10) so that each term is easy to write out.
# Volumes are given as expm1(k) mL so that log1p(volume) = k exactly enough for the hand sums below.

SYNTHETIC_RFS = {
    "task": "rfs",
    "kind": "cox_ph_ridge",
    "columns": ["age", "log_gtvp_volume", "log_gtvn_volume", "tobacco", "tobacco_missing"],
    "impute_values": {"age": 60.0, "log_gtvp_volume": 1.5, "log_gtvn_volume": 0.5, "tobacco": 1.0},
    "means": [60.0, 0.0, 0.0, 0.0, 0.0],
    "stds": [10.0, 1.0, 1.0, 1.0, 1.0],
    "coefs": [0.2, 1.0, 0.25, -0.5, 0.1],
    "intercept": 0.0,
    "z_clip": 5.0,
}
SYNTHETIC_HPV = {
    "task": "hpv",
    "kind": "logistic_l2_balanced",
    "columns": ["log_gtvp_volume", "log_gtvn_volume", "log_gtvp_volume_missing"],
    "impute_values": {"log_gtvp_volume": 2.0, "log_gtvn_volume": 1.0},
    "means": [0.0, 0.0, 0.0],
    "stds": [1.0, 1.0, 1.0],
    "coefs": [-1.0, 0.5, 0.7],
    "intercept": 0.3,
    "z_clip": 5.0,
    "threshold": 0.4,
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> ClinicalModels:
    folder = tmp_path_factory.mktemp("synthetic_models")
    (folder / "rfs.json").write_text(json.dumps(SYNTHETIC_RFS))
    (folder / "hpv.json").write_text(json.dumps(SYNTHETIC_HPV))
    return load_clinical_models(folder / "rfs.json", folder / "hpv.json")


def _volumes(log_gtvp: float, log_gtvn: float) -> Measurements:
    return _measurements(gtvp_volume_ml=math.expm1(log_gtvp), gtvn_volume_ml=math.expm1(log_gtvn))


@pytest.mark.parametrize(
    ("record", "measurements", "risk", "logit", "positive"),
    [
        # risk  = 0.2*(70-60)/10 + 1.0*2.0 + 0.25*0.4 - 0.5*0 + 0.1*0      = 0.2 + 2.0 + 0.1        = 2.3
        # logit = 0.3 - 1.0*2.0 + 0.5*0.4 + 0.7*0                           = -1.5; p = 0.182 < 0.4
        (ClinicalRecord(age=70, tobacco=0), _volumes(2.0, 0.4), 2.3, -1.5, False),
        # age and tobacco unknown: age -> median 60 (term 0), tobacco -> 1 and indicator 1
        # risk  = 0 + 1.0*1.0 + 0.25*0.8 - 0.5*1 + 0.1*1                   = 1.0 + 0.2 - 0.5 + 0.1  = 0.8
        # logit = 0.3 - 1.0 + 0.5*0.8                                       = -0.3; p = 0.426 >= 0.4
        (ClinicalRecord(), _volumes(1.0, 0.8), 0.8, -0.3, True),
        # z clipped at 5: age 130 -> z 7 -> 5; log GTVp 8 -> 5
        # risk  = 0.2*5 + 1.0*5 + 0.25*0 - 0.5*1 + 0.1*0                   = 1.0 + 5.0 - 0.5        = 5.5
        # logit = 0.3 - 5 + 0                                               = -4.7
        (ClinicalRecord(age=130, tobacco=1), _volumes(8.0, 0.0), 5.5, -4.7, False),
        # no measurements: GTVp -> 1.5 / 2.0, GTVn -> 0.5 / 1.0 (medians), HPV model's indicator 1
        # risk  = 0.2*(80-60)/10 + 1.0*1.5 + 0.25*0.5 - 0.5*0 + 0.1*0      = 0.4 + 1.5 + 0.125      = 2.025
        # logit = 0.3 - 1.0*2.0 + 0.5*1.0 + 0.7*1                           = -0.5; p = 0.378 < 0.4
        (ClinicalRecord(age=80, tobacco=0), None, 2.025, -0.5, False),
        # nothing known at all
        # risk  = 0 + 1.5 + 0.125 - 0.5*1 + 0.1*1                          = 1.225
        (ClinicalRecord(), None, 1.225, -0.5, False),
    ],
    ids=["known", "clinical_unknown", "clipped", "no_measurements", "nothing_known"],
)
def test_synthetic_models_by_hand(
    synthetic: ClinicalModels,
    record: ClinicalRecord,
    measurements: Measurements | None,
    risk: float,
    logit: float,
    positive: bool,
) -> None:
    pred = predict(synthetic, record, measurements)
    assert pred.rfs_risk == pytest.approx(risk, abs=1e-12)
    assert pred.details["hpv_logit"] == pytest.approx(logit, abs=1e-12)
    assert pred.hpv_probability == pytest.approx(1.0 / (1.0 + math.exp(-logit)), abs=1e-12)
    assert pred.hpv_positive is positive


def test_no_measurements_means_every_image_feature_is_imputed(synthetic: ClinicalModels) -> None:
    """None is 'not measured': it counts as imputed and equals implausible (hence unknown) measurements."""
    record = ClinicalRecord(age=80, tobacco=0)
    without = predict(synthetic, record, None)
    assert without.details["n_imputed_features"] == 2  # both volumes; age and HPV are known
    assert predict(synthetic, ClinicalRecord(), None).details["n_imputed_features"] == 4
    implausible = _measurements(gtvp_volume_ml=-1.0, gtvn_volume_ml=float("nan"))
    same = predict(synthetic, record, implausible)
    assert (same.rfs_risk, same.hpv_probability) == (without.rfs_risk, without.hpv_probability)
    zero = predict(synthetic, record, _volumes(0.0, 0.0))  # measured zero volume is NOT unknown
    assert zero.rfs_risk == pytest.approx(0.4)  # 0.2*2 + 0 + 0 - 0 + 0


def test_shipped_models_predict_without_measurements(models: ClinicalModels) -> None:
    pred = predict(models, ClinicalRecord(age=60), None)
    assert math.isfinite(pred.rfs_risk) and 0.0 < pred.hpv_probability < 1.0
    used = {c.removesuffix(MISSING_SUFFIX) for c in (*models.rfs.columns, *models.hpv.columns)}
    used -= {"hpv_probability_predicted"}
    assert pred.details["n_imputed_features"] == len(used - {"age"})  # all but the age given


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
    # a bool is no volume, and an integer beyond the float range is no SUV (float() would overflow)
    raw = raw_features(ClinicalRecord(), {"gtvp_volume_ml": True, "gtvn_volume_ml": 10**400, "gtvp_suvmax": 10**400})
    assert raw["log_gtvp_volume"] is None and raw["log_gtvn_volume"] is None and raw["log_gtvp_suvmax"] is None


def test_design_matrix_imputes_and_flags_missing() -> None:
    columns = ("age", "tobacco", "tobacco" + MISSING_SUFFIX, "log_gtvp_volume")
    x = design_matrix(
        columns,
        {"age": 60.0, "tobacco": 0.7},
        [
            {"age": None, "tobacco": None, "log_gtvp_volume": None},
            {"age": 70.0, "tobacco": 0.0, "log_gtvp_volume": 2.0},
        ],
    )
    # a column without an imputation value keeps NaN (for the trees' learnt missing branch)
    np.testing.assert_array_equal(x, [[60.0, 0.7, 1.0, np.nan], [70.0, 0.0, 0.0, 2.0]])


def test_unknown_clinical_values_of_linear_models_equal_the_imputation_value(models: ClinicalModels) -> None:
    """A linear model imputes the training mean: an unknown value scores like that value, for every clinical
    column of the shipped linear models (with an indicator, unknown would differ by its term)."""
    m = _measurements()
    clinical = set(ClinicalRecord.__dataclass_fields__) - {"center_id"}
    linear = [model for model in (models.rfs, models.hpv) if isinstance(model, LinearModel)]
    if not linear:
        pytest.skip("no shipped model is linear")
    checked = 0
    for model in linear:
        for column in set(model.columns) & clinical:
            value = model.impute_values[column]
            unknown = model.score(raw_features(ClinicalRecord(), m.as_dict()))
            at_value = model.score(raw_features(ClinicalRecord(**{column: value}), m.as_dict()))
            indicator = column + MISSING_SUFFIX
            if indicator in model.columns:
                i = model.columns.index(indicator)  # indicator 1 instead of 0: coef * (1 - 0) / SD
                assert unknown - at_value == pytest.approx(model.coefs[i] / model.stds[i], abs=1e-12)
            else:
                assert unknown == pytest.approx(at_value, abs=1e-12)
            checked += 1
    assert checked >= 3


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
    clinical_training_module()
    from training.clinical_cohorts import Cohorts
    from training.clinical_families import Candidate, fit, model_json

    rng = np.random.default_rng(0)
    n = 300
    vol = rng.uniform(0.0, 60.0, n)
    hazard = np.exp(1.2 * (np.log1p(vol) - 2.5))
    time = rng.exponential(1000.0 / hazard)
    event = (time < 1500.0).astype(float)
    time = np.minimum(time, 1500.0)
    raws = tuple(raw_features(ClinicalRecord(age=60.0 + i % 7), {"gtvp_volume_ml": v, "gtvn_volume_ml": 0.0})
                 for i, v in enumerate(vol))  # fmt: skip
    groups = np.full(n, "A", dtype=object)
    data = Cohorts(tuple(f"P{i}" for i in range(n)), groups, groups, raws, time, event, np.full(n, np.nan))
    model = fit(data, Candidate("cox", "test", ("log_gtvp_volume", "age"), {"alpha": 1.0}))
    assert model.coefs[0] > 0.5
    risk = model.scores(raws)
    assert harrell_c_index(time, event, risk) > 0.65

    path = tmp_path / "rfs_model.json"
    path.write_text(json.dumps(model_json(model, "rfs", {"training": {}})))
    loaded, _ = load_score_model(path, "rfs")
    np.testing.assert_allclose(loaded.scores(raws[:20]), risk[:20], rtol=0, atol=0)


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
    ("task", "changes", "problem"),
    [
        ("rfs", {"task": "hpv"}, "expected a model of task 'rfs'"),
        ("rfs", {"kind": "survival_forest"}, "unknown model kind"),
        ("rfs", {"columns": ["CenterID"], "means": [0], "stds": [1], "coefs": [1]}, "unknown feature"),
        ("rfs", {"columns": ["hpv_positive"], "means": [0], "stds": [1], "coefs": [1]}, "unknown feature"),
        ("rfs", {"coefs": [1.0]}, "coefs"),
        ("rfs", {"coefs": [True, 1, 1, 1, 1]}, "'coefs' must hold numbers"),
        ("rfs", {"impute_values": {}}, "lacks an imputation value"),
        ("rfs", {"stds": [1, 1, 1, 0, 1]}, "'stds' must be positive"),
        ("rfs", {"columns": ["age", "log_gtvp_volume", "log_gtvn_volume", "tobacco",
                             "hpv_probability_predicted"]}, "unknown feature"),  # only with an HPV submodel
        ("hpv", {"threshold": 1.5}, "threshold"),
        ("hpv", {"threshold": "0.5"}, "threshold"),
        ("hpv", {"hpv_submodel": {}}, "an HPV model has no HPV submodel"),
    ],
)  # fmt: skip
def test_invalid_model_files(tmp_path: Path, task: str, changes: dict, problem: str) -> None:
    good = {"rfs": {**SYNTHETIC_RFS}, "hpv": {**SYNTHETIC_HPV}}
    good[task].update(changes)
    for name, document in good.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=problem) as err:
        load_clinical_models(tmp_path / "rfs.json", tmp_path / "hpv.json")
    assert f"{task}.json" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "risk", "logit", "imputed"),
    [
        # risk  = 0.2*(70-60)/10 + 1.0*2.0 + 0.25*0.4 - 0.5*0 + 0.1*0 = 2.3; logit = 0.3 - 2.0 + 0.5*0.4 + 0 = -1.5
        ({"age": 70.0, "log_gtvp_volume": 2.0, "log_gtvn_volume": 0.4, "tobacco": 0.0}, 2.3, -1.5, 0),
        # GTVp and tobacco unknown (a table row with empty cells): GTVp -> 1.5 (RFS) / 2.0 (HPV), tobacco -> 1 + flag
        # risk  = 0.2 + 1.5 + 0.1 - 0.5 + 0.1 = 1.4; logit = 0.3 - 2.0 + 0.2 + 0.7 = -0.8
        ({"age": 70.0, "log_gtvp_volume": None, "log_gtvn_volume": 0.4, "tobacco": None}, 1.4, -0.8, 2),
    ],
    ids=["known", "unknown"],
)
def test_predict_from_features_by_hand(synthetic: ClinicalModels, raw: dict, risk: float, logit: float,
                                       imputed: int) -> None:
    """The table path (raw features, no Measurements) against sums written out by hand."""
    pred = predict_from_features(synthetic, raw)
    assert pred.rfs_risk == pytest.approx(risk, abs=1e-12)
    assert pred.details["hpv_logit"] == pytest.approx(logit, abs=1e-12)
    assert pred.hpv_probability == pytest.approx(1.0 / (1.0 + math.exp(-logit)), abs=1e-12)
    assert pred.hpv_positive is (1.0 / (1.0 + math.exp(-logit)) >= 0.4)
    assert pred.details["n_imputed_features"] == imputed


def test_radiomics_reach_a_model_that_uses_them(tmp_path: Path) -> None:
    """A model trained on a radiomics table scores run-time radiomics by name: 0.5 * (value - 10) / 2 by hand;
    an unknown or non-finite radiomics value takes the imputation value (term 0)."""
    from hecktor.measure.radiomics import FEATURE_NAMES

    name = FEATURE_NAMES[0]
    hpv = {**SYNTHETIC_HPV, "columns": [name], "impute_values": {name: 10.0}, "means": [10.0], "stds": [2.0],
           "coefs": [0.5], "intercept": 0.0}  # fmt: skip
    (tmp_path / "rfs.json").write_text(json.dumps(SYNTHETIC_RFS))
    (tmp_path / "hpv.json").write_text(json.dumps(hpv))
    models = load_clinical_models(tmp_path / "rfs.json", tmp_path / "hpv.json")
    for value, logit in ((14.0, 1.0), (7.0, -0.75), (None, 0.0), (float("nan"), 0.0), (float("inf"), 0.0)):
        pred = predict(models, ClinicalRecord(), _measurements(radiomics={name: value}))
        assert pred.details["hpv_logit"] == pytest.approx(logit, abs=1e-12), value
