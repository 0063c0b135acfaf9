"""The network-ensemble segmentation engine.

Every member is loaded (and hash-checked) once when the engine is built; ``segment`` normalises the
ROI the way each member was trained, runs it through the Gaussian sliding window (or in one pass),
and averages the members' softmax maps.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hecktor.manifest import CHALLENGE_LABELS, EnsembleConfig, ManifestError, MemberConfig
from hecktor.segment.networks import build_network, count_parameters, input_divisor
from hecktor.segment.sliding_window import Predictor, WindowSettings, sliding_window_inference
from hecktor.segment.weights import OnnxPredictor, load_onnx, load_safetensors
from hecktor.types import Probabilities, Roi

__all__ = ["EnsembleEngine", "available_cpus", "build_torch_network", "normalise_ct", "normalise_pet"]

log = logging.getLogger(__name__)

_CT_KEYS = ("mean", "std", "lower", "upper")
_WHOLE_ROI_MULTIPLE = 32


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask where the OS has one, else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def normalise_ct(ct_hu: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """nnU-Net CT normalisation: clip to [lower, upper] HU, then (x - mean) / std. (z, y, x) float32."""
    missing = [k for k in _CT_KEYS if k not in params]
    if missing:
        raise ManifestError(f"ct_normalisation lacks {missing} (needs {list(_CT_KEYS)})")
    lower, upper, mean, std = (float(params[k]) for k in ("lower", "upper", "mean", "std"))
    if not (std > 0 and lower < upper):
        raise ManifestError(f"ct_normalisation must have std > 0 and lower < upper, got {dict(params)}")
    out = np.clip(ct_hu, lower, upper).astype(np.float32, copy=False)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def normalise_pet(pet_suv: np.ndarray) -> np.ndarray:
    """Z-score of the PET with mean and std taken over the ROI's non-zero voxels. (z, y, x) float32.

    Zero voxels (outside the PET field of view) are left out of the statistics but normalised like
    the rest. An all-zero PET gives zeros.
    """
    values = pet_suv[pet_suv != 0]
    if values.size == 0:
        return np.zeros(pet_suv.shape, dtype=np.float32)
    mean = float(values.mean(dtype=np.float64))
    std = max(float(values.std(dtype=np.float64)), 1e-8)
    out = pet_suv.astype(np.float32, copy=True)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


class _TorchPredictor:
    """A network in eval mode behind ``inference_mode`` and (optionally) autocast: (B, C, ...) -> (B, K, ...)."""

    def __init__(self, network: nn.Module, device: torch.device, autocast_dtype: torch.dtype | None):
        self.network = network
        self.device = device
        self.autocast_dtype = autocast_dtype

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.autocast_dtype is None:
                return self.network(batch)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                return self.network(batch)


@dataclass(frozen=True)
class _Member:
    config: MemberConfig
    predictor: Predictor
    device: torch.device  # where windows are sent
    settings: WindowSettings


def _check_patch(member: MemberConfig, divisor: tuple[int, int, int]) -> None:
    if any(p % d for p, d in zip(member.patch_size, divisor, strict=True)):
        raise ManifestError(
            f"member {member.name!r}: patch_size {member.patch_size} is not a multiple of the network's "
            f"stride product {divisor} (check pool_op_kernel_sizes)"
        )


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


class EnsembleEngine:
    """Average of the softmax maps of the manifest's networks.

    Args:
        config: the manifest's ensemble section.
        weights_dir: folder holding the member files named in ``config``.
        device: where the networks run; default CUDA when available, else CPU.
        num_threads: torch intra-op threads; default :func:`available_cpus`.
        cpu_bf16: run torch members under bfloat16 autocast on CPU. Off by default: on the 2-core AMD
            EPYC build machine (no AVX-512 BF16) it was several times slower than fp32; style.md
            reports 2x faster on CPUs with AVX-512 BF16. Measure before turning it on. On CUDA,
            members always run under float16 autocast (the T4 has no bfloat16).

    The thread count is set here, once, with ``torch.set_num_threads``: torch sizes its pool from
    its own defaults or from inherited ``OMP_NUM_THREADS``, and a container may hand the process
    fewer (or more) CPUs than that. The engine must not read or change environment variables, so
    it states the count explicitly. Note the setting is process-wide in torch; it is made here,
    visibly, rather than hidden inside ``segment``.
    """

    name = "ensemble"

    def __init__(
        self,
        config: EnsembleConfig,
        weights_dir: Path,
        device: torch.device | str | None = None,
        num_threads: int | None = None,
        cpu_bf16: bool = False,
    ):
        # The manifest schema guarantees members, backend, file suffixes, label maps and normalisation keys.
        self.trained_on_real_data = bool(config.trained_on_real_data)
        self._config = config
        self._device = torch.device(device) if device is not None else _default_device()
        self._num_threads = num_threads or available_cpus()
        torch.set_num_threads(self._num_threads)
        self._autocast = _autocast_dtype(self._device, cpu_bf16)
        self._members = tuple(self._load_member(m, Path(weights_dir)) for m in config.members)

    @property
    def num_classes(self) -> int:
        return len(CHALLENGE_LABELS)

    def _settings(self, member: MemberConfig, divisor: tuple[int, int, int], whole_roi: bool) -> WindowSettings:
        return WindowSettings(
            patch_size=tuple(member.patch_size),  # type: ignore[arg-type]
            overlap=self._config.overlap,
            batch_size=self._config.batch_size,
            mirror_axes=tuple(self._config.mirror_axes),
            whole_roi_if_fits=whole_roi,
            size_multiple=math.lcm(_WHOLE_ROI_MULTIPLE, *divisor),
        )

    def _load_member(self, member: MemberConfig, weights_dir: Path) -> _Member:
        if self._config.backend == "onnxruntime":
            return self._load_onnx_member(member, weights_dir)
        network = build_torch_network(member, weights_dir).to(self._device)
        divisor = input_divisor(network)
        _check_patch(member, divisor)
        log.info(
            "loaded %s (%s, %d parameters) on %s",
            member.name,
            member.architecture,
            count_parameters(network),
            self._device,
        )
        predictor = _TorchPredictor(network, self._device, self._autocast)
        return _Member(member, predictor, self._device, self._settings(member, divisor, self._config.whole_roi_if_fits))

    def _load_onnx_member(self, member: MemberConfig, weights_dir: Path) -> _Member:
        predictor = load_onnx(weights_dir / member.weights, member.sha256, self._num_threads)
        static = _onnx_static_spatial_shape(predictor)
        if static is not None and static != tuple(member.patch_size):
            raise ManifestError(
                f"member {member.name!r}: ONNX input is fixed at {static}, patch is {member.patch_size}"
            )
        log.info("loaded %s (ONNX, providers %s)", member.name, predictor.providers)
        whole_roi = self._config.whole_roi_if_fits and static is None
        return _Member(member, predictor, torch.device("cpu"), self._settings(member, (1, 1, 1), whole_roi))

    def _predict(self, member: _Member, image: torch.Tensor) -> torch.Tensor:
        """(2, z, y, x) normalised image -> (K, z, y, x) float32 probabilities of one member.

        On CUDA out-of-memory it retries once with single windows accumulated on the CPU. The retry
        happens after the ``except`` block so the failed attempt's tensors (held by the traceback)
        are freed first.
        """
        try:
            return sliding_window_inference(image, member.predictor, self.num_classes, member.settings, member.device)
        except torch.OutOfMemoryError:
            if member.device.type != "cuda":
                raise
            log.warning("%s: CUDA out of memory; retrying window by window, summing on the CPU", member.config.name)
        torch.cuda.empty_cache()
        settings = replace(member.settings, whole_roi_if_fits=False, batch_size=1)
        return sliding_window_inference(image, member.predictor, self.num_classes, settings, member.device, "cpu")

    def segment(self, roi: Roi) -> Probabilities:
        """Per-class probabilities (K, z, y, x) float32 on ``roi.grid``, the mean of the members' softmax maps."""
        _check_roi(roi)
        pet = normalise_pet(roi.pet_suv)
        total: torch.Tensor | None = None
        for index, member in enumerate(self._members, start=1):
            start = time.perf_counter()
            ct = normalise_ct(roi.ct_hu, member.config.ct_normalisation)
            image = torch.from_numpy(np.stack([ct, pet]))
            probs = self._predict(member, image).to("cpu", torch.float32)
            total = probs.clone() if total is None else total.add_(probs)
            log.info("member %d/%d (%s) done in %.1f s", index, len(self._members), member.config.name,
                     time.perf_counter() - start)
        assert total is not None  # at least one member, checked in __init__
        total.div_(len(self._members))
        return Probabilities(grid=roi.grid, values=np.ascontiguousarray(total.numpy()), engine=self.name)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast_dtype(device: torch.device, cpu_bf16: bool) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_bf16 else None


def _onnx_static_spatial_shape(predictor: OnnxPredictor) -> tuple[int, ...] | None:
    """The (z, y, x) input size an ONNX model is fixed to, or ``None`` when any axis is dynamic."""
    shape = predictor.input_shape
    spatial = tuple(shape[2:])
    return spatial if all(isinstance(s, int) for s in spatial) else None  # type: ignore[return-value]


def _check_roi(roi: Roi) -> None:
    expected = tuple(reversed(roi.grid.GetSize()))
    if roi.ct_hu.shape != expected or roi.pet_suv.shape != expected:
        raise ValueError(
            f"ROI arrays must match the grid (z, y, x) {expected}; got CT {roi.ct_hu.shape}, PET {roi.pet_suv.shape}"
        )
