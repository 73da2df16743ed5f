"""`python -m hrm_bench.perf`: training and evaluation throughput of the HRM at fixed shapes.

Random token batches (throughput does not depend on the data) through the real training step
(`puzzle_hrm.train.train_step`: ACT segment, stablemax + Q losses, backward, SignSGD + AdamW) and
the real evaluation rollout (`puzzle_hrm.evaluate.rollout`, halt_max_steps segments). Two paths in
one run: `reference` = eager PyTorch, `fast` = the same module under torch.compile. Rows go to
results/perf.csv (+ perf.md); the shapes are those of the official recipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch

from hrm_bench import metrics, records
from hrm_bench.perf.official_code import OfficialBench
from hrm_bench.profiles import HardwareProfile, detect_profile
from hrm_bench.run import REPO_ROOT
from puzzle_hrm.config import HRMConfig
from puzzle_hrm.evaluate import rollout
from puzzle_hrm.model import HRM
from puzzle_hrm.train import TrainConfig, compile_forward, init_state, synchronize, train_step

# seq_len, vocab_size, num_puzzle_identifiers of the official data sets
SHAPES = {"sudoku": (81, 11, 1), "maze": (900, 6, 1), "arc": (900, 12, 960_000)}
PERF_HEADER = """# Throughput of the HRM (`python -m hrm_bench.perf`)

Random batches at the official shapes; `reference` = eager, `fast` = torch.compile of the same
module. train = one ACT segment per step (forward, target-Q forward, one-step-gradient backward,
optimizer steps); eval = a full rollout of halt_max_steps segments. tflops/mfu: FLOP count of
hrm_bench/metrics.py over the device's dense bf16 peak.
"""


def shape_config(shape: str, batch_size: int, forward_dtype: str, small: bool = False) -> HRMConfig:
    """The official model at an official data shape; `small`: a 2-layer, 128-wide HRM for CPU smoke runs."""
    seq_len, vocab, identifiers = SHAPES[shape]
    cfg = HRMConfig(seq_len=seq_len, vocab_size=vocab, num_puzzle_identifiers=identifiers, batch_size=batch_size, forward_dtype=forward_dtype)
    if small:
        cfg = dataclasses.replace(cfg, hidden_size=128, puzzle_emb_ndim=128, H_layers=1, L_layers=1, num_puzzle_identifiers=min(identifiers, 1000))
    return cfg


def random_batch(cfg: HRMConfig, device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    shape = (cfg.batch_size, cfg.seq_len)
    return {
        "inputs": torch.randint(1, cfg.vocab_size, shape, generator=generator, dtype=torch.int32).to(device),
        "labels": torch.randint(1, cfg.vocab_size, shape, generator=generator, dtype=torch.int32).to(device),
        "puzzle_identifiers": torch.randint(0, cfg.num_puzzle_identifiers, (cfg.batch_size,), generator=generator, dtype=torch.int32).to(device),
    }


def fixed_batches(cfg: HRMConfig, device: torch.device) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [random_batch(cfg, device, generator) for _ in range(4)]


def timed(fn, n: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclasses.dataclass
class Bench:
    """A model, its training step and its evaluation rollout on fixed random batches."""

    model: HRM
    forward: Callable
    batches: list[dict[str, torch.Tensor]]
    train_step: Callable[[], None]

    def eval_step(self, i: int = 1) -> None:
        rollout(self.forward, self.batches[i % len(self.batches)])


@dataclasses.dataclass(frozen=True)
class Levers:
    """The speed knobs of one measurement; `config` names the ones away from their defaults."""

    compile_mode: str | None = None
    precision: str = "default"
    attn_backend: str | None = None  # None: the profile's choice
    compile_loss: bool = True

    @classmethod
    def parse(cls, spec: str) -> "Levers":
        """'default' or 'key=value,key=value' (e.g. 'compile_mode=reduce-overhead,precision=fp8')."""
        if spec == "default":
            return cls()
        values = dict(item.split("=", 1) for item in spec.split(","))
        if unknown := values.keys() - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"unknown levers {sorted(unknown)} in {spec!r}")
        if "compile_loss" in values:
            values["compile_loss"] = values["compile_loss"].lower() in ("1", "true", "yes")
        return cls(**values)

    @property
    def config(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != f.default) or "default"


def build_bench(cfg: HRMConfig, path: str, device: torch.device, levers: Levers = Levers()) -> Bench:
    """`path` = reference (eager) or fast (torch.compile of the whole ACT module)."""
    if levers.attn_backend:
        cfg = dataclasses.replace(cfg, attn_backend=levers.attn_backend)
    train_cfg = TrainConfig(global_batch_size=cfg.batch_size, lr_warmup_steps=0,  # the official optimizer settings
                            compile=path == "fast", compile_mode=levers.compile_mode, precision=levers.precision,
                            compile_loss=levers.compile_loss)
    state = init_state(train_cfg, cfg, device, total_steps=10**9)
    model = state.model
    forward = compile_forward(model, train_cfg)
    batches = fixed_batches(cfg, device)
    counter = iter(range(10**9))

    def step() -> None:
        train_step(state, forward, batches[next(counter) % len(batches)], train_cfg, world_size=1)

    return Bench(model, forward, batches, step)


def measure(cfg: HRMConfig, path: str, steps: int, eval_batches: int, device: torch.device, levers: Levers = Levers(),
            official_dir: str | None = None) -> dict:
    """Warm-up (compile) time, training examples/s, evaluation puzzles/s and peak memory.
    path "official": the official implementation at `official_dir` (hrm_bench.perf.official_code)."""
    torch._dynamo.reset()  # a fresh compile per measurement (no recompile limit reached across a sweep)
    if path == "official":
        bench = OfficialBench(official_dir, cfg, device, fixed_batches(cfg, device))
    else:
        bench = build_bench(cfg, path, device, levers)
    with metrics.PeakMemory(device.type) as memory:
        bench.model.train()
        warmup_s = timed(bench.train_step, 3, device)  # compile + autotune + allocator
        train_s = timed(bench.train_step, steps, device)
        bench.model.eval()
        timed(lambda: bench.eval_step(0), 1, device)  # eval-mode compile
        eval_s = timed(bench.eval_step, eval_batches, device)
    return {
        "warmup_s": warmup_s,
        "train_examples_per_s": steps * cfg.batch_size / train_s,
        "eval_puzzles_per_s": eval_batches * cfg.batch_size / eval_s,
        "peak_mem_gib": memory.gib(),
    }


def perf_row(profile: HardwareProfile, cfg: HRMConfig, shape: str, path: str, levers: Levers, result: dict) -> dict:
    tflops = metrics.model_tflops(metrics.hrm_flops_per_example(cfg, training=True), result["train_examples_per_s"])
    return {
        **records.run_stamp("hrm_bench.perf", REPO_ROOT),
        "device": profile.device_name,
        "profile": profile.name,
        "path": path,
        "config": levers.config,
        "shape": f"{shape} {cfg.seq_len}+{cfg.puzzle_emb_len}",
        "batch": cfg.batch_size,
        "tflops": tflops,
        "mfu": metrics.mfu(tflops, profile.mfu_peak_tflops),
        **result,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hrm_bench.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), nargs="+", default=["sudoku"])
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="default: the profile's batch size")
    parser.add_argument("--path", choices=["reference", "fast", "official"], nargs="+", default=["reference", "fast"])
    parser.add_argument("--official-dir", default=None, help="a checkout of sapientinc/HRM, for --path official")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=5)
    parser.add_argument("--hardware", default="auto")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode of the fast path (reduce-overhead = CUDA graphs, max-autotune-no-cudagraphs, ...)")
    parser.add_argument("--precision", default="default", help="default | fp8 | fp8_tensorwise (TrainConfig.precision)")
    parser.add_argument("--attn-backend", default=None, help="attention kernel (puzzle_hrm.layers.ATTN_BACKENDS); default: the profile's")
    parser.add_argument("--levers", nargs="+", default=None,
                        help="measure several lever sets one after another, each 'default' or 'key=value,...' (replaces the three flags above)")
    parser.add_argument("--small", action="store_true", help="a 2-layer, 128-wide HRM (CPU smoke runs)")
    args = parser.parse_args(argv)
    if "official" in args.path and not args.official_dir:
        parser.error("--path official needs --official-dir (a checkout of sapientinc/HRM)")
    profile = detect_profile(args.hardware)
    device = torch.device(profile.device)
    lever_sets = [Levers.parse(spec) for spec in args.levers] if args.levers else [Levers(args.compile_mode, args.precision, args.attn_backend)]
    for shape in args.shape:
        for batch in args.batch or [profile.batch_size]:
            cfg = shape_config(shape, batch, profile.forward_dtype, args.small)
            runs = [(path, levers) for path in args.path if path != "official" for levers in lever_sets]
            runs += [("official", Levers())] if "official" in args.path else []
            for path, levers in runs:
                result = measure(cfg, path, args.steps, args.eval_batches, device, levers, args.official_dir)
                row = perf_row(profile, cfg, shape, path, levers, result)
                records.append_row(f"{args.results_dir}/perf.csv", row, records.PERF_COLUMNS, PERF_HEADER)
                print(f"{shape} batch={batch} {path} [{levers.config}]: train {row['train_examples_per_s']:.0f} ex/s, eval {row['eval_puzzles_per_s']:.0f} puzzles/s, "
                      f"{row['tflops']:.1f} TFLOP/s, peak {row['peak_mem_gib']:.2f} GiB, warm-up {row['warmup_s']:.1f} s", flush=True)
