"""The torch backend of the outcome network: hash-checked safetensors weights run by torch (CPU or CUDA).

Only the ``torch`` image flavour reaches this module (a manifest whose ``outcome_network.backend`` is "torch").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hecktor.core.manifest import ManifestError, OutcomeNetworkConfig
from hecktor.outcome.torch_backend.network import OutcomeNetwork, build_outcome_network
from hecktor.segment.torch_backend.runner import load_safetensors

__all__ = ["TorchOutcomeRunner", "load_torch_outcome"]


class TorchOutcomeRunner:
    """(B, 2, z, y, x), (B, 2, z, y, x), (B, P) float32 arrays -> (B, K) hazard logits, (B,) HPV logits."""

    def __init__(self, network: OutcomeNetwork, device: str) -> None:
        self.network = network.eval().to(device)
        self.network.requires_grad_(False)
        self.device = device

    def __call__(self, image: np.ndarray, masks: np.ndarray, clinical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensors = [
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)
            for a in (image, masks, clinical)
        ]
        with torch.inference_mode():
            rfs, hpv = self.network(*tensors)
        return rfs.float().cpu().numpy(), hpv.float().cpu().numpy()


def load_torch_outcome(config: OutcomeNetworkConfig, path: Path, device: str | None = None) -> TorchOutcomeRunner:
    """The section's network with its hash-checked safetensors weights (``strict=True``)."""
    try:
        network = build_outcome_network(dict(config.arch_kwargs))
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"outcome network {config.name!r}: cannot build it ({exc})") from exc
    state = load_safetensors(path, config.sha256)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ManifestError(
            f"outcome network {config.name!r}: {path.name} does not fit the architecture ({exc})"
        ) from exc
    return TorchOutcomeRunner(network, device or ("cuda" if torch.cuda.is_available() else "cpu"))
