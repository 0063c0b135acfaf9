"""ONNX export of the ensemble: dynamic axes, a self-contained manifest, and torch/onnxruntime parity.

Members are randomly initialised (NOT trained); parity of two runtimes does not need trained weights.
The parity cases run the real sarcoma case STS_001 (``../shared/data/sts``) through the real reader and
ROI extraction, and skip with a reason when it is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import sts_training_layout
from torch import nn

from hecktor.apps.cli import main as cli_main
from hecktor.core.files import sha256_of
from hecktor.core.geometry import sub_grid
from hecktor.core.manifest import DEFAULT_WEIGHTS_DIR, ManifestError, load_manifest
from hecktor.core.types import Roi
from hecktor.io.read import read_case
from hecktor.preprocess.roi import extract_roi
from hecktor.segment.ensemble import load_ensemble
from hecktor.segment.onnx_backend import load_onnx
from hecktor.segment.torch_backend.networks import build_network
from hecktor.segment.torch_backend.onnx_export import (
    CentredNorm,
    export_manifest_to_onnx,
    export_member_to_onnx,
    with_centred_norms,
)
from training.make_random_weights import make_random_weights

TINY_SEGRESNET = {
    "init_filters": 8,
    "norm": ["group", {"num_groups": 4}],
    "blocks_down": [1, 1, 1],
    "blocks_up": [1, 1],
}
THREE_LEVEL_STUNET = {  # small enough to export and run in well under a second
    "dims": (4, 8, 8),
    "depth": (1, 1, 1),
    "pool_op_kernel_sizes": ((2, 2, 2), (2, 2, 2)),
    "conv_kernel_sizes": ((3, 3, 3),) * 3,
}
MAX_PROBABILITY_DIFF = 1e-3
MIN_LABEL_AGREEMENT = 0.999
MODEL_JSONS = ("rfs_model.json", "hpv_model.json")


@pytest.fixture()
def tiny_torch_dir(tmp_path: Path) -> Path:
    """A one-member torch manifest plus the bundled Task 2/3 models, as a real folder has."""
    folder = tmp_path / "torch"
    make_random_weights(folder, members=1, arch_kwargs=THREE_LEVEL_STUNET, patch_size=(16, 16, 16))
    for name in MODEL_JSONS:
        shutil.copyfile(DEFAULT_WEIGHTS_DIR / name, folder / name)
    return folder


def test_export_has_dynamic_spatial_axes_and_a_matching_manifest(tiny_torch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    path = export_manifest_to_onnx(tiny_torch_dir, out)
    assert path == out / "manifest.json"
    manifest = load_manifest(out)
    assert manifest.ensemble is not None and manifest.ensemble.backend == "onnxruntime"
    (member,) = manifest.ensemble.members
    assert member.weights == f"{member.name}.onnx" and sha256_of(out / member.weights) == member.sha256
    predictor = load_onnx(out / member.weights, member.sha256, num_threads=1)
    batch, channels, *spatial = predictor.input_shape
    assert channels == 2
    assert all(isinstance(axis, str) for axis in (batch, *spatial)), predictor.input_shape
    # Everything but the backend and the member files is the original manifest; the folder is self-contained.
    original = json.loads((tiny_torch_dir / "manifest.json").read_text())
    exported = json.loads(path.read_text())
    original["segmentation"]["ensemble"]["backend"] = "onnxruntime"
    original_member = original["segmentation"]["ensemble"]["members"][0]
    original_member.update(weights=member.weights, sha256=member.sha256)
    original_member["model_card"]["onnx_weights"] = "float32"
    assert exported == original
    for name in MODEL_JSONS:
        assert (out / name).read_bytes() == (tiny_torch_dir / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", member.weights, *MODEL_JSONS])


@pytest.mark.parametrize(
    ("architecture", "arch_kwargs"), [("STUNet", THREE_LEVEL_STUNET), ("SegResNet", TINY_SEGRESNET)]
)
def test_centred_norms_change_nothing_in_torch_and_leave_no_instance_norm_op(
    architecture: str, arch_kwargs: dict
) -> None:
    torch.manual_seed(0)
    network = build_network(architecture, arch_kwargs).eval()
    for module in network.modules():  # non-trivial affine parameters
        if isinstance(module, (nn.InstanceNorm3d, nn.GroupNorm)) and module.weight is not None:
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -1.0, 1.0)
    centred = with_centred_norms(network)
    assert any(isinstance(m, CentredNorm) for m in centred.modules())
    assert not any(isinstance(m, CentredNorm) for m in network.modules())  # the original is untouched
    x = 3.0 * torch.randn(2, 2, 16, 24, 32) + 1.0
    with torch.inference_mode():
        torch.testing.assert_close(centred(x), network(x), rtol=0, atol=1e-5 * float(network(x).abs().max()))
    graph = onnx.load_model_from_string(export_member_to_onnx(network, 2, (16, 16, 16))).graph
    assert "InstanceNormalization" not in {node.op_type for node in graph.node}


def test_exported_norm_is_accurate_on_a_whole_roi_sized_input() -> None:
    """onnxruntime's own InstanceNormalization op is off by ~2e-3 at this size (one float32 pass per channel)."""
    import onnxruntime as ort

    torch.manual_seed(0)
    norm = nn.InstanceNorm3d(1, affine=True)
    data = export_member_to_onnx(norm, 1, (8, 8, 8))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 224, 224, 192) + 5.0
    got = session.run(None, {"image": x.numpy()})[0]
    expected = nn.functional.instance_norm(x.double(), eps=norm.eps).numpy()
    assert float(np.abs(got - expected).max()) < 1e-4


def test_export_refuses_a_manifest_without_ensemble(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no segmentation\.ensemble members"):
        export_manifest_to_onnx(DEFAULT_WEIGHTS_DIR, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_export_refuses_its_own_folder_and_onnx_members(tiny_torch_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="its own folder"):
        export_manifest_to_onnx(tiny_torch_dir, tiny_torch_dir)
    export_manifest_to_onnx(tiny_torch_dir, tmp_path / "onnx")
    with pytest.raises(ManifestError, match="only torch members export"):
        export_manifest_to_onnx(tmp_path / "onnx", tmp_path / "again")


def test_cli_export_onnx(tiny_torch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_onnx"
    assert cli_main(["export-onnx", "--weights-dir", str(tiny_torch_dir), "--out", str(out)]) == 0
    assert load_manifest(out).ensemble.backend == "onnxruntime"  # type: ignore[union-attr]
    assert cli_main(["export-onnx", "--weights-dir", str(DEFAULT_WEIGHTS_DIR), "--out", str(tmp_path / "x")]) == 3


# --- parity on the real sarcoma case, full STU-Net-S -------------------------------------------------------


@pytest.fixture(scope="module")
def stunet_s_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One random full STU-Net-S member (patch 128^3) as safetensors, and its ONNX export."""
    torch_dir = tmp_path_factory.mktemp("stunet_s_torch")
    make_random_weights(torch_dir, members=1)
    onnx_dir = tmp_path_factory.mktemp("stunet_s_onnx")
    export_manifest_to_onnx(torch_dir, onnx_dir)
    return torch_dir, onnx_dir


@pytest.fixture(scope="module")
def sts_roi(tmp_path_factory: pytest.TempPathFactory) -> Roi:
    """The 1 mm ROI of STS_001 built by the real reader and preprocessing (bundled preprocess config)."""
    case = read_case(sts_training_layout(tmp_path_factory.mktemp("sts"), "STS_001"))
    return extract_roi(case, load_manifest(DEFAULT_WEIGHTS_DIR).preprocess)


def _sub_roi_around_pet_max(roi: Roi, size: tuple[int, int, int]) -> Roi:
    """The ``size`` (z, y, x) part of the ROI centred (as far as it fits) on the PET maximum."""
    shape = np.asarray(roi.pet_suv.shape)
    peak = np.asarray(np.unravel_index(int(np.argmax(roi.pet_suv)), roi.pet_suv.shape))
    start = np.clip(peak - np.asarray(size) // 2, 0, np.maximum(shape - size, 0))
    stop = np.minimum(start + size, shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    return Roi(
        grid=sub_grid(roi.grid, start[::-1], stop[::-1]),
        ct_hu=np.ascontiguousarray(roi.ct_hu[window]),
        pet_suv=np.ascontiguousarray(roi.pet_suv[window]),
        center_mm=roi.center_mm,
        located_by=roi.located_by,
        midline_x_mm=roi.midline_x_mm,
        midline_from=roi.midline_from,
        brain_bottom_mm=roi.brain_bottom_mm,
    )


def _parity(dirs: tuple[Path, Path], roi: Roi) -> tuple[float, float]:
    """Max |p_torch - p_onnx| and the fraction of voxels with the same argmax label."""
    values = []
    for folder in dirs:
        ensemble = load_manifest(folder).ensemble
        assert ensemble is not None
        values.append(load_ensemble(ensemble, folder, device="cpu").segment(roi).values)
    p_torch, p_onnx = values
    max_diff = float(np.abs(p_torch - p_onnx).max())
    agreement = float(np.mean(p_torch.argmax(axis=0) == p_onnx.argmax(axis=0)))
    return max_diff, agreement


def _check_parity(dirs: tuple[Path, Path], roi: Roi, what: str) -> None:
    max_diff, agreement = _parity(dirs, roi)
    print(f"\nONNX parity, {what}: max |p_torch - p_onnx| = {max_diff:.2e}, label agreement = {agreement:.6%}")
    assert max_diff <= MAX_PROBABILITY_DIFF
    assert agreement >= MIN_LABEL_AGREEMENT


def test_onnx_matches_torch_on_a_real_case_window(stunet_s_dirs: tuple[Path, Path], sts_roi: Roi) -> None:
    patch = load_manifest(stunet_s_dirs[0]).ensemble.members[0].patch_size  # type: ignore[union-attr]
    sub = _sub_roi_around_pet_max(sts_roi, tuple(patch))
    assert sub.ct_hu.shape == tuple(patch)
    _check_parity(stunet_s_dirs, sub, f"STS_001 {'x'.join(map(str, patch))} window at the PET maximum")


@pytest.mark.slow
def test_onnx_matches_torch_on_a_whole_real_roi(stunet_s_dirs: tuple[Path, Path], sts_roi: Roi) -> None:
    _check_parity(stunet_s_dirs, sts_roi, f"STS_001 whole ROI {sts_roi.ct_hu.shape}")


# --- the torch-free path: numpy tiling and blending with ONNX Runtime, against the torch engine -------------


def test_numpy_onnx_engine_matches_torch_engine_over_many_windows(tmp_path: Path, phantom) -> None:
    """Two members, 16^3 patches, overlap 0.5, mirroring z and x: about 600 windows each, on a SYNTHETIC
    phantom ROI around the tumour; the ONNX engine tiles, blends and averages in numpy only."""
    torch_dir = tmp_path / "torch"
    make_random_weights(torch_dir, members=2, arch_kwargs=THREE_LEVEL_STUNET, patch_size=(16, 16, 16),
                        ensemble_options={"overlap": 0.5, "mirror_axes": (0, 2)})
    onnx_dir = tmp_path / "onnx"
    export_manifest_to_onnx(torch_dir, onnx_dir)
    case = read_case(_phantom_case(tmp_path / "case", phantom))
    roi = _sub_roi_around_pet_max(extract_roi(case, load_manifest(DEFAULT_WEIGHTS_DIR).preprocess), (48, 40, 56))
    max_diff, agreement = _parity((torch_dir, onnx_dir), roi)
    print(f"\nnumpy/ONNX vs torch engine: max |dp| = {max_diff:.2e}, label agreement = {agreement:.6%}")
    assert max_diff <= 1e-4
    assert agreement >= 0.9999


def _phantom_case(folder: Path, phantom) -> Path:
    from hecktor.io.phantom import write_platform_case

    write_platform_case(phantom, folder)
    return folder


MID_STUNET = {"dims": (8, 16, 32, 64), "depth": (1, 1, 1, 1), "pool_op_kernel_sizes": ((2, 2, 2),) * 3,
              "conv_kernel_sizes": ((3, 3, 3),) * 4}


def test_float16_weights_halve_the_file_and_stay_close_to_float32(tmp_path: Path, phantom) -> None:
    """``export-onnx --fp16-weights`` against the float32 export of the same random (NOT trained) member.

    Measured on the full random STU-Net-S (STS_001, one 128^3 window): max |dp| 1.2e-2, labels 99.94 %
    identical; trained networks should be re-checked before shipping float16 weights.
    """
    torch_dir = tmp_path / "torch"
    make_random_weights(torch_dir, members=1, arch_kwargs=MID_STUNET, patch_size=(32, 32, 32))
    exported = {}
    for fp16 in (False, True):
        exported[fp16] = tmp_path / f"onnx-{fp16}"
        export_manifest_to_onnx(torch_dir, exported[fp16], fp16_weights=fp16)
    sizes = {fp16: next(folder.glob("*.onnx")).stat().st_size for fp16, folder in exported.items()}
    assert sizes[True] < 0.6 * sizes[False]
    model = onnx.load(str(next(exported[True].glob("*.onnx"))))
    float32 = onnx.TensorProto.FLOAT
    assert [i.name for i in model.graph.initializer if i.data_type == float32 and np.prod(i.dims) >= 1024] == []
    assert load_manifest(exported[True]).ensemble.members[0].model_card["onnx_weights"].startswith("float16")
    case = read_case(_phantom_case(tmp_path / "case", phantom))
    roi = _sub_roi_around_pet_max(extract_roi(case, load_manifest(DEFAULT_WEIGHTS_DIR).preprocess), (48, 40, 56))
    max_diff, agreement = _parity((exported[False], exported[True]), roi)
    print(f"\nfloat16 vs float32 weights: max |dp| = {max_diff:.2e}, label agreement = {agreement:.6%}")
    assert max_diff <= 0.05
    assert agreement >= 0.999
