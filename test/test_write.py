"""Staged, all-or-nothing output sets (hecktor.io.write): staging, commit, recovery after kills, modes."""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, files_under

from hecktor.core.files import atomic_write
from hecktor.io.write import (
    HPV_PATH,
    RFS_PATH,
    SEGMENTATION_PATH,
    STAGING_PREFIX,
    OutputError,
    StagedOutputs,
    case_targets,
    folder_locked,
    recover_stale_staging,
    stage_case_outputs,
)

ALL = (SEGMENTATION_PATH, RFS_PATH, HPV_PATH)


def labels_image() -> sitk.Image:
    array = np.zeros((4, 5, 6), np.uint8)
    array[1:3, 2:4, 2:5] = 1
    array[0, 0, 0] = 2
    return sitk.GetImageFromArray(array)


def stage_all(outputs: StagedOutputs, rfs: float = 0.25, hpv: bool = True) -> None:
    stage_case_outputs(outputs, labels=labels_image(), rfs_risk=rfs, hpv_positive=hpv)


def staging_folders(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob(f"{STAGING_PREFIX}*"))


def visible_outputs(output_dir: Path) -> set[Path]:
    return {p.relative_to(output_dir) for p in files_under(output_dir) if not str(p.relative_to(output_dir))
            .startswith(STAGING_PREFIX)}


def run_child(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_nothing_is_visible_until_commit_then_everything_is(tmp_path):
    out = tmp_path / "out"
    with StagedOutputs(out, case_targets({1, 2, 3})) as outputs:
        stage_all(outputs, rfs=0.5, hpv=False)
        assert visible_outputs(out) == set()
        assert len(staging_folders(out)) == 1
        written = outputs.commit()
    assert written == [out / p for p in ALL]
    assert visible_outputs(out) == set(ALL)
    assert staging_folders(out) == []
    assert json.loads((out / RFS_PATH).read_text()) == 0.5
    assert json.loads((out / HPV_PATH).read_text()) is False
    image = sitk.ReadImage(str(out / SEGMENTATION_PATH))
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels_image()))


def test_an_exception_before_commit_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RFS_PATH).write_text("1.5")
    with pytest.raises(KeyError), StagedOutputs(out, ALL) as outputs:
        stage_all(outputs)
        raise KeyError("boom")
    assert files_under(out) == [out / RFS_PATH]
    assert (out / RFS_PATH).read_text() == "1.5"
    assert not (out / "images").exists()


def test_commit_refuses_an_incomplete_set(tmp_path):
    out = tmp_path / "out"
    with StagedOutputs(out, ALL) as outputs:
        outputs.stage_json(RFS_PATH, 1.0)
        with pytest.raises(RuntimeError, match=r"hpv-status\.json"):
            outputs.commit()
    assert files_under(out) == []


def test_only_declared_relative_paths_can_be_staged(tmp_path):
    with pytest.raises(ValueError, match="relative"):
        StagedOutputs(tmp_path, [Path("../escape.json")])
    with StagedOutputs(tmp_path / "out", [RFS_PATH]) as outputs, pytest.raises(ValueError, match="declared"):
        outputs.stage_json(HPV_PATH, True)


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    with StagedOutputs(tmp_path, [RFS_PATH]) as outputs, pytest.raises(ValueError):
        outputs.stage_json(RFS_PATH, float("nan"))
    assert files_under(tmp_path) == []


def test_a_directory_in_the_way_is_reported_on_entry(tmp_path):
    (tmp_path / RFS_PATH).mkdir()
    with pytest.raises(OutputError) as caught, StagedOutputs(tmp_path, ALL):
        pytest.fail("entered despite a directory in the way")
    assert caught.value.path == tmp_path / RFS_PATH
    assert staging_folders(tmp_path) == []


def test_output_that_is_a_regular_file_is_reported(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="not a directory") as caught, StagedOutputs(target, ALL):
        pass
    assert caught.value.path == target


def test_modes_are_readable_by_other_users_whatever_the_umask(tmp_path):
    out = tmp_path / "new" / "out"
    old_umask = os.umask(0o077)
    try:
        with StagedOutputs(out, ALL) as outputs:
            stage_all(outputs)
            outputs.commit()
    finally:
        os.umask(old_umask)
    for path in (tmp_path / "new", out, out / "images", out / SEGMENTATION_PATH.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in ALL:
        assert stat.S_IMODE((out / path).stat().st_mode) == 0o644, path


KILLED_AFTER_FIRST_RENAME = """
    import os, signal, sys
    from pathlib import Path
    from hecktor.io import write
    from hecktor.io.write import RFS_PATH, StagedOutputs, case_targets, stage_case_outputs
    import SimpleITK as sitk

    out = Path(sys.argv[1])
    with StagedOutputs(out, case_targets({1, 2, 3})) as outputs:
        stage_case_outputs(outputs, labels=sitk.Image([4, 4, 4], sitk.sitkUInt8), rfs_risk=0.75, hpv_positive=True)
        if sys.argv[2] == "marked":
            # The commit's own steps, cut after its first rename as a SIGKILL would cut them.
            write._write_marker(outputs.staging_dir, outputs.targets)
            os.replace(outputs.staging_dir / "files" / RFS_PATH, out / RFS_PATH)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_commit_is_rolled_forward_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / HPV_PATH).write_text("false")  # an older output the killed commit replaces
    result = run_child(KILLED_AFTER_FIRST_RENAME, str(out), "marked")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert visible_outputs(out) == {RFS_PATH, HPV_PATH}, "the kill should have cut the commit half way"
    [staging] = staging_folders(out)
    assert recover_stale_staging(out) == [staging]
    assert visible_outputs(out) == set(ALL)
    assert staging_folders(out) == []
    assert json.loads((out / HPV_PATH).read_text()) is True
    assert json.loads((out / RFS_PATH).read_text()) == 0.75
    assert sitk.ReadImage(str(out / SEGMENTATION_PATH)).GetSize() == (4, 4, 4)


def test_a_run_killed_before_its_commit_is_deleted_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    result = run_child(KILLED_AFTER_FIRST_RENAME, str(out), "unmarked")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert len(staging_folders(out)) == 1
    assert visible_outputs(out) == set()
    with StagedOutputs(out, [RFS_PATH]) as outputs:  # entering recovers
        assert staging_folders(out) == [outputs.staging_dir]
    assert files_under(out) == []


HOLDS_STAGING_OPEN = """
    import sys
    from pathlib import Path
    from hecktor.io.write import RFS_PATH, StagedOutputs

    with StagedOutputs(Path(sys.argv[1]), [RFS_PATH]) as outputs:
        outputs.stage_json(RFS_PATH, 3.0)
        print(outputs.staging_dir, flush=True)
        sys.stdin.readline()
        outputs.commit()
"""


def test_the_staging_folder_of_a_live_process_is_left_alone(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDS_STAGING_OPEN), str(out)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(child.stdout.readline().strip())
        assert live.is_dir()
        assert recover_stale_staging(out) == []
        with StagedOutputs(out, [HPV_PATH]) as outputs:
            outputs.stage_json(HPV_PATH, False)
            outputs.commit()
        assert live.is_dir() and (live / "files" / RFS_PATH).is_file()
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # The child's commit came last and replaced the set as a whole: HPV status belonged to the other run's set.
    assert visible_outputs(out) == {RFS_PATH}
    assert staging_folders(out) == []


def test_a_lockless_staging_folder_is_deleted_only_once_old(tmp_path):
    # mkdtemp made it, and the process died before it created its lock file.
    young = tmp_path / f"{STAGING_PREFIX}young"
    old = tmp_path / f"{STAGING_PREFIX}old"
    young.mkdir()
    old.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert recover_stale_staging(tmp_path) == [old]
    assert young.is_dir() and not old.exists()


def test_atomic_write_replaces_whole_files_readable_by_others(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    atomic_write(target, lambda tmp: tmp.write_text("a,b\n"))
    assert target.read_text() == "a,b\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="went away"):
        atomic_write(target, fail)
    assert target.read_text() == "a,b\n"
    assert files_under(tmp_path) == [target]


# --- sets: a commit replaces the previous set as a whole -------------------------------------------------


def snapshot(output_dir: Path) -> dict[Path, bytes]:
    return {p: (output_dir / p).read_bytes() for p in visible_outputs(output_dir)}


def commit_set(out: Path, tasks: set[int], rfs: float = 0.25, hpv: bool = True) -> None:
    with StagedOutputs(out, case_targets(tasks)) as outputs:
        stage_case_outputs(outputs, labels=labels_image() if 1 in tasks else None,
                           rfs_risk=rfs if 2 in tasks else None, hpv_positive=hpv if 3 in tasks else None)
        outputs.commit()


def test_a_commit_replaces_the_previous_set_as_a_whole(tmp_path):
    out = tmp_path / "out"
    commit_set(out, {1, 2, 3}, rfs=0.25, hpv=True)
    commit_set(out, {2}, rfs=0.5)
    assert visible_outputs(out) == {RFS_PATH}, "files of the previous set must not stay beside the new one"
    assert json.loads((out / RFS_PATH).read_text()) == 0.5
    assert not (out / "images").exists(), "folders the previous set leaves empty are removed"
    assert staging_folders(out) == []


def test_a_commit_failing_at_its_second_rename_leaves_the_previous_set_byte_for_byte(tmp_path, monkeypatch):
    out = tmp_path / "out"
    commit_set(out, {1, 2, 3}, rfs=0.25, hpv=True)
    before = snapshot(out)
    real_replace = os.replace
    new_file_moves = []

    def second_rename_fails(src, dst, *args, **kwargs):
        # Only the renames that publish staged files count; moving the old set aside and back goes through.
        if f"{os.sep}files{os.sep}" in str(src) and STAGING_PREFIX in str(src):
            new_file_moves.append(dst)
            if len(new_file_moves) == 2:
                raise OSError(errno.EIO, "injected failure", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    with StagedOutputs(out, case_targets({1, 2, 3})) as outputs:
        stage_all(outputs, rfs=0.75, hpv=False)
        monkeypatch.setattr("hecktor.io.write.os.replace", second_rename_fails)
        with pytest.raises(OutputError, match="input/output error"):
            outputs.commit()
    monkeypatch.undo()
    assert len(new_file_moves) == 2
    assert snapshot(out) == before
    assert staging_folders(out) == []


KILLED_IN_THE_COMMIT = """
    import os, signal, sys
    from pathlib import Path
    from hecktor.io import write
    from hecktor.io.write import StagedOutputs, case_targets, stage_case_outputs

    out, kind, at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    real_replace = os.replace
    seen = []

    def replace(src, dst, *args, **kwargs):
        # kind "aside": moving the previous set into the backup; "publish": moving a new file into place.
        moving = "aside" if f"{os.sep}backup{os.sep}" in str(dst) else "publish" if "/files/" in str(src) else ""
        if moving == kind:
            seen.append(dst)
            if len(seen) == at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    with StagedOutputs(out, case_targets({2, 3})) as outputs:
        stage_case_outputs(outputs, labels=None, rfs_risk=0.75, hpv_positive=False)
        os.replace = replace
        outputs.commit()
"""


@pytest.mark.parametrize(("kind", "at"), [("aside", 1), ("aside", 3), ("publish", 1), ("publish", 2)])
def test_a_sigkill_in_any_state_of_the_commit_leaves_one_whole_set(tmp_path, kind, at):
    """Killed while moving the old set aside (no marker): rolled back to the old set, byte for byte. Killed
    while publishing (marker written): rolled forward to the new set, the old set's other files gone."""
    out = tmp_path / "out"
    commit_set(out, {1, 2, 3}, rfs=0.25, hpv=True)
    before = snapshot(out)
    result = run_child(KILLED_IN_THE_COMMIT, str(out), kind, str(at))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert len(staging_folders(out)) == 1
    recover_stale_staging(out)
    assert staging_folders(out) == []
    if kind == "aside":
        assert snapshot(out) == before
    else:
        assert visible_outputs(out) == {RFS_PATH, HPV_PATH}
        assert json.loads((out / RFS_PATH).read_text()) == 0.75
        assert json.loads((out / HPV_PATH).read_text()) is False


# --- two runs sharing a folder ----------------------------------------------------------------------------

COMMITS_ITS_CASE = """
    import hashlib, json, random, sys
    from pathlib import Path
    import numpy as np
    import SimpleITK as sitk
    from hecktor.io.write import StagedOutputs, case_targets, stage_case_outputs

    out, case, commits = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rng = random.Random(case)
    value = 0.25 if case == "A" else 0.75
    for number in range(commits):
        tasks = sorted(rng.sample([1, 2, 3], rng.randint(1, 3)))  # sets of different shapes
        targets = [*case_targets(tasks), Path("case.json")]
        with StagedOutputs(out, targets, replaces=[*case_targets({1, 2, 3}), Path("case.json")]) as outputs:
            labels = sitk.GetImageFromArray(np.full((3, 4, 5), 1 if case == "A" else 2, np.uint8))
            stage_case_outputs(outputs, labels if 1 in tasks else None, value if 2 in tasks else None,
                               (case == "A") if 3 in tasks else None)
            staged = outputs.staging_dir / "files"
            hashes = {str(p): hashlib.sha256((staged / p).read_bytes()).hexdigest() for p in case_targets(tasks)}
            outputs.stage_json(Path("case.json"), {"case_id": case, "number": number, "sha256": hashes})
            outputs.commit()
"""


def assert_one_whole_set(out: Path) -> str:
    """The folder holds exactly the set its case.json describes, every file with the recorded sha256."""
    record = json.loads((out / "case.json").read_text())
    present = visible_outputs(out) - {Path("case.json")}
    assert present == {Path(p) for p in record["sha256"]}, f"case {record['case_id']}: {present}"
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, f"{name} of another set"
    return record["case_id"]


def test_two_runs_committing_into_one_folder_never_publish_a_mixed_set(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    commits = 60
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(COMMITS_ITS_CASE), str(out), case,
                                 str(commits)], cwd=REPO, stderr=subprocess.PIPE, text=True) for case in "AB"]
    observed = collections.Counter()
    try:
        while any(w.poll() is None for w in writers):
            # Between two commits (the folder lock held), the folder holds one whole set.
            with folder_locked(out):
                if (out / "case.json").exists():
                    observed[assert_one_whole_set(out)] += 1
            time.sleep(0.002)
        for writer in writers:
            assert writer.wait(timeout=120) == 0, writer.stderr.read()
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    final = assert_one_whole_set(out)
    assert staging_folders(out) == []
    print(f"\n{2 * commits} commits by two processes; {sum(observed.values())} states observed under the lock "
          f"({dict(observed)}), all whole sets; final set: case {final}")
