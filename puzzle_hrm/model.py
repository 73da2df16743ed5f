"""The Hierarchical Reasoning Model with Adaptive Computation Time (official `hrm_act_v1`).

Paper: Wang et al. 2025, arXiv 2506.21734. Two recurrent modules share one token sequence:
the low-level module L updates fast from (z_H + input embedding), the high-level module H updates
slowly from z_L. One ACT step ("segment") runs H_cycles × L_cycles L-updates and H_cycles
H-updates; only the last L- and H-update carry gradient (the paper's one-step gradient
approximation), and the state is detached between segments (deep supervision: a loss after every
segment). A Q-head on z_H decides halt / continue, trained by Q-learning (see losses.py).

Public contract (same as the official code):
    carry = model.initial_carry(batch)
    carry, outputs = model(carry=carry, batch=batch)
outputs: logits (B, seq_len, vocab), q_halt_logits (B,), q_continue_logits (B,)
(+ target_q_continue (B,) while training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from puzzle_hrm.config import HRMConfig
from puzzle_hrm.layers import CastedEmbedding, CastedLinear, CosSin, HRMBlock, ReasoningModule, RotaryEmbedding, trunc_normal_init_
from puzzle_hrm.sparse_embedding import CastedSparseEmbedding

Batch = dict[str, torch.Tensor]  # inputs (B, seq_len), labels (B, seq_len), puzzle_identifiers (B,)


@dataclass
class HRMInnerCarry:
    z_H: torch.Tensor  # (B, total_seq_len, hidden)
    z_L: torch.Tensor


@dataclass
class HRMCarry:
    inner_carry: HRMInnerCarry
    steps: torch.Tensor  # (B,) int32: segments run on the current puzzle
    halted: torch.Tensor  # (B,) bool: the row takes new data at the next call
    current_data: Batch  # the puzzles the rows are working on


class HRMInner(nn.Module):
    """Embeddings, the H and L levels, and the output heads; one call = one ACT segment."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        dtype = config.dtype
        self.embed_scale = math.sqrt(config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale

        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, init_std=embed_init_std, cast_to=dtype)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)

        self.puzzle_emb_len = config.puzzle_emb_len
        if config.puzzle_emb_ndim > 0:
            # Zero init (init_std=0): a puzzle starts with no identity and learns one via SignSGD.
            self.puzzle_emb = CastedSparseEmbedding(
                config.num_puzzle_identifiers, config.puzzle_emb_ndim, batch_size=config.batch_size, init_std=0, cast_to=dtype
            )
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(config.head_dim, config.total_seq_len, config.rope_theta)
        else:
            self.embed_pos = CastedEmbedding(config.total_seq_len, config.hidden_size, init_std=embed_init_std, cast_to=dtype)

        def level(n_layers: int) -> ReasoningModule:
            return ReasoningModule(
                [HRMBlock(config.hidden_size, config.num_heads, config.intermediate_size, config.rms_norm_eps, config.attn_backend) for _ in range(n_layers)]
            )

        self.H_level = level(config.H_layers)
        self.L_level = level(config.L_layers)
        # Initial states of a fresh puzzle: fixed random vectors, broadcast over positions.
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=dtype), std=1))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=dtype), std=1))
        with torch.no_grad():  # Q-head starts near "never halt": q = -5 for both actions.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def cos_sin(self) -> CosSin | None:
        return self.rotary_emb() if self.config.pos_encodings == "rope" else None

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """(B, seq_len) tokens → (B, puzzle_emb_len + seq_len, hidden), scaled by sqrt(hidden)."""
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle = self.puzzle_emb(puzzle_identifiers)  # (B, puzzle_emb_ndim)
            pad = self.puzzle_emb_len * self.config.hidden_size - puzzle.shape[-1]
            if pad > 0:
                puzzle = F.pad(puzzle, (0, pad))
            embedding = torch.cat((puzzle.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the sum of two unit-scale embeddings at unit scale.
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(embedding.dtype))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int, device: torch.device) -> HRMInnerCarry:
        shape = (batch_size, self.config.total_seq_len, self.config.hidden_size)
        return HRMInnerCarry(
            z_H=torch.empty(shape, dtype=self.config.dtype, device=device),
            z_L=torch.empty(shape, dtype=self.config.dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: HRMInnerCarry) -> HRMInnerCarry:
        """Rows with reset_flag start from H_init / L_init; the others keep their state."""
        flag = reset_flag.view(-1, 1, 1)
        return HRMInnerCarry(z_H=torch.where(flag, self.H_init, carry.z_H), z_L=torch.where(flag, self.L_init, carry.z_L))

    def forward(self, carry: HRMInnerCarry, batch: Batch) -> tuple[HRMInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        H_cycles, L_cycles = self.config.H_cycles, self.config.L_cycles

        # All updates but the last L- and the last H-update run without gradient.
        with torch.no_grad():
            for h in range(H_cycles):
                for l in range(L_cycles):
                    if not (h == H_cycles - 1 and l == L_cycles - 1):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if h != H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos_sin)

        # One-step gradient: backprop through the final L- and H-update only.
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)

        new_carry = HRMInnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)  # first position summarises the puzzle
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1])


class HRM(nn.Module):
    """ACT wrapper: keeps a carry of rows in flight, swaps in new puzzles for rows that halted."""

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = HRMInner(config)

    @property
    def puzzle_emb(self) -> CastedSparseEmbedding | None:
        return getattr(self.inner, "puzzle_emb", None)

    def initial_carry(self, batch: Batch) -> HRMCarry:
        """Every row starts halted, so the first call loads the batch and resets the state."""
        batch_size, device = batch["inputs"].shape[0], batch["inputs"].device
        return HRMCarry(
            inner_carry=self.inner.empty_carry(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: HRMCarry, batch: Batch) -> tuple[HRMCarry, dict[str, torch.Tensor]]:
        halted = carry.halted
        inner_carry = self.inner.reset_carry(halted, carry.inner_carry)
        steps = torch.where(halted, 0, carry.steps)
        current_data = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}

        inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(inner_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | self.halt_decision(q_halt_logits, q_continue_logits, steps)
                # Q-learning target for "continue", bootstrapped one segment later; as in the official
                # code, halt-only where *this* segment is the last one.
                next_q_halt, next_q_continue = self.inner(inner_carry, current_data)[-1]
                outputs["target_q_continue"] = q_continue_target(next_q_halt, next_q_continue, halt_only=is_last_step)
        return HRMCarry(inner_carry, steps, halted, current_data), outputs

    def halt_decision(self, q_halt: torch.Tensor, q_continue: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Training halting rule: halt when Q(halt) > Q(continue), but with probability
        halt_exploration_prob force a random minimum of 2..halt_max_steps segments first."""
        explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
        min_halt_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
        return (q_halt > q_continue) & (steps >= min_halt_steps)


def q_continue_target(next_q_halt: torch.Tensor, next_q_continue: torch.Tensor, halt_only: torch.Tensor | bool) -> torch.Tensor:
    """Q-learning target for "continue": the value of the best action one segment later, as a
    probability; where `halt_only`, halting is the only action left, so its value alone."""
    halt_only = torch.as_tensor(halt_only, device=next_q_halt.device)
    return torch.sigmoid(torch.where(halt_only, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))
