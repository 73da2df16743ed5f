"""Losses and metrics of one ACT segment (official `losses.py`, `ACTLossHead`).

Stablemax (Prieto et al. 2025, "Grokking at the edge of numerical stability") replaces exp by
s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0; the official code evaluates it in float64,
which the HRM paper reports as important for small-data generalisation.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from puzzle_hrm.data.format import IGNORE_LABEL_ID
from puzzle_hrm.model import HRMCarry


def stablemax_s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = stablemax_s(x)
    return torch.log(s_x / s_x.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token loss (same shape as labels), 0 at ignored tokens; computed in float64."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0).long()
    picked = logprobs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1), ignore_index=ignore_index, reduction="none")
    return flat.view(labels.shape)


LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}


def get_loss_fn(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSS_FUNCTIONS:
        raise ValueError(f"unknown loss_type {name!r}; choose one of {sorted(LOSS_FUNCTIONS)}")
    return LOSS_FUNCTIONS[name]


def score_predictions(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: labelled tokens (B,), per-token correctness (B, L), whole sequence correct (B,)."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    is_correct = mask & (predictions == labels)
    return counts, is_correct, is_correct.sum(-1) == counts


def act_loss(carry: HRMCarry, outputs: dict[str, torch.Tensor], loss_type: str = "stablemax_cross_entropy") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed (not averaged) loss of one segment and summed metric counters, as the official head.

    total = lm + 0.5 · (q_halt + q_continue). lm is each sequence's mean token loss, summed over
    the batch; q_halt is BCE against "the whole sequence is correct now"; q_continue is BCE against
    the bootstrapped target from the next segment. Metrics count only rows that halted this segment
    (their final answer); the trainer divides losses by the global batch and the rest by `count`.
    """
    labels = carry.current_data["labels"]
    logits = outputs["logits"]
    with torch.no_grad():
        loss_counts, is_correct, seq_is_correct = score_predictions(logits.argmax(-1), labels)
        loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
        valid = carry.halted & (loss_counts > 0)
        metrics = {
            "count": valid.sum(),
            "accuracy": torch.where(valid, (is_correct.float() / loss_divisor).sum(-1), 0).sum(),
            "exact_accuracy": (valid & seq_is_correct).sum(),
            "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
            "steps": torch.where(valid, carry.steps, 0).sum(),
        }

    lm_loss = (get_loss_fn(loss_type)(logits, labels) / loss_divisor).sum()
    q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
    metrics["lm_loss"] = lm_loss.detach()
    metrics["q_halt_loss"] = q_halt_loss.detach()
    total = lm_loss + 0.5 * q_halt_loss
    if "target_q_continue" in outputs:
        q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
        metrics["q_continue_loss"] = q_continue_loss.detach()
        total = total + 0.5 * q_continue_loss
    return total, metrics
