"""Small shared builders for the controller-side hybrid tests (CPU, seconds)."""

from __future__ import annotations

import torch

from hybrid.config import HybridConfig
from puzzle_hrm.data.format import IGNORE_LABEL_ID


def tiny_config(**overrides) -> HybridConfig:
    base = dict(d_h=32, num_heads=4, H_layers=1, L_layers=2, expansion=2.0, segments=3, inner_T=3)
    base.update(overrides)
    return HybridConfig(**base)


def right_padded_batch(lengths: list[int], prompt_lengths: list[int], vocab_size: int, pad_id: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the collator returns: prompt + target ids padded on the right, labels only on the target."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_LABEL_ID, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    for row, (n, p) in enumerate(zip(lengths, prompt_lengths)):
        input_ids[row, :n] = torch.randint(1, vocab_size, (n,), generator=g)
        labels[row, p:n] = input_ids[row, p:n]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prompt_lengths": torch.tensor(prompt_lengths)}
