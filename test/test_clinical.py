"""ehr.json parsing: every documented variant gives a usable record and a finite prediction.

The official examples are read from ../shared/data; the variants are hand-written files in tmp.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import CLINICAL_DIR

from hecktor.clinical import clinical_record_from_mapping, parse_ehr
from hecktor.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.predict import ClinicalModels, load_clinical_models, predict
from hecktor.types import ClinicalRecord, InputError, Measurements

OFFICIAL = ("ehr_example_official.json", "ehr_example_official_missing_values.json")


@pytest.fixture(scope="module")
def models() -> ClinicalModels:
    return load_clinical_models(DEFAULT_WEIGHTS_DIR / "rfs_model.json", DEFAULT_WEIGHTS_DIR / "hpv_model.json")


@pytest.fixture(scope="module")
def measurements() -> Measurements:
    return Measurements(
        gtvp_volume_ml=12.0,
        gtvn_volume_ml=8.0,
        gtvp_suvmax=14.0,
        gtvp_suvmean=7.0,
        gtvn_suvmax=9.0,
        gtvn_suvmean=5.0,
        tlg=84.0,
        nlg=40.0,
        node_count=2,
    )


def _write(tmp_path: Path, content: str | bytes, name: str = "ehr.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _assert_finite_prediction(models: ClinicalModels, record: ClinicalRecord, measurements: Measurements) -> None:
    pred = predict(models, record, measurements)
    assert math.isfinite(pred.rfs_risk)
    assert 0.0 <= pred.hpv_probability <= 1.0
    assert isinstance(pred.hpv_positive, bool)


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_examples(name: str, models: ClinicalModels, measurements: Measurements) -> None:
    path = CLINICAL_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is not mounted)")
    record = parse_ehr(path)
    assert record.age in (56.0, 50.0)
    assert record.gender_male == 1.0
    assert record.m_stage == 0.0
    _assert_finite_prediction(models, record, measurements)


def test_official_example_values() -> None:
    path = CLINICAL_DIR / OFFICIAL[0]
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is not mounted)")
    assert parse_ehr(path) == ClinicalRecord(
        age=56.0,
        gender_male=1.0,
        tobacco=0.0,
        alcohol=1.0,
        performance_status=0.0,
        treatment_chemoradiotherapy=0.0,
        m_stage=0.0,
        hpv_positive=None,
        center_id=5,
    )


# (file content, expected non-None fields). Every other field must be None.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "short_keys": (
        {"Age": 60, "Gender": 0, "Tobacco": 1, "Alcohol": 0, "Performance": 2, "HPV": 1, "Treatment": 1},
        {
            "age": 60,
            "gender_male": 0,
            "tobacco": 1,
            "alcohol": 0,
            "performance_status": 2,
            "hpv_positive": 1,
            "treatment_chemoradiotherapy": 1,
        },
    ),
    "stray_colon": ({"Tobacco Consumption:": 1, "Performance Status": 1}, {"tobacco": 1, "performance_status": 1}),
    "numbers_as_strings": (
        {"Age": "56", "Gender": "1.0", "Tobacco Consumption": "0", "Treatment": "1", "HPV Status": "0.0"},
        {"age": 56, "gender_male": 1, "tobacco": 0, "treatment_chemoradiotherapy": 1, "hpv_positive": 0},
    ),
    "words": (
        {"Gender": "F", "Alcohol Consumption": "yes", "Tobacco Consumption": "No", "HPV Status": "positive"},
        {"gender_male": 0, "alcohol": 1, "tobacco": 0, "hpv_positive": 1},
    ),
    "gender_m": ({"Gender": "M", "M-stage": "M1"}, {"gender_male": 1, "m_stage": 1}),
    "m_stage_x": ({"M-stage": "Mx", "Age": 70.5}, {"age": 70.5}),
    "nulls": ({"Age": None, "Gender": None, "Tobacco Consumption": None, "M-stage": None, "CenterID": None}, {}),
    "empty_object": ({}, {}),
    "case_and_whitespace": (
        {" age ": 45, "GENDER": 1, "hpv status": 1, "performance  status": 0, "m_stage": "m0"},
        {"age": 45, "gender_male": 1, "hpv_positive": 1, "performance_status": 0, "m_stage": 0},
    ),
    "unknown_centre": ({"CenterID": 9, "Age": 50}, {"center_id": 9, "age": 50}),
    "centre_as_string": ({"CenterID": "42"}, {"center_id": 42}),
    "booleans": ({"Tobacco Consumption": True, "Alcohol Consumption": False}, {"tobacco": 1, "alcohol": 0}),
    "unknown_keys": ({"Weight": 80, "T-stage": "T2", "Age": 61}, {"age": 61}),
    "unknown_words": ({"Age": "unknown", "Gender": "n/a", "Tobacco": ""}, {}),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants(name: str, tmp_path: Path, models: ClinicalModels, measurements: Measurements) -> None:
    content, expected = VARIANTS[name]
    record = parse_ehr(_write(tmp_path, json.dumps(content)))
    for field in ClinicalRecord.__dataclass_fields__:
        assert getattr(record, field) == expected.get(field), field
    _assert_finite_prediction(models, record, measurements)


def test_nan_literal_and_bom(tmp_path: Path, models: ClinicalModels, measurements: Measurements) -> None:
    path = _write(tmp_path, '\ufeff{"Age": NaN, "Gender": 1}'.encode())
    record = parse_ehr(path)
    assert record.age is None and record.gender_male == 1.0
    _assert_finite_prediction(models, record, measurements)


@pytest.mark.parametrize(
    ("content", "field", "bad"),
    [
        ({"Age": -5}, "age", "Age"),
        ({"Performance Status": 9}, "performance_status", "Performance Status"),
        ({"Performance": 1.5}, "performance_status", "Performance"),
        ({"Gender": 3}, "gender_male", "Gender"),
        ({"Tobacco": "sometimes"}, "tobacco", "Tobacco"),
        ({"M-stage": "M7"}, "m_stage", "M-stage"),
        ({"CenterID": -1}, "center_id", "CenterID"),
        ({"Age": [56]}, "age", "Age"),
    ],
)
def test_out_of_range_becomes_unknown_with_warning(
    content: dict, field: str, bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, json.dumps(content))
    with caplog.at_level(logging.WARNING, logger="hecktor.clinical"):
        record = parse_ehr(path)
    assert getattr(record, field) is None
    assert any(bad in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_conflicting_spellings_keep_first_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hecktor.clinical"):
        record = clinical_record_from_mapping({"Tobacco Consumption": 1, "Tobacco": 0})
    assert record.tobacco == 1.0
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_null_spelling_does_not_hide_other_spelling() -> None:
    assert clinical_record_from_mapping({"Tobacco Consumption": None, "Tobacco": 1}).tobacco == 1.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"Age: 56"', "JSON object"),
        (b"null", "JSON object"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
    ],
)
def test_unparsable_file_raises_input_error(content: bytes, problem: str, tmp_path: Path) -> None:
    path = _write(tmp_path, content, name="broken_ehr.json")
    with pytest.raises(InputError) as info:
        parse_ehr(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(InputError, match=r"absent\.json"):
        parse_ehr(path)


def test_table_row_with_numpy_values() -> None:
    """Training/score_table rows arrive as numpy scalars and NaN for empty cells."""
    row = {
        "PatientID": "X-1",
        "CenterID": np.float64(5.0),
        "Age": np.int64(64),
        "Gender": np.float64(0.0),
        "Tobacco Consumption": np.nan,
        "HPV Status": np.float64(1.0),
        "T-stage": "T2",
    }
    record = clinical_record_from_mapping(row)
    assert record == ClinicalRecord(age=64.0, gender_male=0.0, hpv_positive=1.0, center_id=5)


def test_centre_id_does_not_change_prediction(models: ClinicalModels, measurements: Measurements) -> None:
    """Test centres are unseen: the id is for logging only."""
    base = {"Age": 60, "Gender": 1, "Treatment": 1}
    preds = [predict(models, clinical_record_from_mapping({**base, "CenterID": c}), measurements) for c in (1, 5, 9)]
    assert len({(p.rfs_risk, p.hpv_probability) for p in preds}) == 1
