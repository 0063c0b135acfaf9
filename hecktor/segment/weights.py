"""Loading ensemble members' weights, each checked against the sha256 the manifest records.

A file is read into memory once, hashed, and the same bytes are deserialised, so what is run is
exactly what was checked (no window between checking and loading). A missing file or a hash
mismatch raises :class:`hecktor.manifest.ManifestError` naming the file and both hashes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes

from hecktor.manifest import ManifestError

__all__ = ["OnnxPredictor", "load_onnx", "load_safetensors", "read_verified", "sha256_of"]

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The bytes of ``path`` after checking their sha256 against ``expected_sha256``.

    Raises:
        ManifestError: the file is missing or unreadable, or its hash differs (both hashes are named).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: model weights file cannot be read ({exc.strerror or exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.strip().lower():
        raise ManifestError(
            f"{path}: sha256 mismatch: the manifest expects {expected_sha256}, the file has {actual}; "
            "refusing to load weights that are not the ones the manifest describes"
        )
    return data


def load_safetensors(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """A state dict (CPU tensors) from a hash-checked ``.safetensors`` file."""
    data = read_verified(path, expected_sha256)
    try:
        return load_safetensors_bytes(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ManifestError(f"{path}: not a valid safetensors file ({exc})") from exc


class OnnxPredictor:
    """An ONNX Runtime session wrapped as a predictor: (B, C, z, y, x) tensor -> (B, K, z, y, x) float32 tensor.

    Inputs go to the session as float32 numpy arrays; outputs come back as CPU tensors.
    """

    def __init__(self, session: object, name: str):
        self._session = session
        self._input = session.get_inputs()[0].name  # type: ignore[attr-defined]
        self.name = name

    @property
    def input_shape(self) -> list[int | str | None]:
        """The model's declared input shape; dynamic axes are names or ``None``."""
        return list(self._session.get_inputs()[0].shape)  # type: ignore[attr-defined]

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())  # type: ignore[attr-defined]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (out,) = self._session.run(None, {self._input: array})  # type: ignore[attr-defined]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def load_onnx(path: Path, expected_sha256: str, num_threads: int | None = None) -> OnnxPredictor:
    """An :class:`OnnxPredictor` from a hash-checked ``.onnx`` file.

    Uses ``CUDAExecutionProvider`` when this onnxruntime build offers it, else the CPU provider.
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
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own error types
        raise ManifestError(f"{path}: not a loadable ONNX model ({exc})") from exc
    return OnnxPredictor(session, Path(path).name)
