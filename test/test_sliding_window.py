"""Sliding-window inference with analytic predictors whose exact output is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hecktor.segment import windows
from hecktor.segment.torch_backend.sliding_window import (
    WindowSettings,
    gaussian_importance_map,
    mirror_combinations,
    predict_mirrored,
    sliding_window_inference,
    window_slices,
    window_starts,
)


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A voxel-wise "network": (B, 1, ...) -> (B, 3, ...) logits (x, 2x, -x); no border effects."""
    return torch.cat([x, 2 * x, -x], dim=1)


def box_filter(x: torch.Tensor) -> torch.Tensor:
    """A 3x3x3 mean filter, symmetric, hence equivariant under mirroring: (B, 1, ...) -> (B, 2, ...)."""
    smooth = F.avg_pool3d(x, 3, stride=1, padding=1)
    return torch.cat([smooth, -smooth], dim=1)


def shift_x(x: torch.Tensor) -> torch.Tensor:
    """Not mirror-equivariant: looks one voxel to the right along x."""
    shifted = torch.roll(x, shifts=-1, dims=4)
    return torch.cat([shifted, -shifted], dim=1)


def expected_pointwise(image: torch.Tensor, softmax: bool) -> torch.Tensor:
    logits = pointwise(image[None])[0]
    return torch.softmax(logits, dim=0) if softmax else logits


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((20, 23, 17), (8, 8, 8), 0.5),  # many windows, uneven last steps
        ((5, 30, 9), (8, 16, 16), 0.5),  # z and x smaller than the patch: padded
        ((16, 16, 16), (16, 16, 16), 0.25),  # exactly one window
    ],
)
@pytest.mark.parametrize("softmax", [True, False])
def test_pointwise_predictor_gives_exact_output(
    shape: tuple[int, int, int], patch: tuple[int, int, int], overlap: float, softmax: bool
) -> None:
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    settings = WindowSettings(patch_size=patch, overlap=overlap, batch_size=3, softmax=softmax)
    out = sliding_window_inference(image, pointwise, 3, settings)
    assert out.shape == (3, *shape) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected_pointwise(image, softmax), rtol=1e-5, atol=1e-6)
    if softmax:
        torch.testing.assert_close(out.sum(0), torch.ones(shape), rtol=0, atol=1e-5)


def naive_blend(image: np.ndarray, predictor, patch: tuple[int, int, int], overlap: float) -> np.ndarray:
    """Reference: one full-size map per window, summed; only valid without padding."""
    gauss = gaussian_importance_map(patch).numpy()
    num = np.zeros((2, *image.shape[1:]))
    den = np.zeros(image.shape[1:])
    for win in window_slices(image.shape[1:], patch, overlap):
        full = np.zeros_like(num)
        full[(slice(None), *win)] = predictor(torch.from_numpy(image[(slice(None), *win)])[None])[0].numpy() * gauss
        num += full
        den[win] += gauss
    return num / den


def test_window_dependent_predictor_matches_naive_blend() -> None:
    image = np.random.default_rng(2).normal(size=(1, 14, 19, 12)).astype(np.float32)

    def window_mean(x: torch.Tensor) -> torch.Tensor:  # a constant per window: blending matters
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
        return torch.cat([mean, x], dim=1)

    settings = WindowSettings(patch_size=(8, 8, 8), overlap=0.5, batch_size=4, softmax=False)
    out = sliding_window_inference(torch.from_numpy(image), window_mean, 2, settings)
    np.testing.assert_allclose(out.numpy(), naive_blend(image, window_mean, (8, 8, 8), 0.5), rtol=1e-5, atol=1e-6)


def test_whole_roi_mode_pads_to_multiple_and_crops_back() -> None:
    seen: list[tuple[int, ...]] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return pointwise(x)

    image = torch.randn(1, 33, 20, 40)
    settings = WindowSettings(patch_size=(16, 16, 16), whole_roi_if_fits=True, size_multiple=32)
    out = sliding_window_inference(image, recording, 3, settings)
    assert seen == [(1, 1, 64, 32, 64)]
    torch.testing.assert_close(out, expected_pointwise(image, True), rtol=1e-5, atol=1e-6)

    seen.clear()
    small_budget = WindowSettings(
        patch_size=(16, 16, 16), whole_roi_if_fits=True, whole_roi_max_voxels=64 * 32 * 64 - 1
    )
    sliding_window_inference(image, recording, 3, small_budget)
    assert all(shape[2:] == (16, 16, 16) for shape in seen) and len(seen) > 1


@pytest.mark.parametrize("predictor", [pointwise, box_filter])
def test_mirror_tta_with_equivariant_predictor_equals_no_tta(predictor) -> None:
    image = torch.randn(1, 12, 10, 14, generator=torch.Generator().manual_seed(3))
    classes = 3 if predictor is pointwise else 2
    plain = sliding_window_inference(image, predictor, classes, WindowSettings(patch_size=(8, 8, 8)))
    mirrored = sliding_window_inference(
        image, predictor, classes, WindowSettings(patch_size=(8, 8, 8), mirror_axes=(0, 1, 2))
    )
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-6)


def test_mirror_tta_changes_a_non_equivariant_predictor_as_expected() -> None:
    batch = torch.randn(1, 1, 6, 6, 6)
    out = predict_mirrored(shift_x, batch, mirror_axes=(2,))
    # Mirroring x turns "look right" into "look left"; the average is over both.
    left = torch.roll(batch, shifts=1, dims=4)
    expected = (torch.softmax(shift_x(batch), 1) + torch.softmax(torch.cat([left, -left], 1), 1)) / 2
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, torch.softmax(shift_x(batch), 1))


def test_mirror_combinations_is_every_subset() -> None:
    assert mirror_combinations(()) == [()]
    assert mirror_combinations((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations((0, 1, 2))) == 8


@pytest.mark.parametrize("patch", [(17, 33, 24), (128, 128, 128), (48, 40, 40)])
def test_gaussian_importance_map_is_nnunets(patch: tuple[int, int, int]) -> None:
    """Independent computation, as nnU-Net's ``compute_gaussian`` does it: scipy's gaussian_filter of a unit
    impulse at ``n // 2`` (sigma n/8, truncated at 4 sigma), scaled to max 1, zeros -> smallest non-zero."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(n // 2 for n in patch)] = 1.0
    expected = gaussian_filter(impulse, [n / 8 for n in patch], 0, mode="constant", cval=0)
    expected /= expected.max()
    expected[expected == 0] = expected[expected != 0].min()
    gauss = gaussian_importance_map(patch, sigma_scale=1 / 8)
    assert gauss.shape == patch and gauss.dtype == torch.float32
    assert gauss.min() > 0  # no zero weights
    np.testing.assert_allclose(gauss.numpy(), expected, rtol=1e-5, atol=1e-12)
    assert gauss[tuple(n // 2 for n in patch)] == 1.0  # the peak sits at n // 2, not at the geometric centre


def test_window_starts_cover_the_axis() -> None:
    assert window_starts(16, 16, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert max(b - a for a, b in itertools.pairwise(starts)) <= 16
    assert window_starts(64, 32, 0.0) == [0, 32]
    with pytest.raises(ValueError, match="smaller than the patch"):
        window_starts(10, 16, 0.5)


def test_settings_and_predictor_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        WindowSettings(patch_size=(8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="mirror_axes"):
        WindowSettings(patch_size=(8, 8, 8), mirror_axes=(3,))
    with pytest.raises(ValueError, match="classes"):
        sliding_window_inference(torch.randn(1, 8, 8, 8), pointwise, 2, WindowSettings(patch_size=(8, 8, 8)))
    with pytest.raises(ValueError, match="predictor returned shape"):
        predict_mirrored(lambda x: x[:, :, :4], torch.randn(1, 1, 8, 8, 8))


# --------------------------------------------------------------------------- the numpy path (ONNX Runtime backend)


def _numpy_of(predictor):
    """A torch analytic predictor as the numpy predictor the ONNX backend calls."""
    return lambda batch: predictor(torch.from_numpy(batch)).numpy()


def test_numpy_pointwise_output_is_exact_without_torch() -> None:
    image = np.random.default_rng(4).normal(size=(1, 20, 23, 17)).astype(np.float32)
    settings = WindowSettings(patch_size=(8, 8, 8), overlap=0.5, batch_size=3)

    def pointwise_np(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([batch, 2 * batch, -batch], axis=1)

    out = windows.sliding_window_inference(image, pointwise_np, 3, settings)
    logits = np.concatenate([image, 2 * image, -image])
    expected = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)  # softmax written out
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        WindowSettings(patch_size=(8, 8, 8), overlap=0.5, batch_size=4, softmax=False),
        WindowSettings(patch_size=(8, 16, 8), overlap=0.25, batch_size=1, mirror_axes=(0, 2)),
        WindowSettings(patch_size=(16, 16, 16), overlap=0.5, mirror_axes=(0, 1, 2)),  # padded: z and x < patch
        WindowSettings(patch_size=(8, 8, 8), whole_roi_if_fits=True, size_multiple=16),
    ],
    ids=["plain", "mirrored", "padded", "whole-roi"],
)
def test_numpy_and_torch_paths_blend_identically(settings: WindowSettings) -> None:
    """Same windows, same Gaussian, same mirrorings: a window-dependent, non-equivariant predictor agrees."""
    image = np.random.default_rng(5).normal(size=(1, 14, 19, 12)).astype(np.float32)

    def window_mean_shift(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
        return torch.cat([mean, torch.roll(x, shifts=-1, dims=4)], dim=1)

    expected = sliding_window_inference(torch.from_numpy(image), window_mean_shift, 2, settings).numpy()
    got = windows.sliding_window_inference(image, _numpy_of(window_mean_shift), 2, settings)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch", [(7, 9, 11), (8, 16, 12)])
def test_torch_gaussian_is_the_separable_formula(patch: tuple[int, int, int]) -> None:
    """The torch path's map, checked against values computed apart: the product over axes of
    exp(-(i - n // 2)^2 / (2 sigma^2)) with nnU-Net's sigma = n / 8, scaled to a maximum of 1 (at these sizes the
    4-sigma truncation reaches past the patch). For odd sizes that is scipy's symmetric window of that sigma."""
    from scipy.signal.windows import gaussian

    got = gaussian_importance_map(patch)
    assert got.dtype == torch.float32 and tuple(got.shape) == patch
    axes = [np.exp(-((np.arange(n) - n // 2) ** 2) / (2 * (n / 8) ** 2)) for n in patch]
    expected = np.einsum("i,j,k->ijk", *axes)
    np.testing.assert_allclose(got.numpy(), expected / expected.max(), rtol=1e-6, atol=1e-7)
    if all(n % 2 for n in patch):
        scipy_map = np.einsum("i,j,k->ijk", *[gaussian(n, std=n / 8) for n in patch])
        np.testing.assert_allclose(got.numpy(), scipy_map, rtol=1e-6, atol=1e-7)
    assert got.max() == 1.0 and float(got[tuple(n // 2 for n in patch)]) == 1.0


def test_window_count_matches_the_tiling() -> None:
    assert windows.window_count((20, 23, 17), (8, 8, 8), 0.5) == len(window_slices((20, 23, 17), (8, 8, 8), 0.5))
    assert windows.window_count((5, 30, 9), (8, 16, 16), 0.5) == len(window_slices((8, 30, 16), (8, 16, 16), 0.5))
