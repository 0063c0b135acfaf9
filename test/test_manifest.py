"""The model manifest: one strict schema, checked whole at load time; the writer reads back what it writes."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hecktor.apps.cli import main
from hecktor.core.manifest import (
    CHALLENGE_LABELS,
    DEFAULT_WEIGHTS_DIR,
    FORMAT_VERSION,
    EnsembleConfig,
    Manifest,
    ManifestError,
    MemberConfig,
    PetThresholdConfig,
    PostprocessConfig,
    PreprocessConfig,
    load_manifest,
    manifest_json,
    write_manifest,
)

Document = dict[str, Any]


def shipped_document() -> Document:
    return json.loads((DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())


def member_entry(name: str = "net_0") -> Document:
    return {
        "name": name,
        "architecture": "STUNet",
        "arch_kwargs": {"dims": [4, 8, 8]},
        "patch_size": [16, 16, 16],
        "weights": f"{name}.safetensors",
        "sha256": "0" * 64,
        "ct_normalisation": {"mean": 37.31, "std": 45.56, "lower": -135.32, "upper": 161.06},
        "labels": {"0": "background", "1": "GTVp", "2": "GTVn"},
        "model_card": {"description": "test entry"},
    }


def ensemble_document() -> Document:
    """The shipped manifest switched to a one-member ensemble (the member file need not exist to load)."""
    document = shipped_document()
    document["segmentation"]["engine"] = "ensemble"
    document["segmentation"]["ensemble"] = {
        "members": [member_entry()],
        "backend": "torch",
        "overlap": 0.5,
        "mirror_axes": [0, 2],
        "batch_size": 2,
        "whole_roi_if_fits": False,
        "trained_on_real_data": False,
    }
    return document


def write_document(folder: Path, document: Document) -> Path:
    (folder / "manifest.json").write_text(json.dumps(document))
    return folder


def _parent_and_key(document: Document, path: str) -> tuple[Any, str | int]:
    """The container holding ``path`` (dotted; list items by number: ``members.0.name``) and the last key."""
    *parents, last = (int(part) if part.isdigit() else part for part in path.split("."))
    target: Any = document
    for part in parents:
        target = target[part]
    return target, last


def _set(path: str, value: Any) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        target, key = _parent_and_key(document, path)
        target[key] = value

    return change


def _drop(path: str) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        target, key = _parent_and_key(document, path)
        del target[key]

    return change


def _add_member(document: Document) -> None:
    document["segmentation"]["ensemble"]["members"].append(member_entry())


# --- the shipped manifest ----------------------------------------------------------------------------------


def test_shipped_manifest_loads_with_the_values_of_the_file(shipped_manifest: Manifest) -> None:
    raw = shipped_document()
    assert raw["format_version"] == FORMAT_VERSION
    assert shipped_manifest.engine == "pet-threshold"
    assert shipped_manifest.ensemble is None
    assert shipped_manifest.preprocess.roi_size_mm == tuple(raw["preprocess"]["roi_size_mm"])
    assert dataclasses.asdict(shipped_manifest.pet_threshold) == raw["segmentation"]["pet_threshold"]
    assert dataclasses.asdict(shipped_manifest.postprocess) == raw["segmentation"]["postprocess"]
    assert shipped_manifest.rfs_model.is_absolute() and shipped_manifest.rfs_model.is_file()
    assert shipped_manifest.hpv_model.is_absolute() and shipped_manifest.hpv_model.is_file()
    assert shipped_manifest.rfs_model.parent == shipped_manifest.weights_dir == DEFAULT_WEIGHTS_DIR


def test_json_ints_become_floats_and_arrays_tuples(shipped_manifest: Manifest) -> None:
    preprocess = shipped_manifest.preprocess
    assert isinstance(preprocess.roi_size_mm, tuple)
    assert all(type(v) is float for v in preprocess.roi_size_mm)


def test_an_ensemble_manifest_loads_typed(tmp_path: Path) -> None:
    document = ensemble_document()
    document["preprocess"]["spacing_mm"] = 1  # a JSON int where a float is expected is fine
    del document["description"]  # the free-text note is optional
    manifest = load_manifest(write_document(tmp_path, document))
    assert manifest.engine == "ensemble" and manifest.description is None
    assert type(manifest.preprocess.spacing_mm) is float
    assert manifest.ensemble is not None and manifest.ensemble.mirror_axes == (0, 2)
    (member,) = manifest.ensemble.members
    assert member.patch_size == (16, 16, 16) and member.arch_kwargs == {"dims": [4, 8, 8]}
    assert member.labels == CHALLENGE_LABELS and member.model_card == {"description": "test entry"}


@pytest.mark.parametrize("cls", [PreprocessConfig, PetThresholdConfig, PostprocessConfig, MemberConfig, EnsembleConfig])
def test_parameter_classes_have_no_defaults(cls: type) -> None:
    """The manifest is the one source of a parameter's value; a code default would be a second one."""
    for field in dataclasses.fields(cls):
        assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, field.name
    with pytest.raises((TypeError, ValueError)):
        cls()


# --- refused manifests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model manifest not found"),
        ("{oops", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format_version": 1, "format_version": 1}', "keys given more than once in one object: ['format_version']"),
        (b'{"description": "\xff"}', "is not UTF-8 text"),
        ("[" * 100_000, "nested too deeply"),
    ],
    ids=["missing", "bad-json", "not-object", "duplicate-key", "not-utf8", "deep"],
)
def test_unreadable_manifest_is_refused(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError, match=re.escape(message)) as error:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(error.value)


# (change to the shipped manifest, the key path and problem the message must name)
BROKEN: dict[str, tuple[Callable[[Document], None], str]] = {
    "unknown-top-level-key": (_set("engine", "ensemble"), "engine: unknown key (allowed: description, format_version"),
    "unknown-key-in-segmentation": (_set("segmentation.engin", "ensemble"), "segmentation.engin: unknown key"),
    "unknown-key-in-pet-threshold": (
        _set("segmentation.pet_threshold.suv_flor", 2.0),
        "segmentation.pet_threshold.suv_flor: unknown key",
    ),
    "unknown-key-in-preprocess": (_set("preprocess.roi_size", [1, 2, 3]), "preprocess.roi_size: unknown key"),
    "string-for-a-section": (_set("preprocess", "default"), 'preprocess: Input should be an object, got "default"'),
    "string-for-segmentation": (_set("segmentation", "pet-threshold"), "segmentation: Input should be an object"),
    "string-threshold": (
        _set("segmentation.pet_threshold.relative_threshold", "0.4"),
        'segmentation.pet_threshold.relative_threshold: Input should be a valid number, got "0.4"',
    ),
    "bool-for-a-float": (
        _set("segmentation.pet_threshold.suv_floor", True),
        "segmentation.pet_threshold.suv_floor: Input should be a valid number, got true",
    ),
    "bool-for-an-int": (
        _set("segmentation.postprocess.min_component_voxels", True),
        "segmentation.postprocess.min_component_voxels: Input should be a valid integer, got true",
    ),
    "float-for-an-int": (
        _set("segmentation.postprocess.min_component_voxels", 50.5),
        "segmentation.postprocess.min_component_voxels: Input should be a valid integer, got 50.5",
    ),
    "int-for-a-bool": (
        _set("segmentation.postprocess.fill_holes", 1),
        "segmentation.postprocess.fill_holes: Input should be a valid boolean, got 1",
    ),
    "number-for-a-string": (_set("rfs_model", 3), "rfs_model: Input should be a valid string, got 3"),
    "tuple-too-short": (_set("preprocess.roi_size_mm", [200.0, 200.0]), "preprocess.roi_size_mm: too few items"),
    "tuple-too-long": (_set("preprocess.roi_size_mm", [1.0, 2.0, 3.0, 4.0]), "preprocess.roi_size_mm: Tuple should"),
    "missing-format-version": (_drop("format_version"), "format_version: required key is missing; this product reads "
                                                        "manifest format_version 1"),
    "wrong-format-version": (_set("format_version", 2), "format_version: this product reads manifest format_version "
                                                        "1, not 2"),
    "string-format-version": (_set("format_version", "1"), 'reads manifest format_version 1, not "1"'),
    "bool-format-version": (_set("format_version", True), "reads manifest format_version 1, not true"),
    "missing-parameter": (
        _drop("segmentation.pet_threshold.brain_margin_mm"),
        "segmentation.pet_threshold.brain_margin_mm: required key is missing",
    ),
    "missing-section": (_drop("segmentation.postprocess"), "segmentation.postprocess: required key is missing"),
    "missing-engine": (_drop("segmentation.engine"), "segmentation.engine: required key is missing"),
    "missing-model-file": (_drop("hpv_model"), "hpv_model: required key is missing"),
    "unknown-engine": (_set("segmentation.engine", "magic"), "segmentation.engine: Input should be 'pet-threshold'"),
    "ensemble-without-members": (
        _set("segmentation.engine", "ensemble"),
        "segmentation: engine 'ensemble' needs a segmentation.ensemble section",
    ),
    "unknown-interpolator": (_set("preprocess.interpolator", "cubic"), "preprocess.interpolator: Input should be"),
    "zero-spacing": (_set("preprocess.spacing_mm", 0.0), "preprocess.spacing_mm: Input should be greater than 0"),
    "negative-roi": (_set("preprocess.roi_size_mm.1", -1.0), "preprocess.roi_size_mm[1]: Input should be greater"),
    "zero-relative-threshold": (
        _set("segmentation.pet_threshold.relative_threshold", 0.0),
        "segmentation.pet_threshold.relative_threshold: Input should be greater than 0",
    ),
    "relative-threshold-above-1": (
        _set("segmentation.pet_threshold.relative_threshold", 1.5),
        "segmentation.pet_threshold.relative_threshold: Input should be less than or equal to 1",
    ),
    "empty-volume-range": (
        _set("segmentation.pet_threshold.min_volume_ml", 300.0),
        "segmentation.pet_threshold: min_volume_ml 300.0 exceeds max_volume_ml 250.0",
    ),
    "absolute-model-file": (_set("rfs_model", "/etc/rfs.json"), "rfs_model: must be a file name relative to"),
    "model-file-outside": (_set("hpv_model", "../hpv_model.json"), "hpv_model: must not leave the weights folder"),
    "number-for-description": (_set("description", 3), "description: Input should be a valid string"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_manifest_is_refused_naming_the_key(tmp_path: Path, name: str) -> None:
    change, message = BROKEN[name]
    document = shipped_document()
    change(document)
    with pytest.raises(ManifestError, match=re.escape(message)) as error:
        load_manifest(write_document(tmp_path, document))
    assert str(tmp_path / "manifest.json") in str(error.value)


# (change to the one-member ensemble document, the key path and problem the message must name)
BROKEN_ENSEMBLE: dict[str, tuple[Callable[[Document], None], str]] = {
    "unknown-key-in-member": (
        _set("segmentation.ensemble.members.0.weigths", "x.safetensors"),
        "segmentation.ensemble.members[0].weigths: unknown key (allowed: arch_kwargs, architecture,",
    ),
    "unknown-key-in-ensemble": (_set("segmentation.ensemble.overlapp", 0.5), "segmentation.ensemble.overlapp: unknown"),
    "swapped-labels": (
        _set("segmentation.ensemble.members.0.labels", {"0": "background", "1": "GTVn", "2": "GTVp"}),
        "segmentation.ensemble.members[0].labels: member 'net_0': labels must be exactly",
    ),
    "extra-label": (
        _set("segmentation.ensemble.members.0.labels", {**CHALLENGE_LABELS, "3": "other"}),
        "member 'net_0': labels must be exactly",
    ),
    "missing-labels": (
        _drop("segmentation.ensemble.members.0.labels"),
        "segmentation.ensemble.members[0].labels: required key is missing",
    ),
    "short-patch": (
        _set("segmentation.ensemble.members.0.patch_size", [16, 16]),
        "segmentation.ensemble.members[0].patch_size: too few items",
    ),
    "float-patch": (
        _set("segmentation.ensemble.members.0.patch_size", [16, 16, 16.5]),
        "segmentation.ensemble.members[0].patch_size[2]: Input should be a valid integer",
    ),
    "unknown-architecture": (
        _set("segmentation.ensemble.members.0.architecture", "UNETR"),
        "segmentation.ensemble.members[0].architecture: Input should be 'STUNet' or 'SegResNet'",
    ),
    "bad-sha256": (_set("segmentation.ensemble.members.0.sha256", "abc"), "members[0].sha256: String should match"),
    "incomplete-normalisation": (
        _set("segmentation.ensemble.members.0.ct_normalisation", {"mean": 0.0, "std": 1.0}),
        "members[0].ct_normalisation: needs exactly the keys ['lower', 'mean', 'std', 'upper']",
    ),
    "string-normalisation": (
        _set("segmentation.ensemble.members.0.ct_normalisation.std", "45"),
        'members[0].ct_normalisation.std: Input should be a valid number, got "45"',
    ),
    "missing-option": (_drop("segmentation.ensemble.batch_size"), "segmentation.ensemble.batch_size: required key"),
    "missing-model-card": (
        _drop("segmentation.ensemble.members.0.model_card"),
        "segmentation.ensemble.members[0].model_card: required key is missing",
    ),
    "unknown-backend": (_set("segmentation.ensemble.backend", "tensorrt"), "segmentation.ensemble.backend: Input"),
    "overlap-of-1": (_set("segmentation.ensemble.overlap", 1.0), "segmentation.ensemble.overlap: Input should be less"),
    "bool-mirror-axis": (
        _set("segmentation.ensemble.mirror_axes", [True]),
        "segmentation.ensemble.mirror_axes[0]: Input should be a valid integer, got true",
    ),
    "mirror-axis-3": (_set("segmentation.ensemble.mirror_axes", [3]), "mirror_axes[0]: Input should be less than"),
    "no-members": (_set("segmentation.ensemble.members", []), "segmentation.ensemble.members: must list at least one"),
    "backend-suffix": (
        _set("segmentation.ensemble.backend", "onnxruntime"),
        "segmentation.ensemble: member 'net_0': backend 'onnxruntime' needs a .onnx file",
    ),
    "duplicate-member-names": (
        _add_member,
        "segmentation.ensemble: member names must be unique, repeated: ['net_0']",
    ),
    "string-for-member": (_set("segmentation.ensemble.members.0", "net_0"), "members[0]: Input should be an object"),
    "non-json-arch-kwargs": (
        _set("segmentation.ensemble.members.0.arch_kwargs", "dims=4"),
        'members[0].arch_kwargs: Input should be an object, got "dims=4"',
    ),
}


@pytest.mark.parametrize("name", list(BROKEN_ENSEMBLE))
def test_broken_ensemble_is_refused_naming_the_key(tmp_path: Path, name: str) -> None:
    change, message = BROKEN_ENSEMBLE[name]
    document = ensemble_document()
    change(document)
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(write_document(tmp_path, document))


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    document = shipped_document()
    for change, _ in (BROKEN["unknown-key-in-segmentation"], BROKEN["string-threshold"], BROKEN["zero-spacing"]):
        change(document)
    with pytest.raises(ManifestError) as error:
        load_manifest(write_document(tmp_path, document))
    message = str(error.value)
    for key in ("segmentation.engin", "segmentation.pet_threshold.relative_threshold", "preprocess.spacing_mm"):
        assert key in message


def test_long_offending_values_are_shortened(tmp_path: Path) -> None:
    document = shipped_document()
    document["preprocess"]["interpolator"] = "x" * 500
    with pytest.raises(ManifestError) as error:
        load_manifest(write_document(tmp_path, document))
    assert "x" * 70 in str(error.value) and "x" * 100 not in str(error.value)


@pytest.mark.parametrize(
    "name", ["unknown-key-in-segmentation", "string-threshold", "bool-for-a-float", "wrong-format-version"]
)
def test_cli_exits_3_on_a_broken_manifest_and_writes_nothing(
    tmp_path: Path, phantom_case_dir: Path, name: str
) -> None:
    change, _ = BROKEN[name]
    document = shipped_document()
    change(document)
    weights = tmp_path / "weights"
    weights.mkdir()
    write_document(weights, document)
    out = tmp_path / "out"
    code = main(["run", "--input", str(phantom_case_dir), "--output", str(out), "--weights-dir", str(weights)])
    assert code == 3
    assert not out.exists() or not any(out.iterdir())


def test_cli_exits_3_on_a_wrong_label_map(tmp_path: Path, phantom_case_dir: Path) -> None:
    change, _ = BROKEN_ENSEMBLE["swapped-labels"]
    document = ensemble_document()
    change(document)
    out = tmp_path / "out"
    code = main(["run", "--input", str(phantom_case_dir), "--output", str(out),
                 "--weights-dir", str(write_document(tmp_path, document))])
    assert code == 3
    assert not out.exists() or not any(out.iterdir())


# --- the writer ------------------------------------------------------------------------------------------


def _moved(manifest: Manifest, folder: Path) -> Manifest:
    """``manifest`` for another weights folder (model files named as before)."""
    return dataclasses.replace(
        manifest,
        weights_dir=folder,
        rfs_model=folder / manifest.rfs_model.relative_to(manifest.weights_dir),
        hpv_model=folder / manifest.hpv_model.relative_to(manifest.weights_dir),
    )


def test_shipped_manifest_is_what_the_writer_writes(shipped_manifest: Manifest) -> None:
    assert manifest_json(shipped_manifest) == shipped_document()


def test_writer_round_trip_of_the_shipped_manifest(shipped_manifest: Manifest, tmp_path: Path) -> None:
    manifest = _moved(shipped_manifest, tmp_path)
    path = write_manifest(manifest)
    assert path == tmp_path / "manifest.json"
    assert load_manifest(tmp_path) == manifest
    assert json.loads(path.read_text()) == shipped_document()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary file left behind
    assert path.stat().st_mode & 0o044 == 0o044


def test_writer_round_trip_of_an_ensemble(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    loaded = load_manifest(write_document(source, ensemble_document()))
    assert loaded.ensemble is not None
    # Tuples in arch_kwargs (as Python callers write them) come back as the lists JSON reads.
    member = dataclasses.replace(loaded.ensemble.members[0], arch_kwargs={"dims": (4, 8, 8)}, name="other")
    manifest = _moved(dataclasses.replace(loaded, ensemble=dataclasses.replace(loaded.ensemble, members=(
        loaded.ensemble.members[0], dataclasses.replace(member, weights="other.safetensors")))), tmp_path / "copy")
    write_manifest(manifest)
    again = load_manifest(tmp_path / "copy")
    assert again == manifest
    assert again.ensemble is not None and again.ensemble.members[1].arch_kwargs == {"dims": [4, 8, 8]}


def test_writer_refuses_what_would_not_load(shipped_manifest: Manifest, tmp_path: Path) -> None:
    no_members = dataclasses.replace(_moved(shipped_manifest, tmp_path), engine="ensemble")
    with pytest.raises(ManifestError, match=r"engine 'ensemble' needs a segmentation\.ensemble section"):
        write_manifest(no_members)
    unknown_engine = dataclasses.replace(_moved(shipped_manifest, tmp_path), engine="magic")
    with pytest.raises(ManifestError, match=r"segmentation\.engine: Input should be"):
        write_manifest(unknown_engine)
    outside = dataclasses.replace(_moved(shipped_manifest, tmp_path), rfs_model=tmp_path.parent / "rfs_model.json")
    with pytest.raises(ManifestError, match=r"rfs_model: .* is not inside the weights folder"):
        write_manifest(outside)
    assert not any(tmp_path.iterdir())


def test_parameter_classes_validate_when_built_in_python(shipped_manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="relative_threshold"):
        dataclasses.replace(shipped_manifest.pet_threshold, relative_threshold="0.4")
    with pytest.raises(ValueError, match="roi_size_mm"):
        dataclasses.replace(shipped_manifest.preprocess, roi_size_mm=(1.0, 2.0))
    assert dataclasses.replace(shipped_manifest.postprocess, min_component_voxels=1).min_component_voxels == 1
