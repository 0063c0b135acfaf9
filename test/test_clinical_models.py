"""The Task 2/3 model families (training/clinical_families.py) and their runtime (hecktor/outcome/predict.py).

Tree ensembles are scored at run time by numpy code of our own; every check here compares that code with
scikit-learn's / scikit-survival's own predictions of the same fitted estimator (an independent path), and
the nested evaluation is checked for leaks by recording every fit it makes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sksurv", reason="scikit-survival (training dependency) is not installed")
pytest.importorskip("imblearn", reason="imbalanced-learn (training dependency) is not installed")

from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sksurv.ensemble import GradientBoostingSurvivalAnalysis

from hecktor.core.manifest import ManifestError
from hecktor.outcome.predict import (
    HPV_PREDICTED,
    LinearModel,
    TreeEnsemble,
    WithPredictedHpv,
    load_score_model,
    sigmoid,
)
from training import clinical_evaluation as evaluation
from training import clinical_families as families
from training.clinical_cohorts import Cohorts

COLUMNS = ("age", "tobacco", "log_gtvp_volume")


def _raws(x: np.ndarray) -> list[dict[str, float | None]]:
    return [{c: (None if math.isnan(v) else float(v)) for c, v in zip(COLUMNS, row, strict=True)} for row in x]


def _synthetic_rows(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC data: three features (one a 0/1), 15 % missing values, a logistic label."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(60, 10, n), rng.integers(0, 2, n).astype(float), rng.normal(2, 1, n)])
    y = (rng.random(n) < sigmoid(0.08 * (x[:, 0] - 60) - 1.2 * x[:, 1] + 0.8 * (x[:, 2] - 2))).astype(int)
    x[rng.random(x.shape) < 0.15] = np.nan
    return x, y


# --------------------------------------------------------------------------- trees against their libraries


def test_hist_gradient_boosting_trees_score_as_scikit_learn() -> None:
    x, y = _synthetic_rows()
    clf = HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0).fit(x, y)
    trees = tuple(families._tree_from_hist_predictor(p[0].nodes) for p in clf._predictors)
    model = TreeEnsemble("hist_gradient_boosting", COLUMNS, {}, (0.0,) * 3, (1.0,) * 3, trees, "sum",
                         float(np.ravel(clf._baseline_prediction)[0]))  # fmt: skip
    x_test, _ = _synthetic_rows(200, seed=1)
    np.testing.assert_allclose(model.scores(_raws(x_test)), clf.decision_function(x_test), rtol=1e-8, atol=1e-8)
    assert np.isnan(x_test).any()  # the missing branches were exercised


def test_random_forest_trees_score_as_scikit_learn() -> None:
    x, y = _synthetic_rows()
    x = np.nan_to_num(x, nan=0.0)
    forest = RandomForestClassifier(n_estimators=25, min_samples_leaf=5, random_state=0).fit(x, y)
    trees = []
    for est in forest.estimators_:
        value = est.tree_.value[:, 0, :]
        trees.append(families._tree_from_sklearn(est.tree_, value[:, 1] / value.sum(axis=1)))
    model = TreeEnsemble("random_forest_smote", COLUMNS, {}, (0.0,) * 3, (1.0,) * 3, tuple(trees), "logit_of_mean", 0.0)
    x_test = np.nan_to_num(_synthetic_rows(200, seed=1)[0], nan=0.0)
    expected = np.clip(forest.predict_proba(x_test)[:, 1], 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(sigmoid(model.scores(_raws(x_test))), expected, rtol=1e-8, atol=1e-9)


def test_gradient_boosting_survival_trees_score_as_scikit_survival() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    time = rng.exponential(1000, 300) * np.exp(-0.7 * x[:, 0])
    target = np.array(list(zip(rng.random(300) < 0.7, time, strict=True)), dtype=[("e", bool), ("t", float)])
    gbs = GradientBoostingSurvivalAnalysis(n_estimators=20, learning_rate=0.05, max_depth=2, random_state=0)
    gbs.fit(x, target)
    trees = tuple(families._tree_from_sklearn(e[0].tree_, 0.05 * e[0].tree_.value[:, 0, 0]) for e in gbs.estimators_)
    model = TreeEnsemble("gradient_boosting_survival", COLUMNS, {}, (0.0,) * 3, (1.0,) * 3, trees, "sum", 0.0)
    np.testing.assert_allclose(model.scores(_raws(x)), gbs.predict(x), rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- families, JSON round trip


def _cohorts(n: int = 400, seed: int = 0) -> Cohorts:
    """SYNTHETIC cohorts: 'A' (two groups, tobacco never recorded) and 'B' (one group, all recorded)."""
    x, y = _synthetic_rows(n, seed)
    groups = np.array(["A1", "A2", "B"], dtype=object)[np.arange(n) % 3]
    cohorts = np.where(groups == "B", "B", "A").astype(object)
    x[cohorts == "A", 1] = np.nan
    rng = np.random.default_rng(seed + 1)
    time = rng.exponential(900, n) * np.exp(-0.5 * np.nan_to_num(x[:, 2] - 2))
    return Cohorts(tuple(f"P{i:04d}" for i in range(n)), groups, cohorts, tuple(_raws(x)), time,
                   (rng.random(n) < 0.6).astype(float), y.astype(float))  # fmt: skip


@pytest.mark.parametrize(
    ("family", "task", "settings"),
    [("logistic", "hpv", {"C": 0.1}), ("hist_gradient_boosting", "hpv", {"iterations": 20}),
     ("random_forest_smote", "hpv", {"trees": 15}), ("cox", "rfs", {"alpha": 1.0}),
     ("gradient_boosting_survival", "rfs", {"iterations": 15}), ("cox_predicted_hpv", "rfs", {"alpha": 1.0})],
)  # fmt: skip
def test_every_family_round_trips_through_the_runtime_json(tmp_path: Path, family: str, task: str,
                                                           settings: dict) -> None:  # fmt: skip
    data = _cohorts()
    model = families.fit(data, families.Candidate(family, "synthetic", COLUMNS, settings))
    path = tmp_path / f"{task}.json"
    path.write_text(json.dumps(families.model_json(model, task, {}), allow_nan=False))
    loaded, _ = load_score_model(path, task)
    np.testing.assert_array_equal(loaded.scores(data.raws), model.scores(data.raws))
    assert np.isfinite(model.scores(data.raws)).all() and np.std(model.scores(data.raws)) > 0


def test_predicted_hpv_integration_by_hand() -> None:
    """The RFS model sees the submodel's probability as one more input, computed per patient."""
    sub = LinearModel("logistic_l2_balanced", ("age",), {"age": 60.0}, (60.0,), (10.0,), (2.0,), -1.0, 5.0)
    cox = LinearModel("cox_ph_ridge", ("age", HPV_PREDICTED), {"age": 60.0, HPV_PREDICTED: 0.5}, (60.0, 0.5),
                      (10.0, 0.25), (0.3, -1.0), 0.0, 5.0)  # fmt: skip
    model = WithPredictedHpv(cox, sub)
    # age 70: submodel logit = -1 + 2*1 = 1, p = 0.7310586; risk = 0.3*1 - (0.7310586 - 0.5)/0.25 = -0.6242344
    assert model.score({"age": 70.0}) == pytest.approx(0.3 - (1 / (1 + math.exp(-1)) - 0.5) / 0.25, abs=1e-12)
    # age unknown: both take 60 -> logit -1, p = 0.2689414; risk = -(0.2689414 - 0.5)/0.25 = 0.9242344
    assert model.score({"age": None}) == pytest.approx(-(1 / (1 + math.exp(1)) - 0.5) / 0.25, abs=1e-12)


def test_cohort_balanced_weights_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 1, 0])
    cohorts = np.array(["A", "A", "A", "A", "B", "B"])
    # A: 4 patients, 3 positive -> 4/(2*3) = 2/3 each, 1 negative -> 4/2 = 2; B: 1 and 1 -> 2/2 = 1 each
    np.testing.assert_allclose(families.cohort_balanced_weights(y, cohorts), [2 / 3, 2 / 3, 2 / 3, 2, 1, 1])


def test_masked_copies_put_every_cohort_into_the_missing_branch() -> None:
    """Before: 'tobacco missing' means cohort A (B misses it only at random). After: every patient of both
    cohorts also appears with tobacco missing, so B's share among missing rows is its share of patients,
    diluted only by A's original missing rows: (0.5 nB_miss + 0.5 nB) / (0.5 n_miss + 0.5 n)."""
    data = _cohorts()
    x = families.design_matrix(COLUMNS, {}, data.raws)
    masked = families.cohort_dependent_columns(x, data.cohorts)
    assert masked == [1]  # tobacco only: age and volume miss at random (15 %) in both cohorts
    rows, origin = families.masked_copies(x, masked)
    np.testing.assert_array_equal(rows[: len(x)], x)  # originals unchanged
    assert np.isnan(rows[len(x) :, 1]).all() and (origin == np.tile(np.arange(len(x)), 2)).all()
    is_b, missing_before = data.cohorts == "B", np.isnan(x[:, 1])
    share_before = is_b[missing_before].mean()
    missing_after = np.isnan(rows[:, 1])
    share_after = is_b[origin][missing_after].mean()  # equal weights (0.5) for all rows
    expected = (is_b[missing_before].sum() + is_b.sum()) / (missing_before.sum() + len(x))
    assert share_after == pytest.approx(expected, abs=1e-12)
    assert share_before < 0.1 < 0.2 < share_after


def test_unknown_value_of_a_linear_model_adds_nothing() -> None:
    """Mean imputation, no indicator: an unknown value scores exactly like the training mean."""
    data = _cohorts()
    model = families.fit(data, families.Candidate("logistic", "synthetic", COLUMNS, {"C": 1.0}))
    mean_tobacco = model.impute_values["tobacco"]
    known = {"age": 61.0, "log_gtvp_volume": 2.5}
    assert model.score({**known, "tobacco": None}) == model.score({**known, "tobacco": mean_tobacco})
    assert not any(c.endswith("_missing") for c in model.columns)


@pytest.mark.parametrize(
    ("change", "problem"),
    [({"kind": "xgboost"}, "unknown model kind"), ({"task": "hpv"}, "expected a model of task 'rfs'"),
     ({"combine": "max"}, "'combine' must be"), ({"trees": []}, "'trees' must be a non-empty list")],
)  # fmt: skip
def test_broken_tree_files_are_refused_naming_the_file(tmp_path: Path, change: dict, problem: str) -> None:
    data = _cohorts()
    model = families.fit(data, families.Candidate("gradient_boosting_survival", "s", COLUMNS, {"iterations": 3}))
    path = tmp_path / "rfs_model.json"
    path.write_text(json.dumps({**families.model_json(model, "rfs", {}), **change}))
    with pytest.raises(ManifestError, match=problem) as err:
        load_score_model(path, "rfs")
    assert str(path) in str(err.value)


def test_a_tree_with_a_cycle_is_refused(tmp_path: Path) -> None:
    data = _cohorts()
    model = families.fit(data, families.Candidate("gradient_boosting_survival", "s", COLUMNS, {"iterations": 3}))
    document = families.model_json(model, "rfs", {})
    tree = document["trees"][0]
    inner = next(i for i, f in enumerate(tree["feature"]) if f >= 0)
    tree["left"][inner] = inner  # points back at itself: the walk would never end
    path = tmp_path / "rfs_model.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="bad left child"):
        load_score_model(path, "rfs")


# --------------------------------------------------------------------------- nested evaluation


def test_choose_threshold_by_hand() -> None:
    """Cohort A: positives at 0.35/0.45/0.6, negative 0.4; cohort B: positive 0.55, negative 0.5."""
    data = Cohorts(tuple("abcdef"), np.array(["g"] * 6, object), np.array(list("AAAABB"), object), ({},) * 6,
                   np.ones(6), np.ones(6), np.array([1, 1, 1, 0, 1, 0], float))  # fmt: skip
    prob = np.array([0.35, 0.45, 0.6, 0.4, 0.55, 0.5])
    # t in (0.40, 0.45]: A sens 2/3 spec 1 -> 0.833; B sens 1 spec 0 (0.5 >= t) -> 0.5; mean 0.667
    # t in (0.45, 0.50]: A 1/3, 1 -> 0.667; B 0.5; mean 0.583
    # t in (0.50, 0.55]: A 1/3, 1 -> 0.667; B 1, 1 -> 1.0; mean 0.833 (the best)
    # t in (0.35, 0.40]: A 2/3, 0 -> 0.333; B 0.5; mean 0.417. t <= 0.35 or > 0.55: 0.5 or less.
    # 0.51 ... 0.55 tie: the one closest to 0.5 wins.
    assert evaluation.choose_threshold(data, prob) == 0.51


def test_within_cohort_criterion_ignores_a_between_cohort_shift() -> None:
    """Adding a constant to one cohort's scores changes a pooled AUC but not the criterion."""
    data = _cohorts()
    score = np.random.default_rng(0).normal(size=len(data)) + data.hpv
    shifted = score + np.where(data.cohorts == "B", 5.0, 0.0)
    assert evaluation.hpv_criterion(data, score) == evaluation.hpv_criterion(data, shifted)


def test_no_held_out_patient_is_seen_by_any_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fit made while an outer fold chooses (and fits) its model excludes that fold's patients."""
    data = _cohorts(240)
    seen: list[set[str]] = []
    real_fit = evaluation.fit

    def recording_fit(train: Cohorts, cand: families.Candidate) -> families.Model:
        seen.append(set(train.patient_ids))
        return real_fit(train, cand)

    monkeypatch.setattr(evaluation, "fit", recording_fit)
    cands = [families.Candidate("logistic", "s", COLUMNS, {"C": c}) for c in (0.1, 1.0)]
    folds = evaluation.outer_folds(data)
    assert [f.name for f in folds] == ["A1", "A2", "A", "B"]
    calls = []
    for fold in folds:
        seen.clear()
        train = data.subset(~fold.held_out)
        chosen = evaluation.select(train, cands, "hpv")
        real = evaluation.fit(train, chosen.best)
        assert np.isfinite(real.scores(data.subset(fold.held_out).raws)).all()
        held = {p for p, h in zip(data.patient_ids, fold.held_out, strict=True) if h}
        assert seen and all(not (ids & held) for ids in seen), fold.name
        calls.append(len(seen))
    # inner folds: A1 out -> groups A2, B (2 folds); cohort A out -> B alone: 5 patient folds; B out -> A1, A2
    assert calls == [2 * 2 + 1, 2 * 2 + 1, 5 * 2 + 1, 2 * 2 + 1]
    result = evaluation.evaluate_task(data, cands, "hpv")  # the same, end to end
    assert set(result.scores["selected"]) == {f.name for f in folds}


# --------------------------------------------------------------------------- one command: table, models, card


def test_training_writes_models_and_a_card_that_quotes_the_nested_table(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:  # fmt: skip
    """On SYNTHETIC cohorts with two candidates per task: the model JSONs load in the runtime, and the card's
    headline rows are the evaluation table's figures."""
    from training import train_clinical_models as train
    from training.clinical_card import model_card

    monkeypatch.setattr(evaluation, "N_BOOT", 20)
    data = _cohorts(300)
    prov = {"groups": {"A1": 100, "A2": 100, "B": 100}, "n_rfs_known": 300, "n_events": 180, "n_hpv_known": 300,
            "n_hpv_negative": int((data.hpv == 0).sum()), "inputs_sha256": {"x.csv": "0" * 64}, "seed": 1,
            "n_bootstrap": 20}  # fmt: skip
    rfs_cands = [families.Candidate("cox", "s", COLUMNS, {"alpha": a}) for a in (1.0, 100.0)]
    hpv_cands = [families.Candidate("logistic", "s", COLUMNS, {"C": 1.0}),
                 families.Candidate("hist_gradient_boosting", "s", COLUMNS, {"iterations": 10})]  # fmt: skip
    rfs, rfs_eval = train.train_task(data, "rfs", rfs_cands, prov)
    hpv, hpv_eval = train.train_task(data, "hpv", hpv_cands, prov)
    card = model_card({"rfs": rfs_eval, "hpv": hpv_eval}, rfs, hpv)
    pooled = hpv_eval["per_held_out"]["selected"][evaluation.pooled_name("A")]["balanced_accuracy"]["value"]
    assert f"| {evaluation.pooled_name('A')} | {pooled:.3f}" in card
    assert rfs["candidate"] in card and hpv["candidate"] in card and f"**{hpv['threshold']:.2f}**" in card
    assert set(rfs_eval["choices"]) == {"A1", "A2", "A", "B"}
    for task, document in (("rfs", rfs), ("hpv", hpv)):
        (tmp_path / f"{task}.json").write_text(json.dumps(document, allow_nan=False))
        model, _ = load_score_model(tmp_path / f"{task}.json", task)
        assert np.isfinite(model.scores(data.raws)).all()
