"""Evaluation: run every test puzzle through all halt_max_steps ACT segments.

The official evaluation always runs halt_max_steps segments (eval mode never halts early) and
scores the final answer; that exact accuracy is the paper's headline number. We also report
where the learned Q-policy *would* halt (first segment with q_halt > q_continue) and the
accuracy of the answer at that segment, so the value of ACT is visible in one table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from puzzle_hrm.losses import score_predictions
from puzzle_hrm.model import HRM, Batch


PREDICTION_FIELDS = ("inputs", "labels", "puzzle_identifiers", "predictions", "q_halt_logits")  # per test row


@dataclass
class EvalSums:
    """Additive counters (reduced across ranks before the ratios are taken)."""

    count: torch.Tensor
    token_correct: torch.Tensor  # sum over puzzles of per-puzzle token accuracy
    exact_correct: torch.Tensor
    q_halt_correct: torch.Tensor  # (q_halt >= 0) == final answer correct
    policy_exact_correct: torch.Tensor  # correct at the segment the Q-policy halts
    halt_step_hist: torch.Tensor  # (halt_max_steps,) counts of the policy's halting segment


@torch.inference_mode()
def rollout(model: HRM, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """All halt_max_steps segments; returns final outputs, the policy's halting segment (1-based)
    and the prediction at that segment. No host sync inside the loop."""
    carry = model.initial_carry(batch)
    n_steps = model.config.halt_max_steps
    halt_step = torch.full_like(carry.steps, n_steps)
    policy_preds = None
    for step in range(1, n_steps + 1):
        carry, outputs = model(carry=carry, batch=batch)
        preds = outputs["logits"].argmax(-1)
        wants_halt = (outputs["q_halt_logits"] > outputs["q_continue_logits"]) & (halt_step == n_steps) & (step < n_steps)
        halt_step = torch.where(wants_halt, step, halt_step)
        policy_preds = preds if policy_preds is None else torch.where((halt_step == step).unsqueeze(-1), preds, policy_preds)
    return outputs, halt_step, policy_preds


def evaluate(model: HRM, batches: Iterable[tuple[str, Batch, int]], device: torch.device, max_batches: int | None = None,
             keep_predictions: Sequence[str] = ()) -> dict:
    """Metrics over the whole test split (all ranks' shares when distributed). `keep_predictions` names
    PREDICTION_FIELDS to return per test row, in test-split order, under result["predictions"]."""
    if unknown := sorted(set(keep_predictions) - set(PREDICTION_FIELDS)):
        raise ValueError(f"keep_predictions: unknown fields {unknown}; known: {PREDICTION_FIELDS}")
    was_training = model.training
    model.eval()
    hist_len = model.config.halt_max_steps
    sums = EvalSums(*(torch.zeros((), device=device, dtype=torch.float64) for _ in range(5)), torch.zeros(hist_len, device=device, dtype=torch.float64))
    predictions = []
    for i, (_, batch, effective_batch) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        outputs, halt_step, policy_preds = rollout(model, batch)
        labels = batch["labels"]
        preds = outputs["logits"].argmax(-1)
        n_labels, correct, exact = score_predictions(preds, labels)
        valid, token_acc = n_labels > 0, correct.sum(-1) / n_labels.clamp_min(1)
        policy_exact = score_predictions(policy_preds, labels)[2]
        sums.count += valid.sum()
        sums.token_correct += torch.where(valid, token_acc, 0).sum()
        sums.exact_correct += (valid & exact).sum()
        sums.q_halt_correct += (valid & ((outputs["q_halt_logits"] >= 0) == exact)).sum()
        sums.policy_exact_correct += (valid & policy_exact).sum()
        sums.halt_step_hist += torch.bincount(halt_step[valid].long() - 1, minlength=hist_len).to(torch.float64)
        if keep_predictions:
            rows = {**batch, "predictions": preds.to(torch.int32), "q_halt_logits": outputs["q_halt_logits"].float()}
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
    }
    if predictions is not None:
        result["predictions"] = {k: torch.cat([p[k] for p in predictions]) for k in predictions[0]} if predictions else {}
    return result


def load_for_evaluation(checkpoint: str, data_dir: str, batch_size: int, forward_dtype: str) -> HRM:
    """Our training checkpoints (last.pt) or official ones (state dict + all_config.yaml beside it);
    `checkpoint` is a file, a folder or `hf://<org>/<repo>` (see checkpoint.checkpoint_file)."""
    from pathlib import Path

    from puzzle_hrm import checkpoint as ckpt
    from puzzle_hrm.config import HRMConfig
    from puzzle_hrm.data.format import DatasetMetadata

    metadata = DatasetMetadata.from_json(Path(data_dir) / "test" / "dataset.json")
    checkpoint = str(ckpt.checkpoint_file(checkpoint))
    saved = ckpt.load(checkpoint)
    if "model_config" in saved:  # ours
        if "model" not in saved:
            raise ValueError(f"{checkpoint}: has a model_config but no model weights")
        config = HRMConfig(**{**saved["model_config"], "batch_size": batch_size, "forward_dtype": forward_dtype})
        model = HRM(config)
        ckpt.load_model_weights(model, saved["model"], checkpoint)
    else:
        arch = ckpt.read_official_arch(Path(checkpoint).parent / "all_config.yaml")
        model = ckpt.load_official(saved, {**arch, "batch_size": batch_size, "forward_dtype": forward_dtype}, metadata)
    if (model.config.seq_len, model.config.vocab_size) != (metadata.seq_len, metadata.vocab_size):
        raise ValueError(f"checkpoint {checkpoint} (seq_len {model.config.seq_len}, vocab {model.config.vocab_size}) does not fit "
                         f"{data_dir} (seq_len {metadata.seq_len}, vocab {metadata.vocab_size})")
    return model


CLI_KEYS = ("checkpoint", "data", "batch_size", "predictions", "device")


def parse_cli(argv: list[str]) -> dict[str, str]:
    """key=value arguments, every key known and checkpoint/data given; else a ValueError naming the key."""
    if malformed := [a for a in argv if "=" not in a]:
        raise ValueError(f"{malformed[0]}: expected key=value with key one of {', '.join(CLI_KEYS)}")
    args = dict(a.split("=", 1) for a in argv)
    if unknown := sorted(set(args) - set(CLI_KEYS)):
        raise ValueError(f"{', '.join(unknown)}: unknown key; valid keys: {', '.join(CLI_KEYS)}")
    if missing := [k for k in ("checkpoint", "data") if k not in args]:
        raise ValueError(f"{', '.join(missing)}: required (python -m puzzle_hrm.evaluate checkpoint=PATH data=DIR)")
    if not args.get("batch_size", "1").isdigit() or int(args.get("batch_size", "1")) < 1:
        raise ValueError(f"batch_size: {args['batch_size']!r} is not a positive int")
    return args


def main(argv: list[str] | None = None) -> None:
    """python -m puzzle_hrm.evaluate checkpoint=PATH data=DIR [batch_size=768] [predictions=FILE.pt] [device=cpu]
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
    result = evaluate(model, loader, device, keep_predictions=PREDICTION_FIELDS if "predictions" in args else ())
    if "predictions" in args:
        save_atomic(result.pop("predictions"), args["predictions"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
