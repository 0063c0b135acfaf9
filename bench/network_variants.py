"""Per-window latency of STU-Net-S under the execution variants the ensemble could use.

Answers "only where measured to help" for autocast, channels-last-3d and ``torch.compile``:
each variant runs the same randomly initialised network on the same batch, and the script prints
milliseconds per batch and the ratio to plain fp32 eager, plus the one-off compile time (paid
once per member per process: a container serves one case, so 10 members pay it 10 times).

    python -m bench.network_variants [--device cuda] [--patch 128 128 128] [--batch 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hecktor.segment.torch_backend.networks import build_network


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(run: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    run()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _variant(network: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            if dtype is None:
                return network(batch)
            with torch.autocast(batch.device.type, dtype=dtype):
                return network(batch)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(f"torch {torch.__version__} on {name}; STU-Net-S, batch {args.batch} x 2 x {tuple(args.patch)}")

    torch.manual_seed(0)
    network = build_network("STUNet", {}).to(device).eval()
    batch = torch.randn(args.batch, 2, *args.patch, device=device)
    # CPU: fp32 only (bf16 autocast measured ~30x slower on the build machine's CPU, no AVX-512 BF16).
    half = torch.float16 if device.type == "cuda" else None
    label = "fp16 autocast" if half is not None else "fp32"
    results: dict[str, float] = {}
    results["fp32 eager"] = _time_ms(_variant(network, batch, None), device, args.repeats)
    if half is not None:
        results[label] = _time_ms(_variant(network, batch, half), device, args.repeats)
    cl_net = network.to(memory_format=torch.channels_last_3d)
    cl_batch = batch.contiguous(memory_format=torch.channels_last_3d)
    results[f"{label} + channels_last_3d"] = _time_ms(_variant(cl_net, cl_batch, half), device, args.repeats)
    network = network.to(memory_format=torch.contiguous_format)
    if not args.no_compile:
        start = time.perf_counter()
        compiled = torch.compile(network)
        _variant(compiled, batch, half)()
        _sync(device)
        print(f"torch.compile warm-up (paid once per member per process): {time.perf_counter() - start:.1f} s")
        results[f"{label} + torch.compile"] = _time_ms(_variant(compiled, batch, half), device, args.repeats)
    reference = results["fp32 eager"]
    for variant, ms in results.items():
        print(f"  {variant:<40}{ms:10.1f} ms/batch   x{reference / ms:5.2f} vs fp32 eager")


if __name__ == "__main__":
    main()
