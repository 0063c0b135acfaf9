"""The OpenVINO backend of the ensemble (CPU): the members' ``.onnx`` files, numpy only (no torch).

The same files the ONNX Runtime backend runs, compiled by OpenVINO's CPU plugin; windows are tiled,
blended and averaged in numpy by :mod:`hecktor.segment.windows`, exactly as the other backends do it.

Precision is explicit: ``fp32`` by default, with ``INFERENCE_PRECISION_HINT`` set to f32 because
OpenVINO picks bf16 by itself on CPUs with AMX / AVX-512 BF16. ``bf16`` is refused unless the CPU
reports BF16 among its optimisation capabilities AND the member's model card records a parity check of
OpenVINO bf16 against fp32 on real validation cases (:data:`BF16_PARITY_KEY`). Threads follow the CPUs
this process may use (affinity and cgroup quota, :func:`hecktor.core.cpus.usable_cpus`), one stream:
one window at a time, all threads on it (latency, not throughput).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hecktor.core.cpus import usable_cpus
from hecktor.core.manifest import EnsembleConfig, ManifestError, MemberConfig
from hecktor.segment.backend import ArrayRunner, LoadedMember, member_window_settings
from hecktor.segment.weights import read_verified

__all__ = [
    "BF16_PARITY_KEY",
    "MIN_BF16_LABEL_AGREEMENT",
    "OpenVinoRunner",
    "Precision",
    "check_precision",
    "compile_config",
    "load_openvino",
    "load_openvino_members",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
_HINT: Mapping[str, str] = {"fp32": "f32", "bf16": "bf16"}
# A member's model card must hold, under this key, {"validation_cases": N >= 1, "label_agreement": x} from
# running OpenVINO bf16 against fp32 on N real validation cases, before bf16 is allowed for it.
BF16_PARITY_KEY = "openvino_bf16_parity"
MIN_BF16_LABEL_AGREEMENT = 0.9999


class OpenVinoRunner(ArrayRunner):
    """A compiled OpenVINO model: (B, C, z, y, x) float32 array -> (B, K, z, y, x) float32 logits."""

    device = "CPU"

    def __init__(self, compiled: Any, name: str):
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.name = name

    def property(self, key: str) -> Any:
        """A property of the compiled model (``INFERENCE_PRECISION_HINT``, ``INFERENCE_NUM_THREADS``, ...)."""
        return self._compiled.get_property(key)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result = self._request.infer([np.ascontiguousarray(batch, dtype=np.float32)], share_inputs=False)
        return np.array(result[0], dtype=np.float32)  # a copy: the request reuses its output buffer


def cpu_capabilities() -> list[str]:
    """OpenVINO's optimisation capabilities of this CPU ("FP32", "BF16", "INT8", ...)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, member: MemberConfig, capabilities: Collection[str]) -> None:
    """Refuse a precision this CPU or this member's model card does not support (see the module note)."""
    if precision == "fp32":
        return
    if precision != "bf16":
        raise ManifestError(f"member {member.name!r}: OpenVINO precision must be 'fp32' or 'bf16', got {precision!r}")
    if "BF16" not in capabilities:
        raise ManifestError(f"member {member.name!r}: bf16 asked for, but this CPU has no bf16 support "
                            f"(OpenVINO reports {sorted(capabilities)}); use fp32")
    parity = member.model_card.get(BF16_PARITY_KEY)
    cases = parity.get("validation_cases") if isinstance(parity, dict) else None
    agreement = parity.get("label_agreement") if isinstance(parity, dict) else None
    if not (isinstance(cases, int) and cases >= 1 and isinstance(agreement, (int, float))
            and agreement >= MIN_BF16_LABEL_AGREEMENT):
        raise ManifestError(f"member {member.name!r}: bf16 needs model_card.{BF16_PARITY_KEY} recording a parity "
                            f"check against fp32 on real validation cases (validation_cases >= 1, label_agreement "
                            f">= {MIN_BF16_LABEL_AGREEMENT}); got {parity!r}")


def compile_config(precision: Precision, num_threads: int) -> dict[str, Any]:
    """The CPU plugin's settings: explicit precision, one latency stream on ``num_threads`` threads."""
    return {
        "INFERENCE_PRECISION_HINT": _HINT[precision],
        "INFERENCE_NUM_THREADS": int(num_threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }


def load_openvino(
    path: Path, expected_sha256: str, num_threads: int | None = None, precision: Precision = "fp32"
) -> OpenVinoRunner:
    """An :class:`OpenVinoRunner` from a hash-checked ``.onnx`` file (the checked bytes are what is compiled).

    ``num_threads``: default the CPUs this process may use.
    """
    import openvino as ov

    data = read_verified(path, expected_sha256)
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(data), "CPU",
                                      compile_config(precision, num_threads or usable_cpus()))
    except Exception as exc:  # OpenVINO raises its own error types
        raise ManifestError(f"{path}: not a model OpenVINO can compile ({exc})") from exc
    return OpenVinoRunner(compiled, Path(path).name)


def load_openvino_members(
    config: EnsembleConfig, weights_dir: Path, device: str | None, num_threads: int | None,
    precision: Precision = "fp32",
) -> list[LoadedMember]:
    """Compile every member for the CPU (``device`` "cuda" is refused: this backend is CPU only)."""
    if device not in (None, "cpu"):
        raise ManifestError(f"the openvino backend runs on the CPU only, not on {device!r}")
    capabilities = cpu_capabilities() if precision != "fp32" else ["FP32"]
    members = []
    for member in config.members:
        check_precision(precision, member, capabilities)
        runner = load_openvino(weights_dir / member.weights, member.sha256, num_threads, precision)
        log.info("loaded %s (OpenVINO CPU, %s, %s threads)", member.name, precision,
                 runner.property("INFERENCE_NUM_THREADS"))
        members.append(LoadedMember(member, runner, member_window_settings(config, member)))
    return members
