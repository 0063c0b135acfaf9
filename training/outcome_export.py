"""``python -m training outcome-export``: a trained outcome network -> a model folder the container runs as is.

The new folder is the ``--base`` model folder (every file its manifest names: segmentation members, the clinical
models, model cards) plus:

- ``outcome_network.safetensors`` (the weights, with the model card as metadata) and ``outcome_network.onnx``
  (inputs ``image``, ``masks``, ``clinical`` with a dynamic batch axis; outputs ``rfs_logits``, ``hpv_logit``),
  both always written; the manifest's ``outcome_network`` section names the one of ``--backend`` (onnxruntime:
  the default image flavour, which has no torch) and its sha256, and the card records the other's;
- ``MODEL_CARD_outcome.md``: data (SYNTHETIC or real), split, selection, figures, settings;
- the manifest with the ``outcome_network`` section (patch size and CT window from the prepared dataset, the
  preprocessing of the dataset, cut points, HPV threshold 0.5, the clinical features' training statistics),
  written by :func:`hecktor.core.manifest.write_manifest` and read back by :func:`hecktor.core.manifest.load_manifest`.

Before anything is renamed into place, the ONNX file is run by onnxruntime next to torch on the same inputs and
the largest difference is recorded in the card (and the export fails above ``PARITY_TOLERANCE``). The folder is
written next to its destination and renamed when complete, so a failed export leaves nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hecktor.core.files import atomic_write
from hecktor.core.manifest import (
    DEFAULT_WEIGHTS_DIR,
    MANIFEST_NAME,
    load_manifest,
    manifest_from_json,
    manifest_json,
    write_manifest,
)
from hecktor.outcome.runtime import INPUT_NAMES, OUTPUT_NAMES, load_onnx_outcome
from hecktor.outcome.torch_backend.network import OutcomeNetwork
from training.outcome_train import TrainedOutcome

__all__ = ["HPV_THRESHOLD", "ONNX_OPSET", "PARITY_TOLERANCE", "export_outcome_model", "outcome_onnx_bytes"]

log = logging.getLogger(__name__)

ONNX_OPSET = 17
HPV_THRESHOLD = 0.5  # seed 000's reference threshold; the class-weighted BCE centres the probability on it
PARITY_TOLERANCE = 1e-3  # largest |torch - onnxruntime| logit difference an export accepts
NAME = "outcome_network"
CARD_NAME = "MODEL_CARD_outcome.md"


def outcome_onnx_bytes(network: OutcomeNetwork, patch_size: Sequence[int], clinical_features: int) -> bytes:
    """The network (eval mode) as ONNX with a dynamic batch axis and fixed patch and clinical sizes."""
    network = network.eval()
    example = (torch.zeros(1, 2, *patch_size), torch.zeros(1, 2, *patch_size), torch.zeros(1, clinical_features))
    buffer = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the ResNet's flatten: shapes are fixed here
        torch.onnx.export(
            network,
            example,
            buffer,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch for name in (*INPUT_NAMES, *OUTPUT_NAMES)},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def _parity(network: OutcomeNetwork, onnx_path: Path, sha256: str, patch_size: Sequence[int], features: int) -> float:
    """Max |torch - onnxruntime| over both outputs on three seeded inputs with lesion-like masks."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, size=(3, 2, *patch_size)).astype(np.float32)
    image[:, 1] *= 12.0  # PET in SUV
    masks = (rng.uniform(size=(3, 2, *patch_size)) > 0.9).astype(np.float32)
    clinical = rng.normal(size=(3, features)).astype(np.float32)
    runner = load_onnx_outcome(onnx_path, sha256)
    onnx_rfs, onnx_hpv = runner(image, masks, clinical)
    with torch.inference_mode():
        rfs, hpv = network.eval()(*(torch.from_numpy(a) for a in (image, masks, clinical)))
    return float(max(np.abs(onnx_rfs - rfs.numpy()).max(), np.abs(onnx_hpv - hpv.numpy()).max()))


def _base_files(base: Path) -> list[Path]:
    manifest = load_manifest(base)
    files = [manifest.rfs_model, manifest.hpv_model, *manifest.weights_dir.glob("MODEL_CARD*.md")]
    if manifest.ensemble is not None:
        files += [manifest.weights_dir / m.weights for m in manifest.ensemble.members]
    return [f for f in dict.fromkeys(files) if f.name != CARD_NAME]


def _card_markdown(card: dict[str, Any]) -> str:
    synthetic = not card["trained_on_real_data"]
    banner = (
        "**SYNTHETIC: trained on analytic phantoms with a planted image-outcome relation, NOT on real data. "
        "Not a clinical model: for tests of the training chain and the container only.**\n\n"
        if synthetic
        else ""
    )
    figures = card["validation"] or {}
    lines = [
        "# Model card: image network for Task 2 (RFS) and Task 3 (HPV status)",
        "",
        banner.rstrip(),
        "",
        "Seed 000's multimodal network: MONAI's 3-D ResNet-18 on the CT+PET patch (CT clipped to "
        f"{card['ct_window_hu']} HU and scaled to [0, 1], PET in SUV, {card['patch_size']} voxels of the "
        f"{card['spacing_mm']} mm ROI grid around the lesions' centroid), a lesion-guidance module on the one-hot "
        "GTVp/GTVn masks added after the stem, a clinical MLP, concatenation, and two heads: the RFS discrete-time "
        f"hazard over {len(card['cut_points_days']) + 1} bins (cut points {card['cut_points_days']} days; risk = "
        "-sum of the survival curve, higher = earlier relapse) and the HPV logit (positive at probability >= "
        f"{HPV_THRESHOLD}).",
        "",
        "## Data",
        "",
        f"- Source: `{card['source']}` ({'SYNTHETIC phantoms' if synthetic else 'contoured PET/CT'}); "
        f"{card['training_cases']} training cases, {card['validation_cases']} validation cases "
        f"(seeded, HPV-stratified split inside the training data); centres: {', '.join(card['centres'])}.",
        f"- Clinical inputs: {', '.join(card['clinical_features'])} (median-imputed, z-scored with the training "
        "cases' statistics, clipped).",
        "",
        "## Training",
        "",
        f"- RFS loss: {card['rfs_loss']}; HPV loss: class-weighted BCE (w_neg = n_pos / n_neg); AdamW.",
        f"- Settings: `{json.dumps(card['settings'], sort_keys=True)}`",
        f"- Selected epoch {card['best_epoch']} of {card['epochs']} (best validation mean of C-index and balanced "
        "accuracy; the last epoch without validation cases).",
        "",
        "## Figures (validation cases of the training data; not centre- or cohort-disjoint)",
        "",
        f"- RFS Harrell C-index: {figures.get('c_index')}",
        f"- HPV balanced accuracy: {figures.get('balanced_accuracy')}",
        "",
        "## Files",
        "",
        f"- `{card['files']['onnx']['name']}` (sha256 `{card['files']['onnx']['sha256']}`), "
        f"`{card['files']['safetensors']['name']}` (sha256 `{card['files']['safetensors']['sha256']}`); the "
        f"manifest lists the {card['backend']} one. ONNX vs torch: max |difference| of the logits "
        f"{card['onnx_vs_torch_max_abs_diff']:.2e} on seeded inputs.",
        "",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def export_outcome_model(
    trained: TrainedOutcome,
    dataset: dict[str, Any],
    out_dir: Path,
    base: Path | None = None,
    backend: str = "onnxruntime",
    centres: Sequence[str] = (),
) -> Path:
    """Write the model folder (see the module docstring); returns ``out_dir``.

    ``dataset``: ``dataset.json`` of the prepared samples (patch size, CT window, preprocessing, synthetic).

    Raises:
        FileExistsError: ``out_dir`` exists (an export never overwrites a model folder).
    """
    if backend not in ("onnxruntime", "torch"):
        raise ValueError(f"backend must be 'onnxruntime' or 'torch', got {backend!r}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: export writes a new model folder")
    base = Path(base or DEFAULT_WEIGHTS_DIR)
    base_manifest = load_manifest(base)
    settings = trained.settings
    patch_size = [int(s) for s in dataset["patch_size"]]
    synthetic = bool(dataset.get("synthetic", False))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        for source in _base_files(base):
            shutil.copy2(source, staging / source.name)
        onnx_data = outcome_onnx_bytes(trained.network, patch_size, len(settings.clinical_features))
        onnx_sha = hashlib.sha256(onnx_data).hexdigest()
        atomic_write(staging / f"{NAME}.onnx", lambda tmp: tmp.write_bytes(onnx_data))
        difference = _parity(
            trained.network, staging / f"{NAME}.onnx", onnx_sha, patch_size, len(settings.clinical_features)
        )
        if difference > PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX export differs from torch by {difference:.2e} (> {PARITY_TOLERANCE})")
        card: dict[str, Any] = {
            "description": (
                "trained on SYNTHETIC phantoms: for tests of the training chain only, NOT a clinical model"
                if synthetic
                else "trained on contoured FDG-PET/CT with Task 2/3 outcomes"
            ),
            "trained_on_real_data": not synthetic,
            "source": dataset.get("source"),
            "training_cases": len(trained.train_ids),
            "validation_cases": len(trained.validation_ids),
            "centres": sorted(centres),
            "best_epoch": trained.best_epoch,
            "epochs": settings.epochs,
            "validation": trained.validation,
            "rfs_loss": settings.rfs_loss,
            "settings": settings.as_json(),
            "patch_size": patch_size,
            "ct_window_hu": dataset["ct_window_hu"],
            "spacing_mm": dataset["preprocess"]["spacing_mm"],
            "cut_points_days": list(settings.cut_points),
            "clinical_features": list(settings.clinical_features),
            "backend": backend,
            "onnx_vs_torch_max_abs_diff": difference,
        }
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in trained.network.state_dict().items()}
        st_data = save(state, metadata={"model_card": json.dumps(card, sort_keys=True)})
        (staging / f"{NAME}.safetensors").write_bytes(st_data)
        card["files"] = {
            "onnx": {"name": f"{NAME}.onnx", "sha256": onnx_sha},
            "safetensors": {"name": f"{NAME}.safetensors", "sha256": hashlib.sha256(st_data).hexdigest()},
        }
        (staging / CARD_NAME).write_text(_card_markdown(card))
        chosen = card["files"]["onnx" if backend == "onnxruntime" else "safetensors"]
        document = manifest_json(base_manifest)
        document["preprocess"] = dataset["preprocess"]
        document["outcome_network"] = {
            "name": NAME,
            "backend": backend,
            "weights": chosen["name"],
            "sha256": chosen["sha256"],
            "arch_kwargs": settings.arch.as_kwargs(),
            "patch_size": patch_size,
            "ct_window_hu": [float(v) for v in dataset["ct_window_hu"]],
            "rfs_cut_points_days": [float(c) for c in settings.cut_points],
            "hpv_threshold": HPV_THRESHOLD,
            "clinical_features": [
                {"name": s.name, "median": s.median, "mean": s.mean, "std": s.std} for s in trained.scaling
            ],
            "clinical_z_clip": float(settings.clinical_z_clip),
            "trained_on_real_data": not synthetic,
            "model_card": card,
        }
        write_manifest(manifest_from_json(document, staging, f"exported manifest {out_dir / MANIFEST_NAME}"))
        load_manifest(staging)  # what the container will read, read back
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    flag = " -- SYNTHETIC, NOT a clinical model" if synthetic else ""
    log.info(
        "exported the outcome network to %s (%s; ONNX vs torch max |diff| %.2e)%s", out_dir, backend, difference, flag
    )
    return out_dir
