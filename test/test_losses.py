"""training/losses.py: the ODA loss against hand-computed values and an independent numpy version, its gradients,
and the ``build_loss`` names (``ce_dice`` against nnU-Net's own loss where nnunetv2 is installed).

Needs only torch and numpy (not the ``hecktor`` package's dependencies), so it also runs in the training venv.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.losses import LOSS_NAMES, ODALoss, build_loss

E = 1e-5  # the loss's default epsilon, written into the hand arithmetic below
LN2 = math.log(2.0)
REPO = Path(__file__).resolve().parents[1]


def _logits(*voxels: tuple[float, float, float]) -> torch.Tensor:
    """(1, 3, 1, 1, n) logits from n (background, GTVp, GTVn) triples."""
    return torch.tensor(voxels, dtype=torch.float64).T.reshape(1, 3, 1, 1, len(voxels)).float()


def _target(*labels: int) -> torch.Tensor:
    """(1, 1, 1, 1, n) float label map, as nnU-Net's loader delivers it."""
    return torch.tensor(labels, dtype=torch.float32).reshape(1, 1, 1, 1, len(labels))


# Two voxels. Voxel 0: logits (0, ln2, 0) -> softmax (1/4, 1/2, 1/4), label GTVp.
#             Voxel 1: logits (ln2, 0, 0) -> softmax (1/2, 1/4, 1/4), label background.
# So p_GTVp = [0.5, 0.25], y_GTVp = [1, 0];  p_GTVn = [0.25, 0.25], y_GTVn = [0, 0] (empty).
TINY_LOGITS = ((0.0, LN2, 0.0), (LN2, 0.0, 0.0))
TINY_LABELS = (1, 0)

# GTVp: TP = 0.5, |y| = 1, |p| = 0.75, FP = 0.25, FN = 0.5
DICE_P = 1 - (2 * 0.5 + E) / (1 + 0.75 + E)  # ~ 3/7
TI_P = (0.5 + E) / (0.5 + 0.5 * 0.25 + 0.5 * 0.5 + E)  # ~ 4/7 (alpha = beta = 0.5)
FOCAL_P = (1 - TI_P) ** 1.33
BCE_P = -(math.log(0.5) + math.log(1 - 0.25)) / 2  # voxel 0: -log p, voxel 1: -log(1 - p)
# complement: 1 - y = [0, 1], 1 - p = [0.5, 0.75]: <,> = 0.75, |1 - y| = 1, |1 - p| = 1.25
DCOMP_P = 1 - (2 * 0.75 + E) / (1 + 1.25 + E)  # ~ 1/3
# GTVn: TP = 0, |y| = 0, |p| = 0.5, FP = 0.5, FN = 0
DICE_N = 1 - (0 + E) / (0 + 0.5 + E)  # ~ 1
TI_N = (0 + E) / (0 + 0.3 * 0.5 + 0.7 * 0 + E)  # ~ 0
FOCAL_N = (1 - TI_N) ** 1.5
BCE_N = -(math.log(1 - 0.25) + math.log(1 - 0.25)) / 2
# complement: 1 - y = [1, 1], 1 - p = [0.75, 0.75]: <,> = 1.5, |1 - y| = 2, |1 - p| = 1.5
DCOMP_N = 1 - (2 * 1.5 + E) / (2 + 1.5 + E)  # ~ 1/7


def test_hand_arithmetic_is_what_it_says() -> None:
    """The epsilon-free fractions the comments quote, so a slip in the constants above shows up here."""
    assert math.isclose(DICE_P, 3 / 7, abs_tol=1e-4)
    assert math.isclose(TI_P, 4 / 7, abs_tol=1e-4)
    assert math.isclose(DCOMP_P, 1 / 3, abs_tol=1e-4)
    assert math.isclose(DICE_N, 1.0, abs_tol=1e-4)
    assert math.isclose(DCOMP_N, 1 / 7, abs_tol=1e-4)
    assert math.isclose(BCE_P, (math.log(2) + math.log(4 / 3)) / 2)


def test_softmax_of_tiny_logits() -> None:
    p = torch.softmax(_logits(*TINY_LOGITS), dim=1)[0, :, 0, 0]
    assert p[:, 0].tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert p[:, 1].tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_each_term_matches_hand_computation() -> None:
    terms = ODALoss().terms(_logits(*TINY_LOGITS), _target(*TINY_LABELS))
    assert terms["dice"].tolist() == pytest.approx([DICE_P, DICE_N], rel=1e-5)
    assert terms["tversky_index"].tolist() == pytest.approx([TI_P, TI_N], rel=1e-4)
    assert terms["focal_tversky"].tolist() == pytest.approx([FOCAL_P, FOCAL_N], rel=1e-5)
    assert terms["bce"].tolist() == pytest.approx([BCE_P, BCE_N], rel=1e-5)
    assert terms["dice_complement"].tolist() == pytest.approx([DCOMP_P, DCOMP_N], rel=1e-5)


def test_total_is_sum_over_classes_of_all_four_terms() -> None:
    loss = ODALoss()(_logits(*TINY_LOGITS), _target(*TINY_LABELS))
    expected = DICE_P + FOCAL_P + BCE_P + DCOMP_P + DICE_N + FOCAL_N + BCE_N + DCOMP_N
    assert loss.dtype == torch.float32
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_tversky_beta_weights_false_negatives_and_gamma_is_the_exponent() -> None:
    # Both voxels GTVn. Voxel 0: logits (0, 0, ln2) -> p_GTVn = 1/2; voxel 1: (ln2, 0, 0) -> p_GTVn = 1/4.
    # GTVn: TP = 0.75, FN = 2 - 0.75 = 1.25, FP = 0.
    logits, target = _logits((0.0, 0.0, LN2), (LN2, 0.0, 0.0)), _target(2, 2)
    recall_biased = ODALoss().terms(logits, target)  # (alpha, beta) = (0.3, 0.7)
    ti = (0.75 + E) / (0.75 + 0.3 * 0 + 0.7 * 1.25 + E)  # ~ 6/13
    assert recall_biased["tversky_index"][1].item() == pytest.approx(ti, rel=1e-5)
    assert ti == pytest.approx(6 / 13, abs=1e-4)
    swapped = ODALoss(params_gtvn=(0.7, 0.3, 2.0)).terms(logits, target)
    ti_swapped = (0.75 + E) / (0.75 + 0.7 * 0 + 0.3 * 1.25 + E)  # ~ 2/3: FN cost less
    assert swapped["tversky_index"][1].item() == pytest.approx(ti_swapped, rel=1e-5)
    assert swapped["focal_tversky"][1].item() == pytest.approx((1 - ti_swapped) ** 2.0, rel=1e-5)
    assert recall_biased["focal_tversky"][1].item() == pytest.approx((1 - ti) ** 1.5, rel=1e-5)


def test_batch_dice_sums_over_batch_and_per_sample_averages() -> None:
    # Sample A: the tiny case. Sample B: all-zero logits -> every probability 1/3; labels (GTVn, background).
    logits = torch.cat([_logits(*TINY_LOGITS), torch.zeros(1, 3, 1, 1, 2)])
    target = torch.cat([_target(*TINY_LABELS), _target(2, 0)])
    # GTVp, sample B: TP = 0, |y| = 0, |p| = 2/3.   GTVn, sample B: TP = 1/3, |y| = 1, |p| = 2/3.
    dice_p_b = 1 - E / (2 / 3 + E)
    dice_n_b = 1 - (2 / 3 + E) / (1 + 2 / 3 + E)
    per_sample = ODALoss(batch_dice=False).terms(logits, target)
    assert per_sample["dice"].tolist() == pytest.approx([(DICE_P + dice_p_b) / 2, (DICE_N + dice_n_b) / 2], rel=1e-5)
    # Batch: GTVp TP = 0.5, |y| = 1, |p| = 0.75 + 2/3;  GTVn TP = 1/3, |y| = 1, |p| = 0.5 + 2/3.
    batch = ODALoss(batch_dice=True).terms(logits, target)
    assert batch["dice"].tolist() == pytest.approx(
        [1 - (1 + E) / (1 + 0.75 + 2 / 3 + E), 1 - (2 / 3 + E) / (1 + 0.5 + 2 / 3 + E)], rel=1e-5
    )
    # GTVn Tversky over the batch: FP = (0.5 + 2/3) - 1/3, FN = 1 - 1/3.
    fp, fn = 0.5 + 2 / 3 - 1 / 3, 1 - 1 / 3
    assert batch["tversky_index"][1].item() == pytest.approx((1 / 3 + E) / (1 / 3 + 0.3 * fp + 0.7 * fn + E), rel=1e-5)
    # BCE is a voxel mean either way; for GTVn: A as above, B: -log(1/3) then -log(2/3).
    bce_n = (2 * -math.log(0.75) + -math.log(1 / 3) - math.log(2 / 3)) / 4
    assert per_sample["bce"][1].item() == pytest.approx(bce_n, rel=1e-5)
    assert batch["bce"][1].item() == pytest.approx(bce_n, rel=1e-5)


def _numpy_oda(logits: np.ndarray, target: np.ndarray, batch_dice: bool, ignore: int | None = None) -> float:
    """Independent float64 numpy version of the paper's equations (1)-(3), for random inputs."""
    params = {1: (0.5, 0.5, 1.33), 2: (0.3, 0.7, 1.5)}
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    lab = target[:, 0]
    valid = np.ones_like(lab) if ignore is None else (lab != ignore).astype(np.float64)
    total = 0.0
    for c, (alpha, beta, gamma) in params.items():
        y, p = (lab == c).astype(np.float64), prob[:, c]
        bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        total += (bce * valid).sum() / valid.sum()
        groups = [slice(None)] if batch_dice else [slice(b, b + 1) for b in range(len(y))]
        region = 0.0
        for g in groups:
            yy, pp, vv = y[g], p[g], valid[g]

            def dice(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
                return 1 - (2 * (a * b * m).sum() + E) / ((a * m).sum() + (b * m).sum() + E)

            tp = (yy * pp * vv).sum()
            fp = ((1 - yy) * pp * vv).sum()
            fn = (yy * (1 - pp) * vv).sum()
            ti = (tp + E) / (tp + alpha * fp + beta * fn + E)
            region += dice(yy, pp, vv) + (1 - ti) ** gamma + dice(1 - yy, 1 - pp, vv)
        total += region / len(groups)
    return float(total)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [None, 4])
def test_matches_independent_numpy_version_on_random_input(batch_dice: bool, ignore: int | None) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, size=(3, 3, 4, 5, 6))
    target = rng.choice([0, 0, 1, 2], size=(3, 1, 4, 5, 6)).astype(np.float32)
    target[1, 0, 0] = 0  # keep some classes absent from a sample
    target[2][target[2] == 2] = 0  # sample 2 has no GTVn
    if ignore is not None:
        target[rng.random(target.shape) < 0.2] = ignore
    loss = ODALoss(batch_dice=batch_dice, ignore_label=ignore)(
        torch.from_numpy(logits).float(), torch.from_numpy(target)
    )
    assert loss.item() == pytest.approx(_numpy_oda(logits, target, batch_dice, ignore), rel=1e-4)


def test_ignored_voxels_drop_out_entirely() -> None:
    """An ignored third voxel, whatever its logits, leaves the two-voxel tiny case's loss unchanged."""
    loss = ODALoss(ignore_label=255)
    two = loss(_logits(*TINY_LOGITS), _target(*TINY_LABELS))
    three = loss(_logits(*TINY_LOGITS, (-5.0, 9.0, 3.0)), _target(*TINY_LABELS, 255))
    assert three.item() == pytest.approx(two.item(), rel=1e-6)


def test_target_forms_accepted() -> None:
    """(B, 1, ...) float as nnU-Net delivers it, (B, ...) without the channel, and integer maps agree."""
    loss, logits, target = ODALoss(), _logits(*TINY_LOGITS), _target(*TINY_LABELS)
    reference = loss(logits, target).item()
    assert loss(logits, target[:, 0]).item() == reference
    assert loss(logits, target.long()).item() == reference
    assert loss(logits, target.to(torch.int16)).item() == reference


def test_bad_shapes_rejected() -> None:
    loss = ODALoss()
    with pytest.raises(ValueError, match="net_output"):
        loss(torch.zeros(1, 2, 1, 1, 2), _target(0, 1))
    with pytest.raises(ValueError, match="label map"):
        loss(torch.zeros(1, 3, 1, 1, 2), torch.zeros(1, 3, 1, 1, 2))
    with pytest.raises(ValueError, match="does not match"):
        loss(torch.zeros(1, 3, 1, 1, 2), _target(0, 1, 2))


def _confident(labels: torch.Tensor, margin: float) -> torch.Tensor:
    """(B, 3, ...) logits with ``margin`` on the labelled class and 0 elsewhere."""
    one_hot = torch.nn.functional.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).float()
    return margin * one_hot


@pytest.mark.parametrize("batch_dice", [False, True])
def test_perfect_confident_prediction_is_near_the_minimum(batch_dice: bool) -> None:
    target = torch.zeros(2, 1, 4, 4, 4)
    target[:, :, 1:3, 1:3, 1:3] = 1
    target[0, :, 0, 0, :2] = 2  # GTVn only in sample 0; sample 1's GTVn is empty
    loss = ODALoss(batch_dice=batch_dice)
    # margin 80: every p is exactly 0 or 1 in float32, so each term's minimum, 0, is reached.
    assert loss(_confident(target, 80.0), target).item() == pytest.approx(0.0, abs=1e-6)
    # margin 20: p_wrong ~ e^-20 per voxel; the empty GTVn of sample 1 costs most (Dice 1 - eps/(|p| + eps)).
    near = loss(_confident(target, 20.0), target).item()
    assert -1e-6 <= near < 1e-2  # float32 rounding may land a hair below 0
    # and it is the minimum among these: weaker or wrong predictions cost more
    assert loss(_confident(target, 2.0), target).item() > near + 0.1
    assert loss(_confident(torch.zeros_like(target), 20.0), target).item() > 2.0


def _grad(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    assert logits.grad is not None
    return value.detach(), logits.grad


@pytest.mark.parametrize("batch_dice", [False, True])
def test_gradients_finite_with_empty_gtvn(batch_dice: bool) -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 3, 4, 5)
    target[:, :, 1, 1:3, 1:3] = 1  # GTVp only: GTVn empty in the whole batch
    value, grad = _grad(ODALoss(batch_dice=batch_dice), torch.randn(2, 3, 3, 4, 5), target)
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    # at GTVp voxels raising the GTVn logit both adds GTVn mass (no GTVn anywhere) and takes GTVp mass: loss rises
    assert (grad[:, 2][target[:, 0] == 1] > 0).all()


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gradients_finite_for_extreme_logits(batch_dice: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 1, 3, 4, 5)).float()
    target[1][target[1] == 2] = 0
    signs = torch.where(torch.rand(2, 3, 3, 4, 5) < 0.5, -1.0, 1.0)
    extreme = (80.0 * signs).to(dtype)  # confidently right in some voxels, confidently wrong in others
    value, grad = _grad(ODALoss(batch_dice=batch_dice), extreme, target)
    assert torch.isfinite(value) and value > 10  # confident mistakes cost ~160 nats of BCE each
    assert torch.isfinite(grad).all()
    value, grad = _grad(ODALoss(batch_dice=batch_dice), _confident(target, 80.0).to(dtype), target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_bce_of_a_confident_mistake_is_exact_not_clamped() -> None:
    """Background voxel with logits (0, 80, 0): p_GTVp = e^80 / (e^80 + 2), which is 1.0 in float32.

    -log(1 - p_GTVp) = log((e^80 + 2) / 2) = 80 - ln 2 (to 1e-34); a clamped ``log(1 - p)`` would give
    -log(clamp) instead and a zero gradient. d/d logit_GTVp of -log(1 - p_GTVp) = p_GTVp = 1; the other terms are
    saturated (softmax derivative ~ e^-80), so the logit's whole gradient is that 1.
    """
    value, grad = _grad(ODALoss(), _logits((0.0, 80.0, 0.0)), _target(0))
    terms = ODALoss().terms(_logits((0.0, 80.0, 0.0)), _target(0))
    assert terms["bce"][0].item() == pytest.approx(80 - LN2, rel=1e-6)
    assert terms["bce"][1].item() == pytest.approx(0.0, abs=1e-6)  # -log(1 - p_GTVn), p_GTVn = 1 / (e^80 + 2)
    assert grad[0, 1].item() == pytest.approx(1.0, rel=1e-4)
    assert torch.isfinite(value)


def test_gradient_points_the_right_way() -> None:
    """At a GTVp voxel, raising the GTVp logit lowers the loss; at a background voxel it raises it."""
    _, grad = _grad(ODALoss(), _logits(*TINY_LOGITS), _target(*TINY_LABELS))
    assert grad[0, 1, 0, 0, 0] < 0
    assert grad[0, 1, 0, 0, 1] > 0


def test_constructor_defaults_and_validation() -> None:
    loss = ODALoss()
    assert loss.params_gtvp == (0.5, 0.5, 1.33)
    assert loss.params_gtvn == (0.3, 0.7, 1.5)
    assert loss.eps == 1e-5
    assert loss.batch_dice is False
    with pytest.raises(ValueError):
        ODALoss(params_gtvp=(0.5, 0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ODALoss(eps=0.0)
    with pytest.raises(ValueError):
        ODALoss(ignore_label=2)


def test_build_loss_names() -> None:
    assert LOSS_NAMES == ("ce_dice", "oda")
    oda = build_loss("oda", batch_dice=True, params_gtvn=(0.2, 0.8, 2.0), eps=1e-3)
    assert isinstance(oda, ODALoss)
    assert oda.batch_dice is True
    assert oda.params_gtvn == (0.2, 0.8, 2.0)
    assert oda.eps == 1e-3
    with pytest.raises(ValueError, match=r"ce_dice, oda"):
        build_loss("focal", batch_dice=False)
    with pytest.raises(ValueError, match="no extra arguments"):
        build_loss("ce_dice", batch_dice=False, eps=1e-3)


def test_module_imports_and_builds_oda_without_nnunetv2() -> None:
    """nnunetv2 is imported only in the ``ce_dice`` branch: blocked, ``oda`` still builds and runs."""
    code = (
        "import sys; sys.modules['nnunetv2'] = None\n"
        "import torch\n"
        "from training.losses import build_loss\n"
        "loss = build_loss('oda', batch_dice=False)\n"
        "print(float(loss(torch.zeros(1, 3, 2, 2, 2), torch.ones(1, 1, 2, 2, 2))))\n"
        "try:\n"
        "    build_loss('ce_dice', batch_dice=False)\n"
        "except ImportError:\n"
        "    print('ce_dice needs nnunetv2')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    lines = result.stdout.split()
    assert math.isfinite(float(lines[0]))
    assert result.stdout.strip().endswith("ce_dice needs nnunetv2")


def test_under_nnunet_deep_supervision_wrapper() -> None:
    pytest.importorskip("nnunetv2", reason="nnU-Net's DeepSupervisionWrapper needs nnunetv2 (the training venv)")
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    torch.manual_seed(2)
    weights = np.array([1.0, 0.5])
    weights = weights / weights.sum()  # as nnUNetTrainer._build_loss normalises them
    loss = ODALoss()
    wrapped = DeepSupervisionWrapper(loss, weights)
    full = torch.randint(0, 3, (2, 1, 4, 6, 6)).float()
    targets = [full, full[:, :, ::2, ::2, ::2]]  # nearest-neighbour downsampling, as nnU-Net's DS transform
    outputs = [torch.randn(2, 3, 4, 6, 6, requires_grad=True), torch.randn(2, 3, 2, 3, 3, requires_grad=True)]
    value = wrapped(outputs, targets)
    expected = weights[0] * loss(outputs[0], targets[0]) + weights[1] * loss(outputs[1], targets[1])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore_label", [None, 3])
def test_ce_dice_is_nnunets_default_loss(batch_dice: bool, ignore_label: int | None) -> None:
    pytest.importorskip("nnunetv2", reason="the 'ce_dice' loss is nnU-Net's own DC_and_CE_loss")
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    built = build_loss("ce_dice", batch_dice=batch_dice, ignore_label=ignore_label)
    assert isinstance(built, DC_and_CE_loss)
    assert isinstance(built.dc, MemoryEfficientSoftDiceLoss)
    assert (built.dc.batch_dice, built.dc.do_bg, built.dc.smooth, built.dc.ddp) == (batch_dice, False, 1e-5, False)
    assert (built.weight_ce, built.weight_dice, built.ignore_label) == (1, 1, ignore_label)
    # nnUNetTrainer._build_loss, label (not region) branch, ddp off:
    direct = DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=ignore_label,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3 if ignore_label is None else 4, (2, 1, 4, 5, 6)).float()
    assert built(logits, target).item() == pytest.approx(direct(logits, target).item(), rel=1e-6)
    # and it is a CE + Dice: hand check of the CE part on the tiny case (CE over classes, mean over voxels)
    ce = -(math.log(0.5) + math.log(0.5)) / 2  # voxel 0 label GTVp p = 1/2; voxel 1 background p = 1/2
    assert built.ce(_logits(*TINY_LOGITS), _target(*TINY_LABELS)).item() == pytest.approx(ce, rel=1e-6)
