"""`python -m hrm_bench.perf.profile_step`: where the GPU time of one HRM training step goes.

Two numbers before any optimisation (the device library's METHOD.md):
1. The GEMM floor: every matmul of one training step timed alone at its real shape (bf16, CUDA
   events, median of repeats) and summed. No fusion of the elementwise work can make a step
   faster than this without changing the maths.
2. The kernel breakdown of the real step (torch.profiler over a few steps of the chosen path):
   GPU time by kernel category and the GPU-idle share of the wall time.
The gap between 1 and the measured step time is what optimisation can win.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

from hrm_bench.perf.throughput import SHAPES, Levers, build_bench
from hrm_bench.profiles import detect_profile
from puzzle_hrm.config import HRMConfig
from puzzle_hrm.train import synchronize


def median_ms(fn, repeats: int = 20) -> float:
    """Median time of fn in ms, by CUDA events around each call, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def step_gemms(cfg: HRMConfig) -> list[tuple[str, int, int, int, int]]:
    """(name, M, K, N, count) of every matmul in one training step (forward, target-Q forward,
    one-step-gradient backward = dX and dW per forward matmul of the last L and H pass)."""
    m, d, i = cfg.batch_size * cfg.total_seq_len, cfg.hidden_size, cfg.intermediate_size
    blocks_per_forward = cfg.H_cycles * cfg.L_cycles * cfg.L_layers + cfg.H_cycles * cfg.H_layers
    forwards = 2 if cfg.halt_max_steps > 1 else 1
    backward_blocks = cfg.L_layers + cfg.H_layers
    per_block = [("qkv_proj", d, 3 * d), ("o_proj", d, d), ("gate_up_proj", d, 2 * i), ("down_proj", i, d)]
    gemms = []
    for name, k, n in per_block:
        gemms.append((f"{name} fwd", m, k, n, forwards * blocks_per_forward))
        gemms.append((f"{name} bwd dX", m, n, k, backward_blocks))
        gemms.append((f"{name} bwd dW", n, m, k, backward_blocks))
    return gemms


def gemm_floor(cfg: HRMConfig, device: torch.device) -> list[dict]:
    rows = []
    for name, m, k, n, count in step_gemms(cfg):
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        ms = median_ms(lambda: a @ b)
        rows.append({"gemm": name, "M": m, "K": k, "N": n, "count": count, "ms": ms, "tflops": 2 * m * k * n / ms / 1e9, "total_ms": ms * count})
    return rows


def category(kernel: str) -> str:
    name = kernel.lower()
    if name.startswith("triton"):
        return "triton (fused elementwise/norm)"
    if any(tag in name for tag in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")):
        return "gemm"
    if any(tag in name for tag in ("flash", "fmha", "attention", "cudnn")):
        return "attention"
    if "adam" in name or "foreach" in name:
        return "optimizer"
    return "other"


def kernel_breakdown(step, n_steps: int, device: torch.device) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """GPU ms per step by category, the kernels by GPU ms per step, and wall ms per step."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / n_steps
    totals: dict[str, float] = collections.defaultdict(float)
    kernels = []
    for event in prof.key_averages():
        if event.device_time_total > 0 and event.device_type.name == "CUDA":
            ms = event.device_time_total / 1e3 / n_steps
            totals[category(event.key)] += ms
            kernels.append((event.key, ms))
    return dict(totals), sorted(kernels, key=lambda kv: -kv[1]), wall_ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="sudoku")
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--path", choices=["reference", "fast"], nargs="+", default=["fast"])
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--precision", default="default", help="default | fp8 | fp8_tensorwise")
    parser.add_argument("--attn-backend", default=None, help="attention kernel (puzzle_hrm.layers.ATTN_BACKENDS)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=20, help="list this many kernels by GPU time")
    args = parser.parse_args(argv)
    profile = detect_profile("auto")
    if profile.device != "cuda":
        raise SystemExit("profile_step needs a CUDA device")
    device = torch.device("cuda")
    seq_len, vocab, identifiers = SHAPES[args.shape]
    cfg = HRMConfig(seq_len=seq_len, vocab_size=vocab, num_puzzle_identifiers=identifiers, batch_size=args.batch, forward_dtype="bfloat16")
    floor = gemm_floor(cfg, device)
    print(f"{'gemm':<20} {'M':>7} {'K':>6} {'N':>6} {'count':>5} {'ms':>7} {'TFLOP/s':>8} {'total ms':>9}")
    for r in floor:
        print(f"{r['gemm']:<20} {r['M']:>7} {r['K']:>6} {r['N']:>6} {r['count']:>5} {r['ms']:>7.3f} {r['tflops']:>8.1f} {r['total_ms']:>9.2f}")
    floor_ms = sum(r["total_ms"] for r in floor)
    print(f"GEMM floor of one training step: {floor_ms:.2f} ms = {cfg.batch_size / floor_ms * 1e3:.0f} examples/s at most")
    for path in args.path:
        bench = build_bench(cfg, path, device, Levers(args.compile_mode, args.precision, args.attn_backend))
        bench.model.train()
        start = time.perf_counter()
        for _ in range(3):
            bench.train_step()
        synchronize(device)
        print(f"[{path}] warm-up (3 steps incl. compile) {time.perf_counter() - start:.1f} s", flush=True)
        totals, kernels, wall_ms = kernel_breakdown(bench.train_step, args.steps, device)
        busy = sum(totals.values())
        print(f"[{path}] wall {wall_ms:.2f} ms/step ({cfg.batch_size / wall_ms * 1e3:.0f} ex/s), GPU busy {busy:.2f} ms, idle {wall_ms - busy:.2f} ms")
        for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<34} {ms:8.2f} ms  {100 * ms / wall_ms:5.1f} %")
        for name, ms in kernels[: args.top]:
            print(f"    {ms:7.2f} ms  {name[:110]}")


if __name__ == "__main__":
    main()
