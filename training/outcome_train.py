"""``python -m training outcome-train``: the seed-000 outcome network on prepared samples, plain torch.

- Split: a seeded, HPV-stratified ``validation_fraction`` of the cases is held out inside the training data;
  the checkpoint with the best validation score (mean of RFS Harrell C-index and HPV balanced accuracy, the
  product's metrics) is kept, as seed 000 selects per fold. With ``validation_fraction`` 0 the last epoch is kept.
- Clinical vector: median, mean and std of each feature from the training cases only
  (:func:`hecktor.outcome.features.fit_scaling`).
- Loss: RFS (seed 000's discrete-time hazard NLL, alpha 0.5; or seed 003's Cox + 0.3 ranking on the risk
  ``-sum_k S_k``) + ``hpv_weight`` x seed 000's class-weighted BCE; a case with an unknown outcome is left out of
  that term. AdamW (weight decay 1e-2) with seed 000's two learning rates: 1e-4 for the image branch (ResNet-18
  and the lesion-guidance module), 5e-4 for the clinical MLP and the heads. Optional left-right flips.
- Seeded: the split, the initial weights, each epoch's order, flips and dropout derive from ``seed`` (and the
  epoch number), so a resumed run continues exactly as an uninterrupted one would.
- ``checkpoint_last.pt`` (model, optimizer, epoch, best state, history; ``torch.load(weights_only=True)``) is
  written atomically after every epoch; ``resume`` continues from it. ``history.json`` logs every epoch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hecktor.core.files import atomic_write
from hecktor.core.metrics import balanced_accuracy, harrell_c_index
from hecktor.outcome.features import CLINICAL_FEATURES, FeatureScaling, clinical_vector, fit_scaling
from hecktor.outcome.inputs import hazard_risk as numpy_hazard_risk
from hecktor.outcome.inputs import time_bins
from hecktor.outcome.predict import sigmoid
from hecktor.outcome.torch_backend.network import OutcomeArchitecture, OutcomeNetwork
from training.outcome_data import OutcomeSample
from training.outcome_losses import cox_rank_loss, discrete_hazard_nll, hazard_risk, hpv_class_weights, weighted_bce
from training.workspace import write_json

__all__ = [
    "DEFAULT_CUT_POINTS",
    "DEFAULT_Z_CLIP",
    "OutcomeTrainSettings",
    "TrainedOutcome",
    "evaluate_outputs",
    "load_trained",
    "predict_samples",
    "save_trained",
    "settings_from_json",
    "train_outcome_network",
]

log = logging.getLogger(__name__)

DEFAULT_CUT_POINTS = (769.0, 1357.0, 2626.0)  # seed 000
DEFAULT_Z_CLIP = 5.0
CHECKPOINT = "checkpoint_last.pt"


@dataclass(frozen=True)
class OutcomeTrainSettings:
    epochs: int = 20
    batch_size: int = 16
    lr_image: float = 1e-4
    lr_head: float = 5e-4
    weight_decay: float = 1e-2
    rfs_loss: Literal["hazard", "cox_rank"] = "hazard"
    alpha: float = 0.5
    hpv_weight: float = 1.0
    validation_fraction: float = 0.2
    flip_lr: bool = True
    seed: int = 0
    cut_points: tuple[float, ...] = DEFAULT_CUT_POINTS
    clinical_features: tuple[str, ...] = tuple(CLINICAL_FEATURES)
    clinical_z_clip: float = DEFAULT_Z_CLIP
    arch: OutcomeArchitecture = field(default_factory=OutcomeArchitecture)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {self.validation_fraction}")
        if self.arch.num_bins != len(self.cut_points) + 1 or self.arch.clinical_features != len(self.clinical_features):
            raise ValueError(
                "arch.num_bins must be len(cut_points) + 1 and arch.clinical_features the number of clinical features"
            )

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class TrainedOutcome:
    """The selected network (eval mode, CPU), its clinical scaling, the split and the per-epoch history."""

    network: OutcomeNetwork
    scaling: list[FeatureScaling]
    settings: OutcomeTrainSettings
    train_ids: tuple[str, ...]
    validation_ids: tuple[str, ...]
    best_epoch: int
    history: list[dict[str, Any]]
    validation: dict[str, float | None]


def _split(samples: Sequence[OutcomeSample], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split, stratified by HPV status (unknown as its own stratum)."""
    if fraction == 0.0:
        return list(range(len(samples))), []
    rng = np.random.default_rng([seed, 1])
    train, validation = [], []
    for stratum in (0, 1, None):
        members = [i for i, s in enumerate(samples) if s.hpv == stratum]
        rng.shuffle(members)
        n_val = round(fraction * len(members))
        validation += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(validation)


def _arrays(
    samples: Sequence[OutcomeSample], scaling: Sequence[FeatureScaling], z_clip: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.stack([s.image for s in samples]).astype(np.float32)
    masks = np.stack([s.masks for s in samples]).astype(np.float32)
    clinical = np.stack([clinical_vector(s.clinical, scaling, z_clip) for s in samples])
    return image, masks, clinical


def predict_samples(
    network: OutcomeNetwork,
    samples: Sequence[OutcomeSample],
    scaling: Sequence[FeatureScaling],
    z_clip: float,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) hazard logits and (N,) HPV logits of ``samples`` in eval mode (what the exported file must give)."""
    network.eval()
    rfs, hpv = [], []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            arrays = _arrays(samples[start : start + batch_size], scaling, z_clip)
            r, h = network(*(torch.from_numpy(a) for a in arrays))
            rfs.append(r.numpy())
            hpv.append(h.numpy())
    return np.concatenate(rfs), np.concatenate(hpv)


def evaluate_outputs(
    samples: Sequence[OutcomeSample], rfs_logits: np.ndarray, hpv_logits: np.ndarray, hpv_threshold: float = 0.5
) -> dict[str, float | None]:
    """Harrell C-index of the risk ``-sum_k S_k`` and HPV balanced accuracy at ``hpv_threshold``."""
    risk = numpy_hazard_risk(rfs_logits)
    known = [i for i, s in enumerate(samples) if s.rfs_days is not None]
    c_index = (
        harrell_c_index([samples[i].rfs_days for i in known], [samples[i].relapse for i in known], risk[known])
        if known
        else float("nan")
    )
    labelled = [i for i, s in enumerate(samples) if s.hpv is not None]
    probability = sigmoid(hpv_logits.astype(np.float64))
    balanced = (
        balanced_accuracy([samples[i].hpv for i in labelled], [int(probability[i] >= hpv_threshold) for i in labelled])
        if labelled
        else float("nan")
    )
    return {
        "c_index": None if np.isnan(c_index) else float(c_index),
        "balanced_accuracy": None if np.isnan(balanced) else float(balanced),
    }


def _score(figures: dict[str, float | None]) -> float:
    values = [v for v in figures.values() if v is not None]
    return float(np.mean(values)) if values else float("-inf")


def _optimizer(network: OutcomeNetwork, settings: OutcomeTrainSettings) -> torch.optim.AdamW:
    image = [*network.backbone.parameters(), *network.lesion_guidance.parameters()]
    head = [*network.clinical_mlp.parameters(), *network.rfs_head.parameters(), *network.hpv_head.parameters()]
    return torch.optim.AdamW(
        [{"params": image, "lr": settings.lr_image}, {"params": head, "lr": settings.lr_head}],
        weight_decay=settings.weight_decay,
    )


def _batch_loss(
    network: OutcomeNetwork,
    batch: Sequence[OutcomeSample],
    arrays: tuple[np.ndarray, ...],
    settings: OutcomeTrainSettings,
    hpv_weights: tuple[float, float],
) -> tuple[torch.Tensor, float, float]:
    rfs_logits, hpv_logit = network(*(torch.from_numpy(a) for a in arrays))
    zero = rfs_logits.sum() * 0.0
    known = [i for i, s in enumerate(batch) if s.rfs_days is not None]
    rfs_loss = zero
    if known:
        times = torch.tensor([batch[i].rfs_days for i in known], dtype=torch.float32)
        events = torch.tensor([batch[i].relapse for i in known], dtype=torch.float32)
        logits = rfs_logits[known]
        if settings.rfs_loss == "hazard":
            bins = torch.from_numpy(time_bins(times.numpy(), settings.cut_points))
            rfs_loss = discrete_hazard_nll(logits, bins, 1.0 - events, settings.alpha)
        else:
            rfs_loss = cox_rank_loss(hazard_risk(logits), times, events)
    labelled = [i for i, s in enumerate(batch) if s.hpv is not None]
    hpv_loss = zero
    if labelled:
        labels = torch.tensor([batch[i].hpv for i in labelled], dtype=torch.float32)
        hpv_loss = weighted_bce(hpv_logit[labelled], labels, *hpv_weights)
    return rfs_loss + settings.hpv_weight * hpv_loss, rfs_loss.item(), hpv_loss.item()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def train_outcome_network(
    samples: Sequence[OutcomeSample],
    settings: OutcomeTrainSettings,
    out_dir: Path | None = None,
    resume: bool = False,
    synthetic: bool = False,
) -> TrainedOutcome:
    """Train on ``samples``; checkpoints and ``history.json`` go to ``out_dir`` when given (see the module doc)."""
    samples = sorted(samples, key=lambda s: s.case_id)
    train_idx, val_idx = _split(samples, settings.validation_fraction, settings.seed)
    train, validation = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
    if len(train) < 2:
        raise ValueError(f"need at least 2 training cases, got {len(train)}")
    scaling = fit_scaling([s.clinical for s in train], settings.clinical_features)
    train_arrays = _arrays(train, scaling, settings.clinical_z_clip)
    hpv_weights = hpv_class_weights(torch.tensor([s.hpv for s in train if s.hpv is not None], dtype=torch.float32))
    torch.manual_seed(settings.seed)
    network = OutcomeNetwork(settings.arch)
    optimizer = _optimizer(network, settings)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "score": float("-inf"), "state": None, "validation": {}}
    first_epoch = 1
    checkpoint_path = None if out_dir is None else Path(out_dir) / CHECKPOINT
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        same = {k: v for k, v in state["settings"].items() if k != "epochs"}
        if same != {k: v for k, v in settings.as_json().items() if k != "epochs"}:  # epochs may grow
            raise ValueError(f"{checkpoint_path}: written with other settings; resume with the same options")
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best, first_epoch = state["history"], state["best"], int(state["epoch"]) + 1
        log.info("resuming from %s after epoch %d", checkpoint_path, first_epoch - 1)
    banner = " -- SYNTHETIC phantoms, NOT real data: NOT a clinical model" if synthetic else ""
    log.info(
        "outcome network: %d training and %d validation cases, %d epochs, RFS loss %s%s",
        len(train),
        len(validation),
        settings.epochs,
        settings.rfs_loss,
        banner,
    )
    for epoch in range(first_epoch, settings.epochs + 1):
        start = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch])
        torch.manual_seed(settings.seed * 100_003 + epoch)
        network.train()
        order = rng.permutation(len(train))
        totals = np.zeros(3)
        batches = 0
        for first in range(0, len(order), settings.batch_size):
            chosen = order[first : first + settings.batch_size]
            if len(chosen) < 2:  # batch norm needs two cases
                continue
            image, masks, clinical = (a[chosen].copy() for a in train_arrays)
            if settings.flip_lr:
                flip = rng.random(len(chosen)) < 0.5
                image[flip], masks[flip] = image[flip][..., ::-1], masks[flip][..., ::-1]
            loss, rfs_part, hpv_part = _batch_loss(
                network,
                [train[i] for i in chosen],
                (np.ascontiguousarray(image), np.ascontiguousarray(masks), clinical),
                settings,
                hpv_weights,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += (loss.item(), rfs_part, hpv_part)
            batches += 1
        figures = (
            evaluate_outputs(validation, *predict_samples(network, validation, scaling, settings.clinical_z_clip))
            if validation
            else {}
        )
        record = {
            "epoch": epoch,
            "loss": float(totals[0]) / max(batches, 1),
            "rfs_loss": float(totals[1]) / max(batches, 1),
            "hpv_loss": float(totals[2]) / max(batches, 1),
            **{f"val_{k}": v for k, v in figures.items()},
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        score = _score(figures) if validation else float(epoch)
        if score > best["score"]:
            best = {"epoch": epoch, "score": score, "state": copy.deepcopy(network.state_dict()), "validation": figures}
        log.info(
            "epoch %d/%d: loss %.4f (RFS %.4f, HPV %.4f), validation C-index %s, balanced accuracy %s, %.1f s%s",
            epoch,
            settings.epochs,
            record["loss"],
            record["rfs_loss"],
            record["hpv_loss"],
            _shown(figures.get("c_index")),
            _shown(figures.get("balanced_accuracy")),
            record["seconds"],
            banner,
        )
        if out_dir is not None and checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path,
                {
                    "settings": settings.as_json(),
                    "epoch": epoch,
                    "model": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "best": best,
                },
            )
            write_json(Path(out_dir) / "history.json", {"synthetic": synthetic, "epochs": history})
    network.load_state_dict(best["state"])
    network.eval()
    log.info("selected epoch %d (validation %s)", best["epoch"], best["validation"] or "none: last epoch")
    return TrainedOutcome(
        network,
        scaling,
        settings,
        tuple(s.case_id for s in train),
        tuple(s.case_id for s in validation),
        int(best["epoch"]),
        history,
        dict(best["validation"]),
    )


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


TRAINED_WEIGHTS = "outcome_network.safetensors"
TRAINED_JSON = "trained.json"


def save_trained(trained: TrainedOutcome, out_dir: Path, dataset: dict[str, Any]) -> None:
    """The selected weights (safetensors) and everything export needs (``trained.json``) in ``out_dir``."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in trained.network.state_dict().items()}
    data = save(state)
    atomic_write(Path(out_dir) / TRAINED_WEIGHTS, lambda tmp: tmp.write_bytes(data))
    write_json(
        Path(out_dir) / TRAINED_JSON,
        {
            "settings": trained.settings.as_json(),
            "scaling": [asdict(s) for s in trained.scaling],
            "train_ids": list(trained.train_ids),
            "validation_ids": list(trained.validation_ids),
            "best_epoch": trained.best_epoch,
            "validation": trained.validation,
            "history": trained.history,
            "dataset": dataset,
        },
    )


def settings_from_json(values: dict[str, Any]) -> OutcomeTrainSettings:
    values = dict(values)
    values["arch"] = OutcomeArchitecture.from_kwargs(values["arch"])
    for key in ("cut_points", "clinical_features"):
        values[key] = tuple(values[key])
    return OutcomeTrainSettings(**values)


def load_trained(out_dir: Path) -> tuple[TrainedOutcome, dict[str, Any]]:
    """What :func:`save_trained` wrote, and the dataset description it was trained on."""
    from safetensors.torch import load_file

    info = json.loads((Path(out_dir) / TRAINED_JSON).read_text())
    settings = settings_from_json(info["settings"])
    network = OutcomeNetwork(settings.arch)
    network.load_state_dict(load_file(str(Path(out_dir) / TRAINED_WEIGHTS)), strict=True)
    network.eval()
    trained = TrainedOutcome(
        network,
        [FeatureScaling(**s) for s in info["scaling"]],
        settings,
        tuple(info["train_ids"]),
        tuple(info["validation_ids"]),
        int(info["best_epoch"]),
        info["history"],
        info["validation"],
    )
    return trained, info["dataset"]
