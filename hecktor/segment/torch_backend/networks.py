"""Network definitions shared by the segmentation engine and ``training/``.

STU-Net (Huang et al. 2023, arXiv:2304.06716) as configured by the HECKTOR 2025 winners (STU-Net-S:
depth (1,1,1,1,1,1), widths (16,32,64,128,256,256), 2 input channels CT+PET, 3 classes).

Why STU-Net's residual block is written here from ``torch.nn`` rather than taken from
dynamic-network-architectures: its ``BasicBlockD`` is a ResNet-D block whose shortcut is
``AvgPool -> 1x1 conv (no bias) -> norm``, while STU-Net's shortcut is a strided 1x1 conv *with* bias
and *no* norm, and STU-Net's 3x3x3 convs carry a bias. Using ``BasicBlockD`` would change the
parameter count and make checkpoints trained with the STU-Net code unloadable. The module and
parameter names below (``conv_blocks_context``, ``upsample_layers``, ``conv_blocks_localization``,
``seg_outputs``, ``conv1/norm1/conv2/norm2/conv3``) are kept identical to the STU-Net reference so a
state dict trained there loads with ``strict=True``.

All tensors are (batch, channels, z, y, x).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SEGRESNET_DEFAULTS",
    "STUNET_S_DEFAULTS",
    "ResidualBlock",
    "STUNet",
    "UpsampleNearest",
    "build_network",
    "count_conv_macs",
    "count_parameters",
    "he_init",
    "input_divisor",
]

STUNET_S_DEFAULTS: dict[str, Any] = {
    "input_channels": 2,
    "num_classes": 3,
    "depth": (1, 1, 1, 1, 1, 1),
    "dims": (16, 32, 64, 128, 256, 256),
    "pool_op_kernel_sizes": ((2, 2, 2),) * 5,
    "conv_kernel_sizes": ((3, 3, 3),) * 6,
    "deep_supervision": False,
}

SEGRESNET_DEFAULTS: dict[str, Any] = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3}

Triple = tuple[int, int, int]


def _triple(value: int | Sequence[int]) -> Triple:
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"expected an int or three ints, got {value!r}")
    return values  # type: ignore[return-value]


class ResidualBlock(nn.Module):
    """STU-Net residual block: conv-IN-LReLU-conv-IN, plus shortcut, then LReLU.

    The first block of every stage has a projection shortcut (strided 1x1x1 conv with bias);
    ``stride`` applies to ``conv1`` and the shortcut. Input (B, in, z, y, x) ->
    output (B, out, z/sz, y/sy, x/sx) (ceil division, padding k//2).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: Triple, stride: Triple = (1, 1, 1), project: bool = False):
        super().__init__()
        if not project and (in_ch != out_ch or stride != (1, 1, 1)):
            raise ValueError("a block that changes channels or resolution needs a projection shortcut")
        padding = tuple(k // 2 for k in kernel)
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=padding)
        self.norm1 = nn.InstanceNorm3d(out_ch, affine=True)
        self.act1 = nn.LeakyReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_ch, out_ch, kernel, padding=padding)
        self.norm2 = nn.InstanceNorm3d(out_ch, affine=True)
        self.act2 = nn.LeakyReLU(inplace=True)
        self.conv3 = nn.Conv3d(in_ch, out_ch, 1, stride=stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return self.act2(y + shortcut)


class UpsampleNearest(nn.Module):
    """Weight-free upsampling: 1x1x1 conv (channel change) then nearest-neighbour interpolation.

    The STU-Net reference interpolates first and convolves second. A 1x1x1 conv acts per voxel and
    nearest interpolation only copies voxels, so the two orders give identical outputs; convolving
    at the coarse resolution costs ``prod(scale)`` times fewer operations. (B, in, z, y, x) ->
    (B, out, z*sz, y*sy, x*sx).
    """

    def __init__(self, in_ch: int, out_ch: int, scale: Triple):
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.scale == (1, 1, 1):
            return x
        return F.interpolate(x, scale_factor=tuple(float(s) for s in self.scale), mode="nearest")


def _stage(in_ch: int, out_ch: int, depth: int, kernel: Triple, stride: Triple) -> nn.Sequential:
    """``depth`` residual blocks; the first projects and strides."""
    blocks = [ResidualBlock(in_ch, out_ch, kernel, stride, project=True)]
    blocks += [ResidualBlock(out_ch, out_ch, kernel) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class STUNet(nn.Module):
    """STU-Net: a residual U-Net with weight-free upsampling (Huang et al. 2023).

    Args:
        input_channels: image channels (CT, PET).
        num_classes: output channels (logits).
        depth: residual blocks per resolution level (len L).
        dims: channels per level (len L).
        pool_op_kernel_sizes: L-1 strides of the encoder's downsampling blocks, (z, y, x) each.
        conv_kernel_sizes: L kernel sizes (z, y, x).
        deep_supervision: return logits of every decoder level (training); off for inference.

    Input (B, input_channels, z, y, x) with z, y, x divisible by :attr:`input_divisor`; output
    (B, num_classes, z, y, x) logits (a tuple of L-1 maps, full resolution first, with deep supervision).
    """

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        depth: Sequence[int],
        dims: Sequence[int],
        pool_op_kernel_sizes: Sequence[int | Sequence[int]],
        conv_kernel_sizes: Sequence[int | Sequence[int]],
        deep_supervision: bool = False,
    ):
        super().__init__()
        strides = [_triple(s) for s in pool_op_kernel_sizes]
        kernels = [_triple(k) for k in conv_kernel_sizes]
        if not (len(depth) == len(dims) == len(kernels) == len(strides) + 1):
            raise ValueError(
                f"STUNet needs len(depth) == len(dims) == len(conv_kernel_sizes) == len(pool_op_kernel_sizes) + 1, "
                f"got {len(depth)}, {len(dims)}, {len(kernels)}, {len(strides)}"
            )
        self.deep_supervision = deep_supervision
        self.strides = tuple(strides)
        levels = len(dims)
        self.conv_blocks_context = nn.ModuleList(
            [_stage(input_channels, dims[0], depth[0], kernels[0], (1, 1, 1))]
            + [_stage(dims[d - 1], dims[d], depth[d], kernels[d], strides[d - 1]) for d in range(1, levels)]
        )
        # decoder index u runs from the coarsest level upwards; level = levels - 2 - u
        self.upsample_layers = nn.ModuleList(
            [UpsampleNearest(dims[lv + 1], dims[lv], strides[lv]) for lv in reversed(range(levels - 1))]
        )
        self.conv_blocks_localization = nn.ModuleList(
            [_stage(2 * dims[lv], dims[lv], depth[lv], kernels[lv], (1, 1, 1)) for lv in reversed(range(levels - 1))]
        )
        self.seg_outputs = nn.ModuleList([nn.Conv3d(dims[lv], num_classes, 1) for lv in reversed(range(levels - 1))])

    @property
    def input_divisor(self) -> Triple:
        """Per-axis product of the strides: input sizes must be multiples of it."""
        div = [1, 1, 1]
        for stride in self.strides:
            div = [a * b for a, b in zip(div, stride, strict=True)]
        return (div[0], div[1], div[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        outputs = []
        last = len(self.conv_blocks_localization) - 1
        for u, (up, stage) in enumerate(zip(self.upsample_layers, self.conv_blocks_localization, strict=True)):
            x = stage(torch.cat((up(x), skips[-(u + 1)]), dim=1))
            if self.deep_supervision or u == last:
                outputs.append(self.seg_outputs[u](x))
        if self.deep_supervision:
            return tuple(reversed(outputs))
        return outputs[-1]


def he_init(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """He (Kaiming normal) init of conv weights, zero biases: nnU-Net's ``InitWeights_He(1e-2)``."""
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _build_stunet(arch_kwargs: dict[str, Any]) -> STUNet:
    unknown = set(arch_kwargs) - set(STUNET_S_DEFAULTS)
    if unknown:
        raise ValueError(f"STUNet: unknown arch_kwargs {sorted(unknown)} (known: {sorted(STUNET_S_DEFAULTS)})")
    net = STUNet(**{**STUNET_S_DEFAULTS, **arch_kwargs})
    net.apply(he_init)
    return net


def _build_segresnet(arch_kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SegResNet

    kwargs = {**SEGRESNET_DEFAULTS, **arch_kwargs}
    for key in ("blocks_down", "blocks_up"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return SegResNet(**kwargs)


def build_network(architecture: str, arch_kwargs: dict[str, Any]) -> nn.Module:
    """Build an (untrained, randomly initialised) network by name.

    Args:
        architecture: ``"STUNet"`` (defaults: STU-Net-S) or ``"SegResNet"`` (``monai.networks.nets.SegResNet``,
            defaults 3-D, 2 in, 3 out).
        arch_kwargs: overrides of the defaults; unknown STUNet keys raise ``ValueError``.

    Returns:
        A module mapping (B, C_in, z, y, x) to (B, classes, z, y, x) logits.
    """
    if architecture == "STUNet":
        return _build_stunet(arch_kwargs)
    if architecture == "SegResNet":
        return _build_segresnet(arch_kwargs)
    raise ValueError(f"unknown architecture {architecture!r} (known: 'STUNet', 'SegResNet')")


def input_divisor(network: nn.Module) -> Triple:
    """Per-axis size multiple a network needs: STU-Net's stride product, SegResNet's 2**(levels-1)."""
    if isinstance(network, STUNet):
        return network.input_divisor
    blocks_down = getattr(network, "blocks_down", None)
    if blocks_down is not None:
        return _triple(2 ** (len(blocks_down) - 1))
    return (1, 1, 1)


def count_parameters(network: nn.Module) -> int:
    """Number of parameters (all of them; frozen ones included)."""
    return sum(p.numel() for p in network.parameters())


def count_conv_macs(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of all 3-D convolutions for one forward pass on ``input_shape`` (B, C, z, y, x).

    Runs a copy of the network on the ``meta`` device (no memory, no arithmetic). Norms, activations,
    interpolation and additions are left out (they are < 1 % here), as in the usual FLOP counters
    (fvcore, thop, ptflops), which report MACs under the name "FLOPs".
    """
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv3d)
        kz, ky, kx = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kz * ky * kx

    meta = copy.deepcopy(network).to("meta")
    for module in meta.modules():
        if isinstance(module, nn.Conv3d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.zeros(*input_shape, device="meta"))
    return total
