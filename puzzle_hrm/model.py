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

import dataclasses
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
    """Embeddings, the H and L levels, and the output heads; one call = one ACT segment.

    TRM and the plain transformer reuse it: they override `build_levels` / `levels` (their
    networks), `carry_type` (their states, each with an `<X>_init` buffer for its `z_<X>`) and,
    for the transformer, `forward`.
    """

    carry_type: type = HRMInnerCarry

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
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.total_seq_len, config.hidden_size, init_std=embed_init_std, cast_to=dtype)

        self.build_levels(config)
        # Initial states of a fresh puzzle: fixed random vectors, broadcast over positions.
        for state in dataclasses.fields(self.carry_type):
            self.register_buffer(f"{state.name[2:]}_init", trunc_normal_init_(torch.empty(config.hidden_size, dtype=dtype), std=1))
        with torch.no_grad():  # Q-head starts near "never halt": q = -5 for both actions.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def attention_level(self, n_layers: int) -> ReasoningModule:
        config = self.config
        return ReasoningModule(
            [HRMBlock(config.hidden_size, config.num_heads, config.intermediate_size, config.rms_norm_eps, config.attn_backend) for _ in range(n_layers)]
        )

    def build_levels(self, config: HRMConfig) -> None:
        self.H_level = self.attention_level(config.H_layers)
        self.L_level = self.attention_level(config.L_layers)

    def levels(self) -> tuple[ReasoningModule, ReasoningModule]:
        """The networks of the H- and of the L-update."""
        return self.H_level, self.L_level

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

    def empty_carry(self, batch_size: int, device: torch.device):
        shape = (batch_size, self.config.total_seq_len, self.config.hidden_size)
        return self.carry_type(**{f.name: torch.empty(shape, dtype=self.config.dtype, device=device) for f in dataclasses.fields(self.carry_type)})

    def reset_carry(self, reset_flag: torch.Tensor, carry):
        """Rows with reset_flag start from the `<X>_init` vectors (H_init, L_init); the others keep their state."""
        flag = reset_flag.view(-1, 1, 1)
        return self.carry_type(**{
            f.name: torch.where(flag, getattr(self, f"{f.name[2:]}_init"), getattr(carry, f.name)) for f in dataclasses.fields(self.carry_type)
        })

    def forward(self, carry: HRMInnerCarry, batch: Batch) -> tuple[HRMInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cos_sin = self.cos_sin()
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        H_net, L_net = self.levels()
        z_H, z_L = recurse(carry.z_H, carry.z_L, x, H_net, L_net, self.config, cos_sin)
        return (HRMInnerCarry(z_H=z_H.detach(), z_L=z_L.detach()), *self.heads(z_H))

    def heads(self, z_H: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token logits of the puzzle positions, and (q_halt, q_continue) from the first position."""
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)  # first position summarises the puzzle
        return logits, (q_logits[..., 0], q_logits[..., 1])


def recurse(z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, H_net: nn.Module, L_net: nn.Module,
            config: HRMConfig, cos_sin: CosSin | None) -> tuple[torch.Tensor, torch.Tensor]:
    """H_cycles cycles of (L_cycles L-updates z_L ← L(z_L, z_H + x), then one H-update z_H ← H(z_H, z_L)).

    All but the last cycle run without gradient. In the last one, `one_step_gradient` (HRM's
    approximation) keeps gradient only for its final L- and the H-update; otherwise (TRM) every
    update of the last cycle carries gradient, back-propagated in full.
    """
    with_grad_L = 1 if config.one_step_gradient else config.L_cycles
    with torch.no_grad():
        for _ in range(config.H_cycles - 1):
            for _ in range(config.L_cycles):
                z_L = L_net(z_L, z_H + x, cos_sin)
            z_H = H_net(z_H, z_L, cos_sin)
        for _ in range(config.L_cycles - with_grad_L):
            z_L = L_net(z_L, z_H + x, cos_sin)
    for _ in range(with_grad_L):
        z_L = L_net(z_L, z_H + x, cos_sin)
    z_H = H_net(z_H, z_L, cos_sin)
    return z_H, z_L


class HRM(nn.Module):
    """ACT wrapper: keeps a carry of rows in flight, swaps in new puzzles for rows that halted.

    TRM and the plain transformer share it and change only `inner_type`. With
    `act_continue_loss=False` (TRM's halting) the outputs hold no q_continue_logits and training
    runs no second forward for a Q-continue target.
    """

    inner_type: type = HRMInner

    def __init__(self, config: HRMConfig) -> None:
        super().__init__()
        self.config = config
        self.inner = self.inner_type(config)

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
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits}
        if self.config.act_continue_loss:
            outputs["q_continue_logits"] = q_continue_logits

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | self.halt_decision(q_halt_logits, outputs.get("q_continue_logits"), steps)
                if self.config.act_continue_loss:
                    # Q-learning target for "continue", bootstrapped one segment later; as in the official
                    # code, halt-only where *this* segment is the last one.
                    next_q_halt, next_q_continue = self.inner(inner_carry, current_data)[-1]
                    outputs["target_q_continue"] = q_continue_target(next_q_halt, next_q_continue, halt_only=is_last_step)
        return HRMCarry(inner_carry, steps, halted, current_data), outputs

    def halt_decision(self, q_halt: torch.Tensor, q_continue: torch.Tensor | None, steps: torch.Tensor) -> torch.Tensor:
        """Training halting rule: `wants_halt`, but with probability halt_exploration_prob force a
        random minimum of 2..halt_max_steps segments first."""
        explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
        min_halt_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
        return wants_halt(q_halt, q_continue) & (steps >= min_halt_steps)


def wants_halt(q_halt: torch.Tensor, q_continue: torch.Tensor | None) -> torch.Tensor:
    """The Q-policy: halt when Q(halt) > Q(continue); without a continue head (TRM's BCE-only
    halting) when the predicted probability of being correct passes 1/2, i.e. q_halt > 0."""
    return q_halt > (0 if q_continue is None else q_continue)


def q_continue_target(next_q_halt: torch.Tensor, next_q_continue: torch.Tensor, halt_only: torch.Tensor | bool) -> torch.Tensor:
    """Q-learning target for "continue": the value of the best action one segment later, as a
    probability; where `halt_only`, halting is the only action left, so its value alone."""
    halt_only = torch.as_tensor(halt_only, device=next_q_halt.device)
    return torch.sigmoid(torch.where(halt_only, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))
