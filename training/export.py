"""``python -m training export``: trained nnU-Net folds -> a self-contained model folder the container runs as is.

For every fold of the chosen split(s):

- the final checkpoint is read with ``torch.load(weights_only=True)`` and an explicit allow-list of the
  numpy types nnU-Net stores in it (nothing else is unpickled), its weights are loaded into the product's
  own network class with ``strict=True`` and written as safetensors (or ONNX with ``--onnx``): no pickle
  ships;
- a manifest member records the architecture, patch size, the CT normalisation statistics nnU-Net used
  (dataset foreground percentiles, mean, std from the plans), the label map and the file's sha256, and a
  model card with the fold's validation figures (:mod:`training.cv_report`, the product's metrics) and the
  data it was trained on.

The manifest's preprocessing is the one the dataset was prepared with; tiling follows nnU-Net's predictor
(overlap 0.5, the trainer's mirror axes); post-processing and the Task 2/3 files come from ``--base`` (the
shipped model folder by default) and are copied. The folder is written next to its destination and renamed
into place when complete, so a failed export leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from hecktor.core.manifest import (
    CHALLENGE_LABELS,
    DEFAULT_WEIGHTS_DIR,
    MANIFEST_NAME,
    load_manifest,
    manifest_from_json,
    manifest_json,
    write_manifest,
)
from training.cv_report import TRAINER_PREFIX, find_configuration, fold_figures, json_ready, split_folds
from training.plan import PLANS_NAME
from training.workspace import Workspace

__all__ = ["CHECKPOINT_SAFE_GLOBALS", "export_model_folder", "load_checkpoint", "member_file", "member_network"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
# What an nnU-Net v2 checkpoint holds besides tensors, dicts, lists, strings and numbers: numpy scalars
# (the EMA Dice, logged losses) and their dtypes. Anything else in a checkpoint is refused.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = (
    np._core.multiarray.scalar,
    np.dtype,
    np.dtypes.Float32DType,
    np.dtypes.Float64DType,
    np.dtypes.Int64DType,
)
ENSEMBLE_OVERLAP = 0.5  # nnU-Net's predictor: tile_step_size 0.5
ENSEMBLE_BATCH_SIZE = 2


def load_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint, unpickling only tensors, containers and :data:`CHECKPOINT_SAFE_GLOBALS`."""
    import torch

    with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
        return torch.load(path, map_location="cpu", weights_only=True)


def member_network(configuration: dict[str, Any], state: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """The product network of a training configuration with the checkpoint's weights (``strict=True``).

    Returns the network (eval mode, no deep supervision), its architecture name and the manifest's
    ``arch_kwargs`` (everything but the channels, which the manifest's defaults fix at 2 in, 3 out).
    """
    from hecktor.segment.torch_backend.networks import build_network
    from training.nnunet_trainers.hecktor_trainer import NNUNET_ONLY_ARCH_KEYS

    architecture = configuration["hecktor"]["architecture"]
    kwargs = {k: v for k, v in configuration["architecture"]["arch_kwargs"].items() if k not in NNUNET_ONLY_ARCH_KEYS}
    network = build_network(architecture, kwargs)
    network.load_state_dict(state, strict=True)
    return network.eval(), architecture, kwargs


def _resolved_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(name).configuration


def _ct_normalisation(plans: dict[str, Any]) -> dict[str, float]:
    stats = plans["foreground_intensity_properties_per_channel"]["0"]
    return {"mean": float(stats["mean"]), "std": float(stats["std"]), "lower": float(stats["percentile_00_5"]),
            "upper": float(stats["percentile_99_5"])}


def member_file(network: Any, arch_kwargs: dict[str, Any], patch: tuple[int, int, int], onnx: bool,
                fp16_weights: bool, model_card: str) -> tuple[bytes, str]:
    """A member's file and its suffix: ONNX (optionally float16 weights), or safetensors carrying ``model_card``
    as metadata. Also what ``make_random_weights`` writes."""
    if onnx:
        from hecktor.segment.torch_backend.onnx_export import (
            export_member_to_onnx,
            member_in_channels,
            with_float16_weights,
        )

        data = export_member_to_onnx(network, member_in_channels(arch_kwargs), patch)
        return (with_float16_weights(data) if fp16_weights else data), ".onnx"
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    return save(state, metadata={"model_card": model_card}), ".safetensors"


def _model_card(workspace: Workspace, dataset_json: dict[str, Any], configuration: str, config: dict[str, Any],
                split: str, entry: dict[str, Any], checkpoint: dict[str, Any], figures: dict[str, Any],
                train_cases: Sequence[str]) -> dict[str, Any]:
    cases = json.loads((workspace.raw_dataset / "cases.json").read_text())
    synthetic = bool(dataset_json.get("hecktor", {}).get("synthetic", False))
    centres = sorted({cases[c]["centre"] for c in train_cases if c in cases})
    return {
        "description": ("trained on SYNTHETIC phantoms: for tests of the training chain only, NOT a clinical model"
                        if synthetic else "trained on contoured FDG-PET/CT"),
        "trained_on_real_data": not synthetic,
        "dataset": workspace.dataset,
        "training_cases": len(train_cases),
        "training_centres": centres,
        "split": split,
        "fold": entry["name"],
        "validation_cases": len(entry["validation"]),
        "validation_figures_roi_grid": figures,
        "framework": f"nnU-Net v2 {version('nnunetv2')} ({checkpoint['trainer_name']}, plans {PLANS_NAME}, "
                     f"configuration {configuration})",
        "loss": config["hecktor"]["loss"],
        "epochs_trained": int(checkpoint["current_epoch"]),
        "iterations_per_epoch": config["hecktor"]["iterations_per_epoch"],
        "patch_size": list(config["patch_size"]),
        "batch_size": config["batch_size"],
    }


def export_model_folder(
    workspace: Workspace,
    out_dir: Path,
    configuration: str | None = None,
    splits: Sequence[str] = ("kfold5",),
    onnx: bool = False,
    fp16_weights: bool = False,
    base: Path | None = None,
    folds: Sequence[int] | None = None,
) -> Path:
    """Write the model folder of the trained folds of ``splits`` (only folds ``folds`` of each, when given);
    returns ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` exists (an export never overwrites a model folder).
        FileNotFoundError: a fold of the splits has no final checkpoint.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: export writes a new model folder")
    if fp16_weights and not onnx:
        raise ValueError("--fp16-weights applies to ONNX members (--onnx)")
    configuration = find_configuration(workspace, configuration)
    plans = json.loads((workspace.preprocessed_dataset / f"{PLANS_NAME}.json").read_text())
    dataset_json = json.loads((workspace.raw_dataset / "dataset.json").read_text())
    config = _resolved_configuration(plans, configuration)
    results = workspace.results_dataset / f"{TRAINER_PREFIX}{configuration}"
    reference = workspace.preprocessed_dataset / "gt_segmentations"
    all_cases = sorted(json.loads((workspace.raw_dataset / "cases.json").read_text()))
    chosen = [(split, entry) for split in splits for k, entry in enumerate(split_folds(workspace, split))
              if folds is None or k in set(folds)]
    if not chosen:
        raise ValueError(f"no folds chosen (splits {list(splits)}, folds {list(folds or [])})")
    missing = [str(results / f"fold_{e['index']}" / CHECKPOINT) for _, e in chosen
               if not (results / f"fold_{e['index']}" / CHECKPOINT).is_file()]
    if missing:
        raise FileNotFoundError("no final checkpoint (train these folds first): " + ", ".join(missing))
    base_manifest = load_manifest(base or DEFAULT_WEIGHTS_DIR)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would survive a COPY into an image whose user is not the owner
    try:
        members, mirror_axes = [], None
        for split, entry in chosen:
            fold_dir = results / f"fold_{entry['index']}"
            checkpoint = load_checkpoint(fold_dir / CHECKPOINT)
            network, architecture, kwargs = member_network(config, checkpoint["network_weights"])
            mirror_axes = tuple(int(a) for a in checkpoint["inference_allowed_mirroring_axes"] or ())
            # NaN (no GTVn in any validation case) is written as null: the manifest holds JSON values only.
            figures = json_ready(asdict(fold_figures(entry["name"], fold_dir / "validation", reference,
                                                     entry["validation"])))
            train_cases = [c for c in all_cases if c not in set(entry["validation"])]
            card = _model_card(workspace, dataset_json, configuration, config, split, entry, checkpoint, figures,
                               train_cases)
            patch = tuple(int(p) for p in config["patch_size"])
            data, suffix = member_file(network, kwargs, patch, onnx, fp16_weights, json.dumps(card, sort_keys=True))
            name = f"{configuration}_{split}_fold{entry['index']}".replace("-", "_")
            (staging / f"{name}{suffix}").write_bytes(data)
            members.append({"name": name, "architecture": architecture, "arch_kwargs": kwargs,
                            "patch_size": list(patch), "weights": f"{name}{suffix}",
                            "sha256": hashlib.sha256(data).hexdigest(), "ct_normalisation": _ct_normalisation(plans),
                            "labels": dict(CHALLENGE_LABELS), "model_card": card})
            log.info("exported %s (%s validation: GTVp Dice %s, GTVn aggregated Dice %s)", name, entry["name"],
                     figures["gtvp_dice"], figures["gtvn_aggregated_dice"])
        for source in (base_manifest.rfs_model, base_manifest.hpv_model):
            shutil.copy2(source, staging / source.name)
        for extra in base_manifest.weights_dir.glob("MODEL_CARD*.md"):
            shutil.copy2(extra, staging / extra.name)
        synthetic = bool(dataset_json.get("hecktor", {}).get("synthetic", False))
        document = manifest_json(base_manifest)
        document["description"] = (f"{len(members)}-member {configuration} ensemble exported by `python -m training "
                                   f"export` from {workspace.dataset} ({', '.join(splits)})"
                                   + ("; trained on SYNTHETIC phantoms, NOT a clinical model" if synthetic else ""))
        document["preprocess"] = dataset_json["hecktor"]["preprocess"]
        document["segmentation"]["engine"] = "ensemble"
        document["segmentation"]["ensemble"] = {
            "members": members, "backend": "onnxruntime" if onnx else "torch", "overlap": ENSEMBLE_OVERLAP,
            "mirror_axes": list(mirror_axes or ()), "batch_size": ENSEMBLE_BATCH_SIZE, "whole_roi_if_fits": False,
            "trained_on_real_data": not synthetic,
        }
        write_manifest(manifest_from_json(document, staging, f"exported manifest {out_dir / MANIFEST_NAME}"))
        load_manifest(staging)  # what the container will read, read back
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
