"""Weights are loaded only when their sha256 matches the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hecktor.core.files import sha256_of
from hecktor.core.manifest import ManifestError
from hecktor.segment.onnx_backend import load_onnx
from hecktor.segment.torch_backend.networks import build_network
from hecktor.segment.torch_backend.runner import load_safetensors
from training.make_random_weights import make_random_weights

TINY_STUNET = {"dims": (4, 8, 8, 8, 8, 8)}
THREE_LEVEL_STUNET = {  # small enough to export and run in well under a second
    "dims": (4, 8, 8),
    "depth": (1, 1, 1),
    "pool_op_kernel_sizes": ((2, 2, 2), (2, 2, 2)),
    "conv_kernel_sizes": ((3, 3, 3),) * 3,
}


def test_sha256_of_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_safetensors_round_trip(tmp_path: Path) -> None:
    net = build_network("STUNet", TINY_STUNET)
    path = tmp_path / "member.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    state = load_safetensors(path, sha256_of(path))
    other = build_network("STUNet", TINY_STUNET)
    other.load_state_dict(state, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)


def test_sha256_mismatch_is_refused_with_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "member.safetensors"
    save_file({"w": torch.ones(3)}, path)
    actual = sha256_of(path)
    wrong = "0" * 64
    with pytest.raises(ManifestError) as info:
        load_safetensors(path, wrong)
    message = str(info.value)
    assert "member.safetensors" in message and wrong in message and actual in message
    assert "mismatch" in message


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "member.safetensors"
    save_file({"w": torch.ones(3)}, path)
    recorded = sha256_of(path)
    save_file({"w": torch.zeros(3)}, path)  # same size, different content
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        load_safetensors(path, recorded)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"absent\.safetensors"):
        load_safetensors(tmp_path / "absent.safetensors", "0" * 64)
    with pytest.raises(ManifestError, match=r"absent\.onnx"):
        load_onnx(tmp_path / "absent.onnx", "0" * 64)


def test_onnx_member_is_hash_checked_and_matches_torch(tmp_path: Path) -> None:
    manifest = make_random_weights(
        tmp_path, members=1, arch_kwargs=THREE_LEVEL_STUNET, patch_size=(16, 16, 16), onnx=True
    )
    onnx_path = next(tmp_path.glob("*.onnx"))
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        load_onnx(onnx_path, "f" * 64)
    predictor = load_onnx(onnx_path, sha256_of(onnx_path), num_threads=1)
    assert manifest.is_file() and "CPUExecutionProvider" in predictor.providers
    torch.manual_seed(0)  # the seed make_random_weights used for member 0
    net = build_network("STUNet", THREE_LEVEL_STUNET).eval()
    x = torch.randn(2, 2, 16, 24, 32)  # dynamic spatial axes: a size other than the export's
    with torch.inference_mode():
        expected = net(x)
    got = torch.from_numpy(predictor(x.numpy()))
    assert got.shape == (2, 3, 16, 24, 32)
    # float32 kernels differ between the runtimes; 1e-4 of the output's spread is far below any decision.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_onnx_sessions_do_not_keep_a_memory_arena(tmp_path: Path) -> None:
    """Ten members each holding their peak arena (~0.8 GB at 128^3) were OOM-killed at 24 GB on CPU."""
    make_random_weights(tmp_path, members=1, arch_kwargs=THREE_LEVEL_STUNET, patch_size=(16, 16, 16), onnx=True)
    onnx_path = next(tmp_path.glob("*.onnx"))
    predictor = load_onnx(onnx_path, sha256_of(onnx_path), num_threads=1)
    assert predictor._session.get_session_options().enable_cpu_mem_arena is False


def test_cuda_start_up_failure_is_summarised_in_one_line() -> None:
    """What onnxruntime-gpu printed in the image on a machine without a GPU (test.sh run, abridged)."""
    from hecktor.segment.onnx_backend import _cuda_failure_reason

    printed = (
        "*************** EP Error ***************\n"
        "EP Error /onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:122 std::conditional_t<THRW, void, "
        "onnxruntime::common::Status> onnxruntime::CudaCall(...) CUDA failure 35: CUDA driver version is insufficient "
        "for CUDA runtime version ; GPU=-1 ; hostname=6229d933d704 ; file=/onnxruntime_src/onnxruntime/core/providers/"
        "cuda/cuda_execution_provider.cc ; line=336 ; expr=cudaSetDevice(info_.device_id); \n\n"
        " when using ['CUDAExecutionProvider', 'CPUExecutionProvider']\n"
        "Falling back to ['CPUExecutionProvider'] and retrying.\n****************************************\n"
    )
    assert _cuda_failure_reason(printed) == (
        "CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version")
