"""prepare -> plan -> train -> export -> container inference, and the training/inference parity.

All on SYNTHETIC phantoms (hecktor.io.phantom), through ``python -m training`` (see training_chain.py). The
parity test is the guarantee that training and inference cannot drift apart: on the same case and the
same checkpoint, nnU-Net's own predictor (on the prepared ROI) and the container's ensemble engine (on the
raw case) see identical normalised inputs and give the same softmax.
"""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from training_chain import REPO, Chain, build_chain, coarse_model_folder

from hecktor.core.manifest import load_manifest
from hecktor.core.metrics import dice
from hecktor.io.phantom import make_training_phantom, write_platform_case, write_training_dataset
from hecktor.io.read import read_case
from hecktor.preprocess.roi import extract_roi

pytest.importorskip("nnunetv2", reason="nnU-Net v2 is needed for the training chain (requirements-dev.txt)")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_chain(tmp_path_factory.mktemp("training-chain"))


def test_prepare_writes_the_container_roi_as_an_nnunet_dataset(chain: Chain) -> None:
    dataset = json.loads((chain.raw / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "noNorm"} and dataset["numTraining"] == 6
    assert dataset["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2} and dataset["hecktor"]["synthetic"] is True
    cases = json.loads((chain.raw / "cases.json").read_text())
    assert sorted(cases) == sorted(chain.data.case_ids)
    for case_id in chain.data.bqml_cases:  # the known factor was used, not the run-time estimate
        assert cases[case_id]["pet_units"] == "Bq/mL, known factor" and cases[case_id]["suv_factor"] > 0
    # The prepared CT and labels are the container's ROI of the raw case (same grid, same values).
    settings = load_manifest(chain.work.parent / "roi_settings").preprocess
    case_id = chain.data.case_ids[0]
    labels = sitk.ReadImage(str(chain.data.task1_dir / case_id / f"{case_id}.nii.gz"))
    roi = extract_roi(read_case(chain.data.task1_dir / case_id), settings, labels=labels)
    ct = sitk.ReadImage(str(chain.raw / "imagesTr" / f"{case_id}_0000.nii.gz"))
    assert ct.GetSize() == roi.grid.GetSize() and np.allclose(ct.GetOrigin(), roi.grid.GetOrigin())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), roi.ct_hu)
    prepared_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(chain.raw / "labelsTr" / f"{case_id}.nii.gz")))
    np.testing.assert_array_equal(prepared_labels, roi.labels)
    # The ROI holds the lesions: every case keeps most of its GTVp (a too small ROI once cut them all away).
    for case_id, record in cases.items():
        assert record["label_volume_ml_roi"]["GTVp"] >= 0.8 * record["label_volume_ml_source"]["GTVp"], case_id


def test_plans_fix_spacing_patch_and_normalisation(chain: Chain) -> None:
    plans = json.loads((chain.preprocessed / "HecktorPlans.json").read_text())
    base = plans["configurations"]["3d_fullres"]
    assert base["spacing"] == [2.0, 2.0, 2.0] and base["patch_size"] == [64, 64, 64] and base["batch_size"] == 2
    assert base["normalization_schemes"] == ["CTNormalization", "NoNormalization"]
    trained = plans["configurations"][chain.configuration]
    assert trained["inherits_from"] == "3d_fullres" and trained["hecktor"]["loss"] == "ce_dice"


def test_splits_are_patient_and_centre_disjoint(chain: Chain) -> None:
    splits = json.loads((chain.preprocessed / "splits_final.json").read_text())
    index = json.loads((chain.preprocessed / "splits_index.json").read_text())
    centre_of = chain.data.centre_of
    assert set(index) == {"kfold5", "kfold10", "centre-out"}
    for scheme, folds in index.items():
        validated = [case for fold in folds for case in splits[fold["index"]]["val"]]
        assert sorted(validated) == sorted(chain.data.case_ids), scheme  # every patient validated exactly once
        for fold in folds:
            train, val = set(splits[fold["index"]]["train"]), set(splits[fold["index"]]["val"])
            assert not train & val and train | val == set(chain.data.case_ids)
            if scheme == "centre-out":
                assert not {centre_of[c] for c in train} & {centre_of[c] for c in val}


def test_export_is_a_self_contained_model_folder(chain: Chain) -> None:
    manifest = load_manifest(chain.model)  # also checks every sha256
    assert manifest.engine == "ensemble" and manifest.ensemble is not None
    assert manifest.ensemble.trained_on_real_data is False
    (member,) = manifest.ensemble.members
    assert member.weights.endswith(".safetensors") and member.architecture == "STUNet"
    assert member.model_card["trained_on_real_data"] is False and "SYNTHETIC" in member.model_card["description"]
    assert member.model_card["training_cases"] + member.model_card["validation_cases"] == 6
    assert set(member.model_card["validation_figures_roi_grid"]) >= {"gtvp_dice", "gtvn_aggregated_dice",
                                                                   "gtvn_detection_f1"}
    plans = json.loads((chain.preprocessed / "HecktorPlans.json").read_text())
    stats = plans["foreground_intensity_properties_per_channel"]["0"]
    assert member.ct_normalisation == {"mean": stats["mean"], "std": stats["std"], "lower": stats["percentile_00_5"],
                                       "upper": stats["percentile_99_5"]}
    assert not list(chain.model.glob("*.pth")) and manifest.rfs_model.is_file() and manifest.hpv_model.is_file()


def test_the_container_runs_the_exported_folder_unchanged(chain: Chain, tmp_path: Path) -> None:
    case = tmp_path / "input"
    write_platform_case(make_training_phantom(seed=987_654), case)
    out = tmp_path / "output"
    result = subprocess.run([sys.executable, str(REPO / "inference.py"), "--input", str(case), "--output", str(out),
                             "--weights-dir", str(chain.model), "--time-limit", "0"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NOT a network trained on HECKTOR data" in result.stderr  # synthetic weights say so in the run log
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # The three platform outputs, and case.json (a local run says which case the folder holds).
    assert produced == ["case.json", "hpv-status.json", "images/tumor-lymph-node-segmentation/output.mha", "rfs.json"]


def test_checkpoints_are_read_without_unpickling_code(tmp_path: Path) -> None:
    import torch

    from training.export import load_checkpoint

    class Payload:
        def __reduce__(self):  # what a malicious checkpoint would run when unpickled
            return (print, ("unpickled code ran",))

    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_a_rerun_of_prepare_skips_finished_cases(chain: Chain) -> None:
    from training.prepare import prepare_dataset, read_suv_factors

    settings = load_manifest(chain.work.parent / "roi_settings").preprocess
    before = {p.name: p.stat().st_mtime_ns for p in (chain.raw / "imagesTr").iterdir()}
    summary = prepare_dataset(chain.data.root, chain.raw, settings, read_suv_factors(chain.data.bqml_factors_csv))
    assert summary.prepared == () and sorted(summary.already_done) == sorted(chain.data.case_ids)
    assert {p.name: p.stat().st_mtime_ns for p in (chain.raw / "imagesTr").iterdir()} == before


def test_a_corrupt_case_is_skipped_and_named(tmp_path: Path) -> None:
    from training.prepare import format_summary, prepare_dataset

    data = write_training_dataset(tmp_path / "data", 3, seed=5)
    broken = data.case_ids[1]
    ct = data.task1_dir / broken / f"{broken}__CT.nii.gz"
    ct.write_bytes(gzip.compress(ct.read_bytes()[:2000]))  # a truncated image inside a valid gzip stream
    settings = load_manifest(coarse_model_folder(tmp_path / "settings")).preprocess
    out = tmp_path / "raw" / "Dataset501_HECKTOR2025ROI"
    summary = prepare_dataset(data.root, out, settings, {})
    assert [s.case_id for s in summary.skipped] == [broken]
    assert sorted(summary.prepared) == sorted(set(data.case_ids) - {broken})
    assert broken in format_summary(summary) and not list(out.rglob(f"{broken}*"))
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


# --------------------------------------------------------------------------- parity


def _nnunet_predictor(chain: Chain):
    """nnU-Net's own predictor with its logit sums kept in float32 instead of float16 (everything else nnU-Net's)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from training.export import load_checkpoint
    from training.nnunet_trainers.hecktor_trainer import HecktorTrainer

    class Float32SumPredictor(nnUNetPredictor):
        """nnU-Net's sliding window (same slicers, Gaussian, mirroring), summing in float32."""

        @torch.inference_mode()
        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device=True):
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.float32)
            weights = torch.zeros(data.shape[1:], dtype=torch.float32)
            gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1.0 / 8,
                                        value_scaling_factor=10, dtype=torch.float32, device=torch.device("cpu"))
            for sl in slicers:
                logits[sl] += self._internal_maybe_mirror_and_predict(data[sl][None])[0].float() * gaussian
                weights[sl[1:]] += gaussian
            return logits / weights

    plans = json.loads((chain.preprocessed / "HecktorPlans.json").read_text())
    dataset_json = json.loads((chain.preprocessed / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(chain.configuration)
    checkpoint = load_checkpoint(chain.fold0 / "checkpoint_final.pth")
    network = HecktorTrainer.build_network_architecture(plans_manager, config, 2, 3, False)
    predictor = Float32SumPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, config, [checkpoint["network_weights"]], dataset_json,
                                    "HecktorTrainer", checkpoint["inference_allowed_mirroring_axes"])
    return plans_manager, config, dataset_json, predictor


def test_container_and_nnunet_predictor_agree(chain: Chain) -> None:
    import torch

    from hecktor.preprocess.normalise import normalise_ct, normalise_pet
    from hecktor.segment.ensemble import load_ensemble

    plans_manager, config, dataset_json, float32_sums = _nnunet_predictor(chain)
    case_id = json.loads((chain.preprocessed / "splits_final.json").read_text())[0]["val"][0]
    images = [str(chain.raw / "imagesTr" / f"{case_id}_000{c}.nii.gz") for c in (0, 1)]
    data, _, properties = config.preprocessor_class(verbose=False).run_case(images, None, plans_manager, config,
                                                                          dataset_json)
    # The container, on the raw case, with the exported model folder.
    manifest = load_manifest(chain.model)
    assert manifest.ensemble is not None
    engine = load_ensemble(manifest.ensemble, manifest.weights_dir, device="cpu")
    roi = extract_roi(read_case(chain.data.task1_dir / case_id), manifest.preprocess)
    member = manifest.ensemble.members[0]
    inputs = np.stack([normalise_ct(roi.ct_hu, member.ct_normalisation), normalise_pet(roi.pet_suv)])
    assert [list(b) for b in properties["bbox_used_for_cropping"]] == [[0, s] for s in roi.ct_hu.shape]  # no crop
    np.testing.assert_array_equal(inputs, data)  # identical normalised inputs
    container = engine.segment(roi).values

    tensor = torch.from_numpy(data)
    reference = torch.softmax(float32_sums.predict_logits_from_preprocessed_data(tensor).float(), 0).numpy()
    assert np.abs(container - reference).max() <= 1e-4
    assert (container.argmax(0) == reference.argmax(0)).mean() >= 0.999
    # nnU-Net's stock predictor differs from both by its float16 logit sums alone (the same windows, Gaussian and
    # mirrors): on this untrained network, full of near-ties, 0.06-0.6 % of its labels flip. Not asserted: it is
    # nnU-Net's rounding, not a property of this product (README, "Train your own ensemble").
    # And the labels inside the ROI, as the container writes them, against nnU-Net's: Dice of each class.
    for label in (1, 2):
        if (reference.argmax(0) == label).any():
            assert dice(container.argmax(0), reference.argmax(0), label) >= 0.999


def test_evaluate_reports_the_fold_validation_in_challenge_metrics(chain: Chain, tmp_path: Path) -> None:
    from training_chain import run_training_cli

    run_training_cli("--work", chain.work, "evaluate", "--configuration", chain.configuration, "--json",
                     tmp_path / "cv.json")
    report = json.loads((tmp_path / "cv.json").read_text())
    (fold,) = report["folds"]
    validation = json.loads((chain.preprocessed / "splits_final.json").read_text())[0]["val"]
    assert report["folds_trained"] == 1 and report["folds_planned"] == 5 and fold["cases"] == len(validation)
    # Independent: numpy counts over nnU-Net's validation files and the prepared references.
    inter = total = 0
    for case in validation:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(chain.fold0 / "validation" / f"{case}.nii.gz"))) == 2
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(chain.preprocessed / "gt_segmentations" / f"{case}.nii.gz")))
        inter += int(np.count_nonzero(pred & (ref == 2)))
        total += int(np.count_nonzero(pred) + np.count_nonzero(ref == 2))
    expected = 2 * inter / total if total else None
    assert fold["gtvn_aggregated_dice"] == pytest.approx(expected) if expected is not None else True
    card = load_manifest(chain.model).ensemble.members[0].model_card["validation_figures_roi_grid"]
    assert card == fold  # the model card holds the same figures (JSON round trips floats exactly)


# Slow (about 105 s on the 2-core CPU): the second architecture and loss through the chain the default run already
# checks with STU-Net and CE + Dice. Run with: .venv/bin/python -m pytest -m slow test/test_training_chain.py
@pytest.mark.slow
def test_segresnet_and_the_oda_loss_train_through_the_same_chain(chain: Chain, tmp_path: Path) -> None:
    from training_chain import run_training_cli

    run_training_cli("--work", chain.work, "train", "--architecture", "segresnet", "--loss", "oda", "--device", "cpu",
                     "--epochs", 1, "--iterations", 1, "--val-iterations", 1, "--fold", 0, "--data-workers", 0)
    run_training_cli("--work", chain.work, "export", tmp_path / "segresnet", "--configuration", "segresnet_oda_1x1",
                     "--folds", 0, "--onnx")
    manifest = load_manifest(tmp_path / "segresnet")
    assert manifest.ensemble is not None and manifest.ensemble.backend == "onnxruntime"
    (member,) = manifest.ensemble.members
    assert member.architecture == "SegResNet" and member.model_card["loss"] == "oda"
    from hecktor.segment.ensemble import load_ensemble

    roi = extract_roi(read_case(chain.data.task1_dir / chain.data.case_ids[0]), manifest.preprocess)
    probabilities = load_ensemble(manifest.ensemble, manifest.weights_dir, device="cpu").segment(roi).values
    assert probabilities.shape == (3, *roi.ct_hu.shape) and np.allclose(probabilities.sum(axis=0), 1, atol=1e-5)
