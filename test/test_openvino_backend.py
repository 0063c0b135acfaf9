"""The OpenVINO backend (:mod:`hecktor.segment.openvino_backend`) and the usable-CPU count it threads by.

The parity case runs one random (NOT trained) full STU-Net-S member, exported to ONNX, on a 128^3 window of the
real sarcoma case STS_001 (``../shared/data/sts``) through OpenVINO fp32 and ONNX Runtime fp32; it skips with a
reason when openvino or the case is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hecktor.core.cpus import cgroup_cpu_quota, usable_cpus
from hecktor.core.manifest import ManifestError, load_manifest
from hecktor.preprocess.normalise import normalise_ct, normalise_pet

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install -r requirements/openvino.txt)")

from hecktor.segment.onnx_backend import load_onnx  # noqa: E402
from hecktor.segment.openvino_backend import (  # noqa: E402
    BF16_PARITY_KEY,
    check_precision,
    load_openvino,
    load_openvino_members,
)

# Measured on this window (random STU-Net-S, AMD EPYC with AVX2, openvino 2026.4.1): OpenVINO fp32 against ONNX
# Runtime fp32, max |dp| 8.3e-3, labels 99.948 % equal (ORT and torch fp32 are each within 3e-5 of torch fp64).
# The gap starts at the first normalisation: conv1's output agrees to 2e-7, its 1/std (norm1 Div) differs by 1e-3.
MIN_LABEL_AGREEMENT = 0.9999  # what the ORT path achieves against torch
CURRENT_MIN_LABEL_AGREEMENT = 0.999  # where OpenVINO fp32 stands today; a regression guard


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line)
    return root, proc


def test_cgroup_quota_v2_v1_and_unlimited(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(*_cgroup(tmp_path / "a", "0::/job\n", {"job/cpu.max": "150000 100000\n"})) == 1.5
    assert cgroup_cpu_quota(*_cgroup(tmp_path / "b", "0::/job\n", {"job/cpu.max": "max 100000\n"})) is None
    v1 = {"cpu,cpuacct/job/cpu.cfs_quota_us": "200000", "cpu,cpuacct/job/cpu.cfs_period_us": "100000"}
    assert cgroup_cpu_quota(*_cgroup(tmp_path / "c", "4:cpu,cpuacct:/job\n", v1)) == 2.0
    unlimited = {"cpu,cpuacct/job/cpu.cfs_quota_us": "-1", "cpu,cpuacct/job/cpu.cfs_period_us": "100000"}
    assert cgroup_cpu_quota(*_cgroup(tmp_path / "d", "4:cpu,cpuacct:/job\n", unlimited)) is None
    assert cgroup_cpu_quota(*_cgroup(tmp_path / "e", "", {})) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(*_cgroup(tmp_path / "a", "0::/\n", {})) == affinity
    assert usable_cpus(*_cgroup(tmp_path / "b", "0::/\n", {"cpu.max": "50000 100000"})) == 1  # half a CPU: 1
    assert usable_cpus(*_cgroup(tmp_path / "c", "0::/\n", {"cpu.max": "6400000 100000"})) == affinity


@pytest.fixture(scope="module")
def stunet_s_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One random full STU-Net-S member (patch 128^3), exported to ONNX."""
    pytest.importorskip("torch", reason="the export needs torch")
    from hecktor.segment.torch_backend.onnx_export import export_manifest_to_onnx
    from training.make_random_weights import make_random_weights

    torch_dir = tmp_path_factory.mktemp("stunet_s_torch")
    make_random_weights(torch_dir, members=1)
    onnx_dir = tmp_path_factory.mktemp("stunet_s_onnx")
    export_manifest_to_onnx(torch_dir, onnx_dir)
    return onnx_dir


def test_compiled_fp32_with_the_usable_threads_and_cpu_only(stunet_s_onnx: Path) -> None:
    config = load_manifest(stunet_s_onnx).ensemble
    assert config is not None
    (member,) = load_openvino_members(config, stunet_s_onnx, device=None, num_threads=None)
    assert member.runner.device == "CPU"
    assert str(member.runner.property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32", "float32")
    assert int(member.runner.property("INFERENCE_NUM_THREADS")) == usable_cpus()
    with pytest.raises(ManifestError, match="CPU only"):
        load_openvino_members(config, stunet_s_onnx, device="cuda", num_threads=1)


def test_bf16_needs_the_cpu_and_a_parity_record_on_the_card(stunet_s_onnx: Path) -> None:
    config = load_manifest(stunet_s_onnx).ensemble
    assert config is not None
    member = config.members[0]
    check_precision("fp32", member, ["FP32"])
    with pytest.raises(ManifestError, match="no bf16 support"):
        check_precision("bf16", member, ["FP32", "INT8"])
    with pytest.raises(ManifestError, match=BF16_PARITY_KEY):
        check_precision("bf16", member, ["FP32", "BF16"])
    with pytest.raises(ManifestError, match="'fp32' or 'bf16'"):
        check_precision("fp16", member, ["FP32", "BF16"])
    from dataclasses import replace

    recorded = replace(member, model_card={**member.model_card,
                                           BF16_PARITY_KEY: {"validation_cases": 12, "label_agreement": 0.99995}})
    check_precision("bf16", recorded, ["FP32", "BF16"])


@pytest.fixture(scope="module")
def sts_window(tmp_path_factory: pytest.TempPathFactory, stunet_s_onnx: Path) -> np.ndarray:
    """(1, 2, 128, 128, 128): the normalised STS_001 ROI window at the PET maximum, as the engine feeds it."""
    from helpers import sts_training_layout
    from test_onnx_parity import _sub_roi_around_pet_max

    from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR
    from hecktor.io.read import read_case
    from hecktor.preprocess.roi import extract_roi

    case = read_case(sts_training_layout(tmp_path_factory.mktemp("sts"), "STS_001"))
    roi = extract_roi(case, load_manifest(DEFAULT_WEIGHTS_DIR).preprocess)
    member = load_manifest(stunet_s_onnx).ensemble.members[0]  # type: ignore[union-attr]
    sub = _sub_roi_around_pet_max(roi, tuple(member.patch_size))
    image = np.stack([normalise_ct(sub.ct_hu, member.ct_normalisation), normalise_pet(sub.pet_suv)])
    return np.ascontiguousarray(image[None], dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def parity(stunet_s_onnx: Path, sts_window: np.ndarray) -> tuple[float, float]:
    """Max |p_ort - p_openvino| and the fraction of equal labels on the real window, both fp32."""
    member = load_manifest(stunet_s_onnx).ensemble.members[0]  # type: ignore[union-attr]
    path = stunet_s_onnx / member.weights
    reference = load_onnx(path, member.sha256, num_threads=2, device="cpu")(sts_window)
    got = load_openvino(path, member.sha256, num_threads=2, precision="fp32")(sts_window)
    max_dp = float(np.abs(_softmax(reference) - _softmax(got)).max())
    agreement = float(np.mean(reference.argmax(axis=1) == got.argmax(axis=1)))
    print(f"\nOpenVINO fp32 vs ONNX Runtime fp32, STS_001 128^3 window: max |dp| = {max_dp:.2e}, "
          f"labels equal = {agreement:.6%}")
    return max_dp, agreement


def test_openvino_fp32_stays_where_it_stands_against_onnxruntime(parity: tuple[float, float]) -> None:
    max_dp, agreement = parity
    assert np.isfinite(max_dp) and max_dp < 0.05
    assert agreement >= CURRENT_MIN_LABEL_AGREEMENT


@pytest.mark.xfail(strict=True, reason="issue 16: OpenVINO fp32 is not yet at the ORT path's parity (99.948 % "
                                       "labels measured); the gap starts at the first normalisation's statistics")
def test_openvino_fp32_reaches_the_onnxruntime_parity(parity: tuple[float, float]) -> None:
    assert parity[1] >= MIN_LABEL_AGREEMENT
