"""Where training keeps its data: one work folder holding nnU-Net's three folders.

nnU-Net v2 finds its raw, preprocessed and results folders (and external trainer classes) through
environment variables that it reads whenever it needs a path. Nothing else in this project reads
configuration from the environment: :meth:`Workspace.activate` is the one place that sets them, from
the ``--work`` folder of ``python -m training``, before any nnU-Net function runs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hecktor.core.files import atomic_write

__all__ = ["DEFAULT_DATASET", "SHIPPED_MODEL_DIR", "TRAINERS_DIR", "Workspace", "check_dataset_name", "write_json"]

# nnU-Net's naming rule: DatasetXXX_Name with a three-digit id.
DEFAULT_DATASET = "Dataset501_HECKTOR2025ROI"
TRAINERS_DIR = Path(__file__).resolve().parent / "nnunet_trainers"
# The repository's (and the training image's) model folder next to training/: the ROI settings prepare uses
# and the Task 2/3 files export carries over, unless the command names another folder.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "model_weights"
_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")


def check_dataset_name(name: str) -> str:
    if not _DATASET_NAME.match(name):
        raise ValueError(f"dataset name must look like Dataset501_Name (nnU-Net's DatasetXXX_Name), got {name!r}")
    return name


@dataclass(frozen=True)
class Workspace:
    """``root``/nnUNet_raw, ``root``/nnUNet_preprocessed and ``root``/nnUNet_results, for one dataset."""

    root: Path
    dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.dataset

    @property
    def preprocessed_dataset(self) -> Path:
        return self.preprocessed / self.dataset

    @property
    def results_dataset(self) -> Path:
        return self.results / self.dataset

    def activate(self, data_workers: int | None = None) -> None:
        """Point nnU-Net at this workspace (and at this project's trainer classes) for this process and its
        children; ``data_workers`` sets nnU-Net's data-augmentation processes (``nnUNet_n_proc_DA``)."""
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        # nnU-Net's own variable names (mixed case), hence the noqa.
        os.environ["nnUNet_raw"] = str(self.raw)  # noqa: SIM112
        os.environ["nnUNet_preprocessed"] = str(self.preprocessed)  # noqa: SIM112
        os.environ["nnUNet_results"] = str(self.results)  # noqa: SIM112
        os.environ["nnUNet_extTrainer"] = str(TRAINERS_DIR)  # noqa: SIM112
        if data_workers is not None:
            os.environ["nnUNet_n_proc_DA"] = str(data_workers)  # noqa: SIM112


def write_json(path: Path, value: Any, sort_keys: bool = False) -> None:
    """``value`` as indented JSON, written to a temporary file and renamed over ``path`` (never half written)."""
    text = json.dumps(value, indent=2, sort_keys=sort_keys) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
