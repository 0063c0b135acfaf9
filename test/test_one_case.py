"""One case, safely (the single-case command): outputs of different runs never mix in one folder.

A rerun replaces the previous set as a whole; a folder holding another case's outputs is refused (exit 4) unless
``--overwrite``; concurrent runs into one folder publish one whole set; a SIGTERM during a commit that published
the set does not fail the run; ``--output`` has a default only in the platform's situation (input /input).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers import REPO, files_under, run_inference

from hecktor.apps.cli import EXIT_OUTPUT_ERROR, inference_main
from hecktor.io.write import HPV_PATH, RFS_PATH, SEGMENTATION_PATH, STAGING_PREFIX

SAMPLE_CASE = REPO / "test" / "sample-case"
RECORD = Path("case.json")


@pytest.fixture(scope="module")
def other_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample case under another name and with another CT: another patient as far as the folder can tell."""
    folder = tmp_path_factory.mktemp("other") / "case"
    shutil.copytree(SAMPLE_CASE, folder)
    ct = folder / "images/ct/phantom.mha"
    ct.rename(ct.with_name("other.mha"))
    image = sitk.ReadImage(str(ct.with_name("other.mha")))
    sitk.WriteImage(image + 1.0, str(ct.with_name("other.mha")), useCompression=True)  # other CT contents
    pet = folder / "images/pet/phantom.mha"
    sitk.WriteImage(sitk.ReadImage(str(pet)) * 1.3, str(pet), useCompression=True)  # other outputs
    return folder


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory, other_case: Path) -> dict[str, Path]:
    """Each case run alone into its own folder: the set it publishes."""
    folders = {}
    for name, case in (("phantom", SAMPLE_CASE), ("other", other_case)):
        folders[name] = tmp_path_factory.mktemp(f"alone-{name}") / "out"
        result = run_inference(case, folders[name])
        assert result.returncode == 0, result.stderr
    assert outputs_of(folders["phantom"]) != outputs_of(folders["other"])
    return folders


def contents(out: Path) -> dict[Path, str]:
    return {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in files_under(out)}


def outputs_of(out: Path) -> dict[Path, str]:
    """sha256 of every output but case.json (whose timings differ from run to run)."""
    return {path: digest for path, digest in contents(out).items() if path != RECORD}


def test_a_rerun_replaces_the_whole_set_and_another_case_needs_overwrite(tmp_path, other_case, alone):
    out = tmp_path / "out"
    shutil.copytree(alone["phantom"], out)
    assert set(contents(out)) == {SEGMENTATION_PATH, RFS_PATH, HPV_PATH, RECORD}
    result = run_inference(SAMPLE_CASE, out, "--tasks", "2")  # the same case again: no --overwrite needed
    assert result.returncode == 0, result.stderr
    assert set(contents(out)) == {RFS_PATH, RECORD}, "the previous set's other files must go with it"
    record = json.loads((out / RECORD).read_text())
    assert record["case_id"] == "phantom" and record["tasks"] == [2]
    assert not list(out.glob(f"{STAGING_PREFIX}*"))

    before = contents(out)
    refused = run_inference(other_case, out, "--tasks", "2")
    assert refused.returncode == EXIT_OUTPUT_ERROR, refused.stderr
    [error] = [line for line in refused.stderr.splitlines() if "ERROR" in line]
    assert str(out) in error and "'phantom'" in error and "--overwrite" in error, error
    assert "segmentation engine" not in refused.stderr, "refused only after loading the models"
    assert contents(out) == before
    replaced = run_inference(other_case, out, "--tasks", "2", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert set(contents(out)) == {RFS_PATH, RECORD}
    assert json.loads((out / RECORD).read_text())["case_id"] == "other"


def test_outputs_without_a_case_record_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RFS_PATH).write_text("0.5")  # e.g. left by the platform's situation, which writes no case.json
    result = run_inference(SAMPLE_CASE, out)
    assert result.returncode == EXIT_OUTPUT_ERROR, result.stderr
    assert "without a case.json" in result.stderr and "--overwrite" in result.stderr
    assert (out / RFS_PATH).read_text() == "0.5"


def test_output_is_required_except_in_the_platform_situation(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as caught:
        inference_main(["--input", str(SAMPLE_CASE)])
    assert caught.value.code == 2 and "--output" in capsys.readouterr().err
    # The platform's situation: --output defaults to /output, and nothing but the contract's files is written.
    monkeypatch.setattr("hecktor.apps.cli.PLATFORM_INPUT", SAMPLE_CASE)
    monkeypatch.setattr("hecktor.apps.cli.PLATFORM_OUTPUT", tmp_path / "output")
    assert inference_main(["--input", str(SAMPLE_CASE), "--tasks", "2,3"]) == 0
    assert set(contents(tmp_path / "output")) == {RFS_PATH, HPV_PATH}


SIGTERM_IN_THE_COMMIT = """
    import os, signal, sys
    from hecktor.apps.cli import inference_main
    from hecktor.io import write

    publish = write._move_into_place

    def terminated_right_before_the_renames(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, held by the commit
        return publish(*args, **kwargs)

    write._move_into_place = terminated_right_before_the_renames
    sys.exit(inference_main(sys.argv[1:]))
"""


def test_a_sigterm_held_during_a_published_commit_does_not_fail_the_run(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SIGTERM_IN_THE_COMMIT), "--input",
                             str(SAMPLE_CASE), "--output", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM came after the outputs were published" in result.stderr
    assert set(contents(out)) == {SEGMENTATION_PATH, RFS_PATH, HPV_PATH, RECORD}


def run_two_at_once(out: Path, cases: list[Path], *extra: str) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, str(REPO / "inference.py"), "--input", str(case), "--output",
                               str(out), *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for case in cases]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), "", p.stderr.read()) for p in procs]


def concurrent_campaign(tmp_path: Path, other_case: Path, alone: dict[str, Path], repetitions: int) -> None:
    cases = {"phantom": SAMPLE_CASE, "other": other_case}
    # Computed independently of the shared folder: what each case's set consists of, file by file.
    reference = {name: outputs_of(folder) for name, folder in alone.items()}
    outcomes = []
    for number in range(repetitions):
        out = tmp_path / f"shared{number}"
        overwrite = number % 2 == 0
        results = run_two_at_once(out, list(cases.values()), *(["--overwrite"] if overwrite else []))
        codes = sorted(r.returncode for r in results)
        # Without --overwrite the second commit finds the first case's set and is refused.
        assert codes == ([0, 0] if overwrite else [0, EXIT_OUTPUT_ERROR]), [r.stderr[-2000:] for r in results]
        holder = json.loads((out / RECORD).read_text())["case_id"]
        assert outputs_of(out) == reference[holder], f"repetition {number}: a mixed set"
        assert not list(out.glob(f"{STAGING_PREFIX}*"))
        outcomes.append((overwrite, holder))
    print(f"\n{repetitions} repetitions of two concurrent runs into one folder: {outcomes}, each a whole set")


def test_concurrent_runs_into_one_folder_leave_one_whole_set(tmp_path, other_case, alone, capsys):
    with capsys.disabled():
        concurrent_campaign(tmp_path, other_case, alone, repetitions=1)


@pytest.mark.slow
def test_many_concurrent_runs_into_one_folder_leave_one_whole_set(tmp_path, other_case, alone, capsys):
    with capsys.disabled():
        concurrent_campaign(tmp_path, other_case, alone, repetitions=12)
