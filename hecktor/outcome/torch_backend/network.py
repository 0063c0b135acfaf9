"""The seed-000 multimodal network for Task 2 (RFS) and Task 3 (HPV status); torch and MONAI.

Image encoder: MONAI's 3-D ResNet-18 (``monai.networks.nets.ResNet`` with basic blocks ``[2, 2, 2, 2]``, exactly
what ``monai.networks.nets.resnet18`` builds, with the widths made configurable) on the two channels CT and PET.
A lesion-guidance module (LGM: conv + batch norm + ReLU) encodes the one-hot GTVp/GTVn masks into feature maps
of the stem's output shape; the two are added after the stem (conv1, bn1, ReLU) and the sum goes on through the
max pool, the residual stages and global average pooling:
``f_fuse = stem([CT, PET]) + LGM([GTVp, GTVn])``. A single-layer MLP embeds the clinical vector; the image and
clinical embeddings are concatenated and two heads (dropout, linear, ReLU, linear) give the RFS discrete-time
hazard logits (K bins) and the HPV logit.

Shapes: ``image`` (B, 2, z, y, x) float32 (CT scaled to [0, 1], PET in SUV), ``masks`` (B, 2, z, y, x) float32
in {0, 1} (GTVp, GTVn), ``clinical`` (B, P) float32 (z-scored); outputs ``rfs_logits`` (B, K) and
``hpv_logit`` (B,). See :mod:`hecktor.outcome.inputs` for how the inputs are made and how logits become a risk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["RESNET18_LAYERS", "OutcomeArchitecture", "OutcomeNetwork", "build_outcome_network"]

RESNET18_LAYERS = (2, 2, 2, 2)  # basic blocks per stage: ResNet-18
_STEM_KERNEL = 7  # MONAI's ResNet conv1 kernel (conv1_t_size)


@dataclass(frozen=True)
class OutcomeArchitecture:
    """Hyper-parameters of :class:`OutcomeNetwork`; the defaults are seed 000's (ResNet-18 widths, a 256-wide
    clinical embedding, K = 4 bins). ``conv1_stride`` 2 is the usual ResNet stem (MONAI's default is 1, which
    costs 8x the stem's work at 96^3; seed 000 does not say). Tests use tiny widths."""

    block_inplanes: tuple[int, int, int, int] = (64, 128, 256, 512)
    conv1_stride: int = 2
    clinical_features: int = 13
    clinical_embedding: int = 256
    head_hidden: int = 128
    dropout: float = 0.3
    num_bins: int = 4

    def __post_init__(self) -> None:
        if len(self.block_inplanes) != 4 or any(int(w) < 1 for w in self.block_inplanes):
            raise ValueError(f"block_inplanes needs 4 positive widths, got {self.block_inplanes}")
        for name in ("conv1_stride", "clinical_features", "clinical_embedding", "head_hidden", "num_bins"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> OutcomeArchitecture:
        """From a manifest's ``arch_kwargs`` (JSON lists for tuples); unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown outcome network arguments {unknown} (known: {sorted(known)})")
        values = dict(kwargs)
        if "block_inplanes" in values:
            values["block_inplanes"] = tuple(int(w) for w in values["block_inplanes"])
        return cls(**values)

    def as_kwargs(self) -> dict[str, Any]:
        """Every field, JSON-ready (what the manifest's ``arch_kwargs`` holds)."""
        values = asdict(self)
        values["block_inplanes"] = list(self.block_inplanes)
        return values


def _head(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)
    )


class OutcomeNetwork(nn.Module):
    """ResNet-18 on CT+PET with lesion guidance after the stem, clinical MLP, RFS hazard and HPV heads."""

    def __init__(self, arch: OutcomeArchitecture) -> None:
        super().__init__()
        self.arch = arch
        widths = [int(w) for w in arch.block_inplanes]
        self.backbone = ResNet(
            block="basic",
            layers=list(RESNET18_LAYERS),
            block_inplanes=widths,
            spatial_dims=3,
            n_input_channels=2,
            conv1_t_size=_STEM_KERNEL,
            conv1_t_stride=arch.conv1_stride,
            feed_forward=False,
        )
        self.lesion_guidance = nn.Sequential(
            nn.Conv3d(
                2, widths[0], kernel_size=_STEM_KERNEL, stride=arch.conv1_stride, padding=_STEM_KERNEL // 2, bias=False
            ),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.clinical_mlp = nn.Sequential(
            nn.Linear(arch.clinical_features, arch.clinical_embedding), nn.ReLU(inplace=True)
        )
        joint = widths[3] + arch.clinical_embedding  # basic blocks: expansion 1
        self.rfs_head = _head(joint, arch.head_hidden, arch.num_bins, arch.dropout)
        self.hpv_head = _head(joint, arch.head_hidden, 1, arch.dropout)

    def image_features(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, 2, z, y, x) CT/PET and (B, 2, z, y, x) masks -> (B, block_inplanes[3]) pooled features."""
        net = self.backbone
        x = net.act(net.bn1(net.conv1(image))) + self.lesion_guidance(masks)
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def forward(
        self, image: torch.Tensor, masks: torch.Tensor, clinical: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([self.image_features(image, masks), self.clinical_mlp(clinical)], dim=1)
        return self.rfs_head(joint), self.hpv_head(joint).squeeze(1)


def build_outcome_network(arch_kwargs: dict[str, Any]) -> OutcomeNetwork:
    """An untrained :class:`OutcomeNetwork` from a manifest's ``arch_kwargs``."""
    return OutcomeNetwork(OutcomeArchitecture.from_kwargs(arch_kwargs))
