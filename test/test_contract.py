"""The output-contract checker (hecktor.apps.contract) that test.sh runs inside the image: it must accept the outputs
the platform expects and name every way a folder departs from them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor.apps.cli import inference_main
from hecktor.apps.contract import check_outputs, find_input_ct, main, parse_tasks

SAMPLE_CASE = Path(__file__).parent / "sample-case"
SEG = Path("images/tumor-lymph-node-segmentation/output.mha")
ALL = frozenset({1, 2, 3})

# A CT grid where every property matters: anisotropic spacing, an odd origin, an oblique direction.
SIZE = (12, 10, 8)
SPACING = (0.977, 0.977, 3.27)
ORIGIN = (-250.5, -180.25, 710.0)
_c, _s = np.cos(0.3), np.sin(0.3)
DIRECTION = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)


def _image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array)  # array is z, y, x
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _labels(value: int = 2, dtype: type = np.uint8) -> np.ndarray:
    array = np.zeros(SIZE[::-1], dtype=dtype)
    array[2:4, 3:5, 4:6] = 1
    array[5, 6, 7] = value
    return array


@pytest.fixture
def case(tmp_path: Path) -> Path:
    case = tmp_path / "input"
    (case / "images" / "ct").mkdir(parents=True)
    (case / "images" / "pet").mkdir(parents=True)
    sitk.WriteImage(_image(np.full(SIZE[::-1], -1000, np.int16)), str(case / "images/ct/abc.mha"), True)
    return case


def _write_outputs(output: Path, tasks: frozenset[int] = ALL, label_image: sitk.Image | None = None,
                   rfs: str = "0.731", hpv: str = "true", compress: bool = True) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    if 1 in tasks:
        (output / SEG).parent.mkdir(parents=True, exist_ok=True)
        image = label_image if label_image is not None else _image(_labels())
        sitk.WriteImage(image, str(output / SEG), compress)
    if 2 in tasks:
        (output / "rfs.json").write_text(rfs)
    if 3 in tasks:
        (output / "hpv-status.json").write_text(hpv)
    return output


def _one(problems: list[str], *words: str) -> None:
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], problems


@pytest.mark.parametrize("tasks", [frozenset({1}), frozenset({2}), frozenset({3}), ALL])
def test_valid_outputs_pass(case: Path, tmp_path: Path, tasks: frozenset[int]) -> None:
    output = _write_outputs(tmp_path / "output", tasks)
    assert check_outputs(case, output, tasks) == []


def test_outputs_of_the_product_meet_the_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The platform's situation (input /input): nothing but the contract's files, no case.json.
    monkeypatch.setattr("hecktor.apps.cli.PLATFORM_INPUT", SAMPLE_CASE)
    output = tmp_path / "output"
    assert inference_main(["--input", str(SAMPLE_CASE), "--output", str(output), "--tasks", "all"]) == 0
    assert check_outputs(SAMPLE_CASE, output, ALL) == []


@pytest.mark.parametrize(("change", "word"), [
    ({"spacing": (0.977, 0.977, 3.0)}, "spacing"),
    ({"origin": (-250.5, -180.25, 711.0)}, "origin"),
    ({"direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}, "direction"),
])
def test_wrong_grid_fails(case: Path, tmp_path: Path, change: dict, word: str) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({1}), _image(_labels(), **change))
    _one(check_outputs(case, output, frozenset({1})), str(SEG), word, "abc.mha")


def test_wrong_size_fails(case: Path, tmp_path: Path) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({1}), _image(_labels()[:, :, :-1]))
    _one(check_outputs(case, output, frozenset({1})), "size (11, 10, 8)", "(12, 10, 8)")


def test_text_round_off_of_the_grid_is_the_same_grid(case: Path, tmp_path: Path) -> None:
    nudged = tuple(v * (1 + 1e-13) for v in ORIGIN)
    output = _write_outputs(tmp_path / "output", frozenset({1}), _image(_labels(), origin=nudged))
    assert check_outputs(case, output, frozenset({1})) == []


def test_wrong_labels_fail(case: Path, tmp_path: Path) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({1}), _image(_labels(value=3)))
    _one(check_outputs(case, output, frozenset({1})), "labels [0, 1, 3]")


@pytest.mark.parametrize("dtype", [np.uint16, np.int8, np.float32])
def test_wrong_pixel_type_fails(case: Path, tmp_path: Path, dtype: type) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({1}), _image(_labels(dtype=dtype)))
    _one(check_outputs(case, output, frozenset({1})), "pixel type", "8-bit unsigned")


def test_uncompressed_label_image_fails(case: Path, tmp_path: Path) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({1}), compress=False)
    _one(check_outputs(case, output, frozenset({1})), "not compressed")


def test_label_image_in_another_format_fails(case: Path, tmp_path: Path) -> None:
    output = tmp_path / "output"
    (output / SEG).parent.mkdir(parents=True)
    sitk.WriteImage(_image(_labels()), str(output / "x.nii.gz"))
    (output / "x.nii.gz").rename(output / SEG)  # NIfTI bytes under the .mha name
    _one(check_outputs(case, output, frozenset({1})), "not a MetaImage")


@pytest.mark.parametrize(("text", "word"), [
    ('"0.73"', "JSON str"),
    ("true", "JSON bool"),
    ("[0.73]", "JSON list"),
    ('{"risk": 0.73}', "JSON dict"),
    ("null", "JSON NoneType"),
    ("NaN", "not one JSON value"),
    ("Infinity", "not one JSON value"),
    ("0.7 0.8", "not one JSON value"),
    ("", "not one JSON value"),
])
def test_rfs_must_be_one_json_number(case: Path, tmp_path: Path, text: str, word: str) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({2}), rfs=text)
    _one(check_outputs(case, output, frozenset({2})), "rfs.json", word)


@pytest.mark.parametrize("text", ["-3", "1e-3", " 0.25\n"])
def test_rfs_numbers_pass(case: Path, tmp_path: Path, text: str) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({2}), rfs=text)
    assert check_outputs(case, output, frozenset({2})) == []


@pytest.mark.parametrize("text", ['"true"', "1", "0", "null", "True", "[true]"])
def test_hpv_must_be_one_json_boolean(case: Path, tmp_path: Path, text: str) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({3}), hpv=text)
    _one(check_outputs(case, output, frozenset({3})), "hpv-status.json")


@pytest.mark.parametrize("extra", ["notes.txt", ".DS_Store", ".hecktor-staging-abc/files/rfs.json",
                                   "images/other.mha", "images/tumor-lymph-node-segmentation/output.nii.gz"])
def test_anything_else_in_the_output_fails(case: Path, tmp_path: Path, extra: str) -> None:
    output = _write_outputs(tmp_path / "output", ALL)
    (output / extra).parent.mkdir(parents=True, exist_ok=True)
    (output / extra).write_text("x")
    problems = check_outputs(case, output, ALL)
    assert problems and all("unexpected" in p for p in problems), problems
    assert any(extra.split("/")[0] in p for p in problems), problems


@pytest.mark.parametrize(("served", "written"), [({1}, {1, 3}), ({3}, {1, 3}), ({2}, {1, 2})])
def test_outputs_of_tasks_not_served_fail(case: Path, tmp_path: Path, served: set[int], written: set[int]) -> None:
    output = _write_outputs(tmp_path / "output", frozenset(written))
    problems = check_outputs(case, output, frozenset(served))
    assert problems and all("unexpected" in p for p in problems), problems


def test_missing_output_fails(case: Path, tmp_path: Path) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({2, 3}))
    _one(check_outputs(case, output, ALL), str(SEG), "missing (Task 1)")


def test_folder_in_place_of_an_output_fails(case: Path, tmp_path: Path) -> None:
    output = tmp_path / "output"
    (output / "rfs.json").mkdir(parents=True)
    _one(check_outputs(case, output, frozenset({2})), "rfs.json", "expected a regular file")


def test_missing_output_folder_fails(case: Path, tmp_path: Path) -> None:
    _one(check_outputs(case, tmp_path / "nowhere", ALL), "does not exist")


def test_ct_found_in_both_layouts(case: Path, tmp_path: Path) -> None:
    assert find_input_ct(case) == case / "images/ct/abc.mha"
    training = tmp_path / "training"
    training.mkdir()
    (training / "HN_001__CT.nii.gz").write_bytes(b"")
    (training / "HN_001__PT.nii.gz").write_bytes(b"")
    assert find_input_ct(training) == training / "HN_001__CT.nii.gz"


def test_ambiguous_or_missing_ct_fails(case: Path, tmp_path: Path) -> None:
    (case / "images/ct/abc2.mha").write_bytes((case / "images/ct/abc.mha").read_bytes())
    output = _write_outputs(tmp_path / "output", frozenset({1}))
    _one(check_outputs(case, output, frozenset({1})), "exactly one CT", "found 2")
    assert isinstance(find_input_ct(tmp_path / "empty"), list)


def test_command_line_exit_codes_and_one_line_per_problem(case: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    output = _write_outputs(tmp_path / "output", ALL)
    assert main(["--input", str(case), "--output", str(output), "--tasks", "all"]) == 0
    assert capsys.readouterr().out.startswith("contract: ok")
    (output / "rfs.json").write_text('"high"')
    (output / "extra.txt").write_text("x")
    assert main(["--input", str(case), "--output", str(output), "--tasks", "1,2,3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("contract: ") for line in lines), lines
    with pytest.raises(SystemExit) as exc:
        main(["--input", str(case), "--output", str(output), "--tasks", "4"])
    assert exc.value.code == 2


def test_parse_tasks() -> None:
    assert parse_tasks("all") == ALL
    assert parse_tasks("2,3") == frozenset({2, 3})
    for bad in ["", "0", "1,4", "x"]:
        with pytest.raises(argparse.ArgumentTypeError, match="--tasks"):
            parse_tasks(bad)


def test_outputs_json_written_by_json_dumps_pass(case: Path, tmp_path: Path) -> None:
    output = _write_outputs(tmp_path / "output", frozenset({2, 3}), rfs=json.dumps(1.5), hpv=json.dumps(False))
    assert check_outputs(case, output, frozenset({2, 3})) == []
