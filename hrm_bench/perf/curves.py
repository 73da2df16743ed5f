"""`python -m hrm_bench.perf.curves`: does the fast path compute the same training as the reference?

Trains the same HRM from the same init on the same batches (seeded loader) three ways for N steps:
`reference` (eager, bf16 on GPU), `fast` (torch.compile, bf16) and `reference-fp32` (eager,
float32). The fp32 run is the yardstick for "bf16 noise": the fast path passes when its deviation
from the bf16 reference stays within the deviation of the bf16 reference itself from float32
(smoothed over a window, as single steps of a stochastic ACT batch are noisy). The exploration
coin flips of the ACT halting rule come from the same RNG stream on both paths
(`torch._inductor.config.fallback_random`), so any difference is arithmetic.
Writes results/curves.csv and results/curves.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

from hrm_bench import records
from hrm_bench.datasets import ensure_dataset
from hrm_bench.profiles import detect_profile
from puzzle_hrm.config import HRMConfig
from puzzle_hrm.data.format import atomic_write_text
from puzzle_hrm.data.loader import PuzzleLoader
from puzzle_hrm.train import TrainConfig, build_state, compile_forward, train_step

PATHS = {"reference": (False, None), "fast": (True, None), "reference-fp32": (False, "float32")}


def loss_curve(cfg: TrainConfig, arch: HRMConfig, steps: int, device: torch.device) -> list[float]:
    """Per-step summed LM loss / global batch (the trainer's train/lm_loss) for `steps` steps."""
    loader = PuzzleLoader(cfg.data_path, "train", cfg.global_batch_size, mode="train", seed=cfg.seed, epochs_per_iter=cfg.eval_interval)
    state = build_state(cfg, arch, loader.metadata, device)
    forward = compile_forward(state.model, cfg)
    state.model.train()
    losses = []
    batches = iter(loader)
    while len(losses) < steps:
        _, batch, _ = next(batches)
        out = train_step(state, forward, {k: v.to(device) for k, v in batch.items()}, cfg, world_size=1)
        losses.append(out["lm_loss"])
    return [float(x) / cfg.global_batch_size for x in torch.stack(losses).cpu()]


def compare(curves: pd.DataFrame, window: int) -> dict[str, float]:
    """Mean |reference - fp32| and, for every other curve (fast, fast-fp8, ...), mean and max
    |curve - reference| of the window-smoothed curves."""
    smooth = curves.rolling(window, min_periods=1).mean()
    summary = {"reference_vs_fp32": float((smooth["reference"] - smooth["reference-fp32"]).abs().mean())}
    for name in curves.columns.drop(list(PATHS.keys() - {"fast"})):
        gap = (smooth[name] - smooth["reference"]).abs()
        summary[f"{name}_vs_reference"] = float(gap.mean())
        summary[f"max_{name}_vs_reference"] = float(gap.max())
    return summary


def plot(curves: pd.DataFrame, path: Path, title: str) -> None:
    fig, ax = records.figure()
    for name in curves.columns:
        ax.plot(curves.index, curves[name], label=name, linewidth=1)
    ax.set(xlabel="step", ylabel="train lm_loss", title=title)
    ax.legend()
    records.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--data-dir", default="datasets/sudoku-tdoku-hard-1k")
    parser.add_argument("--hardware", default="auto")
    parser.add_argument("--small", action="store_true", help="a 1-layer, 64-wide HRM (CPU smoke runs)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of the fast paths (reduce-overhead = CUDA graphs)")
    parser.add_argument("--precision", nargs="*", default=[], help="also train fast paths at these precisions (fp8, fp8_tensorwise)")
    args = parser.parse_args(argv)
    torch._inductor.config.fallback_random = True  # same RNG stream for eager and compiled
    profile = detect_profile(args.hardware)
    device = torch.device(profile.device)
    data = ensure_dataset({"builder": "sudoku", "source": "datasets/sources/sudoku-tdoku-hard", "output_dir": args.data_dir, "subsample_size": 1000})
    arch = HRMConfig(forward_dtype=profile.forward_dtype)
    if args.small:
        arch = dataclasses.replace(arch, hidden_size=64, num_heads=4, H_layers=1, L_layers=1, puzzle_emb_ndim=64, halt_max_steps=2)
    base = TrainConfig(data_path=str(data), global_batch_size=args.batch, lr=1e-4, lr_warmup_steps=50, total_steps=args.steps, eval_interval=100,
                       device=profile.device, compile_mode=args.compile_mode)
    runs = {name: (dataclasses.replace(base, compile=compiled), dataclasses.replace(arch, forward_dtype=dtype) if dtype else arch)
            for name, (compiled, dtype) in PATHS.items()}
    runs |= {f"fast-{p}": (dataclasses.replace(base, compile=True, precision=p), arch) for p in args.precision}
    curves = {}
    for name, (cfg, run_arch) in runs.items():
        curves[name] = loss_curve(cfg, run_arch, args.steps, device)
        print(f"{name}: first {curves[name][0]:.4f} last {curves[name][-1]:.4f}", flush=True)
    table = pd.DataFrame(curves)
    table.index.name = "step"
    summary = compare(table, args.window)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "curves.csv", table.to_csv())
    stamp = records.run_stamp("hrm_bench.perf.curves", Path(__file__).resolve().parents[2])
    meta = {**stamp, "device": profile.device_name, "batch": args.batch, "steps": args.steps, "window": args.window,
            "compile_mode": args.compile_mode, **summary}
    atomic_write_text(results / "curves.json", json.dumps(meta, indent=1))
    plot(table, results / "curves.png", f"{profile.device_name}, batch {args.batch}")
    print(json.dumps(meta, indent=1))
    noise = summary["reference_vs_fp32"]
    for name in runs.keys() - {"reference", "reference-fp32"}:
        gap = summary[f"{name}_vs_reference"]
        print(f"{'PASS' if gap <= noise else 'FAIL'}: {name} vs reference {gap:.2e} <= bf16 noise (reference vs fp32) {noise:.2e}")


if __name__ == "__main__":
    main()
