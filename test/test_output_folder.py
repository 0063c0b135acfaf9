"""Output-folder problems through the real entry point: exit code 4, one line naming the path and the
problem, no traceback, nothing partial and no staging folder left."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, files_under

from hecktor.apps.cli import EXIT_OUTPUT_ERROR
from hecktor.io.write import RFS_PATH, STAGING_PREFIX

SAMPLE_CASE = REPO / "test" / "sample-case"
NOBODY = 65534
# Logged when the models load: an output-folder problem found at the start must stop the run before it.
MODELS_LOADED = "segmentation engine"


def run_entry_point(output: Path, **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "inference.py"), "--input", str(SAMPLE_CASE), "--output", str(output)],
        capture_output=True, text=True, cwd=REPO, timeout=600, **popen,
    )


def assert_output_error(result: subprocess.CompletedProcess, path: Path, problem: str) -> None:
    assert result.returncode == EXIT_OUTPUT_ERROR, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert f"output error: {path}" in line and problem in line, line


def assert_nothing_left(out: Path) -> None:
    assert files_under(out) == [], "partial outputs left behind"
    assert list(out.glob(f"{STAGING_PREFIX}*")) == [], "staging folder left behind"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can traverse (pytest's own temporary folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="hecktor-output-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root and "
                    "CAP_SYS_ADMIN")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def as_nobody_popen_args() -> dict[str, object]:
    """How to run the entry point as uid/gid 65534: directly when that user can run this interpreter."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid 65534 needs root")
    try:
        subprocess.run([sys.executable, "-c", "pass"], user=NOBODY, group=NOBODY, extra_groups=[], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


# This interpreter may live where uid 65534 cannot read (e.g. under /root): then the child imports what a run
# needs as root, drops to 65534 and calls the entry point's function.
DROP_PRIVILEGES_THEN_RUN = """
    import os, sys
    import hecktor.apps.cli, hecktor.pipeline
    os.setgroups([]); os.setgid({uid}); os.setuid({uid})
    sys.exit(hecktor.apps.cli.inference_main(sys.argv[1:]))
"""


def test_read_only_output_folder_as_another_user(shared_dir):
    out = shared_dir / "out"
    out.mkdir(mode=0o555)
    out.chmod(0o555)
    popen = as_nobody_popen_args()
    if popen:
        result = run_entry_point(out, **popen)
    else:
        code = textwrap.dedent(DROP_PRIVILEGES_THEN_RUN.format(uid=NOBODY))
        result = subprocess.run([sys.executable, "-c", code, "--input", str(SAMPLE_CASE), "--output", str(out)],
                                capture_output=True, text=True, cwd=REPO, timeout=600)
    assert_output_error(result, out, "permission denied")
    assert MODELS_LOADED not in result.stderr
    assert_nothing_left(out)


def test_read_only_file_system(shared_dir):
    with tmpfs(shared_dir / "ro", "ro,size=1m") as out:
        result = run_entry_point(out)
        assert_output_error(result, out, "read-only file system")
        assert MODELS_LOADED not in result.stderr
        assert_nothing_left(out)


def test_output_is_a_regular_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    result = run_entry_point(out)
    assert_output_error(result, out, "not a directory")
    assert MODELS_LOADED not in result.stderr
    assert out.read_text() == "not a folder"
    assert list(tmp_path.iterdir()) == [out]


def test_a_directory_where_an_output_file_goes(tmp_path):
    out = tmp_path / "out"
    (out / RFS_PATH).mkdir(parents=True)
    result = run_entry_point(out)
    assert_output_error(result, out / RFS_PATH, "is a directory")
    assert MODELS_LOADED not in result.stderr
    assert_nothing_left(out)
    assert [p.name for p in out.iterdir()] == [RFS_PATH.name]


def test_no_space_left(shared_dir):
    with tmpfs(shared_dir / "small", "size=64k") as disk:
        out = disk / "out"
        out.mkdir()
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        result = run_entry_point(out)
        assert_output_error(result, out, "no space left on device")
        assert_nothing_left(out)


def _limit_file_size() -> None:
    # Ignored SIGXFSZ makes an oversized write fail with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_file_too_large(tmp_path):
    out = tmp_path / "out"
    result = run_entry_point(out, preexec_fn=_limit_file_size)
    assert_output_error(result, out, "file too large")
    assert_nothing_left(out)
    assert stat.S_ISDIR(out.stat().st_mode)
