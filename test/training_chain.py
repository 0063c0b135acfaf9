"""The training chain on SYNTHETIC phantoms, run through its real command line (``python -m training``).

Shared by the chain tests and the parity test. To stay within a few CPU minutes the ROI grid is coarser
than the product's (2 mm, 128 x 128 x 310 mm: a copy of the shipped manifest with only those two values
changed; every stage reads them from the manifest, so the code path is the product's) and the network is
a tiny STU-Net trained for one short epoch: the chain and the parity are tested, not learning (that is
``test_training_learning.py``, marked slow).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, MANIFEST_NAME
from hecktor.io.phantom import TrainingDataset, write_training_dataset

REPO = Path(__file__).resolve().parent.parent
TINY_STUNET_DIMS = ("4", "8", "8", "8", "8", "8")
CHAIN_PATCH = ("64", "64", "64")


@dataclass(frozen=True)
class Chain:
    work: Path
    data: TrainingDataset
    model: Path  # exported model folder
    configuration: str
    dataset: str = "Dataset501_HECKTOR2025ROI"

    @property
    def raw(self) -> Path:
        return self.work / "nnUNet_raw" / self.dataset

    @property
    def preprocessed(self) -> Path:
        return self.work / "nnUNet_preprocessed" / self.dataset

    @property
    def fold0(self) -> Path:
        return (self.work / "nnUNet_results" / self.dataset / f"HecktorTrainer__HecktorPlans__{self.configuration}"
                / "fold_0")


def coarse_model_folder(target: Path, spacing_mm: float = 2.0, roi_size_mm: tuple[float, ...] = (128, 128, 310)
                        ) -> Path:
    """The shipped model folder with a coarser, smaller ROI grid (tests only)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in DEFAULT_WEIGHTS_DIR.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["preprocess"].update(spacing_mm=spacing_mm, roi_size_mm=list(roi_size_mm))
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return target


def run_training_cli(*args: object, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"python -m training {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build_chain(root: Path, cases: int = 6, epochs: int = 1, iterations: int = 3,
                dims: tuple[str, ...] = TINY_STUNET_DIMS, seed: int = 1, loss: str = "ce_dice",
                data_workers: int = 0) -> Chain:
    settings = coarse_model_folder(root / "roi_settings")
    data = write_training_dataset(root / "data", cases, seed=seed)
    work = root / "work"
    run_training_cli("--work", work, "prepare", data.root, "--suv-factors", data.bqml_factors_csv,
                     "--preprocess-from", settings)
    run_training_cli("--work", work, "plan", "--patch-size", *CHAIN_PATCH, "--stunet-dims", *dims, "--processes", 1)
    run_training_cli("--work", work, "train", "--device", "cpu", "--epochs", epochs, "--iterations", iterations,
                     "--val-iterations", 1, "--fold", 0, "--loss", loss, "--data-workers", data_workers)
    model = root / "model"
    run_training_cli("--work", work, "export", model, "--folds", 0)
    return Chain(work, data, model, f"stunet_{loss}_{epochs}x{iterations}")
