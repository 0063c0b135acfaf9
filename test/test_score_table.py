"""score_table: hand-computed rows with synthetic models, metrics checked with independent libraries,
input errors, atomic output, and the real table against an independent pandas recomputation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CLINICAL_DIR, independent_score

from hecktor.apps.score_table import OUTPUT_COLUMNS, score_table, unknown_columns
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.core.metrics import balanced_accuracy, harrell_c_index
from hecktor.core.types import InputError
from hecktor.outcome.predict import ClinicalModels, load_clinical_models

RFS_JSON = DEFAULT_WEIGHTS_DIR / "rfs_model.json"
HPV_JSON = DEFAULT_WEIGHTS_DIR / "hpv_model.json"

SMALL_CSV = """PatientID,CenterID,Age,Gender,Tobacco Consumption,Alcohol Consumption,Performance Status,Treatment,HPV Status,GTVp_volume_ml,GTVn_volume_ml
A-001,1,56,1,0,1,0,0,,12.5,3.0
A-002,9,71,0,1,,2,1,0,40.0,0.0
A-003,,,,,,,,,,
A-004,3,abc,M,yes,no,9,1,1,0.0,25.0
007,5,60.0,1.0,,,,1.0,1.0,5.5,60.1
"""  # noqa: E501

# Synthetic models with known coefficients (means 0, SD 1; age mean 60, SD 10) so each score is a short
# hand sum. Risk: +1 per unit of log(1 + GTVp mL), +0.25 per unit of log(1 + GTVn mL), +0.4 per unit of
# log GTVp SUVmax (imputed at 2.0), -0.5 for tobacco 1, +0.1 when tobacco is unknown. HPV logit: 0.3 - log GTVp
# + 0.5 log GTVn (+0.7 when GTVp is unknown); positive when p >= 0.5, i.e. logit >= 0.
SYNTHETIC_RFS = {
    "task": "rfs",
    "kind": "cox_ph_ridge",
    "columns": ["age", "log_gtvp_volume", "log_gtvn_volume", "log_gtvp_suvmax", "tobacco", "tobacco_missing"],
    "impute_values": {
        "age": 60.0,
        "log_gtvp_volume": 1.5,
        "log_gtvn_volume": 0.5,
        "log_gtvp_suvmax": 2.0,
        "tobacco": 1,
    },
    "means": [60.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "stds": [10.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "coefs": [0.2, 1.0, 0.25, 0.4, -0.5, 0.1],
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
    "threshold": 0.5,
}


@pytest.fixture(scope="module")
def models() -> ClinicalModels:
    return load_clinical_models(RFS_JSON, HPV_JSON)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> ClinicalModels:
    folder = tmp_path_factory.mktemp("synthetic_models")
    (folder / "rfs.json").write_text(json.dumps(SYNTHETIC_RFS))
    (folder / "hpv.json").write_text(json.dumps(SYNTHETIC_HPV))
    return load_clinical_models(folder / "rfs.json", folder / "hpv.json")


def _logistic(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def _score(tmp_path: Path, frame: pd.DataFrame, models: ClinicalModels) -> pd.DataFrame:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(src, index=False)
    assert score_table(src, out, models) == len(frame)
    return pd.read_csv(out, dtype={"PatientID": str})


# --------------------------------------------------------------------------- synthetic, by hand

# Volumes are expm1(k) mL, so log(1 + volume) = k. No age column: age is unknown, imputed at its median
# (term 0); no SUV column: log SUVmax is imputed at its median 2.0 (term 0.4 * 2.0 = 0.8 in every row).
COHORT = pd.DataFrame(
    {
        "PatientID": ["P1", "P2", "P3", "P4", "P5", "P6"],
        "GTVp_volume_ml": [math.expm1(3.0), math.expm1(2.0), math.expm1(2.5), math.expm1(1.0), math.expm1(0.5), None],
        "GTVn_volume_ml": [0.0, math.expm1(2.0), math.expm1(0.4), math.expm1(0.4), math.expm1(4.0), math.expm1(1.0)],
        "HPV Status": [0, 1, 0, 1, 1, 0],  # the reference for Task 3
        "Tobacco Consumption": [0, 1, 0, 1, 1, 0],  # an input of the risk model (equal to HPV: same hand sums)
        "RFS": [100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
        "Relapse": [1, 1, 0, 1, 0, 0],
    }
)
# risk = log GTVp + 0.25 log GTVn + 0.8 - 0.5 tobacco
COHORT_RISK = [
    3.0 + 0.0 + 0.8 - 0.0,  # P1 = 3.8
    2.0 + 0.5 + 0.8 - 0.5,  # P2 = 2.8
    2.5 + 0.1 + 0.8 - 0.0,  # P3 = 3.4
    1.0 + 0.1 + 0.8 - 0.5,  # P4 = 1.4
    0.5 + 1.0 + 0.8 - 0.5,  # P5 = 1.8
    1.5 + 0.25 + 0.8 - 0.0,  # P6 = 2.55 (GTVp unknown: median 1.5)
]
COHORT_LOGIT = [
    0.3 - 3.0 + 0.0,  # P1 = -2.7 -> negative
    0.3 - 2.0 + 1.0,  # P2 = -0.7 -> negative
    0.3 - 2.5 + 0.2,  # P3 = -2.0 -> negative
    0.3 - 1.0 + 0.2,  # P4 = -0.5 -> negative
    0.3 - 0.5 + 2.0,  # P5 = 1.8 -> positive
    0.3 - 2.0 + 0.5 + 0.7,  # P6 = -0.5 -> negative (GTVp unknown: median 2.0, indicator 1)
]
# Harrell's C by hand. Comparable pairs (i relapsed, t_i < t_j):
#   P1 (3.8) vs P2 2.8, P3 3.4, P4 1.4, P5 1.8, P6 2.55 -> 5 concordant
#   P2 (2.8) vs P3 3.4 (discordant), P4 1.4, P5 1.8, P6 2.55 -> 3 concordant, 1 discordant
#   P4 (1.4) vs P5 1.8, P6 2.55 -> 2 discordant
# C = 8 / 11. The risk negated gives 3/11, a constant 1/2, GTVp and GTVn swapped 4.5/11.
COHORT_C = (8, 3, 8 / 11)
# Balanced accuracy by hand: HPV-positive P2, P4, P5 -> only P5 called positive (1/3);
# HPV-negative P1, P3, P6 -> all called negative (3/3). (1/3 + 1) / 2 = 2/3. Swapped volumes: 1/6.
COHORT_BALANCED_ACCURACY = 2 / 3


def test_synthetic_rows_by_hand(tmp_path: Path, synthetic: ClinicalModels) -> None:
    result = _score(tmp_path, COHORT, synthetic)
    assert list(result["PatientID"]) == list(COHORT["PatientID"])
    np.testing.assert_allclose(result["rfs_risk"], COHORT_RISK, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["hpv_probability"], [_logistic(x) for x in COHORT_LOGIT], rtol=0, atol=1e-12)
    assert list(result["hpv_positive"]) == [int(x >= 0) for x in COHORT_LOGIT]


def test_synthetic_c_index_with_scikit_survival(tmp_path: Path, synthetic: ClinicalModels) -> None:
    sksurv_metrics = pytest.importorskip("sksurv.metrics", reason="scikit-survival (dev requirement) not installed")
    result = _score(tmp_path, COHORT, synthetic)
    c, concordant, discordant, tied_risk, _ = sksurv_metrics.concordance_index_censored(
        COHORT["Relapse"].astype(bool).to_numpy(), COHORT["RFS"].to_numpy(), result["rfs_risk"].to_numpy()
    )
    assert (concordant, discordant, tied_risk) == (COHORT_C[0], COHORT_C[1], 0)
    assert c == pytest.approx(COHORT_C[2], abs=1e-12)
    assert harrell_c_index(COHORT["RFS"], COHORT["Relapse"], result["rfs_risk"]) == pytest.approx(c, abs=1e-12)


def test_synthetic_balanced_accuracy_with_scikit_learn(tmp_path: Path, synthetic: ClinicalModels) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (dev requirement) not installed")
    result = _score(tmp_path, COHORT, synthetic)
    ba = sklearn_metrics.balanced_accuracy_score(COHORT["HPV Status"], result["hpv_positive"])
    assert ba == pytest.approx(COHORT_BALANCED_ACCURACY, abs=1e-12)
    assert balanced_accuracy(COHORT["HPV Status"], result["hpv_positive"]) == pytest.approx(ba, abs=1e-12)


@pytest.mark.parametrize("column", ["MaxLesionSUV", "gtvp_suvmax", "GTVp_SUVmax"])
def test_suv_column_spellings_by_hand(tmp_path: Path, synthetic: ClinicalModels, column: str) -> None:
    """SUVmax 3 and 30 enter as 0.4 * log(SUV); 500 is implausible (Bq/mL?) and imputed at the median 2.0."""
    frame = pd.DataFrame(
        {"PatientID": ["low", "high", "absurd", "empty"], "GTVp_volume_ml": [math.expm1(1.0)] * 4,
         "GTVn_volume_ml": [0.0] * 4, column: [3.0, 30.0, 500.0, None], "Tobacco Consumption": [1] * 4}
    )  # fmt: skip
    result = _score(tmp_path, frame, synthetic)
    # risk = 1.0 (GTVp) + 0 (GTVn) + 0.4 * log SUVmax - 0.5 (tobacco 1)
    expected = [0.5 + 0.4 * math.log(3.0), 0.5 + 0.4 * math.log(30.0), 0.5 + 0.4 * 2.0, 0.5 + 0.4 * 2.0]
    np.testing.assert_allclose(result["rfs_risk"], expected, rtol=0, atol=1e-12)


def test_hostile_cells_become_unknown(tmp_path: Path, synthetic: ClinicalModels) -> None:
    """Cells the clinical parser refuses (a 5000-digit age, a bool for PS, 1e400) are unknown, not a crash."""
    src = tmp_path / "in.csv"
    src.write_text(
        "PatientID,Age,Performance Status,Tobacco Consumption,GTVp_volume_ml,GTVn_volume_ml\n"
        f"H1,{'9' * 5000},true,1e400,{'9' * 400},-1\n"
        "H2,,,,,\n"
    )
    out = tmp_path / "out.csv"
    assert score_table(src, out, synthetic) == 2
    result = pd.read_csv(out)
    assert result.loc[0, "rfs_risk"] == pytest.approx(result.loc[1, "rfs_risk"], abs=1e-12)
    assert result.loc[0, "rfs_risk"] == pytest.approx(2.025, abs=1e-12)  # 0 + 1.5 + 0.125 + 0.8 - 0.5 + 0.1


# --------------------------------------------------------------------------- shipped models, format


def test_round_trip_small_table(tmp_path: Path, models: ClinicalModels) -> None:
    src = tmp_path / "in.csv"
    src.write_text(SMALL_CSV)
    out = tmp_path / "out.csv"
    assert score_table(src, out, models) == 5

    result = pd.read_csv(out, dtype={"PatientID": str})
    assert tuple(result.columns) == OUTPUT_COLUMNS
    assert list(result["PatientID"]) == ["A-001", "A-002", "A-003", "A-004", "007"]  # ids kept as text
    assert np.all(np.isfinite(result["rfs_risk"]))
    assert result["hpv_probability"].between(0, 1).all()
    assert set(result["hpv_positive"]) <= {0, 1}
    assert ((result["hpv_probability"] >= models.hpv_threshold).astype(int) == result["hpv_positive"]).all()
    features = _independent_features(pd.read_csv(src, dtype={"PatientID": str}))
    np.testing.assert_allclose(result["rfs_risk"], _independent_scores(RFS_JSON, features), atol=1e-12)


def test_table_without_measurement_columns(tmp_path: Path, models: ClinicalModels) -> None:
    src = tmp_path / "in.csv"
    src.write_text("PatientID,Age\nX,50\nY,80\n")
    out = tmp_path / "out.csv"
    score_table(src, out, models)
    result = pd.read_csv(out)
    assert len(result) == 2 and np.all(np.isfinite(result["rfs_risk"]))


def test_missing_patient_id_column(tmp_path: Path, models: ClinicalModels) -> None:
    src = tmp_path / "no_ids.csv"
    src.write_text("Age,Gender\n50,1\n")
    with pytest.raises(InputError, match=r"no_ids\.csv.*PatientID"):
        score_table(src, tmp_path / "out.csv", models)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("content", [None, b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"])
def test_unreadable_input(tmp_path: Path, models: ClinicalModels, content: bytes | None) -> None:
    src = tmp_path / "bad_input.csv"
    if content is not None:
        src.write_bytes(content)
    with pytest.raises(InputError, match=r"bad_input\.csv"):
        score_table(src, tmp_path / "out.csv", models)


def test_output_is_replaced_atomically(tmp_path: Path, models: ClinicalModels) -> None:
    src = tmp_path / "in.csv"
    src.write_text(SMALL_CSV)
    out = tmp_path / "out.csv"
    out.write_text("old content\n")
    score_table(src, out, models)
    assert out.read_text().startswith("PatientID,rfs_risk")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temp file left


# --------------------------------------------------------------------------- shipped models, real table


def _numeric(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype(float)


def _within(column: pd.Series, low: float, high: float) -> pd.Series:
    values = _numeric(column)
    return values.where((values >= low) & (values <= high))


YES_NO = {"yes": 1.0, "y": 1.0, "true": 1.0, "positive": 1.0, "no": 0.0, "n": 0.0, "false": 0.0, "negative": 0.0}
SEX = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}
TREATMENT = {"chemoradiotherapy": 1.0, "radiotherapy": 0.0}
M_STAGE = {"m0": 0.0, "m1": 1.0}


def _independent_features(table: pd.DataFrame) -> pd.DataFrame:
    """Every candidate feature from the HECKTOR table layout with pandas only; NaN = unknown.

    Written from the documented feature definitions (hecktor.outcome.predict.RAW_FEATURES and the model card),
    not from the runtime code. Absent columns are all-unknown.
    """

    def col(name: str) -> pd.Series:
        return table[name] if name in table else pd.Series(np.nan, index=table.index)

    def binary(name: str, words: dict[str, float]) -> pd.Series:
        values = _numeric(col(name))
        spelled = col(name).astype(str).str.strip().str.lower().map(words)
        return values.where(values.isin([0.0, 1.0])).fillna(spelled)

    age = _numeric(col("Age"))
    status = _numeric(col("Performance Status"))
    gtvp = _within(col("GTVp_volume_ml"), 0.0, 3000.0)
    gtvn = _within(col("GTVn_volume_ml"), 0.0, 3000.0)
    return pd.DataFrame(
        {
            "age": age.where((age > 0) & (age <= 120)),
            "gender_male": binary("Gender", SEX),
            "tobacco": binary("Tobacco Consumption", YES_NO),
            "alcohol": binary("Alcohol Consumption", YES_NO),
            "performance_status": status.where(status.isin([0.0, 1.0, 2.0, 3.0, 4.0])),
            "treatment_chemoradiotherapy": binary("Treatment", TREATMENT),
            "m_stage": binary("M-stage", M_STAGE),
            "hpv_positive": binary("HPV Status", YES_NO),
            "log_gtvp_volume": np.log1p(gtvp),
            "log_gtvn_volume": np.log1p(gtvn),
            "log_total_volume": np.log1p(gtvp + gtvn),
            "log_gtvp_suvmax": np.log(_within(col("MaxLesionSUV"), 1.0, 100.0)),
            "log_gtvn_suvmax": np.log(_within(col("MaxLymphNodeSUV"), 1.0, 100.0)),
        }
    )


def _independent_scores(model_path: Path, features: pd.DataFrame) -> np.ndarray:
    """Each row's score by the documented definition of the model JSON (helpers.independent_score), NaN = unknown."""
    model = json.loads(model_path.read_text())
    rows = features.to_dict(orient="records")
    return np.array([independent_score(model, {k: v for k, v in row.items() if pd.notna(v)}) for row in rows])


@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The training table with the SUVmax table joined on, as training saw it (written to a temp dir only)."""
    table = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
    suv = CLINICAL_DIR / "hecktor2022_suvmax_dev_centers.csv"
    if not (table.is_file() and suv.is_file()):
        pytest.skip(f"{table.name} or {suv.name} not found in {CLINICAL_DIR} (../shared/data is not mounted)")
    return pd.read_csv(table).merge(pd.read_csv(suv), on="PatientID", how="left", validate="one_to_one")


@pytest.fixture(scope="module")
def real_scores(
    real_table: pd.DataFrame, models: ClinicalModels, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    result = _score(tmp_path_factory.mktemp("real_scores"), real_table, models)
    assert list(result["PatientID"]) == list(real_table["PatientID"])
    return result


def test_real_table_equals_independent_recomputation(real_table: pd.DataFrame, real_scores: pd.DataFrame) -> None:
    features = _independent_features(real_table)
    assert features["log_gtvp_suvmax"].notna().sum() > 100  # the SUV features are really exercised
    np.testing.assert_allclose(real_scores["rfs_risk"], _independent_scores(RFS_JSON, features), atol=1e-12)
    probability = 1.0 / (1.0 + np.exp(-_independent_scores(HPV_JSON, features)))
    np.testing.assert_allclose(real_scores["hpv_probability"], probability, rtol=1e-12, atol=1e-15)
    threshold = json.loads(HPV_JSON.read_text())["threshold"]
    np.testing.assert_array_equal(real_scores["hpv_positive"], (probability >= threshold).astype(int))


def test_real_table_metrics_with_independent_libraries(real_table: pd.DataFrame, real_scores: pd.DataFrame) -> None:
    """In-sample figures computed by scikit-survival / scikit-learn agree with hecktor.core.metrics, and are not
    below the honest nested leave-one-centre-out figures recorded in the model JSONs (models fitted on these
    very patients, among others, do not do worse on them than on unseen centres)."""
    sksurv_metrics = pytest.importorskip("sksurv.metrics", reason="scikit-survival (dev requirement) not installed")
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (dev requirement) not installed")
    known = real_table["RFS"].notna() & real_table["Relapse"].notna()
    time, event = real_table.loc[known, "RFS"], real_table.loc[known, "Relapse"]
    risk = real_scores.loc[known, "rfs_risk"]
    c = sksurv_metrics.concordance_index_censored(event.astype(bool).to_numpy(), time.to_numpy(), risk.to_numpy())[0]
    assert harrell_c_index(time, event, risk) == pytest.approx(c, abs=1e-9)
    assert c >= json.loads(RFS_JSON.read_text())["nested_headline"]["HECKTOR centres pooled (LOCO)"]["value"]

    labelled = real_table["HPV Status"].notna()
    truth, called = real_table.loc[labelled, "HPV Status"].astype(int), real_scores.loc[labelled, "hpv_positive"]
    ba = sklearn_metrics.balanced_accuracy_score(truth, called)
    assert balanced_accuracy(truth, called) == pytest.approx(ba, abs=1e-12)
    assert ba >= json.loads(HPV_JSON.read_text())["nested_headline"]["HECKTOR centres pooled (LOCO)"]["value"]


def _table_with_columns(path: Path, extra: dict[str, object]) -> Path:
    row = {"PatientID": "P1", "CenterID": 3, "Age": 60, "Gender": 1, "HPV Status": 1, "Relapse": 0, "RFS": 900,
           "T-stage": "T2", "N-stage": "N1", "M-stage": "M0", "GTVp_volume_ml": 12.0, **extra}
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_unknown_columns_are_warned_with_the_nearest_known_name(tmp_path: Path, synthetic: ClinicalModels,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    table = _table_with_columns(tmp_path / "in.csv", {"Agee": 61, "Tobaco Consumption": 1, "Comment": "x"})
    with caplog.at_level("WARNING"):
        assert score_table(table, tmp_path / "out.csv", synthetic) == 1
    [warning] = [r.getMessage() for r in caplog.records if "unknown column" in r.getMessage()]
    assert "3 unknown column(s)" in warning
    assert "'Agee': did you mean 'Age'?" in warning
    assert "'Tobaco Consumption': did you mean 'Tobacco Consumption'?" in warning
    assert "'Comment' matches no known column" in warning
    for known in ("CenterID", "M-stage", "Relapse", "RFS", "T-stage", "N-stage", "GTVp_volume_ml", "HPV Status"):
        assert f"'{known}'" not in warning


def test_unknown_columns_are_refused_in_strict_mode(tmp_path: Path, synthetic: ClinicalModels) -> None:
    table = _table_with_columns(tmp_path / "in.csv", {"Agee": 61})
    with pytest.raises(InputError, match=r"in\.csv.*'Agee': did you mean 'Age'\?"):
        score_table(table, tmp_path / "out.csv", synthetic, strict=True)
    assert not (tmp_path / "out.csv").exists()
    known_only = _table_with_columns(tmp_path / "known.csv", {})
    assert score_table(known_only, tmp_path / "out.csv", synthetic, strict=True) == 1


def test_the_training_table_has_no_unknown_columns() -> None:
    table = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
    if not table.is_file():
        pytest.skip(f"{table} not found (../shared/data is not mounted)")
    assert unknown_columns(list(pd.read_csv(table, nrows=1).columns)) == []
