"""Write a case's outputs as one set: all or nothing, even when the process is killed.

The outputs live at fixed names in the output folder, so no single rename can publish them together, and a
folder may hold the set of an earlier run (another patient, other tasks). :class:`StagedOutputs` therefore
commits a *set* through a journal; a commit replaces the previous set as a whole:

1. every output is written and fsynced under ``<output>/.hecktor-staging-XXXX/files/<relative path>``
   (inside the output folder, so the later renames stay on one filesystem and are atomic);
2. under an exclusive ``flock`` on the output folder itself (so two runs sharing a folder commit one after
   the other; a lock on the folder, not a file in it, because the platform allows nothing else in /output),
   with SIGTERM/SIGINT held: stale journals of killed runs are finished first, then every file of the
   previous set (the declared targets plus ``replaces``) is moved aside into ``staging/backup`` (the backup);
3. a ``COMMIT`` marker listing the new files is written atomically into the staging folder;
4. the new files are renamed into place; the staging folder, backup included, is removed.

A failure in step 3 or 4 takes the commit back: the new files already in place are moved back into the
staging folder while the marker still stands, the marker is removed, and the backup is moved back, so the
previous complete set is what stays. SIGKILL cannot be held. At the next start (and before any commit)
:func:`recover_stale_staging` finishes a staging folder left by a killed process: with the marker the set was
committed and the remaining files are moved into place (roll forward, the backup dropped); without it the
backup is moved back (roll back) and the folder deleted. A running process holds an ``flock`` on a lock file
in its staging folder, so only folders whose lock can be taken count as stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from types import FrameType, MappingProxyType, TracebackType
from typing import Any

import SimpleITK as sitk

from hecktor.core.files import FILE_MODE, fsync

__all__ = [
    "DICOM_DIR",
    "HPV_PATH",
    "RFS_PATH",
    "SEGMENTATION_PATH",
    "STAGING_PREFIX",
    "TASK_OUTPUTS",
    "OutputError",
    "StagedOutputs",
    "case_targets",
    "folder_locked",
    "recover_stale_staging",
    "stage_case_outputs",
]

log = logging.getLogger(__name__)

SEGMENTATION_PATH = Path("images/tumor-lymph-node-segmentation/output.mha")
RFS_PATH = Path("rfs.json")
HPV_PATH = Path("hpv-status.json")
TASK_OUTPUTS = MappingProxyType({1: SEGMENTATION_PATH, 2: RFS_PATH, 3: HPV_PATH})
# The DICOM outputs of --dicom-out (hecktor.io.dicom_out): SEG, RTSTRUCT and, for non-DICOM input, a CT series whose
# file count varies from case to case, so a commit replaces the folder's whole content (``replaces_folders``).
DICOM_DIR = Path("dicom")

STAGING_PREFIX = ".hecktor-staging-"
TRASH_PREFIX = ".hecktor-trash-"  # a staging folder being deleted: never live, always removable
_FILES = "files"
_BACKUP = "backup"  # the previous set, moved aside during a commit
_LOCK = "lock"
_MARKER = "COMMIT"
_DIR_MODE = 0o755
# A staging folder gets its lock file microseconds after it is made; one still without a lock file after
# this long belongs to a process killed in between.
_LOCKLESS_GRACE_S = 60.0
_HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A commit holds the output folder's lock for milliseconds; waiting minutes means something is stuck.
FOLDER_LOCK_TIMEOUT_S = 300.0
_LOCK_POLL_S = 0.05

_PROBLEMS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (not writable)",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "exists and is not a directory",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}
_ERRNO_BY_MESSAGE = {os.strerror(code): code for code in errno.errorcode}


class OutputError(Exception):
    """The output folder cannot take the outputs; the message names the path and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@contextlib.contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """Report an OSError met while writing ``path`` as an :class:`OutputError` naming it."""
    try:
        yield
    except OSError as exc:
        problem = _PROBLEMS.get(exc.errno, exc.strerror) if exc.errno is not None else str(exc)
        raise OutputError(path, problem or str(exc)) from exc


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT for the block, then deliver any that came.

    ``pthread_sigmask`` blocks delivery to this thread only; another thread (ITK and onnxruntime keep
    pools) can still take the signal, and CPython then runs the Python handler in the main thread
    anyway. So the Python handlers are also swapped for a recorder while the block runs.
    """
    caught: list[int] = []

    def record(received: int, _frame: FrameType | None) -> None:
        caught.append(received)

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, record) for signum in _HELD_SIGNALS}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for signum in dict.fromkeys(caught):
            log.warning("%s arrived during an output commit or cleanup; delivered after it",
                        signal.Signals(signum).name)
            signal.raise_signal(signum)



def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents with mode 0755 (whatever the umask); returns those created."""
    missing = []
    current = path
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder, _DIR_MODE)
        except FileExistsError:
            if folder.is_dir():  # made by a concurrent run
                continue
            raise OutputError(folder, "is not a directory") from None
        os.chmod(folder, _DIR_MODE)
        fsync(folder.parent)
        created.append(folder)
    return created


def _discard_staging(staging: Path) -> None:
    """Rename a staging folder to a trash name, then delete it.

    Deleting removes the lock file before the folder; a SIGKILL in between would leave a lockless
    folder that looks like one being created. Under the trash name it is garbage whatever state the
    deletion reaches, and the next start removes it unconditionally.
    """
    trash = staging.with_name(TRASH_PREFIX + staging.name.removeprefix(STAGING_PREFIX))
    try:
        os.rename(staging, trash)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not move the staging folder %s aside: %s", staging, exc)
        trash = staging
    _remove_tree(trash)


def _remove_tree(path: Path) -> None:
    """Delete ``path``; a failure is logged, not raised: a left-over staging folder is recovered later."""

    def ignore_missing(_func: Callable[..., object], _name: str, exc_info: tuple) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    try:
        shutil.rmtree(path, onerror=ignore_missing)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the staging folder %s: %s", path, exc)


def _checked_relative(path: Path) -> Path:
    path = Path(path)
    if path.is_absolute() or not path.parts or ".." in path.parts or path.parts[0].startswith(
            (STAGING_PREFIX, TRASH_PREFIX)):
        raise ValueError(f"an output path must be relative and inside the output folder, got {path}")
    return path


def _write_label_file(labels: sitk.Image, path: Path) -> None:
    try:
        sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(path), useCompression=True)
    except RuntimeError as exc:
        # ITK reports a failed write as "File cannot be written: ...\nReason: <strerror>"; recover the errno
        # so a full disk reads as one.
        reason = str(exc).rpartition("Reason: ")[2].strip()
        if reason in _ERRNO_BY_MESSAGE:
            raise OSError(_ERRNO_BY_MESSAGE[reason], reason, str(path)) from exc
        raise


def _write_json_file(value: object, path: Path) -> None:
    text = json.dumps(value, allow_nan=False)
    with open(path, "x", encoding="utf-8") as handle:
        handle.write(text)



# --- the journal: marker, moves, recovery ---------------------------------------------------------------


def _write_marker(staging: Path, files: Iterable[Path]) -> None:
    tmp = staging / f"{_MARKER}.tmp"
    tmp.write_text(json.dumps({"files": [path.as_posix() for path in files]}))
    fsync(tmp)
    os.replace(tmp, staging / _MARKER)
    fsync(staging)


def _read_marker(staging: Path) -> list[Path] | None:
    """The files a committed staging folder publishes; None when it holds no (valid) marker."""
    try:
        raw = json.loads((staging / _MARKER).read_text())
        return [_checked_relative(Path(name)) for name in raw["files"]]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        # The marker is renamed into place whole, so this is damage from outside, not an interrupted commit.
        log.warning("ignoring the unreadable commit marker in %s: %s", staging, exc)
        return None


def _check_target(output_dir: Path, relative: Path) -> None:
    """Fail before any work if something already in the output folder blocks ``relative``."""
    for ancestor in reversed(relative.parents[:-1]):
        folder = output_dir / ancestor
        with _output_errors(folder):
            if not folder.exists():
                break
            if not folder.is_dir():
                raise OutputError(folder, "is not a directory, but an output file goes inside it")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(folder, "permission denied (not writable)")
    target = output_dir / relative
    with _output_errors(target):
        if target.is_dir():
            raise OutputError(target, "is a directory in the way of an output file")


def _move_into_place(output_dir: Path, files_dir: Path, files: Iterable[Path], moved: list[Path]) -> None:
    """Rename each staged file that is still there onto its target, appending each target to ``moved``."""
    for relative in files:
        source, target = files_dir / relative, output_dir / relative
        if not source.exists():  # already moved before a kill
            continue
        with _output_errors(target):
            _make_dirs(target.parent)
            if target.is_dir():
                raise OutputError(target, "is a directory in the way of an output file")
            os.replace(source, target)
        moved.append(target)
    for folder in dict.fromkeys(target.parent for target in moved):
        with _output_errors(folder):
            fsync(folder)


@contextlib.contextmanager
def _lock_if_stale(staging: Path) -> Iterator[bool]:
    """Yield whether ``staging`` was left by a dead process; holds its lock meanwhile so no other run
    recovers it at the same time."""
    try:
        fd = os.open(staging / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            age = time.time() - staging.stat().st_mtime
        except FileNotFoundError:  # removed by a concurrent recovery
            age = 0.0
        yield age > _LOCKLESS_GRACE_S
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield staging.exists()
    finally:
        os.close(fd)


def _marker_time(staging: Path) -> float:
    try:
        return (staging / _MARKER).stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def folder_locked(output_dir: Path, timeout_s: float = FOLDER_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``output_dir`` itself for the block: commits and recoveries of runs
    sharing the folder are serialised, so each commit's set is whole.

    Waits (logging once) up to ``timeout_s``, then raises :class:`OutputError`. The lock goes with the open
    descriptor, so a killed holder never leaves it taken.
    """
    with _output_errors(output_dir):
        fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OutputError(output_dir, f"another run has held its commit lock for more than "
                                                  f"{timeout_s:g} s") from None
                if not waiting:
                    log.info("waiting for another run's commit in %s to finish (the folder is locked)", output_dir)
                    waiting = True
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def _files_below(folder: Path) -> list[Path]:
    """Every file (or link) below ``folder``, relative to it; deepest paths last."""
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def _restore_backup(output_dir: Path, staging: Path) -> list[Path]:
    """Move the previous set's files back from the staging folder's backup; returns their targets.

    Only called when no new file of the interrupted commit is in place (see :meth:`StagedOutputs._take_back`),
    so a restored file never replaces anything but what it was moved aside from.
    """
    backup = staging / _BACKUP
    restored = []
    for relative in _files_below(backup):
        target = output_dir / relative
        with _output_errors(target):
            _make_dirs(target.parent)
            os.replace(backup / relative, target)
        restored.append(target)
    for folder in dict.fromkeys(target.parent for target in restored):
        with _output_errors(folder):
            fsync(folder)
    return restored


def _prune_empty_parents(output_dir: Path, removed: Iterable[Path]) -> None:
    """Remove the folders that files of a replaced set leave empty (``images/...`` of a Task-1 output)."""
    for relative in removed:
        for ancestor in relative.parents[:-1]:
            try:
                (output_dir / ancestor).rmdir()
            except OSError:  # not empty, or gone: stop going up
                break


def _finish_stale(output_dir: Path, staging: Path) -> None:
    """Roll a killed run's journal forward (marker present) or back (no marker), then delete it."""
    files = _read_marker(staging)
    if files is not None:
        moved: list[Path] = []
        _move_into_place(output_dir, staging / _FILES, files, moved)
        replaced = [p for p in _files_below(staging / _BACKUP) if p not in files]
        _discard_staging(staging)
        _prune_empty_parents(output_dir, replaced)
        log.warning("rolled forward the outputs committed by a killed run: %s",
                    ", ".join(str(p) for p in moved) or "all were already in place")
        return
    restored = _restore_backup(output_dir, staging)
    if restored:
        log.warning("a run killed in its commit had moved the previous outputs aside; restored %s",
                    ", ".join(str(p) for p in restored))
    else:
        log.info("removed the staging folder of a killed run: %s", staging)
    _discard_staging(staging)


def _recover_locked(output_dir: Path) -> list[Path]:
    """:func:`recover_stale_staging` for a caller that holds the folder lock."""
    for trash in output_dir.glob(f"{TRASH_PREFIX}*"):
        if trash.is_dir() and not trash.is_symlink():
            _remove_tree(trash)
    recovered = []
    candidates = [p for p in output_dir.glob(f"{STAGING_PREFIX}*") if p.is_dir() and not p.is_symlink()]
    for staging in sorted(candidates, key=_marker_time):
        with _output_errors(staging), _lock_if_stale(staging) as stale:
            if not stale:
                continue
            _finish_stale(output_dir, staging)
        recovered.append(staging)
    return recovered


def recover_stale_staging(output_dir: Path, lock_timeout_s: float = FOLDER_LOCK_TIMEOUT_S) -> list[Path]:
    """Finish what killed runs left in ``output_dir``; returns the staging folders dealt with.

    A stale folder with a commit marker is rolled forward (its remaining files moved into place), one
    without is rolled back (the previous set it had moved aside is moved back) and deleted. Folders of live
    processes (lock held) are left alone. Older commits go first, so the newest set wins. Runs under the
    output folder's lock, like a commit.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    with folder_locked(output_dir, lock_timeout_s):
        return _recover_locked(output_dir)


# --- the staged set -------------------------------------------------------------------------------------


class StagedOutputs:
    """A case's outputs, staged and then published together by :meth:`commit`.

    Entering checks the output folder (creating it if missing), recovers stale staging folders and makes
    this run's locked staging folder, so output-folder problems show up before any work is done. Leaving
    without a commit discards everything staged. Every problem with the output folder raises
    :class:`OutputError`.

    The set a commit replaces is ``targets`` plus ``replaces`` (by default every platform output) plus every
    file below the ``replaces_folders``: any of those files the folder holds is removed by the same commit, so a
    ``--tasks 2`` run never leaves the segmentation or HPV status of an earlier run beside its ``rfs.json``, and a
    run without ``--dicom-out`` none of an earlier run's DICOM files. ``lock_timeout_s``: how long a commit waits
    for another run's commit in the same folder.
    """

    def __init__(self, output_dir: Path, targets: Iterable[Path], replaces: Iterable[Path] | None = None,
                 lock_timeout_s: float = FOLDER_LOCK_TIMEOUT_S, replaces_folders: Iterable[Path] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.targets = tuple(dict.fromkeys(_checked_relative(target) for target in targets))
        extra = TASK_OUTPUTS.values() if replaces is None else replaces
        self.replaces = tuple(dict.fromkeys([*self.targets, *(_checked_relative(path) for path in extra)]))
        self.replaces_folders = tuple(dict.fromkeys(_checked_relative(folder) for folder in replaces_folders))
        self.lock_timeout_s = lock_timeout_s
        self.committed = False
        self._staging: Path | None = None
        self._lock_fd: int | None = None
        self._staged: set[Path] = set()
        self._created_dirs: list[Path] = []
        self._keep_staging = False  # a commit that could not be taken back: the next start recovers it

    def __enter__(self) -> StagedOutputs:
        try:
            with _signals_held():
                self._open()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._close()

    @property
    def staging_dir(self) -> Path:
        if self._staging is None:
            raise RuntimeError("StagedOutputs is used outside its with block")
        return self._staging

    def add_targets(self, targets: Iterable[Path], before: Path | None = None) -> None:
        """Declare more outputs of this set, for files whose names are known only once the case is computed (a
        CT series, one file per slice). They are published just before ``before`` (a declared target: ``case.json``
        stays the last file moved into place), or after every other target when it is ``None``."""
        if self.committed:
            raise RuntimeError("these outputs are already committed")
        new = [target for target in dict.fromkeys(_checked_relative(t) for t in targets) if target not in self.targets]
        for target in new:
            _check_target(self.output_dir, target)
        position = len(self.targets) if before is None else self.targets.index(_checked_relative(before))
        self.targets = (*self.targets[:position], *new, *self.targets[position:])
        self.replaces = tuple(dict.fromkeys([*self.replaces, *new]))

    def stage_label_image(self, relative: Path, labels: sitk.Image) -> None:
        """Stage ``labels`` as a compressed uint8 image at ``relative``."""
        self._stage(relative, lambda path: _write_label_file(labels, path))

    def stage_json(self, relative: Path, value: object) -> None:
        """Stage ``value`` as JSON at ``relative`` (NaN and infinity are refused: they are not JSON)."""
        self._stage(relative, lambda path: _write_json_file(value, path))

    def stage_bytes(self, relative: Path, data: bytes) -> None:
        """Stage ``data`` as a file at ``relative`` (a QC picture, a rendered report)."""
        self._stage(relative, lambda path: path.write_bytes(data))

    @property
    def published(self) -> list[Path]:
        """The paths of this set's files in the output folder (in place once :attr:`committed`)."""
        return [self.output_dir / target for target in self.targets]

    def commit(self, check_folder: Callable[[Path], None] | None = None) -> list[Path]:
        """Publish every target at once, replacing the folder's previous set; returns their paths.

        ``check_folder(output_dir)`` runs under the folder lock just before anything moves (e.g. whether the
        folder holds another case's outputs); what it raises aborts the commit. On an error nothing of this
        set stays and the previous set is back in place.
        """
        if self.committed:
            raise RuntimeError("these outputs are already committed")
        unstaged = [str(target) for target in self.targets if target not in self._staged]
        if unstaged:
            raise RuntimeError(f"commit before every output was staged; missing: {', '.join(unstaged)}")
        with folder_locked(self.output_dir, self.lock_timeout_s), _signals_held():
            # A killed run's journal finished later would land on top of this set: finish it first.
            with _output_errors(self.output_dir):
                _recover_locked(self.output_dir)
            if check_folder is not None:
                check_folder(self.output_dir)
            for target in self.targets:
                _check_target(self.output_dir, target)
                with _output_errors(self.output_dir / target.parent):
                    self._created_dirs += _make_dirs(self.output_dir / target.parent)
            self._publish()
        return self.published

    def _previous_set(self) -> list[Path]:
        """The files of the set this commit replaces that the folder holds, in the reverse of the publishing
        order: a file published last to vouch for its set (``case.json``) is the first to go."""
        present = []
        for relative in reversed(self.replaces):
            path = self.output_dir / relative
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                present.append(relative)
        listed = set(present)
        for folder in self.replaces_folders:
            present += [relative for relative in (folder / p for p in reversed(_files_below(self.output_dir / folder)))
                        if relative not in listed]
        return present

    def _publish(self) -> None:
        """Steps 2-4 of the journal (see the module docstring); on failure, :meth:`_take_back`."""
        staging = self.staging_dir
        previous = self._previous_set()
        moved: list[Path] = []
        try:
            for relative in previous:
                aside = staging / _BACKUP / relative
                with _output_errors(self.output_dir / relative):
                    _make_dirs(aside.parent)
                    os.replace(self.output_dir / relative, aside)
            with _output_errors(self.output_dir):
                # The moves aside must be on disk before the marker says the new set replaces them.
                for folder in dict.fromkeys((staging / _BACKUP / p).parent for p in previous):
                    fsync(folder)
                fsync(self.output_dir)
                _write_marker(staging, self.targets)
            _move_into_place(self.output_dir, staging / _FILES, self.targets, moved)
        except OutputError:
            self._take_back(moved)
            raise
        self.committed = True
        _discard_staging(staging)
        _prune_empty_parents(self.output_dir, [p for p in previous if p not in self.targets])

    def _take_back(self, moved: Collection[Path]) -> None:
        """Undo a commit that failed half way, leaving the previous set in place.

        The new files go back into the staging folder while the marker stands (a kill meanwhile rolls the
        whole new set forward), then the marker goes, then the backup comes back (a kill meanwhile rolls
        back). Whatever step fails, the staging folder is kept for the next start to finish.
        """
        staging = self.staging_dir
        try:
            for target in reversed(list(moved)):
                relative = target.relative_to(self.output_dir)
                os.replace(target, staging / _FILES / relative)
            (staging / _MARKER).unlink(missing_ok=True)
            fsync(staging)
            _restore_backup(self.output_dir, staging)
        except (OSError, OutputError) as exc:
            self._keep_staging = True
            log.warning("could not take back the failed commit (%s); the next run on %s finishes it from %s",
                        exc, self.output_dir, staging)

    def _open(self) -> None:
        with _output_errors(self.output_dir):
            if self.output_dir.exists() and not self.output_dir.is_dir():
                raise OutputError(self.output_dir, "is not a directory")
            _make_dirs(self.output_dir)
            recover_stale_staging(self.output_dir)
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.output_dir))
            # Locked under another name first: a recovering run must never find the lock file unlocked.
            self._lock_fd = os.open(self._staging / f"{_LOCK}.new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(self._staging / f"{_LOCK}.new", self._staging / _LOCK)
            os.mkdir(self._staging / _FILES, 0o700)
        for target in self.targets:
            _check_target(self.output_dir, target)

    def _stage(self, relative: Path, write: Callable[[Path], None]) -> None:
        relative = _checked_relative(relative)
        if relative not in self.targets:
            raise ValueError(f"{relative} is not one of the declared outputs {[str(t) for t in self.targets]}")
        staged = self.staging_dir / _FILES / relative
        with _output_errors(self.output_dir / relative):
            _make_dirs(staged.parent)
            staged.unlink(missing_ok=True)
            write(staged)
            os.chmod(staged, FILE_MODE)
            fsync(staged)
        self._staged.add(relative)

    def _close(self) -> None:
        with _signals_held():
            if self._staging is not None:
                if not self._keep_staging:
                    _discard_staging(self._staging)
                if not self.committed:
                    self._remove_created_dirs()
                self._staging = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def _remove_created_dirs(self) -> None:
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else put a file there
                folder.rmdir()
        self._created_dirs = []


def case_targets(tasks: Collection[int]) -> tuple[Path, ...]:
    """The platform output paths (relative to the output folder) of ``tasks`` (1, 2, 3)."""
    return tuple(TASK_OUTPUTS[task] for task in sorted(tasks))


def stage_case_outputs(outputs: StagedOutputs, labels: sitk.Image | None, rfs_risk: float | None,
                       hpv_positive: bool | None) -> None:
    """Stage the platform outputs that are given: segmentation (Task 1), RFS risk (2), HPV status (3)."""
    if labels is not None:
        outputs.stage_label_image(SEGMENTATION_PATH, labels)
    if rfs_risk is not None:
        outputs.stage_json(RFS_PATH, float(rfs_risk))
    if hpv_positive is not None:
        outputs.stage_json(HPV_PATH, bool(hpv_positive))
