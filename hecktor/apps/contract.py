"""Check one case's output folder against the Grand-Challenge contract (``python -m hecktor.apps.contract``).

What the platform expects (``shared/docs/interface.md``), for the tasks an image serves:

- Task 1: ``images/tumor-lymph-node-segmentation/output.mha``, a compressed MetaImage of one uint8 component
  with labels in {0, 1, 2}, on the input CT's grid (size, spacing, origin and direction);
- Task 2: ``rfs.json``, one JSON number;
- Task 3: ``hpv-status.json``, one JSON boolean;
- nothing else: no output of a task the image does not serve, no other file or folder, hidden ones included
  (a staging folder left behind is a failure too).

The contract is written out here on purpose instead of being imported from :mod:`hecktor.io.write`: a checker
that shares the writer's constants would agree with the writer's mistakes. It imports SimpleITK and the
standard library only, so it runs inside either image flavour (``test.sh`` runs it in the image it tests).

Usage: ``python -m hecktor.apps.contract --input CASE_DIR --output OUTPUT_DIR --tasks 1`` (or ``2,3``, ``all``).
Exit 0 when the folder meets the contract, 1 with one line per problem otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = [
    "HPV_OUTPUT",
    "RFS_OUTPUT",
    "SEGMENTATION_OUTPUT",
    "check_outputs",
    "find_input_ct",
    "main",
    "parse_tasks",
]

SEGMENTATION_OUTPUT = PurePosixPath("images/tumor-lymph-node-segmentation/output.mha")
RFS_OUTPUT = PurePosixPath("rfs.json")
HPV_OUTPUT = PurePosixPath("hpv-status.json")
_OUTPUT_OF_TASK = {1: SEGMENTATION_OUTPUT, 2: RFS_OUTPUT, 3: HPV_OUTPUT}
_LABELS = frozenset({0, 1, 2})
# CT file names the reader accepts in the platform layout (images/ct/) and the training layout (<ID>__CT.*).
_IMAGE_SUFFIXES = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")
# Spacing, origin and direction are stored as decimal text in a MetaImage header; a float64 written with
# fewer than 17 significant digits need not read back bit for bit, so "the same grid" allows this much.
_GRID_RTOL = 1e-9
_GRID_ATOL = 1e-9


def parse_tasks(text: str) -> frozenset[int]:
    """``"all"`` or a comma list of 1, 2, 3 (the syntax of ``inference.py --tasks``)."""
    if text.strip().lower() == "all":
        return frozenset({1, 2, 3})
    try:
        tasks = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        tasks = frozenset()
    if not tasks or not tasks <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"--tasks must be 'all' or a comma list of 1, 2, 3, got {text!r}")
    return tasks


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(_IMAGE_SUFFIXES)


def find_input_ct(input_dir: Path) -> Path | list[str]:
    """The case's CT file, or the problems met looking for it.

    Platform layout: exactly one image in ``images/ct/``; training layout: exactly one ``<ID>__CT.*`` file.
    """
    ct_dir = input_dir / "images" / "ct"
    if ct_dir.is_dir():
        found = sorted(p for p in ct_dir.iterdir() if _is_image(p))
        where = str(ct_dir)
    else:
        found = sorted(p for p in input_dir.glob("*__CT.*") if _is_image(p)) if input_dir.is_dir() else []
        where = f"{input_dir} (images/ct/ or *__CT.*)"
    if len(found) != 1:
        return [f"input: expected exactly one CT image in {where}, found {len(found)}"]
    return found[0]


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=_GRID_RTOL, atol=_GRID_ATOL))


def _metaimage_header(path: Path) -> dict[str, str]:
    """The ``Key = Value`` lines of a MetaImage header, up to ElementDataFile (after which the pixels start)."""
    header: dict[str, str] = {}
    with path.open("rb") as handle:
        for _ in range(200):  # a MetaImage header has a few dozen lines; never scan the pixel data
            line = handle.readline(4096)
            if not line:
                break
            key, sep, value = line.decode("latin-1").partition("=")
            if not sep:
                break
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return header


def _check_segmentation(path: Path, input_dir: Path) -> list[str]:
    name = str(SEGMENTATION_OUTPUT)
    header = _metaimage_header(path)
    if header.get("ObjectType") != "Image" or "ElementDataFile" not in header:
        return [f"{name}: not a MetaImage (.mha) file"]
    problems = []
    if header.get("CompressedData", "False") != "True":
        problems.append(f"{name}: pixel data not compressed (CompressedData = {header.get('CompressedData')})")
    if header.get("ElementDataFile") != "LOCAL":
        problems.append(f"{name}: pixel data in a separate file ({header.get('ElementDataFile')}), not inside it")
    try:
        labels = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        return [*problems, f"{name}: unreadable: {str(exc).strip().splitlines()[-1]}"]
    if labels.GetPixelID() != sitk.sitkUInt8:
        problems.append(f"{name}: pixel type {labels.GetPixelIDTypeAsString()}, expected 8-bit unsigned integer")
    if labels.GetDimension() != 3:
        problems.append(f"{name}: {labels.GetDimension()}-D image, expected 3-D")
    values = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels))}
    if not values <= _LABELS:
        problems.append(f"{name}: labels {sorted(values)}, allowed 0 (background), 1 (GTVp), 2 (GTVn)")

    ct_path = find_input_ct(input_dir)
    if isinstance(ct_path, list):
        return problems + ct_path
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ct_path))
    try:
        reader.ReadImageInformation()  # the header is all the grid needs
    except RuntimeError as exc:
        return [*problems, f"input CT {ct_path}: unreadable: {str(exc).strip().splitlines()[-1]}"]
    grid = {
        "size": (labels.GetSize(), reader.GetSize()),
        "spacing": (labels.GetSpacing(), reader.GetSpacing()),
        "origin": (labels.GetOrigin(), reader.GetOrigin()),
        "direction": (labels.GetDirection(), reader.GetDirection()),
    }
    for what, (got, ct) in grid.items():
        same = tuple(got) == tuple(ct) if what == "size" else _same(got, ct)
        if not same:
            problems.append(f"{name}: {what} {tuple(got)} differs from the CT's {tuple(ct)} ({ct_path.name})")
    return problems


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _read_json(path: Path, name: str) -> tuple[Any, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
        # NaN and Infinity are Python's extensions, not JSON: the platform's parser may refuse them.
        return json.loads(text, parse_constant=_reject_constant), []
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [f"{name}: not one JSON value ({exc})"]


def _check_rfs(path: Path) -> list[str]:
    value, problems = _read_json(path, str(RFS_OUTPUT))
    if problems:
        return problems
    # bool is an int in Python but true/false is not a JSON number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"{RFS_OUTPUT}: {json.dumps(value)[:60]} is a JSON {type(value).__name__}, expected one number"]
    if not math.isfinite(value):
        return [f"{RFS_OUTPUT}: {value} is not a finite number"]
    return []


def _check_hpv(path: Path) -> list[str]:
    value, problems = _read_json(path, str(HPV_OUTPUT))
    if problems:
        return problems
    if not isinstance(value, bool):
        return [f"{HPV_OUTPUT}: {json.dumps(value)[:60]} is a JSON {type(value).__name__}, expected true or false"]
    return []


def _unexpected_entries(output_dir: Path, expected: set[PurePosixPath]) -> list[str]:
    allowed_dirs = {parent for path in expected for parent in path.parents if parent != PurePosixPath(".")}
    problems = []
    for entry in sorted(output_dir.rglob("*")):
        relative = PurePosixPath(entry.relative_to(output_dir).as_posix())
        if relative in expected and entry.is_file() and not entry.is_symlink():
            continue
        if relative in allowed_dirs and entry.is_dir() and not entry.is_symlink():
            continue
        kind = "symlink" if entry.is_symlink() else "folder" if entry.is_dir() else "file"
        if relative in expected:
            problems.append(f"{relative}: a {kind}, expected a regular file")
        else:
            problems.append(f"{relative}: unexpected {kind} in the output folder")
    return problems


def check_outputs(input_dir: Path, output_dir: Path, tasks: frozenset[int]) -> list[str]:
    """Every way ``output_dir`` fails the contract for a case read from ``input_dir``; empty when it meets it."""
    if not output_dir.is_dir():
        return [f"output folder {output_dir} does not exist"]
    expected = {_OUTPUT_OF_TASK[task] for task in tasks}
    problems = _unexpected_entries(output_dir, expected)
    checks = {1: lambda p: _check_segmentation(p, input_dir), 2: _check_rfs, 3: _check_hpv}
    for task in sorted(tasks):
        path = output_dir / _OUTPUT_OF_TASK[task]
        if not path.is_file():
            if not path.exists() and not path.is_symlink():
                problems.append(f"{_OUTPUT_OF_TASK[task]}: missing (Task {task})")
            continue  # a folder or link in its place is already reported above
        problems.extend(checks[task](path))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hecktor.apps.contract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="the case folder the outputs were made from")
    parser.add_argument("--output", type=Path, required=True, help="the output folder to check")
    parser.add_argument("--tasks", type=parse_tasks, required=True, help="the tasks the image serves: 1, 2,3, all")
    args = parser.parse_args(argv)
    problems = check_outputs(args.input, args.output, args.tasks)
    for problem in problems:
        print(f"contract: {problem}")
    if problems:
        return 1
    served = ", ".join(str(_OUTPUT_OF_TASK[task]) for task in sorted(args.tasks))
    print(f"contract: ok ({served})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
