"""`python -m hrm_bench.perf.hybrid_speed`: the hybrid's two speed levers, measured.

(a) Training step from cached LLM states vs the same step that first runs the frozen LLM over the
    batch (same model, same batch, same optimizer step): the injector acts after the LLM's last
    layer, so the states never change and the LLM need not run while the controller trains.
(b) KV-cache decoding vs recomputing the whole context, for `new_tokens` new tokens
    (hybrid.generate.benchmark_decode).
Writes results/hybrid-speed.md with the device, versions, command, date and machine load.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from hrm_bench import records
from hrm_bench.profiles import device_facts
from hybrid.backbone import Backbone, backbone_by_name
from hybrid.config import HybridConfig
from hybrid.features import FeatureBatch
from hybrid.generate import benchmark_decode
from hybrid.tasks import Collator
from hybrid.train import CorrectFn, HybridTrainConfig, TrainData, build_optimizer, train_step
from hybrid.trainable import HybridTrainable
from puzzle_hrm.data.format import atomic_write_text
from puzzle_hrm.train import synchronize

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StepTimes:
    cached_s: float  # seconds per training step from the feature cache
    llm_every_step_s: float  # seconds per training step that first runs the frozen LLM
    batch_size: int
    tokens: int  # attended tokens in the batch

    @property
    def speedup(self) -> float:
        return self.llm_every_step_s / self.cached_s


def time_steps(step, steps: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of `steps` calls of step() after `warmup` untimed ones (median: robust to a loaded machine)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@dataclass
class CachedStep:
    """A seeded HybridTrainable, the training loop's optimizer and one fixed batch of cached states."""

    model: HybridTrainable
    optimizer: torch.optim.Optimizer
    data: TrainData
    batch: FeatureBatch
    correct_fn: CorrectFn
    grad_clip: float

    def run(self, batch: FeatureBatch | None = None) -> None:
        """One training step on `batch` (default: the cached one)."""
        train_step(self.model, self.optimizer, self.batch if batch is None else batch, self.correct_fn, self.grad_clip)


def cached_step(backbone: Backbone, config: HybridConfig, tasks: tuple[str, ...] = ("addition",), batch_size: int = 16, seed: int = 0) -> CachedStep:
    """Build the step: `batch_size` training examples, their LLM states cached, the model on the backbone's device."""
    train_config = HybridTrainConfig(tasks=tasks, train_n=batch_size, eval_n=len(tasks), batch_size=batch_size, seed=seed, progress=False)
    data = TrainData.build(train_config, Collator(backbone.tokenizer, backbone.max_positions))
    data.cache_states(backbone, None, batch_size)
    torch.manual_seed(seed)
    model = HybridTrainable(config, backbone, data.collator).to(backbone.device)
    batch, correct_fn = data.batch(0, batch_size, cached=True)
    return CachedStep(model, build_optimizer(model, train_config), data, batch, correct_fn, train_config.grad_clip)


def measure_train_step(backbone: Backbone, config: HybridConfig, tasks: tuple[str, ...] = ("addition",), batch_size: int = 16, steps: int = 5, seed: int = 0) -> StepTimes:
    """Per-step time of the same optimizer step on the same batch, from the cache and with the LLM run first."""
    step = cached_step(backbone, config, tasks, batch_size, seed)
    raw, _ = step.data.batch(0, batch_size, cached=False)

    def llm_first() -> None:
        with torch.no_grad():
            hidden, _ = backbone.hidden_states(raw["input_ids"].to(backbone.device), raw["attention_mask"].to(backbone.device))
        step.run(FeatureBatch(hidden.float(), raw["attention_mask"], raw["input_ids"], raw["labels"], raw["prompt_lengths"], step.batch.indices))

    timed = partial(time_steps, steps=steps, device=backbone.device)
    return StepTimes(timed(step.run), timed(llm_first), batch_size, int(raw["attention_mask"].sum()))


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} logical CPUs"


def report(backbone_name: str, device: str, config: HybridConfig, times: StepTimes, decode: dict[int, dict[str, float]], new_tokens: int, load_before: str, load_after: str) -> str:
    """The Markdown page; `decode` maps a prompt length to benchmark_decode's result."""
    facts = device_facts(device)
    stamp = records.run_stamp("hrm_bench.perf.hybrid_speed", REPO_ROOT)
    target = lambda x: "meets" if x >= 5 else "misses"  # noqa: E731
    return f"""# Hybrid speed: feature cache and KV-cache decoding

- date: {stamp['date']}, commit {stamp['commit']}
- command: `{stamp['command']}`
- device: {facts['device_name']} ({facts['device']}), torch {facts['torch']}, {torch.get_num_threads()} torch thread(s)
- backbone: {backbone_name}; controller d_h={config.d_h}, H/L layers {config.H_layers}/{config.L_layers}, segments {config.segments} × inner_T {config.inner_T}, injector {config.injector}, vocab-bias head {'on' if config.logit_bias_head else 'off'}
- machine load: {load_before} before, {load_after} after. The machine is shared: other jobs ran alongside,
  so absolute times are noisy; both sides of each ratio ran back to back under the same load (medians of repeated steps).

## (a) Training step: cached LLM states vs running the frozen LLM every step

Same model, same batch ({times.batch_size} examples, {times.tokens} attended tokens), same AdamW step.

| path | s / step |
|---|---|
| cached states | {times.cached_s:.4f} |
| frozen LLM every step | {times.llm_every_step_s:.4f} |
| **speedup** | **{times.speedup:.1f}×** ({target(times.speedup)} the ≥5× target) |

## (b) Decoding {new_tokens} new tokens: KV cache vs full recompute (greedy, batch 1)

| prompt tokens | KV cache tokens / s | recompute tokens / s | speedup |
|---|---|---|---|
""" + "".join(f"| {n} | {d['kv_cache_tokens_per_s']:.1f} | {d['recompute_tokens_per_s']:.1f} | **{d['speedup']:.1f}×** ({target(d['speedup'])} the ≥5× target) |\n" for n, d in decode.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2", help="smollm2 | tiny | a hub id or local path")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[32, 128], help="decode benchmark prompt lengths")
    parser.add_argument("--d-h", type=int, default=128)
    parser.add_argument("--vocab-bias", action="store_true", help="add the gated vocab-bias head (default: the suite's hrm_grb)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (the GPU if there is one)")
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "hybrid-speed.md"))
    args = parser.parse_args(argv)
    load_before = load_note()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = backbone_by_name(args.backbone, device=device)
    config = HybridConfig(d_h=args.d_h, num_heads=4, H_layers=2, L_layers=2, logit_bias_head=args.vocab_bias)
    times = measure_train_step(backbone, config, batch_size=args.batch_size, steps=args.steps)
    decode = {n: benchmark_decode(backbone, new_tokens=args.new_tokens, prompt_tokens=n) for n in args.prompt_tokens}
    text = report(args.backbone, device, config, times, decode, args.new_tokens, load_before, load_note())
    atomic_write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
