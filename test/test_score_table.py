"""score_table: round trip on a small hand-made CSV, input errors, atomic output, and the real table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CLINICAL_DIR

from hecktor.clinical import clinical_record_from_mapping
from hecktor.manifest import DEFAULT_WEIGHTS_DIR
from hecktor.metrics import harrell_c_index
from hecktor.predict import ClinicalModels, load_clinical_models, predict_from_features, raw_features
from hecktor.score_table import OUTPUT_COLUMNS, measured_from_row, score_table
from hecktor.types import InputError

SMALL_CSV = """PatientID,CenterID,Age,Gender,Tobacco Consumption,Alcohol Consumption,Performance Status,Treatment,HPV Status,GTVp_volume_ml,GTVn_volume_ml
A-001,1,56,1,0,1,0,0,,12.5,3.0
A-002,9,71,0,1,,2,1,0,40.0,0.0
A-003,,,,,,,,,,
A-004,3,abc,M,yes,no,9,1,1,0.0,25.0
007,5,60.0,1.0,,,,1.0,1.0,5.5,60.1
"""  # noqa: E501


@pytest.fixture(scope="module")
def models() -> ClinicalModels:
    return load_clinical_models(DEFAULT_WEIGHTS_DIR / "rfs_model.json", DEFAULT_WEIGHTS_DIR / "hpv_model.json")


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

    # Each row equals the runtime's own prediction for that record.
    for row, (_, got) in zip(
        pd.read_csv(src, dtype={"PatientID": str}).to_dict("records"), result.iterrows(), strict=True
    ):
        pred = predict_from_features(models, raw_features(clinical_record_from_mapping(row), measured_from_row(row)))
        assert got["rfs_risk"] == pytest.approx(pred.rfs_risk, rel=1e-12, abs=1e-15)
        assert got["hpv_probability"] == pytest.approx(pred.hpv_probability, rel=1e-12)


def test_table_without_measurement_columns(tmp_path: Path, models: ClinicalModels) -> None:
    src = tmp_path / "in.csv"
    src.write_text("PatientID,Age\nX,50\nY,80\n")
    out = tmp_path / "out.csv"
    score_table(src, out, models)
    result = pd.read_csv(out)
    assert len(result) == 2 and np.all(np.isfinite(result["rfs_risk"]))


def test_suv_columns_are_used_when_present(tmp_path: Path, models: ClinicalModels) -> None:
    uses_suv = any(c.startswith("log_gtvp_suvmax") for c in (*models.rfs.columns, *models.hpv.columns))
    if not uses_suv:
        pytest.skip("the shipped models do not use GTVp SUVmax")
    src = tmp_path / "in.csv"
    src.write_text("PatientID,GTVp_volume_ml,GTVn_volume_ml,MaxLesionSUV\nlow,10,10,3\nhigh,10,10,30\n")
    out = tmp_path / "out.csv"
    score_table(src, out, models)
    result = pd.read_csv(out)
    assert (result.loc[0, "rfs_risk"], result.loc[0, "hpv_probability"]) != (
        result.loc[1, "rfs_risk"],
        result.loc[1, "hpv_probability"],
    )


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


def test_real_table_c_index_above_chance(tmp_path: Path, models: ClinicalModels) -> None:
    table = CLINICAL_DIR / "hecktor2025_training_dev_centers.csv"
    if not table.is_file():
        pytest.skip(f"{table} not found (../shared/data is not mounted)")
    out = tmp_path / "scores.csv"
    n = score_table(table, out, models)
    ref = pd.read_csv(table)
    result = pd.read_csv(out)
    assert n == len(ref) == len(result)
    merged = result.merge(ref, on="PatientID")
    known = merged["RFS"].notna() & merged["Relapse"].notna()
    c = harrell_c_index(
        merged.loc[known, "RFS"], merged.loc[known, "Relapse"].astype(bool), merged.loc[known, "rfs_risk"]
    )
    assert math.isfinite(c) and c > 0.5
