"""The container's side of the outcome network: load the manifest's ``outcome_network``, run it, fall back.

:func:`load_outcome_network` opens the hash-checked weights: an ``.onnx`` file through onnxruntime (numpy only,
no torch import: the ``onnxruntime`` image has none) or a ``.safetensors`` file through
:mod:`hecktor.outcome.torch_backend.runner`. :func:`outcome_network_or_none` is what the pipeline calls once: ``None``
when the manifest has no ``outcome_network`` section, and ``None`` with a warning when the network cannot be
loaded (a broken or altered file). :func:`predict_tasks_2_3` answers Tasks 2 and 3 with the network when there
is one and the case has an ROI, and with the clinical models (:func:`hecktor.outcome.predict.predict`) otherwise or
when the network fails on the case (with a warning); the run log says which answered.

Sessions run on the CPU: one patch per case (about half a second at 96^3 for ResNet-18 with a stride-2 stem).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hecktor.core.manifest import Manifest, ManifestError, OutcomeNetworkConfig
from hecktor.core.types import ClinicalRecord, Measurements, Predictions, Roi
from hecktor.outcome.features import clinical_values, clinical_vector
from hecktor.outcome.inputs import OutcomeImageInputs, lesion_patch, survival_curve
from hecktor.outcome.predict import ClinicalModels, predict, sigmoid
from hecktor.segment.weights import read_verified

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "LoadedOutcomeNetwork",
    "OnnxOutcomeRunner",
    "load_onnx_outcome",
    "load_outcome_network",
    "outcome_network_or_none",
    "predict_tasks_2_3",
    "predictions_from_outputs",
]

log = logging.getLogger(__name__)

INPUT_NAMES = ("image", "masks", "clinical")
OUTPUT_NAMES = ("rfs_logits", "hpv_logit")
# (B, 2, z, y, x), (B, 2, z, y, x), (B, P) float32 -> (B, K) hazard logits, (B,) HPV logits.
OutcomeRunner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class OnnxOutcomeRunner:
    """An onnxruntime session of an exported outcome network (CPU provider)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def input_shapes(self) -> dict[str, list[Any]]:
        return {i.name: list(i.shape) for i in self._session.get_inputs()}

    def output_shapes(self) -> dict[str, list[Any]]:
        return {o.name: list(o.shape) for o in self._session.get_outputs()}

    def __call__(self, image: np.ndarray, masks: np.ndarray, clinical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {
            name: np.ascontiguousarray(value, dtype=np.float32)
            for name, value in zip(INPUT_NAMES, (image, masks, clinical), strict=True)
        }
        rfs, hpv = self._session.run(list(OUTPUT_NAMES), feeds)
        return np.asarray(rfs, dtype=np.float32), np.asarray(hpv, dtype=np.float32)


def load_onnx_outcome(path: Path, expected_sha256: str, num_threads: int | None = None) -> OnnxOutcomeRunner:
    """An :class:`OnnxOutcomeRunner` from a hash-checked ``.onnx`` file; :class:`ManifestError` if unusable."""
    import onnxruntime as ort

    data = read_verified(path, expected_sha256)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # as the ensemble's sessions: no arena kept between cases
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types
        raise ManifestError(f"{path}: not a loadable ONNX model ({exc})") from exc
    runner = OnnxOutcomeRunner(session)
    names = (tuple(runner.input_shapes()), tuple(runner.output_shapes()))
    if names != (INPUT_NAMES, OUTPUT_NAMES):
        raise ManifestError(
            f"{path}: an outcome network has inputs {INPUT_NAMES} and outputs {OUTPUT_NAMES}, "
            f"this file has {names[0]} and {names[1]}"
        )
    return runner


def _check_onnx_shapes(runner: OnnxOutcomeRunner, config: OutcomeNetworkConfig, path: Path) -> None:
    """The ONNX file's static sizes must be the section's: patch, clinical features, bins."""
    inputs, outputs = runner.input_shapes(), runner.output_shapes()
    expected = {
        "image": [2, *config.patch_size],
        "masks": [2, *config.patch_size],
        "clinical": [len(config.clinical_features)],
    }
    for name, shape in expected.items():
        if inputs[name][1:] != shape:
            raise ManifestError(
                f"{path}: input {name!r} has shape {inputs[name]}, the manifest implies "
                f"[batch, {', '.join(map(str, shape))}]"
            )
    bins = len(config.rfs_cut_points_days) + 1
    if outputs["rfs_logits"][1:] != [bins]:
        raise ManifestError(
            f"{path}: output 'rfs_logits' has shape {outputs['rfs_logits']}, the manifest implies {bins} bins"
        )


def predictions_from_outputs(rfs_logits: np.ndarray, hpv_logit: float, hpv_threshold: float) -> Predictions:
    """One case's :class:`Predictions` from the network's outputs: risk ``-sum_k S_k``, HPV ``sigmoid(logit)``."""
    survival = survival_curve(np.asarray(rfs_logits, dtype=np.float64).reshape(1, -1))[0]
    probability = float(sigmoid(float(hpv_logit)))
    details = {"hpv_logit": float(hpv_logit), "hpv_threshold": hpv_threshold, "image_network": 1.0}
    details |= {f"rfs_survival_bin{k + 1}": float(s) for k, s in enumerate(survival)}
    return Predictions(
        rfs_risk=-float(survival.sum()),
        hpv_probability=probability,
        hpv_positive=bool(probability >= hpv_threshold),
        details=details,
    )


@dataclass(frozen=True)
class LoadedOutcomeNetwork:
    """The manifest's outcome network, loaded; :meth:`predict` answers Tasks 2 and 3 for one case."""

    config: OutcomeNetworkConfig
    runner: OutcomeRunner

    @property
    def name(self) -> str:
        return self.config.name

    def inputs(
        self, roi: Roi, labels: sitk.Image | None, record: ClinicalRecord, measurements: Measurements | None
    ) -> tuple[OutcomeImageInputs, np.ndarray]:
        """The image inputs and the (P,) clinical vector of one case."""
        patch = lesion_patch(roi, labels, self.config.patch_size, self.config.ct_window_hu)
        vector = clinical_vector(
            clinical_values(record, measurements), self.config.clinical_features, self.config.clinical_z_clip
        )
        return patch, vector

    def predict(
        self, roi: Roi, labels: sitk.Image | None, record: ClinicalRecord, measurements: Measurements | None
    ) -> Predictions:
        patch, vector = self.inputs(roi, labels, record, measurements)
        rfs, hpv = self.runner(patch.image[None], patch.masks[None], vector[None])
        if not (np.all(np.isfinite(rfs)) and np.all(np.isfinite(hpv))):
            raise FloatingPointError("the network's outputs are not finite")
        return predictions_from_outputs(rfs[0], float(np.asarray(hpv).reshape(-1)[0]), self.config.hpv_threshold)


def load_outcome_network(
    config: OutcomeNetworkConfig, weights_dir: Path, device: str | None = None
) -> LoadedOutcomeNetwork:
    """Load the section's weights (hash-checked) with its backend; :class:`ManifestError` when unusable."""
    path = Path(weights_dir) / config.weights
    if config.backend == "onnxruntime":
        onnx_runner = load_onnx_outcome(path, config.sha256)
        _check_onnx_shapes(onnx_runner, config, path)
        return LoadedOutcomeNetwork(config, onnx_runner)
    from hecktor.outcome.torch_backend.runner import load_torch_outcome

    return LoadedOutcomeNetwork(config, load_torch_outcome(config, path, device))


def outcome_network_or_none(manifest: Manifest, device: str | None = None) -> LoadedOutcomeNetwork | None:
    """The manifest's outcome network, or ``None`` (no section; or a warning when it cannot be loaded)."""
    config = manifest.outcome_network
    if config is None:
        log.info("Tasks 2/3: clinical models (the manifest lists no image network)")
        return None
    try:
        network = load_outcome_network(config, manifest.weights_dir, device)
    except Exception as exc:  # any failure of the optional network: the clinical models answer
        log.warning(
            "Tasks 2/3: the image network %r cannot be loaded (%s): the clinical models will answer", config.name, exc
        )
        return None
    flag = "" if config.trained_on_real_data else " -- trained on SYNTHETIC data, NOT a clinical model"
    log.info("Tasks 2/3: image network %r (%s, %s)%s", config.name, config.backend, config.weights, flag)
    return network


def predict_tasks_2_3(
    network: LoadedOutcomeNetwork | None,
    clinical_models: ClinicalModels,
    record: ClinicalRecord,
    measurements: Measurements | None,
    roi: Roi | None,
    labels: sitk.Image | None,
) -> Predictions:
    """Tasks 2/3 from the image network when there is one and an ROI, else (or on its failure) the clinical models."""
    if network is not None and roi is not None:
        try:
            predictions = network.predict(roi, labels, record, measurements)
        except Exception as exc:  # the case must not be lost to the optional network
            log.warning(
                "Tasks 2/3: the image network %r failed on this case (%s: %s): answered by the clinical models",
                network.name,
                type(exc).__name__,
                exc,
            )
        else:
            log.info("Tasks 2/3 answered by the image network %r", network.name)
            return predictions
    elif network is not None:
        log.warning("Tasks 2/3: no ROI for the image network (no PET uptake): answered by the clinical models")
    predictions = predict(clinical_models, record, measurements)
    log.info("Tasks 2/3 answered by the clinical models")
    return predictions
