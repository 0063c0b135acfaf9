"""The ensemble engine end to end on random (NOT trained) members and a tiny ROI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hecktor.core.files import sha256_of
from hecktor.core.manifest import Manifest, ManifestError, load_manifest
from hecktor.core.types import Roi
from hecktor.preprocess.normalise import normalise_ct, normalise_pet
from hecktor.segment import build_engine
from hecktor.segment.ensemble import EnsembleEngine, load_ensemble
from hecktor.segment.torch_backend.networks import build_network
from training.make_random_weights import RANDOM_MODEL_CARD, make_random_weights

TINY_STUNET = {"dims": (4, 8, 8, 8, 8, 8)}
FOUR_LEVEL_STUNET = {  # stride product 8: several 16^3 windows over the tiny ROI, each fast
    "dims": (4, 8, 8, 8),
    "depth": (1, 1, 1, 1),
    "pool_op_kernel_sizes": ((2, 2, 2),) * 3,
    "conv_kernel_sizes": ((3, 3, 3),) * 4,
}
TINY_SEGRESNET = {
    "init_filters": 8,
    "norm": ["group", {"num_groups": 4}],
    "blocks_down": [1, 1, 1],
    "blocks_up": [1, 1],
}
ROI_SHAPE = (36, 30, 28)  # z, y, x: not multiples of the patch or of 32


def tiny_roi(shape: tuple[int, int, int] = ROI_SHAPE) -> Roi:
    rng = np.random.default_rng(0)
    grid = sitk.Image([shape[2], shape[1], shape[0]], sitk.sitkUInt8)
    grid.SetSpacing((1.0, 1.0, 1.0))
    grid.SetOrigin((-14.0, -15.0, -100.0))
    ct = rng.normal(40.0, 200.0, size=shape).astype(np.float32)
    pet = np.abs(rng.normal(1.0, 0.5, size=shape)).astype(np.float32)
    pet[:, :, :3] = 0.0  # outside the PET field of view
    pet[10:14, 12:16, 12:16] = 12.0  # a hot spot
    return Roi(grid=grid, ct_hu=ct, pet_suv=pet, center_mm=(0.0, 0.0, -82.0), located_by="pet-brain",
               midline_x_mm=0.0, midline_from="test")


@pytest.fixture(scope="module")
def stunet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("random_stunet")
    make_random_weights(
        folder,
        members=2,
        arch_kwargs=FOUR_LEVEL_STUNET,
        patch_size=(16, 16, 16),
        ensemble_options={"whole_roi_if_fits": False, "batch_size": 2, "mirror_axes": [2]},
    )
    return folder


def test_manifest_says_random(stunet_dir: Path) -> None:
    raw = json.loads((stunet_dir / "manifest.json").read_text())
    members = raw["segmentation"]["ensemble"]["members"]
    assert all(m["model_card"]["description"] == RANDOM_MODEL_CARD for m in members)
    assert raw["segmentation"]["ensemble"]["trained_on_real_data"] is False


def test_random_manifest_keeps_the_shipped_parameters(stunet_dir: Path, shipped_manifest: Manifest) -> None:
    manifest = load_manifest(stunet_dir)
    assert manifest.engine == "ensemble" and manifest.ensemble is not None
    assert manifest.preprocess == shipped_manifest.preprocess
    assert manifest.pet_threshold == shipped_manifest.pet_threshold
    assert manifest.postprocess == shipped_manifest.postprocess
    assert manifest.ensemble.mirror_axes == (2,) and manifest.ensemble.backend == "torch"


def test_engine_gives_probabilities_on_the_roi_grid(stunet_dir: Path) -> None:
    manifest = load_manifest(stunet_dir)
    engine = build_engine(manifest)
    assert isinstance(engine, EnsembleEngine)
    assert engine.name == "ensemble" and engine.trained_on_real_data is False
    roi = tiny_roi()
    probs = engine.segment(roi)
    assert probs.engine == "ensemble" and probs.grid is roi.grid
    assert probs.values.shape == (3, *ROI_SHAPE) and probs.values.dtype == np.float32
    assert np.isfinite(probs.values).all() and probs.values.min() >= 0
    np.testing.assert_allclose(probs.values.sum(axis=0), 1.0, atol=1e-5)
    # Two different random members: the average is not either member's output alone.
    assert probs.values.std() > 0


def test_ensemble_averages_its_members_logits(stunet_dir: Path) -> None:
    """nnU-Net's fold ensembling: softmax of the mean logits, i.e. the normalised geometric mean of the
    members' probabilities (softmax(log p) = p, and a per-voxel constant cancels in the softmax)."""
    manifest = load_manifest(stunet_dir)
    assert manifest.ensemble is not None
    roi = tiny_roi()
    both = load_ensemble(manifest.ensemble, stunet_dir, device="cpu").segment(roi).values
    singles = []
    for member in manifest.ensemble.members:
        config = replace(manifest.ensemble, members=(member,))
        singles.append(load_ensemble(config, stunet_dir, device="cpu").segment(roi).values)
    geometric = np.sqrt(singles[0].astype(np.float64) * singles[1])
    np.testing.assert_allclose(both, geometric / geometric.sum(axis=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(both, (singles[0] + singles[1]) / 2, rtol=1e-3, atol=1e-4)  # not the arithmetic mean
    assert not np.allclose(singles[0], singles[1])


def test_segresnet_member_whole_roi(tmp_path: Path) -> None:
    make_random_weights(
        tmp_path,
        members=1,
        architecture="SegResNet",
        arch_kwargs=TINY_SEGRESNET,
        patch_size=(16, 16, 16),
        ensemble_options={"whole_roi_if_fits": True},
    )
    probs = build_engine(load_manifest(tmp_path)).segment(tiny_roi())
    assert probs.values.shape == (3, *ROI_SHAPE)
    np.testing.assert_allclose(probs.values.sum(axis=0), 1.0, atol=1e-5)


def test_tampered_member_is_refused_at_load(stunet_dir: Path, tmp_path: Path) -> None:
    for item in stunet_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    member_file = next(tmp_path.glob("*.safetensors"))
    recorded = sha256_of(member_file)
    member_file.write_bytes(member_file.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ManifestError, match=f"{member_file.name}.*{recorded}"):
        build_engine(load_manifest(tmp_path))


def test_patch_not_divisible_by_strides_is_refused(tmp_path: Path) -> None:
    make_random_weights(tmp_path, members=1, arch_kwargs=TINY_STUNET, patch_size=(48, 40, 40))
    with pytest.raises(ManifestError, match="stride product"):
        build_engine(load_manifest(tmp_path))


def test_engine_output_matches_a_hand_run_member(tmp_path: Path) -> None:
    """One member, one window: the engine equals softmax(network(normalised ROI)) computed here."""
    make_random_weights(
        tmp_path,
        members=1,
        arch_kwargs=TINY_STUNET,
        patch_size=(64, 64, 64),
        ensemble_options={"whole_roi_if_fits": False},
    )
    manifest = load_manifest(tmp_path)
    assert manifest.ensemble is not None
    member = manifest.ensemble.members[0]
    roi = tiny_roi((64, 64, 64))
    got = load_ensemble(manifest.ensemble, tmp_path, device="cpu").segment(roi).values
    torch.manual_seed(0)
    net = build_network("STUNet", TINY_STUNET).eval()
    image = np.stack([normalise_ct(roi.ct_hu, member.ct_normalisation), normalise_pet(roi.pet_suv)])
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(image)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
