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


def test_delegated_commands_take_their_own_options_after_global_ones(tmp_path: Path) -> None:
    """The training image's entry point always passes ``--work /data`` first: ``clinical`` and ``random-weights``
    must still get their own options (this failed with 'unrecognized arguments' before)."""
    for name in ("rfs_model.json", "hpv_model.json", "clinical_evaluation.json"):
        (tmp_path / name).write_bytes((REPO / "model_weights" / name).read_bytes())
    result = _run("--work", tmp_path / "work", "clinical", "--card-only", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    card = (tmp_path / "MODEL_CARD_clinical.md").read_text()
    assert card == (REPO / "model_weights/MODEL_CARD_clinical.md").read_text()
    result = _run("--work", tmp_path / "work", "clinical", "--help")
    assert result.returncode == 0 and "python -m training clinical" in result.stdout and "--radcure" in result.stdout
    result = _run("--work", tmp_path / "work", "prepare", "--no-such-option", tmp_path)
    assert result.returncode != 0 and "unrecognized arguments: --no-such-option" in result.stderr
