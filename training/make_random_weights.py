"""Write a randomly initialised (NOT trained) ensemble and its manifest, for tests and the benchmark only.

The networks' outputs are meaningless; the manifest says so in every member's model card and sets
``trained_on_real_data`` to false. Usage::

    python -m training random-weights OUT_DIR [--members 2] [--architecture STUNet] [--onnx]
        [--arch-kwargs '{"dims": [4, 8, 8, 8, 8, 8]}']

The folder is complete: besides the members and ``manifest.json`` it holds a copy of every other
file the manifest names (the shipped Task 2/3 models, and the outcome network when the shipped
manifest lists one), so ``inference.py --weights-dir OUT_DIR`` runs all three tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from hecktor.core.manifest import (
    CHALLENGE_LABELS,
    DEFAULT_WEIGHTS_DIR,
    MANIFEST_NAME,
    Manifest,
    load_manifest,
    manifest_from_json,
    manifest_json,
    write_manifest,
)
from hecktor.segment.torch_backend.networks import build_network, count_parameters
from training.export import member_file

__all__ = ["DEFAULT_CT_NORMALISATION", "RANDOM_ENSEMBLE_OPTIONS", "RANDOM_MODEL_CARD", "copy_shipped_model_files",
           "make_random_weights"]

log = logging.getLogger(__name__)

RANDOM_MODEL_CARD = "randomly initialised, not trained"
# HECKTOR foreground CT statistics of the form nnU-Net records (values of the STU-Net HECKTOR plans).
DEFAULT_CT_NORMALISATION: Mapping[str, float] = MappingProxyType(
    {"mean": 37.31, "std": 45.56, "lower": -135.32, "upper": 161.06}
)
# The ensemble options of a random manifest unless ``ensemble_options`` overrides them. Whole-ROI stays off:
# InstanceNorm over the whole ROI changes the output (see hecktor.core.manifest.EnsembleConfig).
RANDOM_ENSEMBLE_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"overlap": 0.5, "mirror_axes": (), "batch_size": 2, "whole_roi_if_fits": False}
)
RANDOM_DESCRIPTION = "Randomly initialised ensemble, NOT trained: for tests and benchmarks only."


def make_random_weights(
    out_dir: Path,
    members: int = 2,
    architecture: str = "STUNet",
    arch_kwargs: dict[str, Any] | None = None,
    patch_size: tuple[int, int, int] = (128, 128, 128),
    seed: int = 0,
    onnx: bool = False,
    ensemble_options: dict[str, Any] | None = None,
) -> Path:
    """Write ``members`` random networks and ``manifest.json`` into ``out_dir``; return the manifest path.

    Args:
        out_dir: created if missing; existing member files of the same names are overwritten.
        members: number of networks (seeds ``seed``, ``seed + 1``, ...).
        architecture: ``"STUNet"`` or ``"SegResNet"``.
        arch_kwargs: network overrides (default: STU-Net-S / SegResNet defaults).
        patch_size: sliding-window patch (z, y, x).
        seed: torch seed of the first member.
        onnx: write ``.onnx`` members and select the ``onnxruntime`` backend instead of safetensors/torch.
        ensemble_options: ``segmentation.ensemble`` options (overlap, mirror_axes, batch_size, whole_roi_if_fits)
            replacing :data:`RANDOM_ENSEMBLE_OPTIONS`; the backend follows ``onnx``, trained_on_real_data is false.

    The preprocessing, PET-threshold and post-processing sections are those of the shipped manifest
    (``model_weights/manifest.json``), and so are the Task 2/3 models it names: every such file is
    copied into ``out_dir`` (:func:`copy_shipped_model_files`), so the folder runs as it is.

    Raises:
        ManifestError: the options or arguments do not make a valid manifest (nothing is written then
            but the member files).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch_kwargs = dict(arch_kwargs or {})
    entries = []
    for index in range(members):
        torch.manual_seed(seed + index)
        network = build_network(architecture, arch_kwargs)
        name = f"random_{architecture.lower()}_{index}"
        data, suffix = member_file(network, arch_kwargs, patch_size, onnx, False, RANDOM_MODEL_CARD)
        file_name = f"{name}{suffix}"
        (out_dir / file_name).write_bytes(data)
        log.info("wrote %s (%d parameters)", file_name, count_parameters(network))
        entries.append(
            {
                "name": name,
                "architecture": architecture,
                "arch_kwargs": arch_kwargs,
                "patch_size": list(patch_size),
                "weights": file_name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "ct_normalisation": dict(DEFAULT_CT_NORMALISATION),
                "labels": dict(CHALLENGE_LABELS),
                "model_card": {
                    "description": RANDOM_MODEL_CARD,
                    "purpose": "tests and benchmarks only; outputs are meaningless",
                    "seed": seed + index,
                },
            }
        )
    ensemble = {
        **RANDOM_ENSEMBLE_OPTIONS,
        **(ensemble_options or {}),
        "backend": "onnxruntime" if onnx else "torch",
        "trained_on_real_data": False,
        "members": entries,
    }
    shipped_manifest = load_manifest(DEFAULT_WEIGHTS_DIR)
    copy_shipped_model_files(shipped_manifest, out_dir)
    shipped = manifest_json(shipped_manifest)
    document = {
        **shipped,
        "description": RANDOM_DESCRIPTION,
        "segmentation": {**shipped["segmentation"], "engine": "ensemble", "ensemble": ensemble},
    }
    return write_manifest(manifest_from_json(document, out_dir, f"random manifest for {out_dir / MANIFEST_NAME}"))


def copy_shipped_model_files(shipped: Manifest, out_dir: Path) -> list[Path]:
    """Copy every model file ``shipped`` names, other than segmentation members, into ``out_dir``.

    The random manifest keeps the shipped manifest's Task 2/3 sections, so without these files the
    folder fails its own manifest check (exit 3) before any case runs.
    """
    sources = [shipped.rfs_model, shipped.hpv_model]
    if shipped.outcome_network is not None:
        sources.append(shipped.weights_dir / shipped.outcome_network.weights)
    copied = []
    for source in sources:
        target = out_dir / source.name
        if target.exists() and target.samefile(source):
            continue  # out_dir is the shipped folder itself
        shutil.copy2(source, target)
        copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--architecture", choices=["STUNet", "SegResNet"], default="STUNet")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", action="store_true", help="write ONNX members (onnxruntime backend)")
    parser.add_argument("--arch-kwargs", type=json.loads, default=None, metavar="JSON",
                        help='network overrides as a JSON object, e.g. \'{"dims": [4, 8, 8, 8, 8, 8]}\' '
                             "(small widths for quick tests); default: the architecture's defaults")
    args = parser.parse_args(argv)
    if args.arch_kwargs is not None and not isinstance(args.arch_kwargs, dict):
        parser.error("--arch-kwargs must be a JSON object")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = make_random_weights(
        args.out_dir, args.members, args.architecture, args.arch_kwargs, tuple(args.patch_size), args.seed, args.onnx
    )
    log.info("wrote %s (%s)", path, RANDOM_MODEL_CARD)


if __name__ == "__main__":
    main()
