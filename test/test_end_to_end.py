"""The real entry point (inference.py) on whole cases: a SYNTHETIC phantom and the real sarcoma cases."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import (
    CLINICAL_DIR,
    STS_CASES,
    files_under,
    independent_score,
    run_inference,
    sts_training_layout,
)
from test_measure import independent_measurements

from hecktor.core.manifest import load_manifest
from hecktor.core.metrics import dice
from hecktor.io.phantom import SAMPLE_EHR
from hecktor.io.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH, STAGING_PREFIX, TRASH_PREFIX
from hecktor.pipeline import Pipeline


def assert_valid_outputs(output_dir: Path, ct_path: Path) -> np.ndarray:
    labels = sitk.ReadImage(str(output_dir / SEGMENTATION_PATH))
    ct = sitk.ReadImage(str(ct_path))
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert labels.GetPixelID() == sitk.sitkUInt8
    array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(array).tolist()) <= {0, 1, 2}
    rfs = json.loads((output_dir / RFS_PATH).read_text())
    assert isinstance(rfs, float) and math.isfinite(rfs)
    hpv = json.loads((output_dir / HPV_PATH).read_text())
    assert isinstance(hpv, bool)
    assert not [p for p in files_under(output_dir) if ".tmp" in p.name], "temporary files left behind"
    assert not [*output_dir.glob(f"{STAGING_PREFIX}*"), *output_dir.glob(f"{TRASH_PREFIX}*")], "staging left behind"
    return array


def _expected_predictions(output_dir: Path, pet_path: Path) -> tuple[float, float, float]:
    """rfs.json and hpv-status.json recomputed independently: measurements by scipy/numpy from the written
    label image, features and each model written out from its JSON (helpers.independent_score)."""
    measured = independent_measurements(sitk.ReadImage(str(output_dir / SEGMENTATION_PATH)),
                                        sitk.ReadImage(str(pet_path)))
    clinical = {"age": "Age", "gender_male": "Gender", "tobacco": "Tobacco Consumption",
                "alcohol": "Alcohol Consumption", "performance_status": "Performance Status",
                "treatment_chemoradiotherapy": "Treatment"}
    known = {feature: float(SAMPLE_EHR[key]) for feature, key in clinical.items()} | {
        "m_stage": 0.0,  # "M0"
        "log_gtvp_volume": math.log1p(measured["gtvp_volume_ml"]),
        "log_gtvn_volume": math.log1p(measured["gtvn_volume_ml"]),
        "log_total_volume": math.log1p(measured["gtvp_volume_ml"] + measured["gtvn_volume_ml"]),
        "log_gtvp_suvmax": math.log(measured["gtvp_suvmax"]),
        "log_gtvn_suvmax": math.log(measured["gtvn_suvmax"]),
    }
    weights = load_manifest()
    rfs_model = json.loads(weights.rfs_model.read_text())
    hpv_model = json.loads(weights.hpv_model.read_text())
    probability = 1.0 / (1.0 + math.exp(-independent_score(hpv_model, known)))
    return independent_score(rfs_model, known), probability, hpv_model["threshold"]


def test_phantom_case_end_to_end(tmp_path, phantom_case_dir, phantom):
    out = tmp_path / "out"
    result = run_inference(phantom_case_dir, out)
    assert result.returncode == 0, result.stderr
    labels = assert_valid_outputs(out, phantom_case_dir / "images/ct/phantom.mha")
    reference = sitk.GetArrayFromImage(phantom.labels)
    assert dice(labels, reference, 1) > 0.8 and dice(labels, reference, 2) > 0.7
    rfs, hpv_probability, threshold = _expected_predictions(out, phantom_case_dir / "images/pet/phantom.mha")
    assert json.loads((out / RFS_PATH).read_text()) == pytest.approx(rfs, abs=1e-5)
    assert json.loads((out / HPV_PATH).read_text()) is (hpv_probability >= threshold)
    assert abs(hpv_probability - threshold) > 1e-3  # not so close to the threshold that rounding could decide
    assert "pet-threshold" in result.stderr and "NOT a network trained on HECKTOR" in result.stderr
    assert "stage preprocess" in result.stderr


@pytest.mark.parametrize("case", STS_CASES)
def test_real_sarcoma_case_end_to_end(tmp_path, case):
    folder = sts_training_layout(tmp_path, case)
    out = tmp_path / "out"
    result = run_inference(folder, out)
    assert result.returncode == 0, result.stderr
    assert_valid_outputs(out, folder / f"{case}__CT.nii.gz")
    assert "no brain found" in result.stderr


@pytest.mark.parametrize(("tasks", "expected"), [("1", {SEGMENTATION_PATH}), ("2,3", {RFS_PATH, HPV_PATH})])
def test_tasks_option_restricts_outputs(tmp_path, phantom_case_dir, tasks, expected):
    out = tmp_path / "out"
    result = run_inference(phantom_case_dir, out, "--tasks", tasks)
    assert result.returncode == 0, result.stderr
    assert {p.relative_to(out) for p in files_under(out)} == expected | {Path("case.json")}
    # radiomics serve only a Task 2/3 model that reads one; neither shipped model does, so no run computes them
    assert "stage radiomics" not in result.stderr, result.stderr[-3000:]
    assert "radiomics: not computed" in result.stderr, result.stderr[-3000:]


EHR_VARIANTS = {
    "official": None,  # the organisers' example, read from ../shared/data
    "official-missing": None,
    "strings-and-nulls": {"CenterID": "9", "Age": "61", "Gender": "M", "Tobacco": None, "Alcohol Consumption": "1",
                          "Performance": "0", "Treatment": "1", "M-stage": "Mx", "HPV Status": None},
    "stray-colon-key": {"Tobacco Consumption:": 1, "Age": 70.5, "Gender": "F"},
    "empty-object": {},
}


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_manifest())


@pytest.mark.parametrize("variant", list(EHR_VARIANTS))
def test_every_ehr_variant_gives_a_prediction(tmp_path, phantom_case_dir, pipeline, variant):
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    if variant.startswith("official"):
        source = CLINICAL_DIR / ("ehr_example_official.json" if variant == "official"
                                 else "ehr_example_official_missing_values.json")
        if not source.is_file():
            pytest.skip(f"{source} not found (../shared/data is not mounted)")
        shutil.copy(source, case_dir / "ehr.json")
    else:
        (case_dir / "ehr.json").write_text(json.dumps(EHR_VARIANTS[variant]))
    result = pipeline.run(case_dir, frozenset({2, 3}))
    assert result.predictions is not None
    assert math.isfinite(result.predictions.rfs_risk)
    assert 0.0 <= result.predictions.hpv_probability <= 1.0


def _nan_pet(case_dir: Path) -> None:
    pet_path = case_dir / "images/pet/phantom.mha"
    pet = sitk.ReadImage(str(pet_path))
    array = sitk.GetArrayFromImage(pet)
    array[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(pet)
    sitk.WriteImage(bad, str(pet_path))


# The whole matrix runs in-process in test_hostile_inputs.py; these go through the real interpreter entry point.
BAD_INPUTS = {
    "missing-pet": (lambda d: shutil.rmtree(d / "images/pet"), "PET", ()),
    "2d-image": (lambda d: sitk.WriteImage(sitk.Image([32, 32], sitk.sitkInt16), str(d / "images/ct/phantom.mha")),
                 "2-D", ()),
    "nan-voxels-strict": (_nan_pet, "NaN", ("--strict",)),
    "unparsable-ehr-strict": (lambda d: (d / "ehr.json").write_text("{'Age': 50,"), "ehr.json", ("--strict",)),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, phantom_case_dir, name):
    damage, message, options = BAD_INPUTS[name]
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    damage(case_dir)
    out = tmp_path / "out"
    out.mkdir()
    result = run_inference(case_dir, out, *options)
    assert result.returncode == 2
    assert message in result.stderr and "input error" in result.stderr and "Traceback" not in result.stderr
    assert files_under(out) == [] and list(out.iterdir()) == []


def test_recoverable_input_is_answered_by_default_with_a_warning(tmp_path, phantom_case_dir):
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    _nan_pet(case_dir)
    out = tmp_path / "out"
    result = run_inference(case_dir, out)
    assert result.returncode == 0, result.stderr
    assert_valid_outputs(out, case_dir / "images/ct/phantom.mha")
    assert "input problem [non-finite-voxels]" in result.stderr


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_run_report_records_the_outcome(tmp_path, phantom_case_dir, strict):
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    (case_dir / "ehr.json").write_text('{"Age": true}')
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    result = run_inference(case_dir, out, "--report", str(report_path), *(["--strict"] if strict else []))
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == result.returncode == (2 if strict else 0)
    assert report["options"]["policy"] == ("strict" if strict else "default")
    assert [p["code"] for p in report.get("input_problems", [])] == ([] if strict else ["ehr-values-unreadable"])
    assert report["versions"]["SimpleITK"] and report["started"] and report["finished"]
    if strict:
        assert report["status"] == "input-error" and "Age" in report["error"] and report["outputs"] == []
    else:
        assert report["status"] == "ok" and report["error"] is None
        assert len(report["outputs"]) == 4 and report["case"]["predictions"]["rfs_risk"] == json.loads(
            (out / RFS_PATH).read_text())
        assert any("ehr-values-unreadable" in w for w in report["warnings"])
        assert {t["stage"] for t in report["timings"]} >= {"read", "preprocess", "segment", "measure"}
    assert not [p for p in out.rglob("*") if p.name == "report.json"]  # nothing extra in the output folder


def test_outputs_are_readable_by_other_users(tmp_path, phantom_case_dir):
    out = tmp_path / "out"
    assert run_inference(phantom_case_dir, out).returncode == 0
    for path in files_under(out):
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not group/other readable"


def test_ensemble_engine_end_to_end_with_random_members(tmp_path, phantom_case_dir):
    """The deep-learning path through the real entry point (random, NOT trained, tiny networks)."""
    from training.make_random_weights import make_random_weights

    weights = tmp_path / "weights"
    tiny = {"dims": (4, 8, 8, 8), "depth": (1, 1, 1, 1), "pool_op_kernel_sizes": ((2, 2, 2),) * 3,
            "conv_kernel_sizes": ((3, 3, 3),) * 4}
    make_random_weights(weights, members=2, arch_kwargs=tiny, patch_size=(64, 64, 64),
                        ensemble_options={"overlap": 0.25, "whole_roi_if_fits": False})
    for name in ("rfs_model.json", "hpv_model.json"):
        shutil.copy(Path(load_manifest().weights_dir) / name, weights / name)
    out = tmp_path / "out"
    result = run_inference(phantom_case_dir, out, "--weights-dir", str(weights))
    assert result.returncode == 0, result.stderr
    assert_valid_outputs(out, phantom_case_dir / "images/ct/phantom.mha")
    assert "segmentation engine: ensemble -- NOT a network trained on HECKTOR" in result.stderr
    assert result.stderr.count("loaded random_stunet_") == 2


def test_weights_with_a_wrong_hash_are_refused_before_anything_is_written(tmp_path, phantom_case_dir):
    from training.make_random_weights import make_random_weights

    weights = tmp_path / "weights"
    make_random_weights(weights, members=1, arch_kwargs={"dims": (4, 8, 8, 8, 8, 8)}, patch_size=(64, 64, 64))
    member = next(weights.glob("*.safetensors"))
    member.write_bytes(member.read_bytes()[:-1] + b"\x00")
    out = tmp_path / "out"
    result = run_inference(phantom_case_dir, out, "--weights-dir", str(weights))
    assert result.returncode == 3
    assert member.name in result.stderr and "sha256" in result.stderr
    assert files_under(out) == []
