"""The torch backend of the ensemble: safetensors members run by torch on CUDA (fp16 autocast) or the CPU.

Only this module (with ``networks``, ``sliding_window`` and ``onnx_export``) imports torch; the
``onnxruntime`` image does not contain it.

The thread count is set here, once, with ``torch.set_num_threads``: torch sizes its pool from its own
defaults or from inherited ``OMP_NUM_THREADS``, and a container may hand the process fewer (or more)
CPUs than that. The engine must not read or change environment variables, so it states the count
explicitly. The setting is process-wide in torch; it is made here, visibly, when members load.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from hecktor.core.manifest import CHALLENGE_LABELS, EnsembleConfig, ManifestError, MemberConfig
from hecktor.segment.backend import LoadedMember, member_window_settings
from hecktor.segment.torch_backend.networks import build_network, count_parameters, input_divisor
from hecktor.segment.torch_backend.sliding_window import WindowSettings, pad_to_shape, sliding_window_inference
from hecktor.segment.weights import read_verified
from hecktor.segment.windows import WHOLE_ROI_MULTIPLE

__all__ = ["TorchRunner", "build_torch_network", "load_safetensors", "load_torch_members"]

log = logging.getLogger(__name__)


def load_safetensors(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """A state dict (CPU tensors) from a hash-checked ``.safetensors`` file."""
    data = read_verified(path, expected_sha256)
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ManifestError(f"{path}: not a valid safetensors file ({exc})") from exc


def build_torch_network(member: MemberConfig, weights_dir: Path) -> nn.Module:
    """The member's network with its hash-checked weights, in eval mode, gradients off."""
    try:
        network = build_network(member.architecture, dict(member.arch_kwargs))
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"member {member.name!r}: cannot build {member.architecture} ({exc})") from exc
    state = load_safetensors(weights_dir / member.weights, member.sha256)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ManifestError(f"member {member.name!r}: {member.weights} does not fit the architecture ({exc})") from exc
    network.eval()
    network.requires_grad_(False)
    return network


class TorchRunner:
    """One network in eval mode behind ``inference_mode`` and (on CUDA) float16 autocast."""

    def __init__(self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None, name: str):
        self.network = network
        self.torch_device = device
        self.device = str(device)
        self.autocast_dtype = autocast_dtype
        self.name = name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.autocast_dtype is None:
                return self.network(batch)
            with torch.autocast(self.torch_device.type, dtype=self.autocast_dtype):
                return self.network(batch)

    def logits(self, image: np.ndarray, settings: WindowSettings) -> np.ndarray:
        """(2, z, y, x) -> (K, z, y, x) float32 Gaussian-blended logits on the CPU.

        On CUDA out-of-memory it retries once with single windows accumulated on the CPU. The retry
        happens after the ``except`` block so the failed attempt's tensors (held by the traceback) are
        freed first.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        classes = len(CHALLENGE_LABELS)
        settings = replace(settings, softmax=False)
        try:
            with torch.inference_mode():  # the blended sums are updated in place with the network's outputs
                return _to_numpy(sliding_window_inference(tensor, self, classes, settings, self.torch_device))
        except torch.OutOfMemoryError:
            if self.torch_device.type != "cuda":
                raise
            log.warning("%s: CUDA out of memory; retrying window by window, summing on the CPU", self.name)
        torch.cuda.empty_cache()
        single = replace(settings, whole_roi_if_fits=False, batch_size=1)
        with torch.inference_mode():
            return _to_numpy(sliding_window_inference(tensor, self, classes, single, self.torch_device, "cpu"))

    def seconds_per_window(self, image: np.ndarray, settings: WindowSettings) -> float:
        """Seconds for one window through the network, timed on a second call (the first warms up)."""
        window, _ = pad_to_shape(torch.from_numpy(np.ascontiguousarray(image)), settings.patch_size)
        z, y, x = settings.patch_size
        batch = window[None, :, :z, :y, :x].to(self.torch_device)
        elapsed = 0.0
        for _ in range(2):
            start = time.perf_counter()
            self(batch).float().cpu()  # the copy to the CPU waits for the GPU
            elapsed = time.perf_counter() - start
        return elapsed


def _to_numpy(values: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(values.to("cpu", torch.float32).numpy())


def _check_patch(member: MemberConfig, divisor: tuple[int, int, int]) -> None:
    if any(p % d for p, d in zip(member.patch_size, divisor, strict=True)):
        raise ManifestError(
            f"member {member.name!r}: patch_size {member.patch_size} is not a multiple of the network's "
            f"stride product {divisor} (check pool_op_kernel_sizes)"
        )


def _choose_device(device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    log.warning("torch backend: no usable CUDA GPU (none present, or the NVIDIA driver is too old for this torch's "
                "CUDA %s build): the networks run on the CPU", torch.version.cuda)
    return torch.device("cpu")


def load_torch_members(
    config: EnsembleConfig, weights_dir: Path, device: str | None, num_threads: int | None
) -> list[LoadedMember]:
    """Build every member's network with its hash-checked weights on the chosen device."""
    torch_device = _choose_device(device)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    # The T4 has no bfloat16 and bf16 on CPUs without AVX-512 BF16 was ~30x slower: fp16 on CUDA only.
    autocast = torch.float16 if torch_device.type == "cuda" else None
    members = []
    for member in config.members:
        network = build_torch_network(member, weights_dir).to(torch_device)
        divisor = input_divisor(network)
        _check_patch(member, divisor)
        log.info("loaded %s (%s, %d parameters) on %s", member.name, member.architecture, count_parameters(network),
                 torch_device)
        settings = member_window_settings(config, member, size_multiple=math.lcm(WHOLE_ROI_MULTIPLE, *divisor))
        members.append(LoadedMember(member, TorchRunner(network, torch_device, autocast, member.name), settings))
    return members
