"""`python -m hrm_bench.suites.hybrid_diagnose`: why an HRM controller does or does not learn, per variant.

On a small fixed training set (64 questions by default) every variant trains with the suite's
loop pieces (hybrid.train: data order, AdamW, clipping, one `train_step`) and reports:
- the gradient norm of each module at step 1 and its mean over training (before clipping),
- the injector's gate (sigmoid) at each checkpoint,
- teacher-forced answer CE and exact match (every answer token right) on the training set (can it
  overfit?) and on held-out questions, at each checkpoint.
Variants: the suite's (hrm_bench.suites.hybrid.HRM_VARIANTS), LoRA at hrm_grb's parameter count (`lora@<variant>`:
at that variant's), the
controller ablations (plain MLP / transformer controller, full backpropagation through a segment
or through all segments) and the oracle (the injector handed the gold answer's embedding: the
upper bound of the injection path). HRM variants train on the feature cache at their cut.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

from hrm_bench.suites.hybrid import HRM_VARIANTS
from hybrid.backbone import Backbone, backbone_by_name
from hybrid.config import HybridConfig
from hybrid.features import FeatureBatch, FeatureCache
from hybrid.lora import LoRATrainable
from hybrid.model import supervised_positions
from hybrid.prefix import PrefixTrainable
from hybrid.tasks import Collator
from hybrid.train import HybridTrainConfig, TrainData, Trainable, build_optimizer, evaluating, train_step
from hybrid.trainable import HybridTrainable, hybrid_trainable

logger = logging.getLogger(__name__)

CPU_MODEL = dict(d_h=128, num_heads=4, H_layers=2, L_layers=2, segments=3, inner_T=3)  # the suite's cpu tier
ABLATIONS: dict[str, dict[str, Any]] = {  # HybridConfig settings beyond the suite's variants
    "hrm_cab_tokens16": {"injector": "cab", "logit_bias_head": False, "input_tokens": 16},
    "mlp_cab": {"injector": "cab", "logit_bias_head": False, "controller": "mlp"},
    "transformer_cab": {"injector": "cab", "logit_bias_head": False, "controller": "transformer"},
    "hrm_cab_full_segment": {"injector": "cab", "logit_bias_head": False, "one_step_grad": False},
    "hrm_cab_all_segments": {"injector": "cab", "logit_bias_head": False, "one_step_grad": False, "detach_segments": False},
    "oracle_grb": {"injector": "grb", "logit_bias_head": False, "controller": "oracle"},
    "oracle_cab": {"injector": "cab", "logit_bias_head": False, "controller": "oracle"},
    "oracle_grb_mid": {"injector": "grb", "logit_bias_head": False, "controller": "oracle", "inject_depth": 0.5},
    "oracle_grb_rel": {"injector": "grb", "logit_bias_head": False, "controller": "oracle", "relative_injection": True},
    "oracle_cab_rel": {"injector": "cab", "logit_bias_head": False, "controller": "oracle", "relative_injection": True},
    "oracle_grb_mid_rel": {"injector": "grb", "logit_bias_head": False, "controller": "oracle", "inject_depth": 0.5, "relative_injection": True},
    "hrm_grb_rel": {"injector": "grb", "logit_bias_head": False, "relative_injection": True},
    "hrm_cab_rel": {"injector": "cab", "logit_bias_head": False, "relative_injection": True},
    "mlp_cab_rel": {"injector": "cab", "logit_bias_head": False, "controller": "mlp", "relative_injection": True},
    "hrm_cab_centered": {"injector": "cab", "logit_bias_head": False, "centered_input": True},
    "hrm_grb_rel_centered": {"injector": "grb", "logit_bias_head": False, "relative_injection": True, "centered_input": True},
    "hrm_cab_mid_rel_centered": {"injector": "cab", "logit_bias_head": False, "inject_depth": 0.5, "relative_injection": True, "centered_input": True},
}
VARIANTS = {**HRM_VARIANTS, **ABLATIONS}
DEFAULT = ("lora", "hrm_grb", "hrm_cab", "hrm_cab_tokens16", "oracle_grb", "oracle_cab", "oracle_grb_mid")


@dataclass
class Fit:
    ce: float  # teacher-forced answer-token CE (token mean)
    exact: float  # share of questions whose every answer token is the argmax
    x_spread: float | None = None  # HRM variants: RMS of the controller input's deviation from its mean over the set, over its RMS
    z_spread: float | None = None  # the same for the last segment's z_H: does the conditioning differ between questions at all?


def spread(rows: Tensor) -> float:
    """(N, ...) → RMS of each row's deviation from the mean row, relative to the rows' RMS."""
    rows = rows.flatten(1).float()
    return float((rows - rows.mean(0)).square().mean().sqrt() / rows.square().mean().sqrt())


@dataclass
class Diagnosis:
    variant: str
    params: int
    step_seconds: float
    grad_step1: dict[str, float]
    grad_mean: dict[str, float]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # step, gate, train Fit, held-out Fit


def module_of(name: str) -> str:
    """The module a parameter name belongs to, for the gradient table."""
    parts = name.removeprefix("lm.").split(".")
    if "lora_A" in parts or "lora_B" in parts:
        return "lora_A" if "lora_A" in parts else "lora_B"
    return ".".join(parts[:2]) if parts[0] == "controller" and len(parts) > 2 else parts[0]


def grad_norms(trainable: Trainable, unclip: float) -> dict[str, float]:
    """Per module, the L2 norm of the gradient before clipping (clipping scaled all by 1 / unclip)."""
    squares: dict[str, float] = {}
    for name, p in trainable.named_parameters():
        if p.grad is not None:
            squares[module_of(name)] = squares.get(module_of(name), 0.0) + float(p.grad.square().sum()) * unclip**2
    return {k: v**0.5 for k, v in squares.items()}


def gates(trainable: Trainable) -> dict[str, float]:
    if isinstance(trainable, PrefixTrainable):
        slots = trainable.lm.slots
        return {"prefix_gain": trainable.lm.prefix.gain.item(), **({} if slots is None else {"slots_gain_mean": slots.gain.mean().item()})}
    if not isinstance(trainable, HybridTrainable):
        return {}
    found = {"injector": torch.sigmoid(trainable.lm.injector.gate).item()}
    if trainable.lm.vocab_bias is not None:
        found["vocab_bias"] = torch.sigmoid(trainable.lm.vocab_bias.gate).item()
    return found


def batches_of(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(start + size, n)))


@torch.no_grad()
def teacher_forced(trainable: Trainable, cache: FeatureCache | None, examples: list, collator: Collator, batch_size: int) -> Fit:
    """Answer CE and exact match with the gold answer fed in (last segment; no decoding)."""
    total, tokens, exact = 0.0, 0, 0
    xs, zs = [], []
    with evaluating(trainable):
        for rows in batches_of(len(examples), batch_size):
            if isinstance(trainable, PrefixTrainable):
                segments, targets, answer_rows = trainable.gold_answer_logits([examples[i] for i in rows], trainable.lm.config.segments)
                logits, positions = segments[-1], None
            elif isinstance(trainable, HybridTrainable):
                batch: FeatureBatch = cache.batch(rows)
                positions, targets = supervised_positions(batch.labels)
                last = trainable.lm(batch.hidden_states, batch.attention_mask, batch.prompt_lengths, positions=positions, input_ids=batch.input_ids, prefix_kv=batch.prefix_kv, prefix_mask=batch.prefix_mask)[-1]
                logits = last.logits
                zs.append(last.z_H)
                bridge = trainable.lm.bridge
                xs.append(bridge(batch.hidden_states, batch.attention_mask, batch.prompt_lengths, batch.input_ids) if trainable.lm.config.controller == "oracle" else bridge(batch.hidden_states, batch.attention_mask, batch.prompt_lengths))
            else:
                collated = collator([examples[i] for i in rows])
                positions, targets = supervised_positions(collated["labels"])
                hidden, _ = trainable.backbone.hidden_states(collated["input_ids"], collated["attention_mask"])
                logits = trainable.backbone.logits(hidden[positions])
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            tokens += len(targets)
            target_rows = answer_rows if positions is None else positions.nonzero()[:, 0]
            wrong = torch.zeros(len(rows)).index_add_(0, target_rows.cpu(), (logits.argmax(-1) != targets).float().cpu())
            exact += int((wrong == 0).sum())
    return Fit(total / tokens, exact / len(examples), spread(torch.cat(xs)) if xs else None, spread(torch.cat(zs)) if zs else None)


def lora_match(variant: str) -> str | None:
    """The variant whose trainable parameter count a LoRA variant matches: `lora` = hrm_grb (as the
    suite), `lora@<variant>` = that variant; None for a non-LoRA variant."""
    if variant == "lora":
        return "hrm_grb"
    return variant.removeprefix("lora@") if variant.startswith("lora@") else None


def build(variant: str, model: dict[str, Any], backbone: Backbone, collator: Collator, seed: int) -> Trainable:
    torch.manual_seed(seed)
    if (matched := lora_match(variant)) is not None:
        target = sum(p.numel() for p in hybrid_trainable(HybridConfig(**{**model, **VARIANTS[matched]}), backbone, collator).parameters())
        return LoRATrainable(backbone, collator, target)
    return hybrid_trainable(HybridConfig(**{**model, **VARIANTS[variant]}), backbone, collator)


def diagnose(variant: str, backbone: Backbone, data: TrainData, heldout: dict[int | None, FeatureCache], config: HybridTrainConfig, model: dict[str, Any], every: int) -> Diagnosis:
    trainable = build(variant, model, backbone, data.collator, config.seed)
    cached = trainable.uses_cached_states
    if cached:
        data.cache_states(backbone, None, layer=trainable.cache_layer)
        if trainable.cache_layer not in heldout:
            heldout[trainable.cache_layer] = FeatureCache.build(backbone, [data.collator(data.eval[r[0] : r[-1] + 1]) for r in batches_of(len(data.eval), 32)], layer=trainable.cache_layer)
    optimizer = build_optimizer(trainable, config)
    result = Diagnosis(variant, sum(p.numel() for p in trainable.parameters()), 0.0, {}, {})
    sums: dict[str, float] = {}
    seconds = 0.0
    for step in range(1, config.max_steps + 1):
        batch, correct_fn = data.batch(step - 1, config.batch_size, cached)
        tick = time.perf_counter()
        scalars = train_step(trainable, optimizer, batch, correct_fn, config.grad_clip)
        seconds += time.perf_counter() - tick
        norms = grad_norms(trainable, max(1.0, scalars.get("grad_norm", 0.0) / config.grad_clip) if config.grad_clip > 0 else 1.0)
        if step == 1:
            result.grad_step1 = norms
        for k, v in norms.items():
            sums[k] = sums.get(k, 0.0) + v
        if step % every == 0 or step == config.max_steps or step == 1:
            train_fit = teacher_forced(trainable, data.cache if cached else None, data.train, data.collator, config.batch_size)
            held_fit = teacher_forced(trainable, heldout.get(getattr(trainable, "cache_layer", None)), data.eval, data.collator, config.batch_size)
            result.checkpoints.append({"step": step, "gates": gates(trainable), "train": train_fit, "heldout": held_fit})
            logger.info("%s step %d: train CE %.3f exact %.3f, held-out CE %.3f exact %.3f, gates %s", variant, step, train_fit.ce, train_fit.exact, held_fit.ce, held_fit.exact, gates(trainable))
    result.grad_mean = {k: v / config.max_steps for k, v in sums.items()}
    result.step_seconds = seconds / config.max_steps
    return result


def report(results: list[Diagnosis]) -> str:
    lines = ["| variant | params | s/step | train CE | train exact | held-out CE | held-out exact | gate (first -> last) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        last = r.checkpoints[-1]
        gate = " ".join(f"{k} {r.checkpoints[0]['gates'][k]:.3f}->{v:.3f}" for k, v in last["gates"].items())
        lines.append(f"| {r.variant} | {r.params:,} | {r.step_seconds:.2f} | {last['train'].ce:.3f} | {last['train'].exact:.3f} | {last['heldout'].ce:.3f} | {last['heldout'].exact:.3f} | {gate} |")
    lines += ["", "Gradient norm per module (before clipping): step 1 / mean over training", ""]
    for r in results:
        lines.append(f"- {r.variant}: " + ", ".join(f"{k} {r.grad_step1.get(k, 0.0):.3g} / {r.grad_mean[k]:.3g}" for k in r.grad_mean))
    lines += ["", "Checkpoints (step: train CE, train exact, held-out CE, held-out exact[, spread of the controller input x / of z_H over the training questions])", ""]
    for r in results:
        lines.append(f"- {r.variant}: " + "; ".join(f"{c['step']}: {c['train'].ce:.3f} {c['train'].exact:.2f} {c['heldout'].ce:.3f} {c['heldout'].exact:.2f}" + _spreads(c["train"]) for c in r.checkpoints))
    return "\n".join(lines)


def _spreads(fit: Fit) -> str:
    return "" if fit.x_spread is None else f" x {fit.x_spread:.3f} z {fit.z_spread:.3f}"


def main(argv: list[str] | None = None) -> list[Diagnosis]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2", help="smollm2 | tiny | hub id / path")
    parser.add_argument("--variants", default=",".join(DEFAULT), help=f"comma-separated; known: lora, lora@<variant> (LoRA at its parameter count), {', '.join(VARIANTS)}")
    parser.add_argument("--tasks", default="addition")
    parser.add_argument("--train-n", type=int, default=64, help="training questions per task (the set to overfit)")
    parser.add_argument("--eval-n", type=int, default=64, help="held-out questions in all")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="", help="HybridConfig overrides, key=value,... (on top of the cpu tier's d_h 128, 2 + 2 layers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    variants = args.variants.split(",")
    unknown = [v for v in variants if (lora_match(v) or v) not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: lora, lora@<variant>, {', '.join(VARIANTS)}")
    model = {**CPU_MODEL, **{k: _value(v) for k, v in (kv.split("=", 1) for kv in args.model.split(",") if kv)}}
    config = HybridTrainConfig(tasks=tuple(args.tasks.split(",")), train_n=args.train_n, eval_n=args.eval_n, seed=args.seed, lr=args.lr, batch_size=args.batch_size, max_steps=args.steps, progress=False)
    backbone = backbone_by_name(args.backbone)
    data = TrainData.build(config, Collator(backbone.tokenizer, backbone.max_positions))
    heldout: dict[int | None, FeatureCache] = {}
    results = []
    for variant in variants:
        results.append(diagnose(variant, backbone, data, heldout, config, model, args.every))
        print(report(results[-1:]), flush=True)
    print(f"\n## hybrid_diagnose: {args.backbone}, tasks {args.tasks}, {len(data.train)} training / {len(data.eval)} held-out questions, batch {args.batch_size}, {args.steps} steps, lr {args.lr}, seed {args.seed}, model {model}\n")
    print(report(results))
    return results


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


if __name__ == "__main__":
    main()
