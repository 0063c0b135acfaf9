"""Learning check (slow, ~40 min on 2 CPU cores): the training chain learns GTVp and GTVn on SYNTHETIC phantoms.

A small STU-Net (widths 8-64) is trained with nnU-Net through ``python -m training`` (nnU-Net's CE + Dice, 60 epochs
of 20 iterations) on 24 phantom cases (2 mm ROI grid, see training_chain.py), exported, and run by the container on
phantoms that took no part in training (new seeds); the labels it writes on the native CT grid must reach GTVp Dice
>= 0.8 and GTVn aggregated Dice >= 0.8 against the phantoms' own lesion masks. Run it with::

    .venv/bin/python -m pytest -m slow test/test_training_learning.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from training_chain import REPO, Chain, build_chain

from hecktor.metrics import aggregated_dice, dice
from hecktor.phantom import make_training_phantom, write_platform_case
from hecktor.types import LABEL_GTVN, LABEL_GTVP

pytestmark = pytest.mark.slow
pytest.importorskip("nnunetv2", reason="nnU-Net v2 is needed for the training chain (requirements-dev.txt)")

LEARNING = {"cases": 24, "epochs": 60, "iterations": 20, "dims": ("8", "16", "32", "64", "64", "64"),
            "seed": 2, "data_workers": 1}
HELD_OUT_SEEDS = (910_001, 910_002, 910_003, 910_004)


def container_labels(model: Path, seed: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, reference) label arrays on the phantom's CT grid, the prediction by ``inference.py``."""
    phantom = make_training_phantom(seed)
    write_platform_case(phantom, work / "input")
    result = subprocess.run([sys.executable, str(REPO / "inference.py"), "--input", str(work / "input"), "--output",
                             str(work / "output"), "--weights-dir", str(model), "--time-limit", "0", "--tasks", "1"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (work / "output").rglob("*.mha")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(written))), sitk.GetArrayFromImage(phantom.labels)


def test_a_small_network_learns_gtvp_and_gtvn(tmp_path: Path) -> None:
    chain: Chain = build_chain(tmp_path / "chain", **LEARNING)
    pairs = [container_labels(chain.model, seed, tmp_path / str(seed)) for seed in HELD_OUT_SEEDS]
    gtvp = float(np.mean([dice(p, r, LABEL_GTVP) for p, r in pairs]))
    gtvn = aggregated_dice(pairs, LABEL_GTVN)
    curve = json.loads((chain.model / "manifest.json").read_text())["segmentation"]["ensemble"]["members"][0]
    print(f"held-out phantoms: GTVp Dice {gtvp:.3f}, GTVn aggregated Dice {gtvn:.3f}; fold validation "
          f"{curve['model_card']['validation_figures_roi_grid']}")
    assert gtvp >= 0.8 and gtvn >= 0.8
