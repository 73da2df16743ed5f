"""`python -m hrm_bench.perf.hybrid_step`: seconds per training step of each hybrid variant at each
float32 matmul precision, with the step-1 loss beside it.

Why: the variants that run the frozen LLM every step (LoRA, the prefix, the `_mid` variants' top
layers) set the GPU budget of the hybrid suite, and "high" (TF32 tensor cores) may buy most of it
back. The loss of the same first step under each precision shows what the faster matmuls cost in
numerics. The suite's own model builder, data, optimizer and step function are used, so the timed
step is the one `hrm_bench.run suite=hybrid` runs (the feature cache of a cut is built once, at the
first precision, before any timing).

    python -m hrm_bench.perf.hybrid_step --variants lora hrm_prefix_centered --precisions highest high \\
        --batch-size 64 --model d_h=512 --output results/hybrid-step-h200.md
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from hrm_bench import records
from hrm_bench.perf.hybrid_speed import REPO_ROOT, time_steps
from hrm_bench.profiles import device_facts
from hrm_bench.suites.hybrid import BACKBONE_DTYPES, HRM_VARIANTS, MATMUL_PRECISIONS, VARIANTS, LLM_ONLY, build_trainable, float32_matmul_precision, hrm_config
from hybrid.backbone import Backbone, backbone_by_name
from hybrid.config import HybridConfig
from hybrid.tasks import Collator
from hybrid.train import HybridTrainConfig, TrainData, build_optimizer, train_step
from puzzle_hrm.data.format import atomic_write_text

TRAINED = tuple(v for v in VARIANTS if v not in LLM_ONLY)
HYBRID_FIELDS = {f.name for f in fields(HybridConfig)}


@dataclass
class StepTime:
    variant: str
    precision: str
    seconds: float  # median seconds per optimizer step
    first_loss: float  # lm_loss of the first step from the seeded initialisation
    params: int


def measure(variant: str, precision: str, backbone: Backbone, data: TrainData, model: dict[str, Any], train: HybridTrainConfig, steps: int) -> StepTime:
    """Under `precision`: build the variant from `train.seed`, take one step (its loss recorded), then time `steps` more on the same batch."""
    with float32_matmul_precision(precision):
        if variant in HRM_VARIANTS:
            data.cache_states(backbone, None, train.batch_size, layer=backbone.layer_at(hrm_config(model, variant).inject_depth))
        trainable = build_trainable(model, train.seed, variant, backbone, data)
        optimizer = build_optimizer(trainable, train)
        batch, correct_fn = data.batch(0, train.batch_size, trainable.uses_cached_states)
        step = lambda: train_step(trainable, optimizer, batch, correct_fn, train.grad_clip)  # noqa: E731
        first_loss = step()["lm_loss"]
        seconds = time_steps(step, steps, backbone.device, warmup=1)
    return StepTime(variant, precision, seconds, first_loss, sum(p.numel() for p in trainable.parameters()))


def report(times: list[StepTime], backbone_name: str, dtype: str, device: str, train: HybridTrainConfig, model: dict, steps: int) -> str:
    """The Markdown page: one row per variant and precision, the speed-up against each variant's first precision."""
    facts = device_facts(device)
    stamp = records.run_stamp("hrm_bench.perf.hybrid_step", REPO_ROOT)
    base = {}
    lines = ["| variant | matmul precision | s / step | train ex/s | vs first precision | step-1 lm_loss | trainable params |", "|---|---|---|---|---|---|---|"]
    for t in times:
        first = base.setdefault(t.variant, t)
        lines.append(f"| {t.variant} | {t.precision} | {t.seconds:.4f} | {train.batch_size / t.seconds:.1f} | {first.seconds / t.seconds:.2f}x | {t.first_loss:.6f} | {t.params:,} |")
    return f"""# Hybrid training step per variant and float32 matmul precision

- date: {stamp['date']}, commit {stamp['commit']}
- command: `{stamp['command']}`
- device: {facts['device_name']} ({facts['device']}), torch {facts['torch']}
- backbone: {backbone_name} ({dtype}); tasks {', '.join(train.tasks)}; batch {train.batch_size}; controller {model}
- each row: the suite's model from seed {train.seed}, one step (its loss shown), 1 warm-up step, then the median of {steps} timed steps on the same batch

{chr(10).join(lines)}
"""


def model_fields(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as HybridConfig fields, each value a Python literal (512, 0.5, True, 'grb')."""
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in HYBRID_FIELDS:
            raise ValueError(f"--model {pair!r}: expected KEY=VALUE with KEY one of {sorted(HYBRID_FIELDS)}")
        fields[key] = ast.literal_eval(value)
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2", help="smollm2 | tiny | a hub id or local path")
    parser.add_argument("--backbone-dtype", default="float32", choices=sorted(BACKBONE_DTYPES))
    parser.add_argument("--variants", nargs="+", default=["lora", "hrm_prefix_centered", "hrm_grb_mid", "hrm_grb"], choices=TRAINED)
    parser.add_argument("--precisions", nargs="+", default=["highest", "high"], choices=MATMUL_PRECISIONS)
    parser.add_argument("--tasks", nargs="+", default=["addition", "basic_arithmetic", "chain_sum"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", nargs="+", default=["d_h=512"], metavar="KEY=VALUE", help="HybridConfig fields shared by the HRM variants (the suite's model:)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (the GPU if there is one)")
    parser.add_argument("--output", default=None, help="also write the Markdown page here")
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = backbone_by_name(args.backbone, BACKBONE_DTYPES[args.backbone_dtype], device=device)
    train = HybridTrainConfig(tasks=tuple(args.tasks), train_n=args.batch_size, eval_n=len(args.tasks), batch_size=args.batch_size, seed=args.seed, progress=False)
    data = TrainData.build(train, Collator(backbone.tokenizer, backbone.max_positions))
    model = model_fields(args.model)
    times = [measure(v, p, backbone, data, model, train, args.steps) for v in args.variants for p in args.precisions]
    text = report(times, args.backbone, args.backbone_dtype, device, train, model, args.steps)
    if args.output:
        atomic_write_text(Path(args.output), text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
