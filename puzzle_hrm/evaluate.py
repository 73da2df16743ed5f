"""Evaluation: run every test puzzle through all halt_max_steps ACT segments.

The official evaluation always runs halt_max_steps segments (eval mode never halts early) and
scores the final answer; that exact accuracy is the paper's headline number. We also report
where the learned Q-policy *would* halt (first segment with q_halt > q_continue, or q_halt > 0
for models without a continue head) and the
accuracy of the answer at that segment, so the value of ACT is visible in one table.
Test-time compute: one rollout may run longer than halt_max_steps (`n_steps`); exact accuracy after
every segment k, and where the Q-policy capped at k halts, are read off that single rollout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from puzzle_hrm.losses import score_predictions
from puzzle_hrm.model import HRM, Batch, wants_halt


# per test row; step_predictions: (steps, L) the answer after each segment
PREDICTION_FIELDS = ("inputs", "labels", "puzzle_identifiers", "predictions", "q_halt_logits", "step_predictions")


@dataclass
class EvalSums:
    """Additive counters (reduced across ranks before the ratios are taken)."""

    count: torch.Tensor
    token_correct: torch.Tensor  # sum over puzzles of per-puzzle token accuracy
    exact_correct: torch.Tensor
    q_halt_correct: torch.Tensor  # (q_halt >= 0) == final answer correct
    policy_exact_correct: torch.Tensor  # correct at the segment the Q-policy halts
    halt_step_hist: torch.Tensor  # (halt_max_steps,) counts of the policy's halting segment
    step_exact_correct: torch.Tensor  # (steps,) correct after segment k (the fixed-steps policy capped at k)
    policy_step_exact_correct: torch.Tensor  # (steps,) correct where the Q-policy halts when capped at k


@dataclass
class Rollout:
    """Per segment k = 1..steps of one rollout: the answer and the Q-head, from which any cap k <= steps
    of either policy is read off without running again."""

    step_predictions: torch.Tensor  # (steps, B, L) argmax answer after each segment
    q_halt_logits: torch.Tensor  # (steps, B)
    wants_halt: torch.Tensor  # (steps, B) Q-policy halts here: q_halt > q_continue (q_halt > 0 without q_continue)


def policy_halt_steps(wants: torch.Tensor) -> torch.Tensor:
    """(steps, B): row k-1 holds the 1-based segment where the Q-policy halts when capped at k, i.e.
    min(first segment that wants to halt, k), the official eval rule with halt_max_steps = k."""
    n_steps = wants.shape[0]
    ks = torch.arange(1, n_steps + 1, device=wants.device)
    first = torch.where(wants.any(0), wants.int().argmax(0) + 1, n_steps)
    return torch.minimum(first.unsqueeze(0), ks.unsqueeze(1))


@torch.inference_mode()
def rollout(model: HRM, batch: Batch, n_steps: int | None = None) -> Rollout:
    """`n_steps` segments (default: the model's halt_max_steps) of one rollout, no host sync inside.
    In eval mode the model marks rows halted at its halt_max_steps and would restart them at the next
    call; clearing the flag lets the same reasoning go on, so a longer rollout extends, never restarts."""
    carry = model.initial_carry(batch)
    n_steps = n_steps or model.config.halt_max_steps
    predictions, q_halt, wants = [], [], []
    for _ in range(n_steps):
        carry, outputs = model(carry=carry, batch=batch)
        carry = dataclasses.replace(carry, halted=torch.zeros_like(carry.halted))
        predictions.append(outputs["logits"].argmax(-1))
        q_halt.append(outputs["q_halt_logits"])
        wants.append(wants_halt(outputs["q_halt_logits"], outputs.get("q_continue_logits")))
    return Rollout(torch.stack(predictions), torch.stack(q_halt), torch.stack(wants))


def evaluate(model: HRM, batches: Iterable[tuple[str, Batch, int]], device: torch.device, max_batches: int | None = None,
             keep_predictions: Sequence[str] = (), n_steps: int | None = None, halt_max_steps: int | None = None) -> dict:
    """Metrics over the whole test split (all ranks' shares when distributed) after `halt_max_steps`
    segments (default: the model's, the official number; fewer if `n_steps` is smaller) and, from the
    same rollout of `n_steps` segments (default: as many), exact accuracy after every k <= n_steps for
    the fixed-steps policy and for the Q-policy capped at k. `keep_predictions` names PREDICTION_FIELDS
    to return per test row, in test-split order, under result["predictions"]."""
    if unknown := sorted(set(keep_predictions) - set(PREDICTION_FIELDS)):
        raise ValueError(f"keep_predictions: unknown fields {unknown}; known: {PREDICTION_FIELDS}")
    was_training = model.training
    model.eval()
    head = halt_max_steps or min(n_steps or model.config.halt_max_steps, model.config.halt_max_steps)  # segments of the headline metrics
    n_steps = max(n_steps or head, head)
    sums = EvalSums(*(torch.zeros((), device=device, dtype=torch.float64) for _ in range(5)),
                    torch.zeros(head, device=device, dtype=torch.float64),
                    *(torch.zeros(n_steps, device=device, dtype=torch.float64) for _ in range(2)))
    predictions = []
    for i, (_, batch, effective_batch) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        result = rollout(model, batch, n_steps)
        labels, preds, q_halt = batch["labels"], result.step_predictions[head - 1], result.q_halt_logits[head - 1]
        n_labels, correct, _ = score_predictions(preds, labels)
        step_exact = score_predictions(result.step_predictions, labels)[2]  # (steps, B)
        policy_halt = policy_halt_steps(result.wants_halt)  # (steps, B)
        policy_step_exact = step_exact.gather(0, policy_halt.long() - 1)
        exact, policy_exact, halt_step = step_exact[head - 1], policy_step_exact[head - 1], policy_halt[head - 1]
        valid, token_acc = n_labels > 0, correct.sum(-1) / n_labels.clamp_min(1)
        sums.count += valid.sum()
        sums.token_correct += torch.where(valid, token_acc, 0).sum()
        sums.exact_correct += (valid & exact).sum()
        sums.q_halt_correct += (valid & ((q_halt >= 0) == exact)).sum()
        sums.policy_exact_correct += (valid & policy_exact).sum()
        sums.halt_step_hist += torch.bincount(halt_step[valid].long() - 1, minlength=head).to(torch.float64)
        sums.step_exact_correct += (valid & step_exact).sum(1)
        sums.policy_step_exact_correct += (valid & policy_step_exact).sum(1)
        if keep_predictions:
            rows = {**batch, "predictions": preds.to(torch.int32), "q_halt_logits": q_halt.float(),
                    "step_predictions": result.step_predictions.transpose(0, 1).to(torch.int16)}
            predictions.append(rows_in_split_order({k: rows[k] for k in keep_predictions}, effective_batch))
    model.train(was_training)
    return summarize(sums, predictions if keep_predictions else None)


def rows_in_split_order(local: dict[str, torch.Tensor], effective_batch: int) -> dict[str, torch.Tensor]:
    """One test batch's rows from every rank, in test-split order, without padding, on the CPU.

    The test loader gives rank r rows [r * B, (r + 1) * B) of each global batch, each rank's share padded
    to B at its end, so the ranks' shares laid end to end hold the batch's `effective_batch` real rows first.
    """
    if dist.is_available() and dist.is_initialized():
        gathered = {}
        for key, tensor in local.items():
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor.contiguous())
            gathered[key] = torch.cat(parts)
        local = gathered
    return {key: tensor[:effective_batch].cpu() for key, tensor in local.items()}


def summarize(sums: EvalSums, predictions: list | None) -> dict:
    if dist.is_available() and dist.is_initialized():
        for tensor in vars(sums).values():
            dist.all_reduce(tensor)
    count = max(sums.count.item(), 1.0)
    hist = sums.halt_step_hist.cpu()
    steps = torch.arange(1, hist.numel() + 1, dtype=torch.float64)
    result = {
        "count": int(sums.count.item()),
        "exact_accuracy": sums.exact_correct.item() / count,
        "token_accuracy": sums.token_correct.item() / count,
        "q_halt_accuracy": sums.q_halt_correct.item() / count,
        "policy_exact_accuracy": sums.policy_exact_correct.item() / count,
        "mean_halt_steps": float((hist * steps).sum() / count),
        "halt_step_histogram": [int(x) for x in hist.tolist()],
        "exact_accuracy_by_steps": (sums.step_exact_correct.cpu() / count).tolist(),  # [k-1]: after k segments
        "policy_exact_accuracy_by_steps": (sums.policy_step_exact_correct.cpu() / count).tolist(),  # Q-policy capped at k
    }
    if predictions is not None:
        result["predictions"] = {k: torch.cat([p[k] for p in predictions]) for k in predictions[0]} if predictions else {}
    return result


def load_for_evaluation(checkpoint: str, data_dir: str, batch_size: int, forward_dtype: str) -> HRM:
    """Our training checkpoints (last.pt, any model of the registry, with its EMA weights when it has
    them) or official HRM ones (state dict + all_config.yaml beside it); `checkpoint` is a file, a
    folder or `hf://<org>/<repo>` (see checkpoint.checkpoint_file)."""
    from pathlib import Path

    from puzzle_hrm import checkpoint as ckpt
    from puzzle_hrm.data.format import DatasetMetadata
    from puzzle_hrm.registry import DEFAULT_MODEL, build_model, model_config_class

    metadata = DatasetMetadata.from_json(Path(data_dir) / "test" / "dataset.json")
    checkpoint = str(ckpt.checkpoint_file(checkpoint))
    saved = ckpt.load(checkpoint)
    if "model_config" in saved:  # ours
        if "model" not in saved:
            raise ValueError(f"{checkpoint}: has a model_config but no model weights")
        config_cls = model_config_class(saved.get("model_name", DEFAULT_MODEL))
        model = build_model(config_cls(**{**saved["model_config"], "batch_size": batch_size, "forward_dtype": forward_dtype}))
        ckpt.load_model_weights(model, {**saved["model"], **(saved.get("ema") or {})}, checkpoint)
    else:
        arch = ckpt.read_official_arch(Path(checkpoint).parent / "all_config.yaml")
        model = ckpt.load_official(saved, {**arch, "batch_size": batch_size, "forward_dtype": forward_dtype}, metadata)
    if (model.config.seq_len, model.config.vocab_size) != (metadata.seq_len, metadata.vocab_size):
        raise ValueError(f"checkpoint {checkpoint} (seq_len {model.config.seq_len}, vocab {model.config.vocab_size}) does not fit "
                         f"{data_dir} (seq_len {metadata.seq_len}, vocab {metadata.vocab_size})")
    return model


CLI_KEYS = ("checkpoint", "data", "batch_size", "predictions", "device", "eval_halt_max_steps")


def parse_cli(argv: list[str]) -> dict[str, str]:
    """key=value arguments, every key known and checkpoint/data given; else a ValueError naming the key."""
    if malformed := [a for a in argv if "=" not in a]:
        raise ValueError(f"{malformed[0]}: expected key=value with key one of {', '.join(CLI_KEYS)}")
    args = dict(a.split("=", 1) for a in argv)
    if unknown := sorted(set(args) - set(CLI_KEYS)):
        raise ValueError(f"{', '.join(unknown)}: unknown key; valid keys: {', '.join(CLI_KEYS)}")
    if missing := [k for k in ("checkpoint", "data") if k not in args]:
        raise ValueError(f"{', '.join(missing)}: required (python -m puzzle_hrm.evaluate checkpoint=PATH data=DIR)")
    for key in ("batch_size", "eval_halt_max_steps"):
        if not args.get(key, "1").isdigit() or int(args.get(key, "1")) < 1:
            raise ValueError(f"{key}: {args[key]!r} is not a positive int")
    return args


def main(argv: list[str] | None = None) -> None:
    """python -m puzzle_hrm.evaluate checkpoint=PATH data=DIR [batch_size=768] [predictions=FILE.pt] [device=cpu] [eval_halt_max_steps=K]

    eval_halt_max_steps: segments of the rollout at test time (default: the checkpoint's halt_max_steps);
    the result holds exact accuracy after every k <= K for both policies (one rollout).
    Refusals print `error: <file or key>: <problem>` and exit 2 (HRM_BENCH_DEBUG=1: the traceback)."""
    import sys

    from puzzle_hrm.cli_errors import refusals

    with refusals():
        run_cli(parse_cli(sys.argv[1:] if argv is None else argv))


def run_cli(args: dict[str, str]) -> None:
    import json

    from puzzle_hrm.checkpoint import save_atomic
    from puzzle_hrm.data.loader import PuzzleLoader

    try:
        device = torch.device(args.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ValueError(f"device: {args['device']!r} is not a torch device ({err})") from None
    batch_size = int(args.get("batch_size", 768))
    model = load_for_evaluation(args["checkpoint"], args["data"], batch_size, "bfloat16" if device.type == "cuda" else "float32").to(device)
    loader = PuzzleLoader(args["data"], "test", batch_size, mode="test")
    n_steps = int(args["eval_halt_max_steps"]) if "eval_halt_max_steps" in args else None
    keep = tuple(f for f in PREDICTION_FIELDS if f != "step_predictions") if "predictions" in args else ()
    result = evaluate(model, loader, device, keep_predictions=keep, n_steps=n_steps)
    if "predictions" in args:
        save_atomic(result.pop("predictions"), args["predictions"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
