"""`python -m hrm_bench.perf.scaling --nproc 1 2 4 8`: data-parallel HRM training throughput on one host.

For each N the launcher runs `torchrun --standalone --nproc-per-node N -m hrm_bench.perf.scaling worker`
(NCCL on GPUs with NVLink multicast kept off, gloo on CPU). Every run trains the same model from
the same init on the same global batches of B rows: rank r takes rows [r B/N, (r+1) B/N), so the
N-process run is the 1-process run with its batch split (`puzzle_hrm.train.train_step`: gradients
all-reduced, the sparse puzzle embedding's update all-gathered). The launcher checks exactly that:
the loss curve against N = 1, and every parameter -- the puzzle embedding included -- identical on
all ranks after the last step. Halting exploration is off so that per-rank random draws do not
blur the comparison; throughput does not depend on it (every step runs one segment for every row).

One row per N goes to results/scaling.csv (+ scaling.md): global training examples/s, model
TFLOP/s over all devices, MFU per device, peak memory of the busiest rank, warm-up, and scaling
efficiency = examples/s at N / (N x examples/s at 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hrm_bench import metrics, records
from hrm_bench.perf.throughput import SHAPES, random_batch, shape_config
from hrm_bench.profiles import HardwareProfile, detect_profile
from hrm_bench.run import REPO_ROOT
from puzzle_hrm.data.format import atomic_write_text
from puzzle_hrm.train import TrainConfig, init_state, reduce_train_metrics, synchronize, train_step

# NVLink multicast off in NCCL, PyTorch and NVSHMEM (the lent machines' rule, device/KINDS.md)
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SCALING_HEADER = """# Data-parallel scaling of HRM training (`python -m hrm_bench.perf.scaling`)

Random batches at the official shapes, one process per device (torchrun, NCCL; gloo on CPU), the
global batch split over the ranks. scaling_efficiency = examples/s at N / (N x examples/s at 1)
of the same run; peak_mem_gib = the busiest rank; mfu per device. CPU rows (profile cpu) only show
the tool and its checks at work: there the processes share the same cores (torchrun gives each of
N > 1 processes one thread), so their efficiency says nothing about GPUs.
"""


@dataclasses.dataclass
class WorkerResult:
    world_size: int
    train_examples_per_s: float
    warmup_s: float
    peak_mem_gib: float  # the busiest rank
    lm_losses: list[float]  # per step, per example of the global batch
    identical_across_ranks: bool  # every parameter (puzzle embedding included) after the last step


def identical_across_ranks(model: torch.nn.Module) -> bool:
    """Every rank holds rank 0's parameters and buffers, bit for bit (a collective)."""
    same = True
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        same &= torch.equal(reference, tensor)
    flag = torch.tensor(float(same), device=next(model.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def rank_slices(global_batches: list[dict[str, torch.Tensor]], rank: int, world_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    local = global_batches[0]["inputs"].shape[0] // world_size
    rows = slice(rank * local, (rank + 1) * local)
    return [{k: v[rows].to(device) for k, v in batch.items()} for batch in global_batches]


def train_and_measure(args: argparse.Namespace, device: torch.device, forward_dtype: str) -> WorkerResult:
    """Warm-up steps, then timed steps, on this rank's slices of the shared global batches."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if args.global_batch % world_size:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by {world_size} processes")
    global_cfg = dataclasses.replace(shape_config(args.shape, args.global_batch, forward_dtype, args.small), halt_exploration_prob=0.0)
    generator = torch.Generator().manual_seed(args.seed)  # the same global batches on every rank and every N
    batches = rank_slices([random_batch(global_cfg, torch.device("cpu"), generator) for _ in range(4)], rank, world_size, device)
    train_cfg = TrainConfig(global_batch_size=args.global_batch, lr_warmup_steps=0, seed=args.seed)
    state = init_state(train_cfg, dataclasses.replace(global_cfg, batch_size=args.global_batch // world_size), device, total_steps=10**9)
    forward = torch.compile(state.model) if args.path == "fast" else state.model
    sums = []

    def run(n: int) -> float:
        synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(n):
            sums.append(train_step(state, forward, batches[len(sums) % len(batches)], train_cfg, world_size))
        synchronize(device)
        dist.barrier()
        return time.perf_counter() - start

    with metrics.PeakMemory(device.type) as memory:
        warmup_s = run(args.warmup_steps)
        train_s = run(args.steps)
    peak = torch.tensor(memory.gib(), device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    losses = [reduce_train_metrics(s, args.global_batch, 1)["lm_loss"] for s in sums]  # collectives, after the clock
    return WorkerResult(world_size, args.steps * args.global_batch / train_s, warmup_s, float(peak), losses, identical_across_ranks(state.model))


def worker(args: argparse.Namespace) -> None:
    """One rank under torchrun; rank 0 writes the WorkerResult as JSON to --out."""
    profile = detect_profile(args.hardware)
    on_gpu = profile.device == "cuda"
    dist.init_process_group("nccl" if on_gpu else "gloo")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    try:
        result = train_and_measure(args, device, profile.forward_dtype)
        if dist.get_rank() == 0:
            atomic_write_text(Path(args.out), json.dumps(dataclasses.asdict(result)))
    finally:
        dist.barrier()  # no rank tears the group down while another still talks to it
        dist.destroy_process_group()


def worker_args(args: argparse.Namespace) -> list[str]:
    flags = ["--shape", args.shape, "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
             "--path", args.path, "--hardware", args.hardware, "--seed", str(args.seed)]  # fmt: skip
    return flags + (["--small"] if args.small else [])


def launch(n: int, args: argparse.Namespace, out: Path) -> WorkerResult:
    """torchrun with n processes on this host; its rank 0's result."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "hrm_bench.perf.scaling", "worker", *worker_args(args), "--out", str(out)]
    subprocess.run(cmd, env={**os.environ, **MULTICAST_OFF}, check=True)
    return WorkerResult(**json.loads(out.read_text()))


def max_loss_gap(result: WorkerResult, reference: WorkerResult) -> float:
    return max(abs(a - b) for a, b in zip(result.lm_losses, reference.lm_losses, strict=True))


def scaling_row(args: argparse.Namespace, profile: HardwareProfile, stamp: dict[str, str], result: WorkerResult, single: WorkerResult | None) -> dict[str, Any]:
    """One results/scaling.csv row; the profile and `stamp` (records.run_stamp) are taken once per run."""
    cfg = shape_config(args.shape, args.global_batch // result.world_size, profile.forward_dtype, args.small)
    tflops = metrics.model_tflops(metrics.hrm_flops_per_example(cfg, training=True), result.train_examples_per_s)
    efficiency = result.train_examples_per_s / (result.world_size * single.train_examples_per_s) if single else None
    return {
        **stamp,
        "device": profile.device_name,
        "profile": profile.name,
        "path": args.path,
        "shape": f"{args.shape} {cfg.seq_len}+{cfg.puzzle_emb_len}",
        "batch": args.global_batch,
        "train_examples_per_s": result.train_examples_per_s,
        "tflops": tflops,
        "mfu": metrics.mfu(tflops, profile.mfu_peak_tflops, result.world_size),
        "peak_mem_gib": result.peak_mem_gib,
        "warmup_s": result.warmup_s,
        "n_gpus": result.world_size,
        "scaling_efficiency": efficiency,
    }


def equivalence_notes(results: dict[int, WorkerResult]) -> str:
    """The last run's checks, for the Markdown header."""
    lines = []
    for n, result in results.items():
        gap = f"max |lm_loss - lm_loss(N=1)| over {len(result.lm_losses)} steps = {max_loss_gap(result, results[1]):.2e}" if 1 in results else "no N=1 run to compare"
        lines.append(f"- N={n}: {gap}; parameters identical on every rank: {'yes' if result.identical_across_ranks else 'NO'}")
    return "Last run's checks (same init and global batches as N=1):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[int, WorkerResult] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["launch", "worker"], default="launch")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2, 4, 8], help="processes (= GPUs) per run")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="sudoku")
    parser.add_argument("--global-batch", type=int, default=768, help="split over the processes (official Sudoku: 768)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--path", choices=["reference", "fast"], default="fast")
    parser.add_argument("--hardware", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a 2-layer, 128-wide HRM (CPU smoke runs)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--out", help="worker: where rank 0 writes its result")
    args = parser.parse_args(argv)
    if args.mode == "worker":
        worker(args)
        return None
    results: dict[int, WorkerResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nproc:
            results[n] = launch(n, args, Path(tmp) / f"n{n}.json")
            print(f"N={n}: {results[n].train_examples_per_s:.0f} examples/s, peak {results[n].peak_mem_gib:.2f} GiB per rank", flush=True)
    notes, stamp, profile = equivalence_notes(results), records.run_stamp("hrm_bench.perf.scaling", REPO_ROOT), detect_profile(args.hardware)
    for n, result in results.items():
        records.append_row(Path(args.results_dir) / "scaling.csv", scaling_row(args, profile, stamp, result, results.get(1)), records.SCALING_COLUMNS, f"{SCALING_HEADER}\n{notes}")
    print(notes)
    return results


if __name__ == "__main__":
    main()
