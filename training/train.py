"""``python -m training train``: one fold of one network, trained by nnU-Net v2 with this product's trainer.

The network, loss and schedule become a configuration of the plans named after them (for example
``stunet_ce_dice_1000x250``) that inherits everything else from ``3d_fullres``: nnU-Net's results folder
then says what was trained, a different schedule never overwrites another's checkpoints, and ``--resume``
continues the right run. Training itself is nnU-Net's ``run_training`` (its checkpoints, resume, progress
log, validation and, with ``--num-gpus`` > 1, its DDP process layout), run on :class:`HecktorTrainer`. The
trainer is also on nnU-Net's external-trainer path, so nnU-Net's own tools (``nnUNetv2_predict -tr
HecktorTrainer``) find it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.losses import LOSS_NAMES
from training.plan import BASE_CONFIGURATION, PLANS_NAME, fold_index
from training.workspace import Workspace, write_json

__all__ = ["ARCHITECTURES", "TRAINER_NAME", "TrainSettings", "configuration_name", "ensure_configuration",
           "fold_folder", "train_fold"]

log = logging.getLogger(__name__)

TRAINER_NAME = "HecktorTrainer"
# CLI name -> product architecture (hecktor.segment.torch_backend.networks.build_network).
ARCHITECTURES = {"stunet": "STUNet", "segresnet": "SegResNet"}
# MONAI's SegResNet as in MONAI's and Myronenko's HECKTOR 2022 setup: 4 levels (input divisor 8).
SEGRESNET_ARCH_KWARGS: dict[str, Any] = {"spatial_dims": 3, "init_filters": 16, "blocks_down": [1, 2, 2, 4],
                                         "blocks_up": [1, 1, 1]}


@dataclass(frozen=True)
class TrainSettings:
    architecture: str = "stunet"
    loss: str = "ce_dice"
    epochs: int = 1000  # nnU-Net's default, the seeds' schedule
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    split: str = "kfold5"
    fold: int = 0
    num_gpus: int = 1
    device: str = "cuda"
    resume: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {list(LOSS_NAMES)}, got {self.loss!r}")
        if min(self.epochs, self.iterations_per_epoch, self.val_iterations_per_epoch, self.num_gpus) < 1:
            raise ValueError("epochs, iterations, validation iterations and GPUs must be >= 1")


def configuration_name(settings: TrainSettings) -> str:
    return f"{settings.architecture}_{settings.loss}_{settings.epochs}x{settings.iterations_per_epoch}"


def _configuration(base: dict[str, Any], settings: TrainSettings) -> dict[str, Any]:
    architecture = ARCHITECTURES[settings.architecture]
    config: dict[str, Any] = {
        "inherits_from": BASE_CONFIGURATION,
        "hecktor": {
            "architecture": architecture,
            "loss": settings.loss,
            "epochs": settings.epochs,
            "iterations_per_epoch": settings.iterations_per_epoch,
            "val_iterations_per_epoch": settings.val_iterations_per_epoch,
        },
    }
    if architecture == "SegResNet":
        strides = [[1, 1, 1]] + [[2, 2, 2]] * (len(SEGRESNET_ARCH_KWARGS["blocks_down"]) - 1)
        config["architecture"] = {"network_class_name": "monai.networks.nets.SegResNet",
                                  "arch_kwargs": {**SEGRESNET_ARCH_KWARGS, "strides": strides},
                                  "_kw_requires_import": []}
    return config


def ensure_configuration(workspace: Workspace, settings: TrainSettings) -> str:
    """Add (or check) the training configuration in the plans; returns its name."""
    plans_file = workspace.preprocessed_dataset / f"{PLANS_NAME}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file}: no plans yet; run `python -m training plan` first")
    plans = json.loads(plans_file.read_text())
    name = configuration_name(settings)
    wanted = _configuration(plans["configurations"][BASE_CONFIGURATION], settings)
    if plans["configurations"].get(name) != wanted:
        plans["configurations"][name] = wanted
        write_json(plans_file, plans)
    return name


def fold_folder(workspace: Workspace, configuration: str, fold: int) -> Path:
    """nnU-Net's output folder of one fold (``fold`` is nnU-Net's fold number)."""
    return workspace.results_dataset / f"{TRAINER_NAME}__{PLANS_NAME}__{configuration}" / f"fold_{fold}"


def _trainer(workspace: Workspace, configuration: str, fold: int, device: Any, resume: bool) -> Any:
    """:class:`HecktorTrainer` built as nnU-Net's ``get_trainer_from_args`` builds a trainer, but from the class
    itself: nnU-Net's search by name imports every trainer module it ships, some of which need torchvision
    builds that do not match a CPU torch."""
    from training.nnunet_trainers.hecktor_trainer import HecktorTrainer

    plans = json.loads((workspace.preprocessed_dataset / f"{PLANS_NAME}.json").read_text())
    plans["continue_training"] = resume
    dataset_json = json.loads((workspace.preprocessed_dataset / "dataset.json").read_text())
    return HecktorTrainer(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json,
                          device=device)


def _run(trainer: Any, resume: bool) -> None:
    """nnU-Net's ``run_training`` body for one process: resume, train, validate."""
    import torch
    from nnunetv2.run.run_training import maybe_load_checkpoint

    maybe_load_checkpoint(trainer, resume, False, None)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    trainer.perform_actual_validation(False)


def _ddp_worker(rank: int, world_size: int, root: str, dataset: str, configuration: str, fold: int,
                resume: bool) -> None:
    """One DDP process, as nnU-Net's ``run_ddp``."""
    import torch
    import torch.distributed as dist

    workspace = Workspace(Path(root), dataset)
    workspace.activate()
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(torch.device("cuda", rank))
    try:
        _run(_trainer(workspace, configuration, fold, torch.device("cuda", rank), resume), resume)
    finally:
        dist.destroy_process_group()


def train_fold(workspace: Workspace, settings: TrainSettings) -> Path:
    """Train (or resume) one fold; returns its nnU-Net output folder (checkpoints, log, validation)."""
    import torch

    configuration = ensure_configuration(workspace, settings)
    fold = fold_index(workspace, settings.split, settings.fold)
    log.info("training %s, %s fold %d (nnU-Net fold %d) on %s%s", configuration, settings.split, settings.fold,
             fold, settings.device, f" x {settings.num_gpus}" if settings.num_gpus > 1 else "")
    if settings.num_gpus > 1:
        if settings.device != "cuda":
            raise ValueError("--num-gpus > 1 (nnU-Net's DDP) needs --device cuda")
        import torch.multiprocessing as mp
        from nnunetv2.run.run_training import find_free_network_port

        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
        mp.spawn(_ddp_worker, args=(settings.num_gpus, str(workspace.root), workspace.dataset, configuration, fold,
                                    settings.resume), nprocs=settings.num_gpus, join=True)
    else:
        _run(_trainer(workspace, configuration, fold, torch.device(settings.device), settings.resume), settings.resume)
    return fold_folder(workspace, configuration, fold)
