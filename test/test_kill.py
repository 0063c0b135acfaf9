"""Kill the real entry point at random instants: the output folder holds the whole set or nothing new.

SIGKILL may leave a hidden staging folder (recovered by the next run); SIGTERM leaves nothing but the
complete set or no outputs, and exits with 143. Kills are aimed at random instants of the whole run,
at the write phase (after the first staged file appears) and at the commit (when its marker appears).
The counts are printed; ``pytest -m slow test/test_kill.py`` runs a larger randomized campaign.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import REPO, files_under, run_inference

from hecktor.apps.cli import Terminated, signals_as_exceptions
from hecktor.io.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH, STAGING_PREFIX, TRASH_PREFIX

SAMPLE_CASE = REPO / "test" / "sample-case"
RECORD = Path("case.json")  # a local run records its case in the same commit
ALL = {SEGMENTATION_PATH, RFS_PATH, HPV_PATH, RECORD}
AIMS = ("anytime", "write-phase", "commit")
POLL_S = 0.0005


def staging_folders(out: Path) -> list[Path]:
    return sorted([*out.glob(f"{STAGING_PREFIX}*"), *out.glob(f"{TRASH_PREFIX}*")])


def visible_outputs(out: Path) -> set[Path]:
    bookkeeping = (STAGING_PREFIX, TRASH_PREFIX)
    return {p.relative_to(out) for p in files_under(out) if not p.relative_to(out).parts[0].startswith(bookkeeping)}


def assert_complete_and_valid(out: Path) -> None:
    assert visible_outputs(out) == ALL
    labels = sitk.ReadImage(str(out / SEGMENTATION_PATH))
    ct = sitk.ReadImage(str(SAMPLE_CASE / "images/ct/phantom.mha"))
    assert labels.GetPixelID() == sitk.sitkUInt8 and labels.GetSize() == ct.GetSize()
    rfs = json.loads((out / RFS_PATH).read_text())
    assert isinstance(rfs, float) and math.isfinite(rfs)
    assert isinstance(json.loads((out / HPV_PATH).read_text()), bool)


def wait_for(proc: subprocess.Popen, pattern: str, out: Path) -> bool:
    """Poll until a file matching ``pattern`` (under ``out``) exists; False if the run ended first."""
    while proc.poll() is None:
        if next(out.glob(pattern), None) is not None:
            return True
        time.sleep(POLL_S)
    return False


def kill_run(out: Path, signum: int, aim: str, rng: random.Random, run_s: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "inference.py"), "--input", str(SAMPLE_CASE), "--output", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    if aim == "anytime":
        time.sleep(rng.uniform(0.0, run_s))
    elif aim == "write-phase":
        # Staging the three files and committing them takes a few milliseconds.
        if wait_for(proc, f"{STAGING_PREFIX}*/files/**/*.*", out):
            time.sleep(rng.uniform(0.0, 0.006))
    else:
        wait_for(proc, f"{STAGING_PREFIX}*/COMMIT", out)
    if proc.poll() is None:
        proc.send_signal(signum)
    return proc


def check_after_kill(out: Path, signum: int, proc: subprocess.Popen) -> str:
    """Assert the state a kill may leave; returns what it left: nothing, complete, journal or finished."""
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    visible, staging = visible_outputs(out), staging_folders(out)
    assert not [p for p in visible if ".tmp" in p.name], "temporary files left in the output folder"
    if proc.returncode == 0:
        assert_complete_and_valid(out)
        assert staging == []
        return "finished"
    if signum == signal.SIGTERM:
        # -SIGTERM: the signal came during interpreter start-up, before the handlers were installed.
        assert proc.returncode in (143, -signal.SIGTERM), stderr
        if proc.returncode == 143:
            assert "terminated by SIGTERM" in stderr
        assert staging == [], "SIGTERM must clean up its staging folder"
    else:
        assert proc.returncode == -signal.SIGKILL, stderr
    journals = [folder for folder in staging if (folder / "COMMIT").is_file()]
    if journals:
        # A SIGKILL inside the commit: the marked journal holds whatever is not in place yet.
        assert signum == signal.SIGKILL
        [journal] = journals
        staged = {p.relative_to(journal / "files") for p in files_under(journal / "files")}
        assert visible | staged == ALL, f"in place {visible}, in the journal {staged}"
        return "journal"
    if visible == ALL:
        assert_complete_and_valid(out)
        return "complete"
    assert visible == set(), f"partial outputs {visible} without a commit journal"
    return "nothing"


def check_following_run(out: Path, left: str) -> None:
    """The next normal run recovers what the kill left, succeeds and leaves no staging folder."""
    result = run_inference(SAMPLE_CASE, out)
    assert result.returncode == 0, result.stderr
    # After a cut commit, the journal was rolled forward (a complete set) before this run replaced it.
    assert ("rolled forward" in result.stderr) == (left == "journal"), result.stderr[-3000:]
    assert_complete_and_valid(out)
    assert staging_folders(out) == []


@pytest.fixture(scope="module")
def run_seconds(tmp_path_factory: pytest.TempPathFactory) -> float:
    """How long one undisturbed run takes here, so that 'anytime' kills spread over all of it."""
    out = tmp_path_factory.mktemp("baseline")
    start = time.perf_counter()
    result = run_inference(SAMPLE_CASE, out)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert_complete_and_valid(out)
    return elapsed


def kill_campaign(tmp_path: Path, signum: int, kills_per_aim: dict[str, int], run_s: float,
                  capsys: pytest.CaptureFixture) -> Counter:
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    by_aim: Counter = Counter()
    totals: Counter = Counter()
    plan = [aim for aim in AIMS for _ in range(kills_per_aim[aim])]
    rng.shuffle(plan)
    for number, aim in enumerate(plan):
        out = tmp_path / f"out{number}"
        left = check_after_kill(out, signum, kill_run(out, signum, aim, rng, run_s))
        by_aim[f"{aim}/{left}"] += 1
        totals[left] += 1
        # A kill that left the folder empty leaves what a first run starts from: the baseline run covers it.
        if files_under(out):
            check_following_run(out, left)
    with capsys.disabled():
        print(f"\n{signal.Signals(signum).name}: {len(plan)} kills (seed {seed}): "
              + ", ".join(f"{left} {n}" for left, n in sorted(totals.items()))
              + "; by aim: " + ", ".join(f"{key} {n}" for key, n in sorted(by_aim.items())))
    return totals


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kills_leave_the_whole_set_or_nothing(tmp_path, signum, run_seconds, capsys):
    kill_campaign(tmp_path, signum, {"anytime": 2, "write-phase": 2, "commit": 1}, run_seconds, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_many_random_kills_leave_the_whole_set_or_nothing(tmp_path, signum, run_seconds, capsys):
    kill_campaign(tmp_path, signum, {"anytime": 15, "write-phase": 20, "commit": 10}, run_seconds, capsys)


def test_signals_become_exceptions_only_inside_the_block():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum, exit_code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with pytest.raises(Terminated) as caught, signals_as_exceptions():
            signal.raise_signal(signum)
            time.sleep(1)  # the handler raises at the next bytecode, long before this ends
        assert caught.value.exit_code == exit_code
    assert {signum: signal.getsignal(signum) for signum in before} == before
