"""``python -m training random-weights DIR`` writes a model folder that runs as it is (random, NOT trained members).

The folder used to hold only the members and ``manifest.json``; the manifest keeps the shipped Task 2/3
sections, so ``inference.py --weights-dir DIR`` stopped at the model check (exit 3). Tiny widths, and in the
default run a small SYNTHETIC neck whose ROI fits one 64^3 window, keep the network passes short; the bundled
sample case (a full 200 x 200 x 299 mm ROI: dozens of windows, minutes on 2 CPU cores) is the slow variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REPO, run_inference

from hecktor.core.manifest import load_manifest
from hecktor.io.phantom import PhantomGeometry, make_phantom, write_platform_case
from training.make_random_weights import main as random_weights_command

TINY_STUNET = {"dims": [4, 8, 8, 8], "depth": [1, 1, 1, 1], "pool_op_kernel_sizes": [[2, 2, 2]] * 3,
               "conv_kernel_sizes": [[3, 3, 3]] * 4}


# A 60 mm cube of the SYNTHETIC neck around the primary: its ROI fits one window of the patch below.
SMALL_NECK = PhantomGeometry(ct_size=(30, 30, 20), ct_spacing=(2.0, 2.0, 3.0), pet_size=(15, 15, 20),
                             pet_spacing=(4.0, 4.0, 3.0), z_bottom_mm=110.0)
PATCH = 64


def _random_weights_folder(folder: Path) -> Path:
    """The folder exactly as the documented command writes it (``python -m training random-weights`` hands its
    arguments to this ``main``; ``test_training_cli`` checks that hand-over), in-process to spare a torch import."""
    random_weights_command([str(folder), "--members", "1", "--patch-size", str(PATCH), str(PATCH), str(PATCH),
                            "--arch-kwargs", json.dumps(TINY_STUNET)])
    manifest = load_manifest(folder)
    assert manifest.engine == "ensemble"
    named = [manifest.rfs_model, manifest.hpv_model, *(folder / m.weights for m in manifest.ensemble.members)]
    assert all(path.is_file() and path.parent == folder for path in named), named
    return folder


def _assert_runs_all_three_tasks(weights: Path, case: Path, out: Path) -> None:
    result = run_inference(case, out, "--weights-dir", str(weights))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "segmentation engine: ensemble -- NOT a network trained on HECKTOR" in result.stderr
    assert (out / "images" / "tumor-lymph-node-segmentation" / "output.mha").is_file()
    assert isinstance(json.loads((out / "rfs.json").read_text()), int | float)
    assert isinstance(json.loads((out / "hpv-status.json").read_text()), bool)


def test_random_weights_folder_runs_all_three_tasks(tmp_path):
    case = tmp_path / "case"
    write_platform_case(make_phantom(SMALL_NECK), case)
    _assert_runs_all_three_tasks(_random_weights_folder(tmp_path / "random"), case, tmp_path / "out")


@pytest.mark.slow
def test_random_weights_folder_runs_the_sample_case(tmp_path):
    _assert_runs_all_three_tasks(_random_weights_folder(tmp_path / "random"), REPO / "test" / "sample-case",
                                 tmp_path / "out")
