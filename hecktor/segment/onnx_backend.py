"""The ONNX Runtime backend of the ensemble: ``.onnx`` members, numpy only (no torch in this path).

Sessions use the CUDA execution provider when this onnxruntime build has it and it loads (the
``onnxruntime`` image installs ``onnxruntime-gpu`` with NVIDIA's CUDA/cuDNN runtime wheels), the CPU
provider otherwise; when a GPU was wanted but the provider cannot load (no GPU, or a driver too old
for the CUDA build) the run log says so in one line as the members load, at the start of the run.
Windows are tiled, blended and accumulated in numpy by :mod:`hecktor.segment.windows`, exactly as
the torch path does it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from hecktor.core.manifest import EnsembleConfig, ManifestError
from hecktor.segment.backend import ArrayRunner, LoadedMember, member_window_settings
from hecktor.segment.weights import read_verified

__all__ = ["CUDA_PROVIDER", "OnnxRunner", "load_onnx", "load_onnx_members"]

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
_CUDA_LOAD_FAILED = ("onnxruntime: the CUDA execution provider could not load (no GPU visible, or the NVIDIA driver "
                     "is too old for this onnxruntime-gpu's CUDA build): the networks run on the CPU")


class OnnxRunner(ArrayRunner):
    """An ONNX Runtime session: (B, C, z, y, x) float32 array -> (B, K, z, y, x) float32 logits."""

    def __init__(self, session: Any, name: str):
        self._session = session
        self._input = session.get_inputs()[0].name
        self.name = name
        self.startup_messages = ""  # what onnxruntime printed while the session was made

    @property
    def input_shape(self) -> list[int | str | None]:
        """The model's declared input shape; dynamic axes are names or ``None``."""
        return list(self._session.get_inputs()[0].shape)

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def device(self) -> str:
        return self.providers[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)

    def static_spatial_shape(self) -> tuple[int, ...] | None:
        """The (z, y, x) input size the model is fixed to, or ``None`` when any axis is dynamic."""
        spatial = tuple(self.input_shape[2:])
        return spatial if all(isinstance(s, int) for s in spatial) else None  # type: ignore[return-value]


def _wanted_providers(ort: Any, device: str | None) -> list[str]:
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in ort.get_available_providers():
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            # onnxruntime-gpu finds the CUDA and cuDNN libraries of NVIDIA's pip wheels only after this.
            preload()
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device == "cuda":
        log.warning("onnxruntime: this installation has no CUDA execution provider (a CPU build): the networks "
                    "run on the CPU")
    return [CPU_PROVIDER]


def _session(ort: Any, data: bytes, options: Any, providers: list[str], path: Path) -> tuple[Any, str]:
    """An inference session, and what onnxruntime printed while making it.

    When the CUDA provider fails to start, onnxruntime prints an "EP Error" block on stdout and falls back
    to the CPU by itself; it is captured here so that the run log carries one line with its reason instead.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return ort.InferenceSession(data, sess_options=options, providers=providers), printed.getvalue()
    except Exception as exc:  # onnxruntime raises its own error types
        if providers[0] != CUDA_PROVIDER:
            raise ManifestError(f"{path}: not a loadable ONNX model ({exc})") from exc
        printed.write(f"{exc}\n")
    try:
        return ort.InferenceSession(data, sess_options=options, providers=[CPU_PROVIDER]), printed.getvalue()
    except Exception as exc:
        raise ManifestError(f"{path}: not a loadable ONNX model ({exc})") from exc


def _cuda_failure_reason(printed: str) -> str:
    """The informative part of onnxruntime's CUDA start-up error ("CUDA failure 35: CUDA driver version is ...")."""
    match = re.search(r"(CUDA failure \d+: [^;\n]*|CUDA[^;\n]*(?:error|insufficient)[^;\n]*)", printed)
    return match.group(1).strip() if match else " ".join(printed.split())[:300]


def load_onnx(
    path: Path, expected_sha256: str, num_threads: int | None = None, device: str | None = None
) -> OnnxRunner:
    """An :class:`OnnxRunner` from a hash-checked ``.onnx`` file.

    ``device``: "cpu" forces the CPU provider; otherwise CUDA is used when available and it starts.
    ``num_threads`` sets the session's intra-op threads (default: onnxruntime's own choice).
    """
    import onnxruntime as ort

    data = read_verified(path, expected_sha256)
    options = ort.SessionOptions()
    # The CPU memory arena keeps each session's peak working memory after a run (~0.8 GB per STU-Net-S
    # member at 128^3, measured): ten members then held 24 GB and were OOM-killed on the 2-core machine.
    # Without it a loaded session holds ~40 MB between runs.
    options.enable_cpu_mem_arena = False
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    session, printed = _session(ort, data, options, _wanted_providers(ort, device), Path(path))
    runner = OnnxRunner(session, Path(path).name)
    runner.startup_messages = printed
    return runner


def load_onnx_members(
    config: EnsembleConfig, weights_dir: Path, device: str | None, num_threads: int | None
) -> list[LoadedMember]:
    """Open every member's session; one log line when a wanted GPU provider did not load."""
    members = []
    for member in config.members:
        runner = load_onnx(weights_dir / member.weights, member.sha256, num_threads, device)
        if device != "cpu" and runner.device != CUDA_PROVIDER and _cuda_built():
            reason = _cuda_failure_reason(runner.startup_messages) if runner.startup_messages else "no reason given"
            log.warning("%s (%s)", _CUDA_LOAD_FAILED, reason)
            log.debug("onnxruntime printed: %s", runner.startup_messages)
            device = "cpu"  # the other members straight onto the CPU: no further start-up attempts or messages
        static = runner.static_spatial_shape()
        if static is not None and static != tuple(member.patch_size):
            raise ManifestError(
                f"member {member.name!r}: ONNX input is fixed at {static}, patch is {member.patch_size}"
            )
        log.info("loaded %s (ONNX, providers %s)", member.name, runner.providers)
        # A model fixed to one input size cannot take the whole ROI in one pass.
        settings = member_window_settings(config, member, config.whole_roi_if_fits and static is None)
        members.append(LoadedMember(member, runner, settings))
    return members


def _cuda_built() -> bool:
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()
