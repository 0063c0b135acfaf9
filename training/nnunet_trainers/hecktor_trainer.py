"""nnU-Net v2 trainer for this product's networks (found by nnU-Net through ``nnUNet_extTrainer``).

Everything nnU-Net does stays nnU-Net's: data loading, augmentation, poly learning-rate schedule, deep
supervision, mixed precision, checkpoints, resume, logging, DDP and the final validation. This class
only changes what the plans ask it to, through the ``hecktor`` block that ``python -m training train``
writes into each training configuration of the plans:

- the network is the product's own class (:func:`hecktor.segment.torch_backend.networks.build_network`), so the
  parameter names are the container's and an exported checkpoint loads with ``strict=True``;
- the loss is chosen by name (:func:`training.losses.build_loss`: nnU-Net's CE + Dice of seed 000, or the
  ODA loss of seed 001), wrapped for deep supervision exactly as nnU-Net wraps its own;
- epochs and iterations per epoch are the configuration's (defaults: nnU-Net's 1000 x 250, the seeds'
  schedule).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule

from hecktor.segment.torch_backend.networks import build_network
from training.losses import build_loss

# Keys of the plans' architecture block that are nnU-Net's bookkeeping, not arguments of the network.
NNUNET_ONLY_ARCH_KEYS = ("strides",)


def hecktor_block(configuration_manager: ConfigurationManager) -> dict[str, Any]:
    block = configuration_manager.configuration.get("hecktor")
    if not isinstance(block, dict):
        raise RuntimeError("this configuration has no 'hecktor' block: create it with `python -m training train`")
    return block


def network_arguments(configuration_manager: ConfigurationManager) -> tuple[str, dict[str, Any]]:
    """The product architecture name and its keyword arguments, from the configuration's plans."""
    block = hecktor_block(configuration_manager)
    kwargs = {k: v for k, v in configuration_manager.network_arch_init_kwargs.items() if k not in NNUNET_ONLY_ARCH_KEYS}
    return block["architecture"], kwargs


class HecktorTrainer(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        block = hecktor_block(self.configuration_manager)
        self.num_epochs = int(block["epochs"])
        self.num_iterations_per_epoch = int(block["iterations_per_epoch"])
        self.num_val_iterations_per_epoch = int(block["val_iterations_per_epoch"])
        self.save_every = max(1, min(self.save_every, self.num_epochs))
        self.loss_name = str(block["loss"])
        # MONAI's SegResNet has a single output: no deep supervision.
        self.enable_deep_supervision = block["architecture"] == "STUNet"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        architecture, kwargs = network_arguments(configuration_manager)
        if architecture == "STUNet":
            kwargs = {**kwargs, "input_channels": num_input_channels, "num_classes": num_output_channels,
                      "deep_supervision": enable_deep_supervision}
        else:
            kwargs = {**kwargs, "in_channels": num_input_channels, "out_channels": num_output_channels}
        return build_network(architecture, kwargs)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        module = self.network.module if self.is_ddp else self.network
        if isinstance(module, OptimizedModule):
            module = module._orig_mod
        if hasattr(module, "deep_supervision"):
            module.deep_supervision = enabled

    def _build_loss(self) -> nn.Module:
        if self.loss_name == "ce_dice":
            return super()._build_loss()  # nnU-Net's own CE + Dice with its deep-supervision weights
        loss = build_loss(self.loss_name, batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                          ignore_label=self.label_manager.ignore_label)
        if not self.enable_deep_supervision:
            return loss
        # nnU-Net's weighting: halve per scale, drop the coarsest output, normalise to 1.
        weights = np.array([1 / (2**i) for i in range(len(self._get_deep_supervision_scales()))])
        weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
        return DeepSupervisionWrapper(loss, weights / weights.sum())
