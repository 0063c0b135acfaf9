"""``case.json``: which patient a set of outputs belongs to, what produced it, and how it went.

Written beside a case's outputs (in the same all-or-nothing commit, so it never describes files that are not
there) by the single-case command outside the platform and by ``batch`` for every case. It records the case
id, each input file's name and sha256, the product version and git commit, the models' fingerprint, the
engine, the tasks, the input policy, warnings and per-stage timings; for a case read from DICOM, the series read
(``dicom_series``: role, study, series and frame-of-reference UIDs, SOP class, instance count; never the PatientID,
which is the case id unless ``--id-from`` replaced it by a pseudonym). Two questions are answered from it:

- *is this folder another case's?* (:func:`belongs_to_other_case`): a run refuses to overwrite it without
  ``--overwrite``;
- *is this case already done?* (:func:`is_complete`): ``batch`` skips a case whose record matches the same
  inputs, models and tasks and whose every listed output exists.

An input is a file, or a DICOM series (many instance files): then its ``path`` is the deepest folder holding them,
``size`` their total size, ``mtime_ns`` the latest modification, and ``sha256`` is :func:`files_sha256`: the
sha256 of the sorted list of the files' own sha256 digests (hex, one per line), which depends on the files'
contents only, not on their names, folders or order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hecktor.core.files import sha256_of
from hecktor.core.manifest import MANIFEST_NAME, Manifest
from hecktor.core.types import Case, DicomSeriesRef
from hecktor.core.version import git_commit, product_version

if TYPE_CHECKING:
    from hecktor.pipeline import CaseResult

__all__ = [
    "RECORD_NAME",
    "RECORD_VERSION",
    "InputFile",
    "belongs_to_other_case",
    "case_input_paths",
    "case_record",
    "files_sha256",
    "input_files_of",
    "is_complete",
    "models_fingerprint",
    "other_case_in",
    "read_case_record",
]

log = logging.getLogger(__name__)

RECORD_NAME = Path("case.json")
RECORD_VERSION = 1


@dataclass(frozen=True)
class InputFile:
    role: str  # "ct", "pet", "ehr", "planning_ct", "rt_dose"
    path: str
    sha256: str
    # The file's size and modification time when it was hashed: ``batch --quick-resume`` reuses a recorded
    # sha256 when path, size and mtime are unchanged instead of reading the file again.
    size: int | None = None
    mtime_ns: int | None = None


def _same_file(recorded: Mapping[str, Any], path: Path, stat: os.stat_result) -> bool:
    return (recorded.get("path") == str(path) and recorded.get("size") == stat.st_size
            and recorded.get("mtime_ns") == stat.st_mtime_ns and isinstance(recorded.get("sha256"), str))


def files_sha256(paths: Sequence[Path]) -> str:
    """The sha256 of a DICOM series: over the sorted hex sha256 digests of its files, one per line."""
    digests = sorted(sha256_of(path) for path in paths)
    return hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()


def _series_input(role: str, paths: Sequence[Path], entry: Mapping[str, Any] | None) -> InputFile:
    """A DICOM series as one input (module docstring): folder, total size, latest mtime, :func:`files_sha256`."""
    stats = [os.stat(path) for path in paths]
    folder = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
    size, mtime_ns = sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)
    unchanged = (entry is not None and entry.get("path") == str(folder) and entry.get("size") == size
                 and entry.get("mtime_ns") == mtime_ns and isinstance(entry.get("sha256"), str))
    digest = str(entry["sha256"]) if unchanged and entry is not None else files_sha256(paths)
    return InputFile(role, str(folder), digest, size, mtime_ns)


def input_files_of(paths: Mapping[str, Path | Sequence[Path] | None],
                   previous: Sequence[Mapping[str, Any]] = ()) -> tuple[InputFile, ...]:
    """Each given input (role -> a file, or a DICOM series' files; ``None`` skipped) with its sha256, in role
    order.

    ``previous``: the ``inputs`` of an earlier ``case.json``; a file whose path, size and mtime (ns) match its
    entry there keeps the recorded sha256 without being read (the fast path of ``batch --quick-resume``: it
    trusts that a file rewritten with other contents changes its size or mtime, as make and rsync do). A
    series is compared on its folder, total size and latest mtime.
    """
    recorded = {str(entry.get("role")): entry for entry in previous if isinstance(entry, Mapping)}
    files = []
    for role, path in paths.items():
        if path is None:
            continue
        entry = recorded.get(role)
        if not isinstance(path, (str, os.PathLike)):
            files.append(_series_input(role, path, entry))
            continue
        stat = os.stat(path)
        digest = str(entry["sha256"]) if entry is not None and _same_file(entry, path, stat) else sha256_of(path)
        files.append(InputFile(role, str(path), digest, stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def dicom_series_record(series: Sequence[DicomSeriesRef]) -> list[dict[str, Any]]:
    """What ``case.json`` says of the DICOM series read: UIDs and instance counts (no PatientID, no file list)."""
    return [{"role": s.role, "study_instance_uid": s.study_instance_uid,
             "series_instance_uid": s.series_instance_uid, "frame_of_reference_uid": s.frame_of_reference_uid,
             "sop_class_uid": s.sop_class_uid, "instances": len(s.sop_instance_uids)} for s in series]


def case_input_paths(case: Case) -> dict[str, Path | None]:
    return {"ct": case.ct_path, "pet": case.pet_path, "ehr": case.ehr_path}


def models_fingerprint(manifest: Manifest) -> str:
    """sha256 over the manifest file and the Task 2/3 model files.

    Network members and the outcome network carry their own sha256 inside the manifest, so hashing the
    manifest's bytes covers them without reading gigabytes of weights.
    """
    digest = hashlib.sha256()
    for path in (manifest.weights_dir / MANIFEST_NAME, manifest.rfs_model, manifest.hpv_model):
        digest.update(path.name.encode() + b"\0" + sha256_of(path).encode() + b"\0")
    return digest.hexdigest()


def case_record(
    *,
    case_id: str,
    inputs: Sequence[InputFile],
    models_sha256: str,
    tasks: Collection[int],
    policy: str,
    outputs: Sequence[Path],
    result: CaseResult,
    warnings: Sequence[str] = (),
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``case.json`` document of a case answered by ``result`` (outputs relative to the case folder).

    ``run``: what produced this set (``batch`` gives its run id, the creation time, the case's origin and
    seconds), so that a later run can tell a kept set from a recomputed one.
    """
    predictions = result.predictions
    return {
        "record_version": RECORD_VERSION,
        "case_id": case_id,
        "inputs": [asdict(f) for f in inputs],
        "product": {"version": product_version(), "git_commit": git_commit()},
        "models_sha256": models_sha256,
        "engine": result.engine,
        "tasks": sorted(tasks),
        "policy": policy,
        "roi_located_by": result.roi_located_by,
        "outputs": [p.as_posix() for p in outputs],
        "measurements": None if result.measurements is None else result.measurements.as_dict(),
        "predictions": None if predictions is None else {
            "rfs_risk": predictions.rfs_risk, "hpv_probability": predictions.hpv_probability,
            "hpv_positive": predictions.hpv_positive},
        "dicom_series": dicom_series_record(result.dicom_series),
        "input_problems": [{"code": p.code, "path": str(p.path), "problem": p.problem, "fallback": p.fallback}
                           for p in result.problems],
        "warnings": list(warnings),
        "timings": [asdict(t) for t in result.timings],
        "run": dict(run or {}),
    }


def read_case_record(folder: Path) -> dict[str, Any] | None:
    """The ``case.json`` in ``folder``; ``None`` when absent or unreadable (logged)."""
    path = Path(folder) / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable case record (%s)", path, exc)
        return None
    return record if isinstance(record, dict) else None


def _input_hashes(inputs: Sequence[InputFile] | Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {(f.role if isinstance(f, InputFile) else f.get("role")): (
        f.sha256 if isinstance(f, InputFile) else f.get("sha256")) for f in inputs}


def belongs_to_other_case(record: Mapping[str, Any] | None, case_id: str, inputs: Sequence[InputFile]) -> bool:
    """Whether a folder's record names another case: another id, or other CT/PET contents."""
    if record is None:
        return False
    if record.get("case_id") != case_id:
        return True
    old, new = _input_hashes(record.get("inputs", [])), _input_hashes(inputs)
    return any(old.get(role) != new.get(role) for role in ("ct", "pet"))


def is_complete(folder: Path, inputs: Sequence[InputFile], models_sha256: str, tasks: Collection[int]) -> bool:
    """Whether ``folder`` holds a complete set for exactly these inputs, models and tasks."""
    record = read_case_record(folder)
    if record is None or record.get("record_version") != RECORD_VERSION:
        return False
    if _input_hashes(record.get("inputs", [])) != _input_hashes(inputs):
        return False
    if record.get("models_sha256") != models_sha256 or record.get("tasks") != sorted(tasks):
        return False
    outputs = record.get("outputs")
    return isinstance(outputs, list) and all((Path(folder) / str(p)).is_file() for p in outputs)


def other_case_in(folder: Path, case_id: str, inputs: Sequence[InputFile], outputs: Collection[Path]) -> str | None:
    """What ``folder`` holds when it is another case's set, in words; ``None`` when it is empty of outputs or
    holds this very case (same id, same CT and PET contents).

    Outputs (``outputs``: the relative paths a set may hold) without a readable ``case.json`` count as another
    case's: nothing says whose they are.
    """
    folder = Path(folder)
    record_path = folder / RECORD_NAME
    record = read_case_record(folder)
    if record is not None:
        if not belongs_to_other_case(record, case_id, inputs):
            return None
        hashes = _input_hashes(record.get("inputs", []))
        return (f"case {str(record.get('case_id'))!r} (CT sha256 {str(hashes.get('ct'))[:12]}, PET sha256 "
                f"{str(hashes.get('pet'))[:12]}, per its {RECORD_NAME})")
    if record_path.exists():
        return f"outputs with an unreadable {RECORD_NAME}"
    present = [str(p) for p in outputs if (folder / p).exists()]
    if present:
        return f"outputs of an unknown case ({', '.join(present)}) without a {RECORD_NAME}"
    return None
