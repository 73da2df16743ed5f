"""The two bridges between the frozen LLM and the HRM controller.

In: `PromptBridge` pools the prompt region of the LLM's states at the cut (before its final norm,
or after layer k) into the controller's input x (B, d_h); `TokenBridge` instead projects the
last W prompt token states, one input slot each (B, W, d_h); `AnswerBridge` is the oracle's:
the gold answer's token embeddings, read from the teacher-forced input ids.
Out: an injector conditions those same token states on z_H (B, d_h), before the LLM's own final
norm and LM head: `GRB` (gated residual bias) or `CAB` (cross-attention bridge to m memory
tokens); `VocabBias` optionally adds a gated bias straight to the logits.

Every conditioning path is scaled by sigmoid(gate) of a learned scalar, so gate → -inf gives
the LLM's own logits exactly. Injectors are position-wise (a token's output depends only on its
own state and z_H), which is what lets decoding apply them to one new token at a time.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from hybrid.config import HybridConfig
from puzzle_hrm.layers import CastedLinear, attention, rms_norm


class PromptBridge(nn.Module):
    """x = proj(mix([mean of the prompt states, last prompt state])), as the prototype.

    Deviation: both pooled vectors are RMS-normalised first (no gain). Pre-norm states carry the
    residual stream's scale, large and model-specific; the LLM itself normalises them before its
    head, and the controller's input then starts at unit scale like its states.

    centered: standardise each pooled feature over the training questions instead (BatchNorm
    without gain: batch statistics in training, running ones in evaluation and decoding). The
    prompts share the chat template, so RMS-normalised pooled vectors differ between questions
    by ~2.5 % of their norm (SmolLM2, hrm_bench.suites.hybrid_diagnose), and the controller learns to
    ignore that sliver: its z_H ends the same for every question.
    """

    def __init__(self, hidden_size: int, d_h: int, eps: float, centered: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.standardise = nn.BatchNorm1d(2 * hidden_size, eps=eps, affine=False) if centered else None
        self.mix = CastedLinear(2 * hidden_size, hidden_size, bias=False)
        self.proj = CastedLinear(hidden_size, d_h, bias=False)

    def pool(self, hidden: Tensor, attention_mask: Tensor, prompt_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and last state of each row's prompt: its first `prompt_length` attended tokens.

        Works with left or right padding. The mean comes from a running sum (cumsum is
        sequential), so padding adds exact zeros and a row's result does not depend on its batch.
        """
        mask = attention_mask.bool()
        prompt_lengths = torch.as_tensor(prompt_lengths, device=hidden.device).view(-1, 1)  # (B, 1)
        attended = mask.cumsum(1)  # (B, T): attended tokens up to and including each position
        in_prompt = mask & (attended <= prompt_lengths)
        last = last_prompt_position(attention_mask, prompt_lengths)
        running = torch.where(in_prompt.unsqueeze(-1), hidden.float(), 0.0).cumsum(1)  # (B, T, D)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return running[rows, last] / prompt_lengths, hidden[rows, last].float()

    def forward(self, hidden: Tensor, attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
        """(B, T, D) LLM states → x (B, d_h)."""
        mean, last = self.pool(hidden, attention_mask, prompt_lengths)
        if self.standardise is not None:
            return self.proj(self.mix(self.standardise(torch.cat((mean, last), dim=-1))))
        pooled = torch.cat((rms_norm(mean, self.eps), rms_norm(last, self.eps)), dim=-1)  # (B, 2D)
        return self.proj(self.mix(pooled))


class TokenBridge(nn.Module):
    """x = proj(RMS-normalised state) of each of the last `tokens` prompt tokens (B, W, d_h).

    A fixed window ending at the last prompt token: the operands of a short question sit there
    (behind the chat template's fixed head), and the window needs no padding mask, so left-padded
    decoding and right-padded training see exactly the same slots."""

    def __init__(self, hidden_size: int, d_h: int, tokens: int, eps: float) -> None:
        super().__init__()
        self.tokens, self.eps = tokens, eps
        self.proj = CastedLinear(hidden_size, d_h, bias=False)

    def forward(self, hidden: Tensor, attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
        if (torch.as_tensor(prompt_lengths) < self.tokens).any():
            raise ValueError(f"input_tokens={self.tokens} exceeds a prompt of {int(torch.as_tensor(prompt_lengths).min())} tokens")
        window = last_prompt_position(attention_mask, prompt_lengths).view(-1, 1) + torch.arange(1 - self.tokens, 1, device=hidden.device)  # (B, W)
        states = hidden.float().gather(1, window.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, W, D)
        return self.proj(rms_norm(states, self.eps))


ORACLE_ANSWER_TOKENS = 8  # answer tokens the oracle reads (EOS and padding after a shorter answer)


class AnswerBridge(nn.Module):
    """The oracle's input: x = proj(RMS-normalised input embeddings of the first answer tokens),
    read from the teacher-forced input ids right after each row's prompt. It is handed the answer,
    so it bounds what the injection path can do with a perfect controller."""

    def __init__(self, hidden_size: int, d_h: int, eps: float, embed: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.eps = eps
        self.embed = embed  # the frozen LLM's input embedding (a bound method: not registered, not trained)
        self.proj = CastedLinear(ORACLE_ANSWER_TOKENS * hidden_size, d_h, bias=False)

    def forward(self, hidden: Tensor, attention_mask: Tensor, prompt_lengths: Tensor, input_ids: Tensor) -> Tensor:
        start = last_prompt_position(attention_mask, prompt_lengths) + 1  # (B,)
        positions = start.view(-1, 1) + torch.arange(ORACLE_ANSWER_TOKENS, device=hidden.device)  # (B, A)
        inside = positions < input_ids.shape[1]
        ids = input_ids.gather(1, positions.clamp_max(input_ids.shape[1] - 1))
        attended = attention_mask.gather(1, positions.clamp_max(input_ids.shape[1] - 1)).bool() & inside
        embedded = torch.where(attended.unsqueeze(-1), rms_norm(self.embed(ids).float(), self.eps), 0.0)  # (B, A, D)
        return self.proj(embedded.flatten(1))


def last_prompt_position(attention_mask: Tensor, prompt_lengths: Tensor) -> Tensor:
    """(B,) position of each row's last prompt token: its `prompt_length`-th attended token (left or right padding)."""
    attended = attention_mask.bool().cumsum(1)  # (B, T)
    prompt_lengths = torch.as_tensor(prompt_lengths, device=attention_mask.device).view(-1, 1)
    if (prompt_lengths < 1).any() or (prompt_lengths > attended[:, -1:]).any():
        raise ValueError(f"prompt_lengths {prompt_lengths.view(-1).tolist()} must lie in [1, attended tokens {attended[:, -1].tolist()}]")
    return (attention_mask.bool() & (attended == prompt_lengths)).int().argmax(1)


class Injector(nn.Module):
    """hidden (B, T, D), z_H (B, d_h) → hidden + sigmoid(gate) · delta(hidden, z_H), position-wise.

    relative: delta is also multiplied by each state's RMS, so the gate is the injection's share
    of the residual stream (0.12 at sigmoid(-2)) whatever the stream's scale. Without it a unit-
    scale delta meets SmolLM2's last states at RMS ~33: 0.4 % of them at step 0, and AdamW needs
    hundreds of steps just to grow the projection to a scale the final norm notices."""

    def __init__(self, gate_init: float, relative: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.relative, self.eps = relative, eps

    def delta(self, hidden: Tensor, z_H: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, hidden: Tensor, z_H: Tensor) -> Tensor:
        delta = self.delta(hidden, z_H)
        if self.relative:
            delta = delta * hidden.float().square().mean(-1, keepdim=True).add(self.eps).sqrt()
        return hidden + (torch.sigmoid(self.gate) * delta).to(hidden.dtype)

    def condition(self, z_H: Tensor) -> Callable[[Tensor], Tensor]:
        """Fix z_H (one per prompt) and return hidden → injected hidden, for decoding."""
        return lambda hidden: self(hidden, z_H)


class GRB(Injector):
    """Gated residual bias: the same projection of z_H added to every token state."""

    def __init__(self, d_h: int, hidden_size: int, gate_init: float, relative: bool = False) -> None:
        super().__init__(gate_init, relative)
        self.proj = CastedLinear(d_h, hidden_size, bias=False)

    def delta(self, hidden: Tensor, z_H: Tensor) -> Tensor:
        return self.proj(z_H).unsqueeze(1)  # (B, 1, D), broadcast over tokens


class CAB(Injector):
    """Cross-attention bridge: z_H → m memory tokens of the LLM width; every token state attends
    to its row's memory (softmax over the m tokens) and the attended value is added back.

    Queries come from the RMS-normalised state (pre-norm attention; the raw residual stream's
    scale would saturate the softmax).
    """

    def __init__(self, d_h: int, hidden_size: int, num_heads: int, mem_tokens: int, gate_init: float, eps: float, attn_backend: str, relative: bool = False) -> None:
        super().__init__(gate_init, relative, eps)
        if hidden_size % num_heads:
            raise ValueError(f"CAB: the LLM width {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads, self.mem_tokens, self.eps, self.attn_backend = num_heads, mem_tokens, eps, attn_backend
        self.memory = CastedLinear(d_h, mem_tokens * hidden_size, bias=False)
        self.q_proj = CastedLinear(hidden_size, hidden_size, bias=False)
        self.kv_proj = CastedLinear(hidden_size, 2 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def delta(self, hidden: Tensor, z_H: Tensor) -> Tensor:
        B, T, D = hidden.shape
        head_dim = D // self.num_heads
        memory = self.memory(z_H).view(B, self.mem_tokens, D)  # (B, m, D)
        q = self.q_proj(rms_norm(hidden, self.eps).to(memory.dtype)).view(B, T, self.num_heads, head_dim)
        k, v = self.kv_proj(memory).view(B, self.mem_tokens, 2 * self.num_heads, head_dim).split(self.num_heads, dim=2)  # (B, m, H, hd) each
        out = attention(q, k, v, self.attn_backend)  # (B, T, H, hd): no token sees another token
        return self.o_proj(out.reshape(B, T, D))


class VocabBias(nn.Module):
    """Gated vocabulary bias from z_H: (B, d_h) → sigmoid(gate) · W(z_H) (B, V), added to every position's logits."""

    def __init__(self, d_h: int, vocab_size: int, gate_init: float) -> None:
        super().__init__()
        self.proj = CastedLinear(d_h, vocab_size, bias=False)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, z_H: Tensor) -> Tensor:
        return torch.sigmoid(self.gate) * self.proj(z_H)


def build_bridge(config: HybridConfig, hidden_size: int, embed: Callable[[Tensor], Tensor]) -> nn.Module:
    """The controller's input: the oracle's answer embedding, the last input_tokens states, or the pooled prompt."""
    if config.controller == "oracle":
        return AnswerBridge(hidden_size, config.d_h, config.rms_norm_eps, embed)
    if config.input_tokens:
        return TokenBridge(hidden_size, config.d_h, config.input_tokens, config.rms_norm_eps)
    return PromptBridge(hidden_size, config.d_h, config.rms_norm_eps, config.centered_input)


def build_injector(config: HybridConfig, hidden_size: int) -> Injector:
    if config.injector == "prefix":
        raise ValueError("the prefix injector is not position-wise: build it as hybrid.prefix.PrefixLM (hybrid.trainable.hybrid_trainable)")
    if config.injector == "grb":
        return GRB(config.d_h, hidden_size, config.grb_gate_init, config.relative_injection)
    return CAB(config.d_h, hidden_size, config.num_heads, config.cab_mem_tokens, config.cab_gate_init, config.rms_norm_eps, config.attn_backend, config.relative_injection)
