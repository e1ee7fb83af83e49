"""This CPU's matrix-product rate in fp32 and bf16 at SmolLM2's MLP shape: what
``stapo.cpu_precision=auto`` decides by (bf16 only where the CPU has native bf16 instructions).

Times ``(rows x 576) @ (576 x 1536)`` (SmolLM2-135M's MLP up-projection) in each dtype on this
process's threads, at 24 rows (the training rollout's decoding) and 512 (a micro-batch pass), for
at least ``--seconds`` each, and writes GFLOP/s with the date, the machine and its bf16 flags.
Without native bf16 instructions the bf16 products fall back to slow kernels: a run forced to
bf16 there (``stapo.cpu_precision=bf16``) is that much slower than fp32.

    python benchmarks/matrix_rate.py [--seconds 2]
        [--out benchmarks/results/matrix_rate_{amx_bf16,avx512_bf16,no_native_bf16}.json]
"""

import argparse
import datetime
import os
import time

from common import cpu_description, write_result

from stapo_verl.cpu.precision import NATIVE_BF16_FLAGS, cpu_flags, native_bf16

ROWS = (24, 512)
K, N = 576, 1536


def rate(dtype, rows: int, seconds: float) -> float:
    """GFLOP/s of ``(rows x K) @ (K x N)`` in ``dtype``, after one warm-up product."""
    import torch

    a, b = torch.randn(rows, K, dtype=dtype), torch.randn(K, N, dtype=dtype)
    a @ b
    products, started = 0, time.perf_counter()
    while products == 0 or time.perf_counter() - started < seconds:
        a @ b
        products += 1
    return 2 * rows * K * N * products / (time.perf_counter() - started) / 1e9


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--out", default=None, help="default benchmarks/results/matrix_rate_<bf16 flag or no_native_bf16>.json"
    )
    args = parser.parse_args()
    gflops = {
        name: {str(rows): round(rate(dtype, rows, args.seconds), 1) for rows in ROWS}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    flags = sorted(flag for flag in cpu_flags() if flag in NATIVE_BF16_FLAGS)
    record = {
        "what": f"GFLOP/s of (rows x {K}) @ ({K} x {N}) (SmolLM2-135M's MLP up-projection) per dtype and rows",
        "date": datetime.date.today().isoformat(),
        "device": f"{cpu_description()}, native bf16 flags: {', '.join(flags) or 'none'}",
        "native_bf16": native_bf16(),
        "gflops": gflops,
        "bf16_over_fp32": {rows: round(gflops["bf16"][rows] / gflops["fp32"][rows], 3) for rows in gflops["fp32"]},
    }
    name = f"matrix_rate_{flags[0] if flags else 'no_native_bf16'}.json"
    write_result(record, args.out or os.path.join(os.path.dirname(__file__), "results", name))


if __name__ == "__main__":
    main()
