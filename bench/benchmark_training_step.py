"""Benchmark: one nnU-Net training iteration of STU-Net-S (what ``python -m training train`` runs per step).

Builds the network the way :class:`training.nnunet_trainers.hecktor_trainer.HecktorTrainer` does (the product's
STU-Net-S with deep supervision), nnU-Net's CE + Dice loss with its deep-supervision weights (or the ODA loss),
SGD with nnU-Net's settings, and times forward + backward + step on random (batch, 2, *patch) inputs. Data
augmentation (nnU-Net's workers) is not included. Reference in the same process: the forward pass alone in
inference mode, so the ratio says what training costs over inference on this machine.

    .venv/bin/python bench/benchmark_training_step.py [--patch 128 128 128] [--batch 2] [--iterations 3]
        [--device cpu|cuda] [--amp] [--loss ce_dice|oda]

On CUDA, ``--amp`` runs float16 autocast with a GradScaler (nnU-Net's mixed precision). The figure quoted for
a fold is iterations x seconds per iteration: nnU-Net's schedule is 1000 epochs x 250 iterations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from hecktor.segment.torch_backend.networks import STUNET_S_DEFAULTS, build_network, count_parameters
from training.losses import build_loss

SCHEDULE_ITERATIONS = 1000 * 250


def _loss(name: str, levels: int) -> torch.nn.Module:
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    weights = np.array([1 / (2**i) for i in range(levels)])
    weights[-1] = 0
    return DeepSupervisionWrapper(build_loss(name, batch_dice=False), weights / weights.sum())


def _targets(labels: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [torch.nn.functional.interpolate(labels, size=o.shape[2:], mode="nearest") for o in outputs]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (CUDA)")
    parser.add_argument("--loss", choices=["ce_dice", "oda"], default="ce_dice")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = build_network("STUNet", {"deep_supervision": True}).to(device)
    loss_fn = _loss(args.loss, len(STUNET_S_DEFAULTS["dims"]) - 1)
    optimiser = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    image = torch.randn(args.batch, 2, *args.patch, device=device)
    labels = torch.randint(0, 3, (args.batch, 1, *args.patch), device=device).float()

    def step() -> float:
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=scaler is not None):
            outputs = network(image)
            loss = loss_fn(outputs, _targets(labels, outputs))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(optimiser)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimiser.step()
        _sync(device)
        return time.perf_counter() - start

    def forward() -> float:
        network.deep_supervision = False
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, enabled=scaler is not None):
            network(image)
        _sync(device)
        network.deep_supervision = True
        return time.perf_counter() - start

    step(), forward()  # warm-up (allocations, cuDNN autotuning)
    steps = [step() for _ in range(args.iterations)]
    forwards = [forward() for _ in range(args.iterations)]
    per_step, per_forward = statistics.median(steps), statistics.median(forwards)
    print(f"STU-Net-S ({count_parameters(network) / 1e6:.1f} M parameters), patch {tuple(args.patch)}, batch "
          f"{args.batch}, {args.device}{' AMP' if scaler else ' fp32'}, {args.loss}, threads {torch.get_num_threads()}")
    print(f"training iteration: {per_step:.2f} s (median of {args.iterations}; {1 / per_step:.2f} it/s)")
    print(f"reference, forward only (inference mode): {per_forward:.2f} s; training / forward = "
          f"{per_step / per_forward:.1f}x")
    hours = per_step * SCHEDULE_ITERATIONS / 3600
    print(f"projected fold (1000 epochs x 250 iterations, augmentation not included): {hours:.0f} h "
          f"({hours / 24:.1f} days)")


if __name__ == "__main__":
    main()
