"""A plain transformer in the HRM's harness: the "is the hierarchy needed" baseline.

As the official TRM code's `transformers_baseline.py` (an HRM ablation): no H/L split and no
inner cycles, H_layers blocks applied once per ACT step to (state + input embedding), with
the same embeddings, heads, ACT outer loop (carry detached between steps, deep supervision),
Q-learning halting and losses as the HRM. At H_layers = H_layers + L_layers of the HRM it has
the HRM's parameter count (8 blocks for hrm_v1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from puzzle_hrm.config import PuzzleModelConfig
from puzzle_hrm.model import HRM, Batch, HRMInner


@dataclass
class TransformerConfig(PuzzleModelConfig):
    H_layers: int = 8  # official transformers_baseline.yaml; = hrm_v1's 4 + 4 blocks

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.H_layers < 1:
            raise ValueError(f"H_layers must be >= 1, got {self.H_layers}")

    def layer_passes(self) -> tuple[int, int]:
        """Blocks run per ACT step, and how many of them carry gradient (for the FLOP count)."""
        return self.H_layers, self.H_layers


@dataclass
class TransformerInnerCarry:
    z_H: torch.Tensor  # (B, total_seq_len, hidden)


class TransformerInner(HRMInner):
    carry_type = TransformerInnerCarry

    def build_levels(self, config: TransformerConfig) -> None:
        self.H_level = self.attention_level(config.H_layers)

    def forward(self, carry: TransformerInnerCarry, batch: Batch) -> tuple[TransformerInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H = self.H_level(carry.z_H, x, self.cos_sin())  # one pass, all of it with gradient
        return (TransformerInnerCarry(z_H=z_H.detach()), *self.heads(z_H))


class Transformer(HRM):
    inner_type = TransformerInner
