"""Segmentation losses that the nnU-Net trainer subclasses select by name (:func:`build_loss`).

Two losses, both called the way nnU-Net 2.8's ``nnUNetTrainer.train_step`` calls its loss,
``loss(net_output, target)``:

* ``net_output``: logits ``(B, 3, z, y, x)``, channels background / GTVp (label 1) / GTVn (label 2). Under CUDA
  autocast they may be float16/bfloat16; the ODA loss computes in float32.
* ``target``: the label map ``(B, 1, z, y, x)`` (``(B, z, y, x)`` is accepted too) with values {0, 1, 2}, as nnU-Net's
  data loader delivers it (a float or integer tensor; nnU-Net's own ``DC_and_CE_loss`` casts it with ``.long()``). With
  an ``ignore`` label in ``dataset.json`` (HECKTOR has none) nnU-Net passes that label's value through unchanged in
  the map; pass it as ``ignore_label`` and those voxels drop out of every sum.

With deep supervision nnU-Net wraps the loss in ``DeepSupervisionWrapper``, which calls it once per scale with
``(net_output[i], target[i])``; both losses here are plain per-scale modules, so the trainer wraps them exactly as
``nnUNetTrainer._build_loss`` wraps ``DC_and_CE_loss``.

Names (:data:`LOSS_NAMES`):

``"ce_dice"``
    nnU-Net's own ``DC_and_CE_loss`` configured as ``nnUNetTrainer._build_loss`` configures it for label (not region)
    training: memory-efficient soft Dice over the foreground classes (``do_bg=False``), ``batch_dice`` from the plans,
    ``smooth=1e-5``, cross-entropy weight 1 and Dice weight 1. nnunetv2 is imported only when this is built.

``"oda"``
    :class:`ODALoss`, the Overlap-Detection-Aware loss of seed paper 001 (equations (1)-(3)), torch only.

This module imports only torch, so it is importable (and its ODA loss testable) without nnU-Net.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LOSS_NAMES", "ODALoss", "build_loss"]

LOSS_NAMES: tuple[str, ...] = ("ce_dice", "oda")
"""The names :func:`build_loss` accepts."""

GTVP_LABEL = 1
GTVN_LABEL = 2
NUM_CLASSES = 3  # background, GTVp, GTVn


class ODALoss(nn.Module):
    r"""Overlap-Detection-Aware loss (seed paper 001, equations (1)-(3)).

    For each foreground class :math:`c \in \{\text{GTVp}, \text{GTVn}\}` with binary target :math:`y_c` and predicted
    probability :math:`\hat y_c`:

    .. math::

        L = \sum_c \Big[ \mathrm{Dice}(y_c, \hat y_c)
                         + \big(1 - \mathrm{TI}(y_c, \hat y_c; \alpha_c, \beta_c)\big)^{\gamma_c}
                         + \mathrm{BCE}(y_c, \hat y_c) + \mathrm{Dice}(1 - y_c, 1 - \hat y_c) \Big]

    with :math:`\mathrm{Dice}(y, \hat y) = 1 - (2\langle y, \hat y\rangle + \varepsilon) / (\|y\|_1 + \|\hat y\|_1 +
    \varepsilon)`, :math:`\mathrm{TI} = (TP + \varepsilon) / (TP + \alpha FP + \beta FN + \varepsilon)`,
    :math:`TP = \langle y, \hat y\rangle`, :math:`FP = \langle 1 - y, \hat y\rangle`, :math:`FN = \langle y, 1 - \hat
    y\rangle`. The last two terms are the paper's stabiliser :math:`L_\text{stab}` (its equation (3)).

    Choices the paper leaves open, made here:

    * **Probabilities.** :math:`\hat y_c` is channel ``c`` of ``softmax(net_output, dim=1)`` over the three classes
      (background, GTVp, GTVn), the same softmax the product applies at inference (``hecktor.segment``), so the two
      foreground probabilities never sum above 1. The BCE term is computed from ``log_softmax``: :math:`\log \hat y_c`
      is the class's log-softmax and :math:`\log(1 - \hat y_c)` is the ``logsumexp`` of the other two classes'
      log-softmax, so it stays finite (and its gradient exact) for arbitrarily large logits; no clamped ``log``.
    * **Sums.** :math:`\langle\cdot,\cdot\rangle` and :math:`\|\cdot\|_1` run over the voxels of each sample, and the
      per-sample Dice, focal-Tversky and complement-Dice terms are averaged over the batch (``batch_dice=False``), or
      run over every voxel of the whole batch at once (``batch_dice=True``, nnU-Net's "batch dice"). Under DDP the
      batch is the local (per-process) batch: nothing is gathered across processes.
    * **BCE** is the mean over all (non-ignored) voxels of the batch, per class; it does not depend on
      ``batch_dice`` (for equal-sized samples the batch mean of per-sample means is the same number).
    * **ε** defaults to 1e-5, nnU-Net's Dice ``smooth``. It enters numerator and denominator, so an empty target with
      an empty prediction scores Dice loss 0 and TI 1, but with per-sample sums an empty target scores a Dice loss
      near 1 as soon as the prediction carries more than a few ε of mass: that is the behaviour the paper's
      stabiliser (BCE and background-side Dice) and ``batch_dice`` are there to soften.
    * **Focal exponent** is applied as written in the paper, :math:`(1 - \mathrm{TI})^{\gamma}` with
      :math:`\gamma > 1` (Abraham & Khan's focal Tversky loss writes :math:`1/\gamma`). ``1 - TI`` is clamped at 0
      before the power so float rounding cannot produce a negative base (NaN).
    * Each class contributes with weight 1; the loss is the plain sum over the two classes, no normalisation.

    Args:
        params_gtvp: :math:`(\alpha, \beta, \gamma)` for GTVp; the paper's near-symmetric (0.5, 0.5, 1.33).
        params_gtvn: :math:`(\alpha, \beta, \gamma)` for GTVn; the paper's recall-biased (0.3, 0.7, 1.5)
            (:math:`\beta` weights false negatives).
        batch_dice: sums over the whole batch (True) or per sample, then averaged (False).
        eps: the paper's ε, in Dice, complement Dice and TI.
        ignore_label: a target value whose voxels are left out of every sum and of the BCE mean, or None.
    """

    def __init__(
        self,
        params_gtvp: tuple[float, float, float] = (0.5, 0.5, 1.33),
        params_gtvn: tuple[float, float, float] = (0.3, 0.7, 1.5),
        *,
        batch_dice: bool = False,
        eps: float = 1e-5,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        for name, params in (("params_gtvp", params_gtvp), ("params_gtvn", params_gtvn)):
            if len(params) != 3:
                raise ValueError(f"{name} must be (alpha, beta, gamma), got {params!r}")
            alpha, beta, gamma = params
            if alpha < 0 or beta < 0 or gamma <= 0:
                raise ValueError(f"{name} needs alpha >= 0, beta >= 0, gamma > 0, got {params!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if ignore_label is not None and ignore_label in (0, GTVP_LABEL, GTVN_LABEL):
            raise ValueError(f"ignore_label {ignore_label} collides with a segmentation label")
        self.params_gtvp = tuple(float(v) for v in params_gtvp)
        self.params_gtvn = tuple(float(v) for v in params_gtvn)
        self.batch_dice = batch_dice
        self.eps = float(eps)
        self.ignore_label = ignore_label
        # (2,) buffers, order GTVp, GTVn; follow .to(device) with the module.
        self.register_buffer("alpha", torch.tensor([self.params_gtvp[0], self.params_gtvn[0]]), persistent=False)
        self.register_buffer("beta", torch.tensor([self.params_gtvp[1], self.params_gtvn[1]]), persistent=False)
        self.register_buffer("gamma", torch.tensor([self.params_gtvp[2], self.params_gtvn[2]]), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"params_gtvp={self.params_gtvp}, params_gtvn={self.params_gtvn}, batch_dice={self.batch_dice}, "
            f"eps={self.eps}, ignore_label={self.ignore_label}"
        )

    def terms(self, net_output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss's parts, each of shape ``(2,)`` (GTVp, GTVn), float32, before the sum over classes.

        Args:
            net_output: logits ``(B, 3, *spatial)``.
            target: label map ``(B, 1, *spatial)`` or ``(B, *spatial)``, values {0, 1, 2} (or ``ignore_label``).

        Returns:
            ``dice`` (Dice loss), ``tversky_index`` (TI itself), ``focal_tversky`` (``(1 - TI) ** gamma``), ``bce``,
            ``dice_complement`` (Dice loss of ``1 - y`` against ``1 - p``), each ``(2,)``. Per-sample values are
            already averaged over the batch when ``batch_dice`` is False (``tversky_index`` likewise).
        """
        if net_output.ndim < 3 or net_output.shape[1] != NUM_CLASSES:
            raise ValueError(f"net_output must be (B, {NUM_CLASSES}, *spatial) logits, got {tuple(net_output.shape)}")
        if target.ndim == net_output.ndim:
            if target.shape[1] != 1:
                raise ValueError(f"target must be a label map (B, 1, *spatial), got {tuple(target.shape)}")
            target = target[:, 0]
        if target.shape != net_output.shape[:1] + net_output.shape[2:]:
            raise ValueError(
                f"target {tuple(target.shape)} does not match net_output {tuple(net_output.shape)} (B, 1, *spatial)"
            )

        logits = net_output.float()
        log_p = torch.log_softmax(logits, dim=1)  # (B, 3, *S)
        # log(1 - p_c) = log(sum of the other two classes' probabilities), exact for any logits.
        log_not_p = torch.stack(
            (torch.logaddexp(log_p[:, 0], log_p[:, 2]), torch.logaddexp(log_p[:, 0], log_p[:, 1])), dim=1
        )  # (B, 2, *S)
        log_p_fg = log_p[:, 1:]  # (B, 2, *S)
        p = log_p_fg.exp()  # (B, 2, *S)

        with torch.no_grad():
            y = torch.stack((target == GTVP_LABEL, target == GTVN_LABEL), dim=1).to(torch.float32)  # (B, 2, *S)
            # (B, 1, *S) mask of the voxels that count, or None when every voxel counts
            valid = None if self.ignore_label is None else (target != self.ignore_label).to(torch.float32).unsqueeze(1)

        # BCE = -[y log p + (1 - y) log(1 - p)], mean over (non-ignored) voxels of the batch.
        bce_voxel = -(y * log_p_fg + (1.0 - y) * log_not_p)  # (B, 2, *S)
        reduce_all = (0, *range(2, bce_voxel.ndim))
        if valid is None:
            bce = bce_voxel.mean(dim=reduce_all)
        else:
            n_valid = valid.sum(dim=reduce_all).clamp_min(1.0)
            bce = (bce_voxel * valid).sum(dim=reduce_all) / n_valid

        p_m = p if valid is None else p * valid
        y_c = 1.0 - y if valid is None else (1.0 - y) * valid
        p_c = 1.0 - p if valid is None else (1.0 - p) * valid

        axes = reduce_all if self.batch_dice else tuple(range(2, p.ndim))
        tp = (y * p_m).sum(dim=axes)  # (2,) or (B, 2)
        sum_y = y.sum(dim=axes) if valid is None else (y * valid).sum(dim=axes)
        sum_p = p_m.sum(dim=axes)
        fp = sum_p - tp  # <1 - y, p>, y binary
        fn = sum_y - tp  # <y, 1 - p>
        tp_c = (y_c * p_c).sum(dim=axes)
        sum_y_c = y_c.sum(dim=axes)
        sum_p_c = p_c.sum(dim=axes)

        eps = self.eps
        dice = 1.0 - (2.0 * tp + eps) / (sum_y + sum_p + eps)
        dice_complement = 1.0 - (2.0 * tp_c + eps) / (sum_y_c + sum_p_c + eps)
        ti = (tp + eps) / (tp + self.alpha * fp + self.beta * fn + eps)
        focal_tversky = (1.0 - ti).clamp_min(0.0) ** self.gamma

        if not self.batch_dice:
            dice, dice_complement, ti, focal_tversky = (
                t.mean(dim=0) for t in (dice, dice_complement, ti, focal_tversky)
            )
        return {
            "dice": dice,
            "tversky_index": ti,
            "focal_tversky": focal_tversky,
            "bce": bce,
            "dice_complement": dice_complement,
        }

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ODA loss, a float32 scalar.

        Args:
            net_output: logits ``(B, 3, *spatial)`` (background, GTVp, GTVn).
            target: label map ``(B, 1, *spatial)`` or ``(B, *spatial)``, values {0, 1, 2} (or ``ignore_label``).
        """
        t = self.terms(net_output, target)
        return (t["dice"] + t["focal_tversky"] + t["bce"] + t["dice_complement"]).sum()


def build_loss(
    name: str,
    *,
    batch_dice: bool,
    ddp: bool = False,
    ignore_label: int | None = None,
    **oda_kwargs: Any,
) -> nn.Module:
    """The segmentation loss called ``name`` (one of :data:`LOSS_NAMES`), not yet wrapped for deep supervision.

    The returned module takes ``(net_output, target)``: logits ``(B, 3, *spatial)`` and the label map
    ``(B, 1, *spatial)``, and returns a scalar. Wrap it in nnU-Net's ``DeepSupervisionWrapper`` as
    ``nnUNetTrainer._build_loss`` does, e.g. in a trainer subclass::

        loss = build_loss("oda", batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                          ignore_label=self.label_manager.ignore_label)
        # then the weights / DeepSupervisionWrapper code of nnUNetTrainer._build_loss

    Args:
        name: ``"ce_dice"`` or ``"oda"``.
        batch_dice: the plans' ``batch_dice`` (``configuration_manager.batch_dice``).
        ddp: whether training runs under DDP; ``"ce_dice"`` then gathers its batch-Dice sums across processes (as
            nnU-Net does). ``"oda"`` never gathers: its batch sums are per process.
        ignore_label: the label manager's ignore label, or None (HECKTOR has none).
        **oda_kwargs: further :class:`ODALoss` arguments (``params_gtvp``, ``params_gtvn``, ``eps``); ``"oda"`` only.

    Raises:
        ValueError: an unknown name (the message lists :data:`LOSS_NAMES`), or ``oda_kwargs`` with ``"ce_dice"``.
    """
    if name == "ce_dice":
        if oda_kwargs:
            raise ValueError(f"'ce_dice' takes no extra arguments, got {sorted(oda_kwargs)}")
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        return DC_and_CE_loss(
            {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp},
            {},
            weight_ce=1,
            weight_dice=1,
            ignore_label=ignore_label,
            dice_class=MemoryEfficientSoftDiceLoss,
        )
    if name == "oda":
        return ODALoss(batch_dice=batch_dice, ignore_label=ignore_label, **oda_kwargs)
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
