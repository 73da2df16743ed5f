"""HRMController: HRM's two recurrent levels over the prompt's input slots (paper §2).

Latent shape: z_H and z_L are (B, S, d_h), one latent slot per input slot: S = 1 for the
prototype's pooled vector x, S = W with `input_tokens` (the last W prompt token states, which
carry the LLM's own positional information, so no positional encoding is added). The output z_H
is the last slot's. Over one slot self-attention reduces to its value and output projections, so
each block acts as a post-norm residual MLP pair; the H/L hierarchy, the input injection and the
one-step gradient are HRM's. The query and key rows of each block's qkv projection therefore get
no gradient (measured: ~1e-11, float noise) yet count among the trainable parameters: 2 d_h^2 per
block, 4.2 M of the 28.5 M at d_h 512 with 4 + 4 layers.

One segment, as the prototype (paper Fig. 4, one H-update per segment):
    inner_T - 1 L-updates without gradient:   z_L ← L(z_L, z_H + x)
    the last L-update and one H-update:       z_L ← L(z_L, z_H + x);  z_H ← H(z_H, z_L)
The blocks are post-norm (HRMBlock ends in RMSNorm), so z_H is RMS-normalised: the prototype's
"RMSNorm on z_H". States are detached between segments; the caller puts a loss after each one
(deep supervision). Gradient therefore reaches the L- and H-levels, x (and through it the
bridge) only through the last L-update and the H-update of each segment. The ablations switch
either off: `one_step_grad=False` backpropagates through every L-update of a segment,
`detach_segments=False` through all earlier segments.

`FeedForwardController` is the ablation's plain controller of the same block count
(H_layers + L_layers blocks run once, no recurrence): "transformer" uses HRM's blocks, "mlp"
drops their attention. `OracleController` hands on its input (the gold answer's embedding, see
hybrid.injectors.AnswerBridge): the injection path's upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from hybrid.config import HybridConfig
from puzzle_hrm.layers import CastedLinear, HRMBlock, ReasoningModule, SwiGLU, rms_norm, trunc_normal_init_


@dataclass
class SegmentOutput:
    z_H: Tensor  # (B, d_h), unit RMS; carries this segment's gradient
    q_halt_logits: Tensor | None = None  # (B,) float32, with use_act
    q_continue_logits: Tensor | None = None


class HRMController(nn.Module):
    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config

        def level(n_layers: int) -> ReasoningModule:
            return ReasoningModule(
                [HRMBlock(config.d_h, config.num_heads, config.intermediate_size, config.rms_norm_eps, config.attn_backend) for _ in range(n_layers)]
            )

        self.H_level = level(config.H_layers)
        self.L_level = level(config.L_layers)
        # Initial states: fixed random vectors, as the official HRM (truncated normal, std 1).
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.d_h), std=1))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.d_h), std=1))
        self.q_head = CastedLinear(config.d_h, 2, bias=True) if config.use_act else None
        if self.q_head is not None:
            with torch.no_grad():  # official HRM init: q = -5 for both actions at first
                self.q_head.weight.zero_()
                self.q_head.bias.fill_(-5)

    def segments(self, x: Tensor, n_segments: int) -> Iterator[SegmentOutput]:
        """Run n_segments segments from the initial state on input x (B, d_h) or (B, S, d_h), yielding after each."""
        x = input_slots(x, self.config.d_h, n_segments)
        z_H = self.H_init.expand_as(x)
        z_L = self.L_init.expand_as(x)
        for _ in range(n_segments):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.one_step_grad):
                for _ in range(self.config.inner_T - 1):
                    z_L = self.L_level(z_L, z_H + x, None)
            # One-step gradient: only the last L-update and the H-update are differentiated.
            z_L = self.L_level(z_L, z_H + x, None)
            z_H = self.H_level(z_H, z_L, None)
            yield self._output(z_H[:, -1])
            if self.config.detach_segments:  # deep supervision: the next segment starts from the states, not their history
                z_H, z_L = z_H.detach(), z_L.detach()

    def _output(self, z_H: Tensor) -> SegmentOutput:
        if self.q_head is None:
            return SegmentOutput(z_H)
        q_logits = self.q_head(z_H).float()  # (B, 2): halt, continue
        return SegmentOutput(z_H, q_logits[:, 0], q_logits[:, 1])


class FeedForwardController(nn.Module):
    """H_layers + L_layers blocks run once over the input slots: z_H = last slot's output, the
    same at every segment (a plain controller has nothing to iterate)."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        n = config.H_layers + config.L_layers
        if config.controller == "transformer":
            self.blocks = nn.ModuleList(HRMBlock(config.d_h, config.num_heads, config.intermediate_size, config.rms_norm_eps, config.attn_backend) for _ in range(n))
        else:
            self.blocks = nn.ModuleList(SwiGLU(config.d_h, config.intermediate_size) for _ in range(n))

    def segments(self, x: Tensor, n_segments: int) -> Iterator[SegmentOutput]:
        z = input_slots(x, self.config.d_h, n_segments)
        for block in self.blocks:
            z = block(z, None) if isinstance(block, HRMBlock) else rms_norm(z + block(z), self.config.rms_norm_eps)
        out = SegmentOutput(z[:, -1])
        for _ in range(n_segments):
            yield out


class OracleController(nn.Module):
    """z_H = the RMS-normalised input (the gold answer's embedding), at every segment."""

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config

    def segments(self, x: Tensor, n_segments: int) -> Iterator[SegmentOutput]:
        out = SegmentOutput(rms_norm(input_slots(x, self.config.d_h, n_segments)[:, -1], self.config.rms_norm_eps))
        for _ in range(n_segments):
            yield out


def build_controller(config: HybridConfig) -> nn.Module:
    if config.controller == "hrm":
        return HRMController(config)
    if config.controller == "oracle":
        return OracleController(config)
    return FeedForwardController(config)


def input_slots(x: Tensor, d_h: int, n_segments: int) -> Tensor:
    """x (B, d_h) or (B, S, d_h) as (B, S, d_h) slots, checked."""
    if x.ndim not in (2, 3) or x.shape[-1] != d_h:
        raise ValueError(f"x must be (B, d_h={d_h}) or (B, S, d_h), got {tuple(x.shape)}")
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    return x.unsqueeze(1) if x.ndim == 2 else x


def halting_segments(outputs: Sequence[SegmentOutput]) -> Tensor:
    """Segments each row uses under the q-head's rule (B,): the first where Q(halt) > Q(continue),
    else all of them. Training runs every segment; this is for evaluation and decoding."""
    if not outputs or outputs[0].q_halt_logits is None:
        raise ValueError("halting needs the q-head's outputs of at least one segment (use_act=True)")
    halt = torch.stack([o.q_halt_logits > o.q_continue_logits for o in outputs])  # (M, B)
    halt[-1] = True
    return halt.int().argmax(0) + 1
