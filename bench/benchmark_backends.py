"""Seconds per window of ONNX Runtime fp32 and OpenVINO fp32, in one process, on one STU-Net-S member.

One random (NOT trained; random weights cost what trained ones cost) full STU-Net-S member, patch 128^3,
exported to ONNX; one window of random input; each runtime on ``--threads`` threads, a warm-up call, then the
median of ``--repeats`` calls. Prints the CPU model and flags, the two figures and their ratio.

Usage::

    python -m bench.benchmark_backends [--threads 2] [--repeats 3]

Not a test (no thresholds); needs torch (for the export), onnxruntime and openvino.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.benchmark_ensemble import _cpu_flags, _cpu_model
from hecktor.core.manifest import load_manifest


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocation, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from hecktor.segment.onnx_backend import load_onnx
    from hecktor.segment.openvino_backend import load_openvino
    from hecktor.segment.torch_backend.onnx_export import export_manifest_to_onnx
    from training.make_random_weights import make_random_weights

    with tempfile.TemporaryDirectory() as tmp:
        make_random_weights(Path(tmp) / "torch", members=1)
        onnx_dir = export_manifest_to_onnx(Path(tmp) / "torch", Path(tmp) / "onnx").parent
        member = load_manifest(onnx_dir).ensemble.members[0]  # type: ignore[union-attr]
        path = onnx_dir / member.weights
        window = np.random.default_rng(0).standard_normal((1, 2, *member.patch_size), dtype=np.float32)
        ort = load_onnx(path, member.sha256, num_threads=args.threads, device="cpu")
        ort_s = _median_seconds(lambda: ort(window), args.repeats)
        ov = load_openvino(path, member.sha256, num_threads=args.threads, precision="fp32")
        ov_s = _median_seconds(lambda: ov(window), args.repeats)
    print(f"cpu: {_cpu_model()}")
    print(f"flags: {_cpu_flags()}")
    print(f"STU-Net-S, one {'x'.join(map(str, member.patch_size))} window, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"onnxruntime fp32: {ort_s:.2f} s/window")
    print(f"openvino fp32: {ov_s:.2f} s/window")
    print(f"openvino fp32 / onnxruntime fp32 = {ov_s / ort_s:.2f}x")


if __name__ == "__main__":
    main()
