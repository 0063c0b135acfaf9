"""The real entry point (inference.py) on whole cases: a SYNTHETIC phantom and the real sarcoma cases."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import CLINICAL_DIR, STS_CASES, files_under, run_inference, sts_training_layout

from hecktor.manifest import load_manifest
from hecktor.metrics import dice
from hecktor.pipeline import Pipeline
from hecktor.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH


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
    return array


def test_phantom_case_end_to_end(tmp_path, phantom_case_dir, phantom):
    out = tmp_path / "out"
    result = run_inference(phantom_case_dir, out)
    assert result.returncode == 0, result.stderr
    labels = assert_valid_outputs(out, phantom_case_dir / "images/ct/phantom.mha")
    reference = sitk.GetArrayFromImage(phantom.labels)
    assert dice(labels, reference, 1) > 0.8 and dice(labels, reference, 2) > 0.7
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
    assert {p.relative_to(out) for p in files_under(out)} == expected


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


BAD_INPUTS = {
    "missing-pet": (lambda d: shutil.rmtree(d / "images/pet"), "PET"),
    "empty-ct-folder": (lambda d: (d / "images/ct/phantom.mha").unlink(), "no CT image"),
    "two-ct-files": (lambda d: shutil.copy(d / "images/ct/phantom.mha", d / "images/ct/b.mha"), "exactly one CT"),
    "nan-voxels": (_nan_pet, "NaN"),
    "2d-image": (lambda d: sitk.WriteImage(sitk.Image([32, 32], sitk.sitkInt16), str(d / "images/ct/phantom.mha")),
                 "2-D"),
    "unparsable-ehr": (lambda d: (d / "ehr.json").write_text("{'Age': 50,"), "ehr.json"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, phantom_case_dir, name):
    damage, message = BAD_INPUTS[name]
    case_dir = tmp_path / "case"
    shutil.copytree(phantom_case_dir, case_dir)
    damage(case_dir)
    out = tmp_path / "out"
    out.mkdir()
    result = run_inference(case_dir, out)
    assert result.returncode == 2
    assert message in result.stderr and "input error" in result.stderr
    assert files_under(out) == []


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
