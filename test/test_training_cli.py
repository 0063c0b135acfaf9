"""``python -m training``: one command line, clear refusals (what a new user meets first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from training_chain import REPO


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_step() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("prepare", "plan", "train", "export", "evaluate", "clinical", "random-weights"):
        assert command in result.stdout


def test_steps_out_of_order_are_refused_with_the_missing_file(tmp_path: Path) -> None:
    for command, missing in ((["plan"], "dataset.json"), (["train", "--device", "cpu"], "HecktorPlans.json"),
                             (["evaluate"], "nothing has been trained yet"),
                             (["export", tmp_path / "model"], "nothing has been trained yet")):
        result = _run("--work", tmp_path / "work", *command)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert missing in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()


def test_a_bad_dataset_name_is_refused(tmp_path: Path) -> None:
    result = _run("--work", tmp_path, "--dataset", "HECKTOR", "plan")
    assert result.returncode != 0 and "Dataset501_Name" in result.stderr
