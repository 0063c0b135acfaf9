"""Export ensemble members to ONNX (dynamic batch and spatial axes) for the ``onnxruntime`` backend.

:func:`export_manifest_to_onnx` turns a folder whose manifest lists torch (safetensors) members into a
self-contained folder for the ``onnxruntime`` backend: one ``<member name>.onnx`` per member, the
Task 2/3 model files, and the manifest with the backend switched and each member's ``weights``/``sha256``
replaced, written by :func:`hecktor.core.manifest.write_manifest` (the schema that loads it). Every member is
loaded through the engine's hash-checked path, so only weights that match the manifest are exported.
Every file is written to a temporary name, then renamed; ``manifest.json`` is written last.

Instance and group norms are exported as :class:`CentredNorm` (plain ONNX reductions and arithmetic),
not as ONNX ``InstanceNormalization``: ONNX Runtime's CPU kernel for that op sums each channel in
one float32 pass, and on a whole-ROI input (224 x 224 x 192 voxels) its output was off by 2.6e-3
(in units of the normalised output, against float64), against 1e-6 for torch. Through STU-Net-S on the
whole ROI of the sarcoma case STS_001 the probabilities then differed from torch's by 1.3e-3; with
``CentredNorm`` (within 1e-5 of float64 on the same input) by 2.6e-5.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import warnings
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hecktor.core.files import atomic_write
from hecktor.core.manifest import MANIFEST_NAME, ManifestError, MemberConfig, load_manifest, write_manifest
from hecktor.segment.torch_backend.networks import input_divisor
from hecktor.segment.torch_backend.runner import build_torch_network

__all__ = [
    "ONNX_OPSET",
    "CentredNorm",
    "export_manifest_to_onnx",
    "export_member_to_onnx",
    "member_in_channels",
    "trace_shape",
    "with_centred_norms",
    "with_float16_weights",
]

log = logging.getLogger(__name__)

ONNX_OPSET = 17
# Weight tensors with at least this many elements are stored as float16 by ``--fp16-weights``.
FLOAT16_MIN_ELEMENTS = 1024
_DYNAMIC_AXES = {0: "batch", 2: "z", 3: "y", 4: "x"}


def member_in_channels(arch_kwargs: dict[str, Any]) -> int:
    """Input channels named by a member's architecture arguments (STU-Net or SegResNet spelling; default 2)."""
    return int(arch_kwargs.get("input_channels", arch_kwargs.get("in_channels", 2)))


def _two_level_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last three axes of (B, G, a, b, c), keepdim: first over (b, c), then over a.

    Every (b, c) slab has the same size, so the mean of the slab means is the mean; summing in two
    short levels keeps float32 accurate where one pass over ~10^7 values is not.
    """
    return x.mean(dim=(3, 4), keepdim=True).mean(dim=2, keepdim=True)


class CentredNorm(nn.Module):
    """Instance norm (``groups=None``) or group norm of (B, C, z, y, x) with two-level, centred statistics.

    Same result as the module it replaces (biased variance, ``eps`` inside the square root, optional
    per-channel affine), written with reductions and arithmetic that ONNX Runtime computes accurately.
    """

    def __init__(self, eps: float, weight: nn.Parameter | None, bias: nn.Parameter | None, groups: int | None):
        super().__init__()
        self.eps = eps
        self.weight = weight
        self.bias = bias
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        grouped = x if self.groups is None else x.reshape(shape[0], self.groups, -1, shape[3], shape[4])
        centred = grouped - _two_level_mean(grouped)
        out = centred * torch.rsqrt(_two_level_mean(centred * centred) + self.eps)
        if self.groups is not None:
            out = out.reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(1, -1, 1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1, 1, 1, 1)
        return out


def _centred_replacement(module: nn.Module) -> CentredNorm | None:
    if isinstance(module, nn.InstanceNorm3d) and not module.track_running_stats:
        return CentredNorm(module.eps, module.weight, module.bias, groups=None)
    if isinstance(module, nn.GroupNorm):
        return CentredNorm(module.eps, module.weight, module.bias, groups=module.num_groups)
    return None


def with_centred_norms(network: nn.Module) -> nn.Module:
    """A copy of ``network`` whose instance and group norms are :class:`CentredNorm` (sharing the parameters)."""
    out = copy.deepcopy(network)
    root = _centred_replacement(out)
    if root is not None:
        return root
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            replacement = _centred_replacement(child)
            if replacement is not None:
                setattr(parent, name, replacement)
    return out


def export_member_to_onnx(network: nn.Module, in_channels: int, patch_size: tuple[int, int, int]) -> bytes:
    """``network`` exported to ONNX (opset 17): input ``image`` (B, C, z, y, x), output ``logits`` (B, K, z, y, x).

    The batch and the three spatial axes are dynamic; the network is traced once on a zero input of
    ``patch_size`` (z, y, x), any size the network accepts (see :func:`trace_shape`). Instance and group
    norms are exported as :class:`CentredNorm` (see the module note); ``network`` itself is not changed.
    """
    buffer = BytesIO()
    axes = dict(_DYNAMIC_AXES)
    # The TorchScript exporter (dynamo=False) needs no onnxscript; its deprecation and tracer notes are expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # InstanceNorm without running stats normalises per instance whatever the train flag says.
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True", category=UserWarning)
        torch.onnx.export(
            with_centred_norms(network).eval(),
            (torch.zeros(1, in_channels, *patch_size),),
            buffer,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def with_float16_weights(model: bytes, min_elements: int = FLOAT16_MIN_ELEMENTS) -> bytes:
    """The ONNX model with its large float32 weights stored as float16 and cast back to float32 in the graph.

    Halves the file (the platform's upload limit is 2 GB for the whole image) while every operation still
    computes in float32, on every execution provider: ONNX Runtime folds the casts once when the session
    is made. Small tensors (norm constants, resize scales) stay float32. The cost is the rounding of the
    weights to float16 (relative 5e-4), measured by the parity tests.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(model)
    graph = proto.graph
    casts = []
    kept = []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT or int(np.prod(initializer.dims)) < min_elements:
            kept.append(initializer)
            continue
        stored = f"{initializer.name}__float16"
        kept.append(numpy_helper.from_array(numpy_helper.to_array(initializer).astype(np.float16), stored))
        casts.append(helper.make_node("Cast", [stored], [initializer.name], to=TensorProto.FLOAT,
                                      name=f"{initializer.name}__to_float32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def trace_shape(network: nn.Module, patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """A small input to trace on: twice the network's size multiple per axis (so the coarsest level keeps
    more than one voxel, as instance norm needs), at most the patch. The axes stay dynamic whatever it is;
    tracing at the full patch would only cost a full-size forward pass.
    """
    divisor = input_divisor(network)
    z, y, x = (min(2 * d, p) for d, p in zip(divisor, patch_size, strict=True))
    return (z, y, x)


def _onnx_file_name(member: MemberConfig, taken: set[str]) -> str:
    name = f"{member.name}.onnx"
    if Path(name).name != name or member.name in ("", ".", ".."):
        raise ManifestError(f"member name {member.name!r} is not usable as a file name for its ONNX export")
    if name in taken:
        raise ManifestError(f"two ensemble members are named {member.name!r}; names must be unique to export")
    taken.add(name)
    return name


def _export_member(
    member: MemberConfig, weights_dir: Path, out_dir: Path, taken: set[str], fp16_weights: bool
) -> MemberConfig:
    """Export one hash-checked torch member into ``out_dir``; return its entry for the exported manifest."""
    file_name = _onnx_file_name(member, taken)
    network = build_torch_network(member, weights_dir)
    example = trace_shape(network, member.patch_size)
    data = export_member_to_onnx(network, member_in_channels(dict(member.arch_kwargs)), example)
    if fp16_weights:
        data = with_float16_weights(data)
    atomic_write(out_dir / file_name, lambda tmp: tmp.write_bytes(data))
    log.info("exported %s -> %s (%.1f MB%s)", member.name, out_dir / file_name, len(data) / 1e6,
             ", float16 weights" if fp16_weights else "")
    card = {**member.model_card, "onnx_weights": "float16 (computed in float32)" if fp16_weights else "float32"}
    return replace(member, weights=file_name, sha256=hashlib.sha256(data).hexdigest(), model_card=card)


def _copy_model_json(source: Path, key: str, out_dir: Path) -> Path:
    """Copy a Task 2/3 model file into ``out_dir`` under its own name; return the copy's path.

    A file absent from the source folder is left out (with a warning); the manifest still names it.
    """
    target = out_dir / source.name
    if source.is_file():
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    else:
        log.warning("%s: %s not found; the exported folder has no %s either", source, key, key)
    return target


def export_manifest_to_onnx(weights_dir: Path, out_dir: Path, fp16_weights: bool = False) -> Path:
    """Export every member of ``weights_dir/manifest.json`` to ``out_dir``; return the new manifest's path.

    Args:
        weights_dir: folder with a manifest whose ``segmentation.ensemble`` lists torch (safetensors) members.
        out_dir: created if missing; must not be ``weights_dir``. Files of the same names are replaced.
        fp16_weights: store the weights as float16 (see :func:`with_float16_weights`): half the size.

    Raises:
        ManifestError: the manifest is invalid, has no ensemble members, already selects the
            ``onnxruntime`` backend, or a member's weights fail their hash check or do not fit.
    """
    weights_dir, out_dir = Path(weights_dir), Path(out_dir)
    manifest_path = weights_dir / MANIFEST_NAME
    manifest = load_manifest(weights_dir)
    ensemble = manifest.ensemble
    if ensemble is None or not ensemble.members:
        raise ManifestError(f"{manifest_path}: no segmentation.ensemble members to export")
    if ensemble.backend != "torch":
        raise ManifestError(f"{manifest_path}: ensemble backend is {ensemble.backend!r}; only torch members export")
    if out_dir.resolve() == weights_dir.resolve():
        raise ManifestError(f"{out_dir}: the ONNX export needs its own folder, not the source weights folder")

    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    members = tuple(_export_member(member, weights_dir, out_dir, taken, fp16_weights) for member in ensemble.members)
    exported = replace(
        manifest,
        weights_dir=out_dir.absolute(),
        ensemble=replace(ensemble, backend="onnxruntime", members=members),
        rfs_model=_copy_model_json(manifest.rfs_model, "rfs_model", out_dir.absolute()),
        hpv_model=_copy_model_json(manifest.hpv_model, "hpv_model", out_dir.absolute()),
    )
    return write_manifest(exported)  # last: a folder with a manifest is complete
