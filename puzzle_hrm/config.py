"""HRMConfig: the official `hrm_act_v1` architecture fields, names and defaults.

Field names match `HierarchicalReasoningModel_ACTV1Config` and `config/arch/hrm_v1.yaml` of the
official code (sapientinc/HRM) so a reader can diff the two. Paper: Wang et al. 2025,
arXiv 2506.21734, sections 2 (H/L modules, one-step gradient) and 2.3 (ACT halting).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class HRMConfig:
    batch_size: int = 768  # per-device batch; sizes the sparse puzzle-embedding buffer
    seq_len: int = 81  # tokens per puzzle, excluding the puzzle-embedding positions
    puzzle_emb_ndim: int = 512  # official arch sets ${hidden_size}; 0 disables the puzzle embedding
    num_puzzle_identifiers: int = 1
    vocab_size: int = 11

    H_cycles: int = 2  # high-level (slow) updates per ACT step
    L_cycles: int = 2  # low-level (fast) updates per high-level update
    H_layers: int = 4
    L_layers: int = 4

    hidden_size: int = 512
    expansion: float = 4.0  # SwiGLU width multiplier before the 2/3 and multiple-of-256 rounding
    num_heads: int = 8
    pos_encodings: str = "rope"  # "rope" | "learned"

    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    halt_max_steps: int = 16  # ACT: maximum segments; evaluation always runs all of them
    halt_exploration_prob: float = 0.1

    forward_dtype: str = "bfloat16"  # official default; use "float32" on CPU
    attn_backend: str = "auto"  # ours, not official: auto (flash-attn on CUDA if importable) | flash | sdpa | sdpa_<kernel> (layers.SDPA_KERNELS)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.pos_encodings not in ("rope", "learned"):
            raise ValueError(f"pos_encodings must be 'rope' or 'learned', got {self.pos_encodings!r}")
        if min(self.H_cycles, self.L_cycles, self.H_layers, self.L_layers, self.halt_max_steps) < 1:
            raise ValueError("H_cycles, L_cycles, H_layers, L_layers and halt_max_steps must be >= 1")
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
    def from_dict(cls, values: dict) -> "HRMConfig":
        """Build from a (possibly larger) mapping, e.g. the official all_config.yaml `arch` section."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """SwiGLU hidden width, rounded as the official code: multiple of 256 above 2/3 * expansion * d."""
    return _find_multiple(round(expansion * hidden_size * 2 / 3), 256)


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b
