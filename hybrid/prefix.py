"""Prefix injection: z_H becomes m soft tokens that the whole frozen LLM reads before the answer.

    x      = bridge(prompt states at the cut)                                (B, d_h)
    for each segment m = 1..M of the controller (deep supervision):
        soft_m   = gain · RMS(prompt embeddings) · rmsnorm(W z_H^m)          (B, m, D)
        logits_m = LLM(prompt ++ soft_m ++ answer), at the states that predict the answer
        loss_m   = CE on the answer tokens

As the HRM-LM prototype's prefix, the soft tokens are read by every layer through attention, so
the LLM itself turns them into a multi-token answer (after-last-layer GRB adds one vector to
every answer position and cannot; see hybrid.injectors). They sit after the prompt, not before
it: the prompt's states, which the controller reads, do not depend on them (causal attention), so
one prompt pass gives both the controller's input and the KV cache the soft tokens and answer
continue from. Each training step runs the whole LLM over m + answer tokens per segment, with
gradient through its frozen layers to the soft tokens; decoding reads the soft tokens into the KV
cache once, after the prompt (hybrid.generate).

With prefix_kv_tokens k > 0, z_H also becomes k key/value slots in every layer's attention, after
the prompt's and before the soft tokens' (prefix tuning, Li & Liang 2021): every layer, not only the
first, then reads the controller directly, the way LoRA changes every layer. The slots take
positions as tokens do; they start as copies of the prompt's last k tokens' keys and values, and
z_H moves them (KVSlots).

Scale: the soft tokens start at the RMS of the row's own prompt embeddings (per model: SmolLM2's
embeddings are small, Gemma scales its embeddings by sqrt(D) inside the model), so at step 0 they
look like tokens to the LLM; a learned gain adjusts it. There is no gate that recovers the LLM
exactly: m extra tokens always change its context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from hybrid.backbone import Backbone
from hybrid.baselines import seeded
from hybrid.config import HybridConfig
from hybrid.controller import build_controller
from hybrid.generate import Answers, DecodeConfig, extended, generate, position_ids
from hybrid.injectors import build_bridge
from hybrid.model import token_mean_loss
from hybrid.tasks import Collator, Example, pad
from hybrid.train import CorrectFn, evaluating
from puzzle_hrm.layers import CastedLinear, rms_norm


class SoftPrefix(nn.Module):
    """z_H (B, d_h) -> m soft tokens (B, m, D) at `scale` (B,) times a learned gain."""

    def __init__(self, d_h: int, hidden_size: int, tokens: int, eps: float) -> None:
        super().__init__()
        self.tokens, self.eps = tokens, eps
        self.proj = CastedLinear(d_h, tokens * hidden_size, bias=False)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, z_H: Tensor, scale: Tensor) -> Tensor:
        soft = self.proj(z_H).view(z_H.shape[0], self.tokens, -1)  # (B, m, D)
        return rms_norm(soft, self.eps) * (self.gain * scale).view(-1, 1, 1)


class KVSlots(nn.Module):
    """z_H (B, d_h) -> k key/value slots per layer (B, layers, 2, KV heads, k, head dim): the keys
    and values of the prompt's last k tokens, again, plus a delta from z_H through a rank-r
    bottleneck, RMS-normalised per head and scaled to `scale` (B, layers, 2), the prompt's own RMS,
    times a learned gain per layer and kind (0.1 at init).

    Slots of random keys and values at the prompt's scale would put noise into every layer (SmolLM2:
    answer CE 12.5 at the first check, against 3.4 with the soft tokens alone); copies of tokens the LLM has
    already read change little, and the controller moves them from there."""

    def __init__(self, d_h: int, rank: int, layers: int, heads: int, head_dim: int, tokens: int, eps: float) -> None:
        super().__init__()
        self.shape, self.eps = (layers, 2, heads, tokens, head_dim), eps
        self.down = CastedLinear(d_h, rank, bias=False)
        self.up = CastedLinear(rank, layers * 2 * heads * tokens * head_dim, bias=False)
        self.gain = nn.Parameter(torch.full((layers, 2), 0.1))

    def forward(self, z_H: Tensor, prompt_kv: Tensor, scale: Tensor) -> Tensor:
        """prompt_kv (B, layers, 2, KV heads, P, head dim), left-padded: its last k tokens are real."""
        delta = rms_norm(self.up(self.down(z_H)).view(z_H.shape[0], *self.shape), self.eps)
        return prompt_kv[..., -self.shape[3] :, :].float() + delta * (self.gain * scale)[..., None, None, None]


def prompt_rms(x: Tensor, mask: Tensor, features: tuple[int, ...]) -> Tensor:
    """RMS over the real tokens of left-padded rows: x (B, P, ...) with the `features` dims averaged
    per token, then the mean over the tokens mask (B, P) keeps -> (B, ...)."""
    per_token = x.float().square().mean(features)  # (B, P, ...)
    weights = mask.view(*mask.shape, *[1] * (per_token.ndim - 2))
    return (per_token * weights).sum(1).div(weights.sum(1)).sqrt()


@dataclass
class Conditioning:
    """One segment's conditioning of the LLM: its soft tokens and, with prefix_kv_tokens, its slots."""

    soft: Tensor  # (B, m, D)
    slots: Tensor | None  # (B, layers, 2, KV heads, k, head dim)


@dataclass
class PromptRead:
    """One pass of the frozen LLM over left-padded prompts: what the controller and the soft tokens need."""

    hidden: Tensor  # (B, P, D) float32: the states at the bridge's cut
    cache: Any  # the prompt's KV cache, every layer
    mask: Tensor  # (B, P)
    scale: Tensor  # (B,) RMS of each row's prompt input embeddings
    kv: Tensor  # (B, layers, 2, KV heads, P, head dim): the cache's keys and values, per layer
    kv_scale: Tensor | None  # (B, layers, 2) RMS of each row's prompt keys and values per layer; None without slots


class PrefixLM(nn.Module):
    """Bridge, controller and soft prefix (the trainable parts) over a frozen backbone."""

    def __init__(self, config: HybridConfig, backbone: Backbone) -> None:
        super().__init__()
        if config.injector != "prefix":
            raise ValueError(f"PrefixLM is the prefix injector's model, got injector={config.injector!r}")
        self.config = config
        self.backbone = backbone  # frozen, not registered (a dataclass, not a module)
        self.layer = backbone.layer_at(config.inject_depth)  # where the bridge reads the prompt; None: the pre-norm last states
        self.bridge = build_bridge(config, backbone.hidden_size, backbone.embed)
        self.controller = build_controller(config)
        self.prefix = SoftPrefix(config.d_h, backbone.hidden_size, config.prefix_tokens, config.rms_norm_eps)
        self.slots = KVSlots(config.d_h, config.prefix_kv_rank, backbone.num_layers, *backbone.kv_heads, config.prefix_kv_tokens, config.rms_norm_eps) if config.prefix_kv_tokens else None

    @torch.no_grad()
    def read_prompts(self, input_ids: Tensor, attention_mask: Tensor) -> PromptRead:
        hidden, cache = self.backbone.hidden_states(input_ids, attention_mask, position_ids(attention_mask), use_cache=True, layer=self.layer)
        scale = prompt_rms(self.backbone.embed(input_ids), attention_mask, (-1,))
        kv = self.backbone.upper_kv(cache, -1)  # (B, P, layers, 2, KV heads, head dim)
        kv_scale = None if self.slots is None else prompt_rms(kv, attention_mask, (-1, -2))
        return PromptRead(hidden.float(), cache, attention_mask, scale, kv.permute(0, 2, 3, 4, 1, 5), kv_scale)

    def conditionings(self, prompts: PromptRead, n_segments: int) -> Iterator[Conditioning]:
        """Each segment's soft tokens and slots."""
        x = self.bridge(prompts.hidden, prompts.mask, prompts.mask.sum(1))
        for out in self.controller.segments(x, n_segments):
            yield Conditioning(self.prefix(out.z_H, prompts.scale), None if self.slots is None else self.slots(out.z_H, prompts.kv, prompts.kv_scale))

    def answer_logits(self, prompts: PromptRead, answer_ids: Tensor, answer_mask: Tensor, n_segments: int, supervised_only: bool = False) -> list[Tensor]:
        """Teacher-forced, per segment: the logits (N, V) that predict the answer tokens, in the
        order of answer_mask (B, A) (right-padded answers). All segments run through the LLM
        together; with supervised_only, only those the training loss reads (config.supervised)."""
        segments = list(self.conditionings(prompts, n_segments))
        if supervised_only:
            segments = self.config.supervised(segments)
        M, m = len(segments), self.config.prefix_tokens
        answers = self.backbone.embed(answer_ids).float()  # (B, A, D)
        inputs = torch.cat([torch.cat((segment.soft, answers), 1) for segment in segments])  # (M·B, m + A, D)
        mask = torch.cat((torch.ones_like(answer_mask[:, :1]).expand(-1, m), answer_mask), 1).repeat(M, 1)
        kv, before = prompts.kv, prompts.mask
        if self.slots is not None:  # each segment's slots continue its rows' prompt, as tokens would
            kv = torch.cat([torch.cat((kv, segment.slots.to(kv.dtype)), 4) for segment in segments])
            before = extended(before, self.config.prefix_kv_tokens)
        else:
            kv = kv.repeat(M, 1, 1, 1, 1, 1)
        top = self.backbone.top_states(inputs, mask, -1, kv, before.repeat(M, 1))
        predicting = top[:, m - 1 : -1]  # (M·B, A, D): the last soft token predicts the first answer token
        selected = predicting[answer_mask.bool().repeat(M, 1)]  # (M·N, D), segment-major
        return list(self.backbone.logits(selected).chunk(M))


class PrefixTrainable(nn.Module):
    """PrefixLM behind the `Trainable` protocol: live LLM passes (the soft tokens change what every
    layer computes for the answer, so only the prompt pass could be cached)."""

    uses_cached_states = False

    def __init__(self, config: HybridConfig, backbone: Backbone, collator: Collator) -> None:
        super().__init__()
        self.lm = PrefixLM(config, backbone)  # its parameters and state_dict are the trainable parts only
        self.backbone = backbone
        self.collator = collator

    def _prompts(self, examples: list[Example]) -> PromptRead:
        prompts = self.collator.prompts(examples)
        return self.lm.read_prompts(prompts["input_ids"].to(self.backbone.device), prompts["attention_mask"].to(self.backbone.device))

    def gold_answer_logits(self, examples: list[Example], n_segments: int, supervised_only: bool = False) -> tuple[list[Tensor], Tensor, Tensor]:
        """Teacher-forced on the gold answers: each (supervised_only: each supervised) segment's
        logits (N, V), the targets (N,) and each target's row (N,)."""
        answer_ids, answer_mask = (t.to(self.backbone.device) for t in pad(self.collator.target_ids(examples), self.backbone.tokenizer.pad_token_id, "right"))
        logits = self.lm.answer_logits(self._prompts(examples), answer_ids, answer_mask, n_segments, supervised_only)
        return logits, answer_ids[answer_mask.bool()], answer_mask.nonzero()[:, 0]

    def training_loss(self, batch: dict[str, Any], correct_fn: CorrectFn | None = None) -> tuple[Tensor, dict[str, float]]:
        """Deep supervision: the sum over the supervised segments (config.supervised) of the
        token-mean CE on the answer tokens (`correct_fn` unused: no ACT). Without deep
        supervision only the last segment's soft tokens run through the LLM."""
        logits, targets, _ = self.gold_answer_logits(batch["examples"], self.lm.config.segments, supervised_only=True)
        losses = torch.stack([token_mean_loss(segment, targets, self.lm.config.loss_type) for segment in logits])
        return losses.sum(), {"loss": float(losses.sum().detach()), "lm_loss": float(losses[-1].detach())}

    @torch.no_grad()
    def answer(self, examples: list[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        """In eval mode (hybrid.train.evaluating)."""
        with evaluating(self):
            prompts = self.collator.prompts(examples)
            ids, mask = prompts["input_ids"].to(self.backbone.device), prompts["attention_mask"].to(self.backbone.device)
            n = self.lm.config.eval_segments
            read = self.lm.read_prompts(ids, mask)
            last = list(self.lm.conditionings(read, n))[-1]
            slots = 0 if last.slots is None else self.backbone.append_kv(read.cache, last.slots)
            out = generate(self.backbone, ids, mask, seeded(decode, generator), soft_prefix=last.soft, prompt_cache=read.cache, cache_slots=slots)
            return out.answers(self.backbone.tokenizer, torch.full((len(examples),), n))
