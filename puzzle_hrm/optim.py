"""Optimizers and the learning-rate schedule of the official recipe.

Two optimizers step together: SignSGD for the sparse puzzle embedding (own lr / weight decay)
and AdamW (default) or the official Adam-atan2 for the dense weights, both driven by one cosine
schedule with linear warm-up and a floor of lr_min_ratio · lr.
"""

from __future__ import annotations

import math

import torch

from puzzle_hrm.model import HRM
from puzzle_hrm.sparse_embedding import SparseEmbeddingSignSGD


def cosine_schedule_with_warmup(step: int, base_lr: float, warmup_steps: int, total_steps: int, lr_min_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    """Linear warm-up to base_lr, then a half cosine down to lr_min_ratio · base_lr."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (lr_min_ratio + max(0.0, (1 - lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))))


def dense_optimizer(name: str, params, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool = False) -> torch.optim.Optimizer:
    """'adamw' (torch) or 'adam_atan2' (the official optimizer: Adam with atan2 in place of the
    epsilon-guarded division, from the pure-PyTorch `adam-atan2-pytorch` package)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=fused or None)
    if name == "adam_atan2":
        try:
            from adam_atan2_pytorch import AdamAtan2
        except ImportError as err:
            raise ImportError("optimizer='adam_atan2' needs `pip install adam-atan2-pytorch` (the [atan2] extra)") from err
        return AdamAtan2(params, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'adam_atan2'")


def build_optimizers(
    model: HRM,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    puzzle_emb_lr: float,
    puzzle_emb_weight_decay: float,
    world_size: int = 1,
    fused: bool = False,
) -> tuple[list[torch.optim.Optimizer], list[float]]:
    """Optimizers and their base learning rates, puzzle embedding first as in the official code."""
    optimizers: list[torch.optim.Optimizer] = []
    base_lrs: list[float] = []
    if model.puzzle_emb is not None:
        optimizers.append(SparseEmbeddingSignSGD(model.puzzle_emb, lr=puzzle_emb_lr, weight_decay=puzzle_emb_weight_decay, world_size=world_size))
        base_lrs.append(puzzle_emb_lr)
    optimizers.append(dense_optimizer(optimizer, list(model.parameters()), lr=lr, weight_decay=weight_decay, betas=betas, fused=fused))
    base_lrs.append(lr)
    return optimizers, base_lrs
