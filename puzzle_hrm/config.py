"""HRMConfig: the official `hrm_act_v1` architecture fields, names and defaults.

PuzzleModelConfig holds the fields HRM, TRM (puzzle_hrm.trm) and the plain transformer
(puzzle_hrm.transformer) share; each model's config adds its own recursion fields.

Field names match `HierarchicalReasoningModel_ACTV1Config` and `config/arch/hrm_v1.yaml` of the
official code (sapientinc/HRM) so a reader can diff the two. Paper: Wang et al. 2025,
arXiv 2506.21734, sections 2 (H/L modules, one-step gradient) and 2.3 (ACT halting).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class PuzzleModelConfig:
    """Fields every puzzle model of the harness shares (HRM, TRM, the plain transformer): the data's
    shapes, the transformer block, the ACT outer loop. Subclasses add their recursion fields."""

    batch_size: int = 768  # per-device batch; sizes the sparse puzzle-embedding buffer
    seq_len: int = 81  # tokens per puzzle, excluding the puzzle-embedding positions
    puzzle_emb_ndim: int = 512  # official arch sets ${hidden_size}; 0 disables the puzzle embedding
    num_puzzle_identifiers: int = 1
    vocab_size: int = 11

    hidden_size: int = 512
    expansion: float = 4.0  # SwiGLU width multiplier before the 2/3 and multiple-of-256 rounding
    num_heads: int = 8
    pos_encodings: str = "rope"  # "rope" | "learned" | "none"

    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    halt_max_steps: int = 16  # ACT: maximum segments; evaluation always runs all of them
    halt_exploration_prob: float = 0.1
    # ours: False = TRM's halting (BCE on correctness only, halt when q_halt > 0; no Q-continue target,
    # so no second forward per step). TRM's official `no_ACT_continue` is `not act_continue_loss`.
    act_continue_loss: bool = True

    forward_dtype: str = "bfloat16"  # official default; use "float32" on CPU
    attn_backend: str = "auto"  # ours, not official: auto (flash-attn on CUDA if importable) | flash | sdpa | sdpa_<kernel> (layers.SDPA_KERNELS)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pos_encodings not in ("rope", "learned", "none"):
            raise ValueError(f"pos_encodings must be 'rope', 'learned' or 'none', got {self.pos_encodings!r}")
        if self.halt_max_steps < 1:
            raise ValueError(f"halt_max_steps must be >= 1, got {self.halt_max_steps}")
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ValueError(f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if not isinstance(getattr(torch, self.forward_dtype, None), torch.dtype):
            raise ValueError(f"forward_dtype {self.forward_dtype!r} is not a torch dtype")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_emb_len(self) -> int:
        """Positions the puzzle embedding occupies in front of the sequence: ceil(ndim / hidden)."""
        return -(self.puzzle_emb_ndim // -self.hidden_size)

    @property
    def total_seq_len(self) -> int:
        return self.seq_len + self.puzzle_emb_len

    @property
    def intermediate_size(self) -> int:
        return swiglu_intermediate_size(self.hidden_size, self.expansion)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)

    @classmethod
    def from_dict(cls, values: dict):
        """Build from a (possibly larger) mapping, e.g. the official all_config.yaml `arch` section."""
        return cls(**{k: v for k, v in values.items() if k in field_names(cls)})


@dataclass
class HRMConfig(PuzzleModelConfig):
    H_cycles: int = 2  # high-level (slow) updates per ACT step
    L_cycles: int = 2  # low-level (fast) updates per high-level update
    H_layers: int = 4
    L_layers: int = 4
    # ours: True = the paper's one-step gradient (only the last L- and H-update carry gradient);
    # False = TRM's full gradient through the last H cycle (its L_cycles L-updates and the H-update)
    one_step_gradient: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.H_cycles, self.L_cycles, self.H_layers, self.L_layers) < 1:
            raise ValueError("H_cycles, L_cycles, H_layers and L_layers must be >= 1")

    def layer_passes(self) -> tuple[int, int]:
        """Blocks run per ACT step, and how many of them carry gradient (for the FLOP count)."""
        forward = self.H_cycles * (self.L_cycles * self.L_layers + self.H_layers)
        with_grad = (1 if self.one_step_gradient else self.L_cycles) * self.L_layers + self.H_layers
        return forward, with_grad


def field_names(cls: type) -> frozenset[str]:
    """The config keys a model's dataclass accepts (what a Hydra `model:` section may set)."""
    return frozenset(f.name for f in dataclasses.fields(cls))


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """SwiGLU hidden width, rounded as the official code: multiple of 256 above 2/3 * expansion * d."""
    return _find_multiple(round(expansion * hidden_size * 2 / 3), 256)


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b
