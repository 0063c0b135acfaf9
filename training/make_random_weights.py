"""Write a randomly initialised (NOT trained) ensemble and its manifest, for tests and the benchmark only.

The networks' outputs are meaningless; the manifest says so in every member's model card and sets
``trained_on_real_data`` to false. Usage::

    python -m training.make_random_weights OUT_DIR [--members 2] [--architecture STUNet] [--onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from hecktor.segment.networks import build_network, count_parameters
from hecktor.segment.onnx_export import export_member_to_onnx, member_in_channels

__all__ = ["DEFAULT_CT_NORMALISATION", "RANDOM_MODEL_CARD", "make_random_weights"]

log = logging.getLogger(__name__)

RANDOM_MODEL_CARD = "randomly initialised, not trained"
# HECKTOR foreground CT statistics of the form nnU-Net records (values of the STU-Net HECKTOR plans).
DEFAULT_CT_NORMALISATION = {"mean": 37.31, "std": 45.56, "lower": -135.32, "upper": 161.06}


def _member_file(
    network: torch.nn.Module, arch_kwargs: dict[str, Any], patch: tuple[int, int, int], onnx: bool
) -> bytes:
    if onnx:
        return export_member_to_onnx(network, member_in_channels(arch_kwargs), patch)
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    return save_safetensors(state, metadata={"model_card": RANDOM_MODEL_CARD})


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
        ensemble_options: extra ``segmentation.ensemble`` keys (overlap, mirror_axes, batch_size, ...).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch_kwargs = dict(arch_kwargs or {})
    entries = []
    for index in range(members):
        torch.manual_seed(seed + index)
        network = build_network(architecture, arch_kwargs)
        name = f"random_{architecture.lower()}_{index}"
        file_name = f"{name}.onnx" if onnx else f"{name}.safetensors"
        data = _member_file(network, arch_kwargs, patch_size, onnx)
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
                "ct_normalisation": DEFAULT_CT_NORMALISATION,
                "model_card": {
                    "description": RANDOM_MODEL_CARD,
                    "purpose": "tests and benchmarks only; outputs are meaningless",
                    "seed": seed + index,
                },
            }
        )
    ensemble = {
        "backend": "onnxruntime" if onnx else "torch",
        "trained_on_real_data": False,
        **(ensemble_options or {}),
        "members": entries,
    }
    manifest = {"segmentation": {"engine": "ensemble", "ensemble": ensemble}}
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--architecture", choices=["STUNet", "SegResNet"], default="STUNet")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", action="store_true", help="write ONNX members (onnxruntime backend)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = make_random_weights(
        args.out_dir, args.members, args.architecture, None, tuple(args.patch_size), args.seed, args.onnx
    )
    log.info("wrote %s (%s)", path, RANDOM_MODEL_CARD)


if __name__ == "__main__":
    main()
