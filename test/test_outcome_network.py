"""The Tasks 2/3 image network (seed 000) on SYNTHETIC phantoms with a planted image-outcome relation.

One tiny network (ResNet-18 widths 8-64 on a 32^3 patch of a 3 mm ROI grid) is trained once per module on 48
phantoms (hecktor.io.phantom.synthetic_outcome: HPV-positive phantoms have bigger nodes and a smaller primary, RFS
is shorter with more uptake and volume); its clinical inputs are noise, so what it learns comes from the images.
Measured (2-core CPU, one thread): samples ~8 s, training 25 epochs ~12 s; held-out C-index 0.69, balanced
accuracy 0.82. The exported files, loaded the container's way, must give the training-time predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hecktor.core.manifest import Manifest, ManifestError, load_manifest, manifest_from_json, manifest_json
from hecktor.core.types import Case, ClinicalRecord
from hecktor.io.clinical import clinical_record_from_mapping
from hecktor.io.phantom import (
    PhantomGeometry,
    make_training_phantom,
    synthetic_outcome,
    training_case_seed,
    write_outcome_table,
    write_training_dataset,
)
from hecktor.measure.lesions import measure
from hecktor.outcome.inputs import hazard_risk, lesion_patch
from hecktor.outcome.predict import predict
from hecktor.outcome.runtime import (
    LoadedOutcomeNetwork,
    load_outcome_network,
    outcome_network_or_none,
    predict_tasks_2_3,
)
from hecktor.outcome.torch_backend.network import OutcomeArchitecture
from hecktor.pipeline import Pipeline
from hecktor.preprocess.roi import extract_roi
from training.outcome_data import OutcomeSample, make_sample
from training.outcome_export import export_outcome_model
from training.outcome_train import OutcomeTrainSettings, evaluate_outputs, predict_samples, train_outcome_network

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = PhantomGeometry(
    ct_size=(80, 80, 83), ct_spacing=(3.0, 3.0, 4.0), pet_size=(40, 40, 83), pet_spacing=(6.0, 6.0, 4.0)
)
PATCH = (32, 32, 32)
FEATURES = ("age", "gender_male", "tobacco")  # noise in the phantoms' tables
ARCH = OutcomeArchitecture(
    block_inplanes=(8, 16, 32, 64), clinical_features=len(FEATURES), clinical_embedding=8, head_hidden=16, dropout=0.1
)
SETTINGS = OutcomeTrainSettings(
    epochs=25, batch_size=8, lr_image=3e-3, lr_head=3e-3, validation_fraction=0.0, clinical_features=FEATURES, arch=ARCH
)


def _preprocess(manifest: Manifest) -> Manifest:
    return replace(manifest, preprocess=replace(manifest.preprocess, spacing_mm=3.0))


def _phantom_cases(dataset_seed: int, n: int, config) -> list[tuple[OutcomeSample, Case, object]]:
    out = []
    for i in range(n):
        phantom = make_training_phantom(training_case_seed(dataset_seed, i), GEOMETRY)
        outcome = synthetic_outcome(phantom.variant)
        record = clinical_record_from_mapping(dict(outcome.clinical))
        case = Case(f"SYN{dataset_seed}-{i:03d}", phantom.ct, phantom.pet, record, Path("ct"), Path("pet"))
        sample, _ = make_sample(
            case.case_id,
            "SYN",
            case,
            phantom.labels,
            record,
            (outcome.rfs_days, outcome.relapse, outcome.hpv_positive),
            config,
            PATCH,
        )
        out.append((sample, case, phantom.labels))
    return out


@pytest.fixture(scope="module")
def trained(shipped_manifest: Manifest):
    torch.set_num_threads(1)
    config = _preprocess(shipped_manifest).preprocess
    train = [s for s, _, _ in _phantom_cases(1, 48, config)]
    held_out = _phantom_cases(2, 32, config)
    result = train_outcome_network(train, SETTINGS, synthetic=True)
    return result, held_out, config


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result, _, config = trained
    dataset = {
        "patch_size": list(PATCH),
        "ct_window_hu": [-1000.0, 3000.0],
        "synthetic": True,
        "source": "SYNTHETIC phantoms",
        "preprocess": json.loads(json.dumps(config.__dict__)),
    }
    dataset["preprocess"]["roi_size_mm"] = list(config.roi_size_mm)
    return export_outcome_model(result, dataset, tmp_path_factory.mktemp("export") / "model", centres=["SYN"])


def test_the_network_learns_the_planted_relation_on_held_out_phantoms(trained) -> None:
    result, held_out, _ = trained
    samples = [s for s, _, _ in held_out]
    assert sum(s.hpv for s in samples) not in (0, len(samples)) and sum(s.relapse for s in samples) >= 8
    figures = evaluate_outputs(samples, *predict_samples(result.network, samples, result.scaling, 5.0))
    assert figures["c_index"] > 0.6, figures
    assert figures["balanced_accuracy"] > 0.65, figures


def test_the_patch_equals_the_crop_of_extract_roi_labels(trained) -> None:
    _, held_out, config = trained
    _, case, labels = held_out[0]
    roi = extract_roi(case, config, labels=labels)
    patch = lesion_patch(roi, labels, PATCH, (-1000.0, 3000.0))
    z, y, x = patch.start_zyx
    assert min(patch.start_zyx) >= 0 and patch.masks[0].any()
    crop = roi.labels[z : z + PATCH[0], y : y + PATCH[1], x : x + PATCH[2]]
    assert np.array_equal(crop == 1, patch.masks[0] > 0) and np.array_equal(crop == 2, patch.masks[1] > 0)


def _container_predictions(network: LoadedOutcomeNetwork, held_out, config) -> tuple[np.ndarray, np.ndarray]:
    risks, probabilities = [], []
    for _, case, labels in held_out:
        roi = extract_roi(case, config)  # what the pipeline's preprocess stage gives
        p = network.predict(roi, labels, case.clinical, measure(labels, case.pet))
        risks.append(p.rfs_risk)
        probabilities.append(p.hpv_probability)
    return np.array(risks), np.array(probabilities)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_exported_weights_give_the_training_predictions(trained, exported: Path, backend: str) -> None:
    result, held_out, config = trained
    manifest = load_manifest(exported)
    section = manifest.outcome_network
    assert section is not None and not section.trained_on_real_data and section.backend == "onnxruntime"
    if backend == "torch":
        file = section.model_card["files"]["safetensors"]
        section = replace(section, backend="torch", weights=file["name"], sha256=file["sha256"])
    network = load_outcome_network(section, manifest.weights_dir, device="cpu")
    cases = held_out[:6]
    rfs, hpv = predict_samples(result.network, [s for s, _, _ in cases], result.scaling, 5.0)
    risks, probabilities = _container_predictions(network, cases, config)
    assert np.abs(risks - hazard_risk(rfs)).max() < 1e-4
    assert np.abs(probabilities - 1.0 / (1.0 + np.exp(-hpv.astype(np.float64)))).max() < 1e-4
    assert section.model_card["onnx_vs_torch_max_abs_diff"] < 1e-4


def test_export_writes_a_synthetic_model_card(exported: Path) -> None:
    card = (exported / "MODEL_CARD_outcome.md").read_text()
    assert "SYNTHETIC" in card and "NOT on real data" in card
    for name in ("outcome_network.onnx", "outcome_network.safetensors", "rfs_model.json", "hpv_model.json"):
        assert (exported / name).is_file(), name


def test_the_pipeline_runs_the_network_and_the_log_says_so(
    trained, exported: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, held_out, _ = trained
    caplog.set_level(logging.INFO)
    pipeline = Pipeline(load_manifest(exported))
    assert pipeline.outcome_network is not None
    assert "SYNTHETIC" in caplog.text
    result = pipeline.run_case(held_out[0][1])
    assert result.predictions is not None and result.predictions.details["image_network"] == 1.0
    assert "answered by the image network 'outcome_network'" in caplog.text


def test_without_the_section_the_clinical_models_answer(
    trained, shipped_manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    _, held_out, _ = trained
    assert shipped_manifest.outcome_network is None
    caplog.set_level(logging.INFO)
    pipeline = Pipeline(_preprocess(shipped_manifest))
    assert pipeline.outcome_network is None
    case = held_out[0][1]
    result = pipeline.run_case(case)
    assert "image_network" not in result.predictions.details
    assert "answered by the clinical models" in caplog.text


@pytest.mark.parametrize("damage", ["bytes-changed", "not-onnx"])
def test_a_broken_network_file_falls_back_to_the_clinical_models(
    trained, exported: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, held_out, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    manifest = load_manifest(folder)
    onnx = folder / "outcome_network.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100] + b"\0" * 100 if damage == "bytes-changed" else b"not an onnx file")
    if damage == "not-onnx":  # the hash matches: the file itself must be refused
        section = replace(manifest.outcome_network, sha256=hashlib.sha256(onnx.read_bytes()).hexdigest())
        manifest = replace(manifest, outcome_network=section)
    caplog.set_level(logging.INFO)
    pipeline = Pipeline(manifest)
    assert pipeline.outcome_network is None
    assert "cannot be loaded" in caplog.text and "clinical models will answer" in caplog.text
    case = held_out[1][1]
    result = pipeline.run_case(case)
    assert "image_network" not in result.predictions.details


def test_a_network_failing_on_a_case_falls_back_with_a_warning(
    trained, exported: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, held_out, config = trained
    manifest = load_manifest(exported)

    def broken(*arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("out of memory")

    network = LoadedOutcomeNetwork(manifest.outcome_network, broken)
    models = Pipeline(manifest).clinical_models
    _, case, labels = held_out[2]
    measurements = measure(labels, case.pet)
    caplog.set_level(logging.INFO)
    got = predict_tasks_2_3(network, models, case.clinical, measurements, extract_roi(case, config), labels)
    assert got == predict(models, case.clinical, measurements)
    assert "failed on this case (RuntimeError: out of memory)" in caplog.text


def test_the_section_is_validated_strictly(exported: Path) -> None:
    manifest = load_manifest(exported)
    document = manifest_json(manifest)
    assert manifest_from_json(json.loads(json.dumps(document)), exported) == manifest  # round trip
    bad = {
        "weights": "outcome_network.safetensors",  # onnxruntime backend
        "rfs_cut_points_days": [1357.0, 769.0, 2626.0],
        "ct_window_hu": [3000.0, -1000.0],
        "clinical_features": [{"name": "hpv_positive", "median": 1.0, "mean": 1.0, "std": 1.0}],
        "hpv_threshold": 1.5,
        "unknown_key": 1,
    }
    for key, value in bad.items():
        broken = json.loads(json.dumps(document))
        broken["outcome_network"][key] = value
        with pytest.raises(ManifestError, match="outcome_network"):
            manifest_from_json(broken, exported)
    shorter = json.loads(json.dumps(document))
    shorter["outcome_network"]["rfs_cut_points_days"] = [769.0, 1357.0]  # 3 bins, arch_kwargs says 4
    with pytest.raises(ManifestError, match="num_bins"):
        manifest_from_json(shorter, exported)


def test_the_onnx_path_imports_no_torch(exported: Path) -> None:
    script = f"""
import sys
from pathlib import Path
from hecktor.core.manifest import load_manifest
from hecktor.outcome.runtime import outcome_network_or_none
import hecktor.pipeline
manifest = load_manifest(Path({str(exported)!r}))
network = outcome_network_or_none(manifest)
assert network is not None
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# Slow (about 40 s): the command-line chain around the training the module's fixtures already run in-process.
# Run with: .venv/bin/python -m pytest -m slow test/test_outcome_network.py
@pytest.mark.slow
def test_the_training_cli_prepares_trains_resumes_and_exports(tmp_path: Path, shipped_manifest: Manifest) -> None:
    dataset = write_training_dataset(tmp_path / "data", 6, seed=3, geometry=GEOMETRY)
    table = write_outcome_table(dataset)
    base = tmp_path / "base"
    shutil.copytree(shipped_manifest.weights_dir, base)
    from hecktor.core.manifest import write_manifest

    write_manifest(replace(_preprocess(load_manifest(base)), weights_dir=base.absolute()))
    work = tmp_path / "work"
    common = [sys.executable, "-m", "training", "--work", str(work)]
    tiny = [
        "--widths",
        "4",
        "8",
        "8",
        "8",
        "--clinical-embedding",
        "4",
        "--head-hidden",
        "4",
        "--batch-size",
        "3",
        "--validation-fraction",
        "0.34",
        "--threads",
        "1",
        "--features",
        "age",
        "log_gtvp_volume",
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*common, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    prepared = run(
        "outcome-prepare",
        str(dataset.root),
        "--table",
        str(table),
        "--preprocess-from",
        str(base),
        "--patch-size",
        "24",
        "24",
        "24",
    )
    assert "6 cases ready" in prepared.stdout and "SYNTHETIC" in prepared.stderr
    first = run("outcome-train", "--epochs", "1", *tiny)
    assert "SYNTHETIC phantoms, NOT real data" in first.stderr
    resumed = run("outcome-train", "--epochs", "2", "--resume", *tiny)
    assert "resuming from" in resumed.stderr and "epoch 2/2" in resumed.stderr and "epoch 1/2" not in resumed.stderr
    history = json.loads((work / "outcome" / "train" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and history["synthetic"] is True
    out = tmp_path / "model"
    run("outcome-export", str(out), "--base", str(base))
    manifest = load_manifest(out)
    assert manifest.outcome_network is not None and manifest.outcome_network.patch_size == (24, 24, 24)
    assert outcome_network_or_none(manifest) is not None
    assert "SYNTHETIC" in (out / "MODEL_CARD_outcome.md").read_text()


def test_the_default_network_matches_monai_resnet18() -> None:
    from monai.networks.nets import resnet18

    from hecktor.outcome.torch_backend.network import OutcomeNetwork

    ours = OutcomeNetwork(OutcomeArchitecture(conv1_stride=1)).backbone
    reference = resnet18(spatial_dims=3, n_input_channels=2, feed_forward=False)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_the_clinical_record_of_a_case_is_used(trained) -> None:
    # Two records that differ only in a used feature give different clinical vectors (and network outputs).
    result = trained[0]
    manifest_free = result.scaling
    from hecktor.outcome.features import clinical_values, clinical_vector

    young = clinical_vector(clinical_values(ClinicalRecord(age=40.0), None), manifest_free, 5.0)
    old = clinical_vector(clinical_values(ClinicalRecord(age=80.0), None), manifest_free, 5.0)
    missing = clinical_vector(clinical_values(ClinicalRecord(), None), manifest_free, 5.0)
    assert young[0] < old[0] and missing[0] == pytest.approx(
        (result.scaling[0].median - result.scaling[0].mean) / result.scaling[0].std
    )
