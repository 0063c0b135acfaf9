"""The model manifest (``model_weights/manifest.json``): the one place configuration lives.

It is read once by :func:`load_manifest` and handed down as frozen data. Nothing else in the
package reads files for configuration or looks at environment variables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_WEIGHTS_DIR",
    "EnsembleConfig",
    "Manifest",
    "ManifestError",
    "MemberConfig",
    "PetThresholdConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "load_manifest",
    "read_model_json",
]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "model_weights"


class ManifestError(ValueError):
    """The manifest (or a file it names) is missing, malformed or fails its hash check."""


@dataclass(frozen=True)
class PreprocessConfig:
    roi_size_mm: tuple[float, float, float] = (200.0, 200.0, 310.0)  # x, y, z
    spacing_mm: float = 1.0
    # The box's top lies this far above the brain centroid (superior is +z); it extends
    # roi_size_mm[2] downwards from there, over the whole neck.
    roi_above_brain_mm: float = 60.0
    brain_search_fraction: float = 0.25  # cranial fraction of the PET searched for the brain
    brain_zscore: float = 1.0
    interpolator: str = "linear"  # "linear" or "bspline" for the CT/PET resampling


@dataclass(frozen=True)
class PetThresholdConfig:
    suv_floor: float = 2.5
    relative_threshold: float = 0.40  # of each hot spot's SUVmax
    min_peak_suv: float = 4.0
    min_volume_ml: float = 0.5
    max_volume_ml: float = 250.0
    brain_margin_mm: float = 30.0  # lesions must lie this far below the brain's lower edge
    midline_band_mm: float = 20.0  # primary tumour: hot spot whose centre is this close to midline


@dataclass(frozen=True)
class MemberConfig:
    """One network of the ensemble."""

    name: str
    architecture: str  # "STUNet" or "SegResNet"
    arch_kwargs: dict[str, Any]
    patch_size: tuple[int, int, int]  # z, y, x voxels at 1 mm
    weights: str  # file name relative to the weights directory (.safetensors or .onnx)
    sha256: str
    ct_normalisation: dict[str, float]  # mean, std, lower (0.5 pct), upper (99.5 pct)
    labels: dict[str, str] = field(default_factory=lambda: {"0": "background", "1": "GTVp", "2": "GTVn"})
    model_card: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsembleConfig:
    members: tuple[MemberConfig, ...]
    backend: str = "torch"  # "torch" or "onnxruntime"
    overlap: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    batch_size: int = 2
    # One pass over the whole ROI instead of windows: fewer FLOPs, but InstanceNorm then sees the whole
    # ROI instead of a training-sized patch, which changes the output (55 % label agreement measured
    # with random weights). Off until validated on trained weights.
    whole_roi_if_fits: bool = False
    trained_on_real_data: bool = False


@dataclass(frozen=True)
class PostprocessConfig:
    fill_holes: bool = True
    min_component_voxels: int = 50


@dataclass(frozen=True)
class Manifest:
    weights_dir: Path
    engine: str  # "pet-threshold" or "ensemble"
    preprocess: PreprocessConfig
    pet_threshold: PetThresholdConfig
    ensemble: EnsembleConfig | None
    postprocess: PostprocessConfig
    rfs_model: Path
    hpv_model: Path


def _dataclass_from(cls: type, data: dict[str, Any], where: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**converted)


def read_model_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the model folder; :class:`ManifestError` names the file and the problem."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: {what} not found") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: the {what} is not valid JSON ({exc})") from exc


def load_manifest(weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> Manifest:
    """Read ``weights_dir/manifest.json``; raise :class:`ManifestError` naming the problem."""
    path = Path(weights_dir) / "manifest.json"
    raw = read_model_json(path, "model manifest")
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: the model manifest must hold a JSON object")

    seg = raw.get("segmentation", {})
    engine = seg.get("engine", "pet-threshold")
    if engine not in ("pet-threshold", "ensemble"):
        raise ManifestError(f"{path}: segmentation.engine must be 'pet-threshold' or 'ensemble', got {engine!r}")
    ensemble = None
    if "ensemble" in seg:
        ens = dict(seg["ensemble"])
        members = tuple(
            _dataclass_from(MemberConfig, m, f"{path}: ensemble member {i}")
            for i, m in enumerate(ens.pop("members", []))
        )
        ensemble = _dataclass_from(EnsembleConfig, {**ens, "members": members}, f"{path}: segmentation.ensemble")
    if engine == "ensemble" and (ensemble is None or not ensemble.members):
        raise ManifestError(f"{path}: engine 'ensemble' selected but no ensemble members are listed")

    return Manifest(
        weights_dir=Path(weights_dir),
        engine=engine,
        preprocess=_dataclass_from(PreprocessConfig, raw.get("preprocess", {}), f"{path}: preprocess"),
        pet_threshold=_dataclass_from(PetThresholdConfig, seg.get("pet_threshold", {}), f"{path}: pet_threshold"),
        ensemble=ensemble,
        postprocess=_dataclass_from(PostprocessConfig, seg.get("postprocess", {}), f"{path}: postprocess"),
        rfs_model=Path(weights_dir) / raw.get("rfs_model", "rfs_model.json"),
        hpv_model=Path(weights_dir) / raw.get("hpv_model", "hpv_model.json"),
    )
