"""The model manifest (``model_weights/manifest.json``): the one place configuration lives.

One schema describes the whole file; :func:`load_manifest` validates all of it when the manifest is
read and hands it down as frozen data, and :func:`write_manifest` writes only what that schema reads
back identically. The schema is strict: every key is known, every type exact (no ``"0.4"`` for a
number, no ``true`` for a number, no number for a string), every tunable parameter stated in the
file. The parameter classes have no defaults on purpose: the file is the single source of truth, and
code defaults that drift from it are how a test ends up checking parameters the product never runs.
Nothing else in the package reads files for configuration or looks at environment variables.
"""

from __future__ import annotations

import itertools
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as schema_dataclass
from pydantic_core import ErrorDetails, to_jsonable_python

from hecktor.core.features import CLINICAL_FEATURES
from hecktor.core.files import atomic_write

__all__ = [
    "CHALLENGE_LABELS",
    "CT_NORMALISATION_KEYS",
    "DEFAULT_WEIGHTS_DIR",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "WEIGHTS_SUFFIX",
    "EnsembleConfig",
    "Manifest",
    "ManifestError",
    "MemberConfig",
    "OutcomeClinicalFeature",
    "OutcomeNetworkConfig",
    "PetThresholdConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "RadiomicsConfig",
    "RadiomicsModalityConfig",
    "load_manifest",
    "manifest_from_json",
    "manifest_json",
    "read_model_json",
    "write_manifest",
]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "model_weights"
MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1  # raise it when a change to the schema makes older files mean something else
# The challenge's label contract: every member must predict exactly these classes, in this order.
CHALLENGE_LABELS: Mapping[str, str] = MappingProxyType({"0": "background", "1": "GTVp", "2": "GTVn"})
WEIGHTS_SUFFIX: Mapping[str, str] = MappingProxyType({"torch": ".safetensors", "onnxruntime": ".onnx"})
# The nnU-Net CT normalisation statistics each member records (hecktor.preprocess.normalise applies them).
CT_NORMALISATION_KEYS = ("mean", "std", "lower", "upper")
_MAX_SHOWN_ERRORS = 20
_MAX_SHOWN_VALUE = 80


class ManifestError(ValueError):
    """The manifest (or a file it names) is missing, malformed or fails its hash check."""


# strict: JSON's own types only (ints are accepted for floats, nothing else converts); extra="forbid":
# a misspelt key is an error, not a silently ignored one; allow_inf_nan=False: Python's json reads NaN.
_SCHEMA = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _relative_file(name: str) -> str:
    """``name`` must stay inside the weights folder: a relative path without ``..``."""
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        raise ValueError(f"must be a file name relative to the weights folder, got {name!r}")
    if ".." in PurePosixPath(name).parts or ".." in PureWindowsPath(name).parts:
        raise ValueError(f"must not leave the weights folder ('..'), got {name!r}")
    return name


RelativeFile = Annotated[str, AfterValidator(_relative_file)]


def _json_value(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as JSON reads it back (tuples become lists), so that what is written loads back equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must hold JSON values only ({exc})") from exc


def _check_format_version(version: object) -> None:
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"this product reads manifest format_version {FORMAT_VERSION}, not {_shorten(version)}")


@schema_dataclass(frozen=True, config=_SCHEMA)
class PreprocessConfig:
    roi_size_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat]  # x, y, z
    spacing_mm: PositiveFloat
    # The box's top lies this far above the brain centroid (superior is +z); it extends
    # roi_size_mm[2] downwards from there, over the whole neck.
    roi_above_brain_mm: float
    brain_search_fraction: Annotated[float, Field(gt=0, le=1)]  # cranial fraction of the PET searched for the brain
    brain_zscore: float
    interpolator: Literal["linear", "bspline"]  # for the CT/PET resampling


@schema_dataclass(frozen=True, config=_SCHEMA)
class PetThresholdConfig:
    suv_floor: PositiveFloat
    relative_threshold: Annotated[float, Field(gt=0, le=1)]  # of each hot spot's SUVmax
    min_peak_suv: NonNegativeFloat
    min_volume_ml: NonNegativeFloat
    max_volume_ml: PositiveFloat
    brain_margin_mm: NonNegativeFloat  # lesions must lie this far below the brain's lower edge
    midline_band_mm: NonNegativeFloat  # primary tumour: hot spot whose centre is this close to midline

    @model_validator(mode="after")
    def _volume_range_is_not_empty(self) -> PetThresholdConfig:
        if self.min_volume_ml > self.max_volume_ml:
            raise ValueError(f"min_volume_ml {self.min_volume_ml} exceeds max_volume_ml {self.max_volume_ml}")
        return self


@schema_dataclass(frozen=True, config=_SCHEMA)
class PostprocessConfig:
    fill_holes: bool
    min_component_voxels: Annotated[int, Field(ge=0)]


@schema_dataclass(frozen=True, config=_SCHEMA)
class MemberConfig:
    """One network of the ensemble."""

    name: NonEmptyStr
    architecture: Literal["STUNet", "SegResNet"]
    arch_kwargs: dict[str, Any]  # checked against the architecture when the network is built
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt]  # z, y, x voxels at 1 mm
    weights: RelativeFile  # .safetensors (torch backend) or .onnx (onnxruntime backend)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    ct_normalisation: dict[str, float]  # mean, std, lower (0.5 pct), upper (99.5 pct) in HU
    labels: dict[str, str]  # must be CHALLENGE_LABELS
    model_card: dict[str, Any]  # what the network is and what it was trained on; free form

    @field_validator("arch_kwargs", "model_card")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_value(value)

    @field_validator("ct_normalisation")
    @classmethod
    def _complete_normalisation(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(CT_NORMALISATION_KEYS):
            raise ValueError(f"needs exactly the keys {sorted(CT_NORMALISATION_KEYS)}, got {sorted(value)}")
        if not (value["std"] > 0 and value["lower"] < value["upper"]):
            raise ValueError(f"needs std > 0 and lower < upper, got {value}")
        return value

    @field_validator("labels")
    @classmethod
    def _challenge_labels(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if value != CHALLENGE_LABELS:
            member = info.data.get("name", "?")
            raise ValueError(f"member {member!r}: labels must be exactly {dict(CHALLENGE_LABELS)}, got {value}")
        return value


@schema_dataclass(frozen=True, config=_SCHEMA)
class EnsembleConfig:
    members: tuple[MemberConfig, ...]  # at least one
    backend: Literal["torch", "onnxruntime"]
    overlap: Annotated[float, Field(ge=0, lt=1)]  # of the sliding windows
    mirror_axes: tuple[Annotated[int, Field(ge=0, le=2)], ...]  # 0=z, 1=y, 2=x; test-time mirroring
    batch_size: PositiveInt
    # One pass over the whole ROI instead of windows: fewer FLOPs, but InstanceNorm then sees the whole
    # ROI instead of a training-sized patch, which changes the output (55 % label agreement measured
    # with random weights). Keep false until validated on trained weights.
    whole_roi_if_fits: bool
    trained_on_real_data: bool

    # A field validator, not Field(min_length=1): pydantic would also report a list whose only member
    # is invalid as empty.
    @field_validator("members")
    @classmethod
    def _not_empty(cls, members: tuple[MemberConfig, ...]) -> tuple[MemberConfig, ...]:
        if not members:
            raise ValueError("must list at least one member")
        return members

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        if len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct, got {list(self.mirror_axes)}")
        names = [m.name for m in self.members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"member names must be unique, repeated: {duplicates}")
        suffix = WEIGHTS_SUFFIX[self.backend]
        for member in self.members:
            if not member.weights.endswith(suffix):
                raise ValueError(
                    f"member {member.name!r}: backend {self.backend!r} needs a {suffix} file, got {member.weights!r}"
                )
        return self


@schema_dataclass(frozen=True, config=_SCHEMA)
class _SegmentationSection:
    engine: Literal["pet-threshold", "ensemble"]
    pet_threshold: PetThresholdConfig
    postprocess: PostprocessConfig
    ensemble: EnsembleConfig | None = None  # required when engine is "ensemble"

    @model_validator(mode="after")
    def _engine_has_its_section(self) -> _SegmentationSection:
        if self.engine == "ensemble" and self.ensemble is None:
            raise ValueError("engine 'ensemble' needs a segmentation.ensemble section listing its members")
        return self


@schema_dataclass(frozen=True, config=_SCHEMA)
class OutcomeClinicalFeature:
    """One input of the outcome network's clinical vector and its training statistics (median for imputation,
    mean and std for the z-score); see :mod:`hecktor.outcome.features`."""

    name: NonEmptyStr
    median: float
    mean: float
    std: PositiveFloat

    @field_validator("name")
    @classmethod
    def _known_feature(cls, value: str) -> str:
        if value not in CLINICAL_FEATURES:
            raise ValueError(f"unknown clinical feature {value!r} (known: {', '.join(CLINICAL_FEATURES)})")
        return value


@schema_dataclass(frozen=True, config=_SCHEMA)
class OutcomeNetworkConfig:
    """The optional image network for Tasks 2 and 3 (seed 000, :mod:`hecktor.outcome`); absent: the clinical
    models answer. Its inputs are a ``patch_size`` patch of the ROI grid around the lesions' centroid."""

    name: NonEmptyStr
    backend: Literal["torch", "onnxruntime"]
    weights: RelativeFile  # .safetensors (torch) or .onnx (onnxruntime)
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    arch_kwargs: dict[str, Any]  # hecktor.outcome.torch_backend.network.OutcomeArchitecture, every field
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt]  # z, y, x voxels of the ROI grid
    ct_window_hu: tuple[float, float]  # CT clipped to this range and scaled to [0, 1]
    rfs_cut_points_days: tuple[PositiveFloat, ...]  # K - 1 increasing cut points of the K hazard bins
    hpv_threshold: Annotated[float, Field(gt=0, lt=1)]  # on the HPV probability
    clinical_features: tuple[OutcomeClinicalFeature, ...]
    clinical_z_clip: PositiveFloat
    trained_on_real_data: bool
    model_card: dict[str, Any]  # what the network is and what it was trained on; free form

    @field_validator("arch_kwargs", "model_card")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _json_value(value)

    @model_validator(mode="after")
    def _consistent(self) -> OutcomeNetworkConfig:
        if not self.weights.endswith(WEIGHTS_SUFFIX[self.backend]):
            raise ValueError(f"backend {self.backend!r} needs a {WEIGHTS_SUFFIX[self.backend]} file, "
                             f"got {self.weights!r}")
        cuts = list(self.rfs_cut_points_days)
        if not cuts or any(b <= a for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"rfs_cut_points_days must be increasing and not empty, got {cuts}")
        if not self.ct_window_hu[0] < self.ct_window_hu[1]:
            raise ValueError(f"ct_window_hu needs lower < upper, got {list(self.ct_window_hu)}")
        names = [f.name for f in self.clinical_features]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"clinical_features must name distinct features, at least one, got {names}")
        expected = {"num_bins": len(cuts) + 1, "clinical_features": len(names)}
        for key, value in expected.items():
            if key in self.arch_kwargs and self.arch_kwargs[key] != value:
                raise ValueError(f"arch_kwargs.{key} is {self.arch_kwargs[key]}, the section implies {value}")
        return self


@schema_dataclass(frozen=True, config=_SCHEMA)
class RadiomicsModalityConfig:
    """Intensity settings of one modality (CT in HU, PET in SUV) for :mod:`hecktor.measure.radiomics`."""

    bin_width: PositiveFloat  # fixed bin size of the discretisation
    # Re-segmentation range [lower, upper]; upper null: none. The bins start at lower, which must be a whole
    # multiple of bin_width (then PyRadiomics' bins are IBSI's; see hecktor.measure.radiomics).
    resegment_range: tuple[float, float | None]
    round_intensities: bool  # round to whole numbers after interpolation (IBSI: CT in HU)

    @model_validator(mode="after")
    def _bins_start_at_lower(self) -> RadiomicsModalityConfig:
        lower, upper = self.resegment_range
        if upper is not None and not lower < upper:
            raise ValueError(f"resegment_range needs lower < upper, got {[lower, upper]}")
        steps = lower / self.bin_width
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            raise ValueError(f"resegment_range lower bound {lower} must be a whole multiple of bin_width "
                             f"{self.bin_width}")
        return self


@schema_dataclass(frozen=True, config=_SCHEMA)
class RadiomicsConfig:
    """The optional radiomics of GTVp and GTVn (:mod:`hecktor.measure.radiomics`); absent: not computed."""

    spacing_mm: PositiveFloat  # isotropic grid the features are computed on
    mask_threshold: Annotated[float, Field(gt=0, le=1)]  # interpolated mask kept where >= this (IBSI: 0.5)
    min_voxels: PositiveInt  # smaller regions (on that grid) give None
    # Shape features cost the square of the region's surface (PyRadiomics' maximum 3-D diameter compares every pair
    # of mesh vertices): a region with more surface voxels than this gets None for them (its intensity features are
    # still computed). 20000 surface voxels at 2 mm: about a 1.5 L sphere, about 1.5 s (120000 took 47 s).
    max_surface_voxels: PositiveInt
    ct: RadiomicsModalityConfig
    pet: RadiomicsModalityConfig


@schema_dataclass(frozen=True, config=_SCHEMA, kw_only=True)
class _ManifestDocument:
    """The file as written: key for key what ``manifest.json`` holds."""

    format_version: int
    description: str | None = None  # free text for people; the product ignores it
    segmentation: _SegmentationSection
    preprocess: PreprocessConfig
    rfs_model: RelativeFile
    hpv_model: RelativeFile
    outcome_network: OutcomeNetworkConfig | None = None  # optional image network for Tasks 2/3
    radiomics: RadiomicsConfig | None = None  # optional radiomics in the measure stage

    @field_validator("format_version")
    @classmethod
    def _current_version(cls, value: int) -> int:
        _check_format_version(value)
        return value


_DOCUMENT = TypeAdapter(_ManifestDocument)


@dataclass(frozen=True)
class Manifest:
    """The manifest of one weights folder, as :func:`load_manifest` returns it (validated) and
    :func:`write_manifest` takes it (validated again before anything is written). ``weights_dir`` and
    the model file paths are absolute; the model files lie inside ``weights_dir``.
    """

    weights_dir: Path
    engine: str  # "pet-threshold" or "ensemble"
    preprocess: PreprocessConfig
    pet_threshold: PetThresholdConfig
    ensemble: EnsembleConfig | None
    postprocess: PostprocessConfig
    rfs_model: Path
    hpv_model: Path
    description: str | None = None
    outcome_network: OutcomeNetworkConfig | None = None  # its weights lie in weights_dir
    radiomics: RadiomicsConfig | None = None  # None: the measure stage computes no radiomics


# --- error messages -----------------------------------------------------------------------------------------


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``("segmentation", "ensemble", "members", 0, "name")`` -> ``segmentation.ensemble.members[0].name``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _schema_class(annotation: Any) -> Any:
    """The schema class behind ``X | None`` (or the annotation itself)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the schema allows in the object at ``loc`` (empty if ``loc`` is no object of the schema)."""
    kind: Any = _ManifestDocument
    for part in loc:
        kind = _schema_class(kind)
        if isinstance(part, int):
            kind = get_args(kind)[0] if get_origin(kind) is tuple else None
        else:
            fields = getattr(kind, "__pydantic_fields__", {})
            if part not in fields:
                return []
            kind = fields[part].annotation
    return sorted(getattr(_schema_class(kind), "__pydantic_fields__", {}))


def _shorten(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= _MAX_SHOWN_VALUE else text[: _MAX_SHOWN_VALUE - 3] + "..."


def _problem(error: ErrorDetails) -> str:
    """One schema error as ``key.path: problem, got VALUE``."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = _allowed_keys(loc[:-1])
        return f"{_key_path(loc)}: unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing" and loc and isinstance(loc[-1], int):
        return f"{_key_path(loc[:-1])}: too few items (item {loc[-1]} is missing), got {_shorten(error['input'])}"
    if kind == "missing":
        return f"{_key_path(loc)}: required key is missing"
    if kind == "value_error":  # our validators' messages already name the offending value
        return f"{_key_path(loc)}: {error['msg'].removeprefix('Value error, ')}"
    if kind == "json_invalid":  # only pydantic's nesting limit, deeper than any manifest needs
        return f"{_key_path(loc)}: {error['msg']}"
    return f"{_key_path(loc)}: {error['msg']}, got {_shorten(error['input'])}"


def _schema_error(source: str, error: ValidationError) -> ManifestError:
    problems = [_problem(e) for e in error.errors(include_url=False)]
    shown = problems[:_MAX_SHOWN_ERRORS]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more")
    return ManifestError(f"{source}: invalid model manifest:\n  " + "\n  ".join(shown))


# --- reading ------------------------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: {what} not found") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_model_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the model folder; :class:`ManifestError` names the file and the problem."""
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: the {what} is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ManifestError(f"{path}: the {what} is nested too deeply to read") from exc


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice would silently keep only its last value."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ManifestError(f"keys given more than once in one object: {repeated}")
    return dict(pairs)


def _parse_manifest_text(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: the model manifest is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ManifestError(f"{source}: the model manifest is nested too deeply to read") from exc
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}") from exc


def manifest_from_json(document: Any, weights_dir: Path, source: str | None = None) -> Manifest:
    """Validate a parsed manifest document against the schema and resolve it against ``weights_dir``.

    Args:
        document: the JSON value of a manifest file (JSON types: lists for tuples).
        weights_dir: the folder the document's file names are relative to.
        source: how messages name the document (default: ``weights_dir/manifest.json``).

    Raises:
        ManifestError: naming ``source``, and for each problem its key path and the offending value.
    """
    weights_dir = Path(weights_dir).absolute()
    source = source or str(weights_dir / MANIFEST_NAME)
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: the model manifest must hold a JSON object")
    # A file of another format version is refused before the schema: its other differences are noise.
    if "format_version" not in document:
        raise ManifestError(f"{source}: format_version: required key is missing; this product reads "
                            f"manifest format_version {FORMAT_VERSION}")
    try:
        _check_format_version(document["format_version"])
    except ValueError as exc:
        raise ManifestError(f"{source}: format_version: {exc}") from exc
    try:
        # JSON mode: arrays are accepted for tuples, ints for floats, and nothing else is converted.
        parsed = _DOCUMENT.validate_json(json.dumps(document))
    except ValidationError as exc:
        raise _schema_error(source, exc) from exc
    segmentation = parsed.segmentation
    return Manifest(
        weights_dir=weights_dir,
        engine=segmentation.engine,
        preprocess=parsed.preprocess,
        pet_threshold=segmentation.pet_threshold,
        ensemble=segmentation.ensemble,
        postprocess=segmentation.postprocess,
        rfs_model=weights_dir / parsed.rfs_model,
        hpv_model=weights_dir / parsed.hpv_model,
        description=parsed.description,
        outcome_network=parsed.outcome_network,
        radiomics=parsed.radiomics,
    )


def load_manifest(weights_dir: Path = DEFAULT_WEIGHTS_DIR) -> Manifest:
    """Read and validate ``weights_dir/manifest.json``; raise :class:`ManifestError` naming every problem."""
    path = Path(weights_dir) / MANIFEST_NAME
    text = _read_text(path, "model manifest")
    return manifest_from_json(_parse_manifest_text(text, str(path)), weights_dir, str(path))


# --- writing ------------------------------------------------------------------------------------------------


def _name_inside(path: Path, weights_dir: Path, key: str) -> str:
    try:
        return Path(path).absolute().relative_to(weights_dir).as_posix()
    except ValueError as exc:
        raise ManifestError(f"manifest for {weights_dir}: {key}: {path} is not inside the weights folder") from exc


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The JSON document of ``manifest`` (current format_version), checked to load back identically.

    Raises:
        ManifestError: a model file lies outside ``manifest.weights_dir``, or the document would not
            load back as ``manifest`` (for example engine "ensemble" without an ensemble section).
    """
    weights_dir = Path(manifest.weights_dir).absolute()
    source = f"manifest for {weights_dir}"
    segmentation = {
        "engine": manifest.engine,
        "pet_threshold": to_jsonable_python(manifest.pet_threshold),
        "postprocess": to_jsonable_python(manifest.postprocess),
        "ensemble": to_jsonable_python(manifest.ensemble),
    }
    document = {
        "format_version": FORMAT_VERSION,
        "description": manifest.description,
        "segmentation": {key: value for key, value in segmentation.items() if value is not None},
        "preprocess": to_jsonable_python(manifest.preprocess),
        "rfs_model": _name_inside(manifest.rfs_model, weights_dir, "rfs_model"),
        "hpv_model": _name_inside(manifest.hpv_model, weights_dir, "hpv_model"),
        "outcome_network": to_jsonable_python(manifest.outcome_network),
        "radiomics": to_jsonable_python(manifest.radiomics),
    }
    document = {key: value for key, value in document.items() if value is not None}
    # Validated as the loader validates the file, so the messages and the key paths are the same.
    loaded = manifest_from_json(json.loads(json.dumps(document)), weights_dir, source)
    expected = replace(
        manifest, weights_dir=weights_dir, rfs_model=weights_dir / document["rfs_model"],
        hpv_model=weights_dir / document["hpv_model"],
    )
    if loaded != expected:
        raise ManifestError(f"{source}: the written manifest would not load back identically")
    return document


def write_manifest(manifest: Manifest) -> Path:
    """Write ``manifest`` to ``manifest.weights_dir/manifest.json`` (temporary file, then rename); return the path."""
    text = json.dumps(manifest_json(manifest), indent=2) + "\n"
    target = Path(manifest.weights_dir) / MANIFEST_NAME
    atomic_write(target, lambda tmp: tmp.write_text(text))
    return target
