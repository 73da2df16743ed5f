"""The Tiny Recursive Model (TRM, Jolicoeur-Martineau 2025, arXiv 2510.04871; official code
SamsungSAILMontreal/TinyRecursiveModels, `models/recursive_reasoning/trm.py`).

One small network (L_layers = 2 blocks) serves both states: the latent z (official name z_L) and
the answer y (z_H). A recursion is n = L_cycles latent updates z ← net(z, y + x) followed by one
answer update y ← net(y, z); an ACT step runs T = H_cycles recursions, T-1 without gradient and
the last with the full gradient through all of its n + 1 updates (no one-step approximation).
Halting is TRM's: q_halt trained by BCE on "the answer is correct", halt when q_halt > 0, no
Q-continue target (act_continue_loss=False). `mlp_t=True` replaces attention by an MLP over the
token axis (the paper's Sudoku model). Embeddings, heads, ACT carry and losses are the HRM's.
"""

from __future__ import annotations

from dataclasses import dataclass

from puzzle_hrm.config import PuzzleModelConfig, swiglu_intermediate_size
from puzzle_hrm.layers import ReasoningModule, TokenMLPBlock
from puzzle_hrm.model import HRM, HRMInner


@dataclass
class TRMConfig(PuzzleModelConfig):
    """Official `config/arch/trm.yaml` names and defaults (its ignored `H_layers` left out)."""

    H_cycles: int = 3  # T: recursions per ACT step
    L_cycles: int = 6  # n: latent updates per recursion
    L_layers: int = 2  # blocks of the one network
    mlp_t: bool = False  # MLP over the token axis instead of self-attention
    puzzle_emb_len: int = 16  # positions in front of the sequence for the puzzle embedding (0 when it is off)
    act_continue_loss: bool = False  # official no_ACT_continue=True
    one_step_gradient: bool = False  # True: HRM's approximation, for the ablation

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.H_cycles, self.L_cycles, self.L_layers) < 1:
            raise ValueError("H_cycles (T), L_cycles (n) and L_layers must be >= 1")
        if self.puzzle_emb_ndim == 0 and self.puzzle_emb_len != 0:
            raise ValueError(f"puzzle_emb_len must be 0 when puzzle_emb_ndim is 0 (no puzzle embedding), got {self.puzzle_emb_len}")
        if self.puzzle_emb_len * self.hidden_size < self.puzzle_emb_ndim:
            raise ValueError(f"puzzle_emb_len {self.puzzle_emb_len} x hidden_size {self.hidden_size} cannot hold puzzle_emb_ndim {self.puzzle_emb_ndim}")

    @property
    def token_intermediate_size(self) -> int:
        """Width of the token-axis SwiGLU (mlp_t), rounded as every SwiGLU."""
        return swiglu_intermediate_size(self.total_seq_len, self.expansion)

    def layer_passes(self) -> tuple[int, int]:
        """Blocks run per ACT step, and how many of them carry gradient (for the FLOP count)."""
        per_recursion = (self.L_cycles + 1) * self.L_layers
        with_grad = 2 * self.L_layers if self.one_step_gradient else per_recursion
        return self.H_cycles * per_recursion, with_grad


class TRMInner(HRMInner):
    """HRMInner with one network for both updates (official name `L_level`)."""

    def build_levels(self, config: TRMConfig) -> None:
        if config.mlp_t:
            blocks = [TokenMLPBlock(config.hidden_size, config.total_seq_len, config.token_intermediate_size, config.intermediate_size, config.rms_norm_eps)
                      for _ in range(config.L_layers)]
            self.L_level = ReasoningModule(blocks)
        else:
            self.L_level = self.attention_level(config.L_layers)

    def levels(self) -> tuple[ReasoningModule, ReasoningModule]:
        return self.L_level, self.L_level


class TRM(HRM):
    inner_type = TRMInner
