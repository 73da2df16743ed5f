"""HybridLM: a frozen LLM conditioned by an HRM controller.

    x        = bridge(prompt region of the LLM's states at the cut)        (B, d_h) or (B, W, d_h)
    for each segment m = 1..M of the controller (deep supervision):
        logits_m = LLM head(final norm(top layers(injector(states, z_H^m)))) [+ VocabBias(z_H^m)]
        loss_m   = CE on target tokens [+ ACT q-head losses]

The cut is `inject_depth`: after the LLM's last layer (the baseline, no top layers to run) or
after layer k, where the frozen layers above k read the injected signal and are re-run from the
cached states at k every step.

Only the bridge, controller, injector and vocab bias are parameters of this module: the backbone
is a plain dataclass held by reference, so its weights are outside `parameters()`,
`state_dict()` and the optimizer, and its states can come from the feature cache.

Labels follow the Hugging Face convention: aligned with input_ids, IGNORE_LABEL_ID (-100) on
prompt and padding. The state at position t predicts token t + 1, so `supervised_positions`
shifts them (the prototype compared position t's logits with token t itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid.config import HybridConfig
from hybrid.controller import SegmentOutput, build_controller, halting_segments
from hybrid.injectors import AnswerBridge, VocabBias, build_bridge, build_injector, last_prompt_position
from puzzle_hrm.data.format import IGNORE_LABEL_ID
from puzzle_hrm.losses import get_loss_fn
from puzzle_hrm.model import q_continue_target


class LogitHead(Protocol):
    """What HybridLM needs of the backbone (hybrid.backbone.Backbone has it)."""

    hidden_size: int
    vocab_size: int

    def logits(self, hidden: Tensor) -> Tensor:  # final norm + LM head on pre-norm states, differentiable in `hidden`
        ...

    def layer_at(self, depth: float) -> int | None:  # the decoder layer a cut at `depth` conditions; None: after the last
        ...

    def top_states(self, hidden: Tensor, attention_mask: Tensor, layer: int, prefix_kv: Tensor | None = None, prefix_mask: Tensor | None = None) -> Tensor:
        ...  # the layers above `layer`, differentiable in `hidden`, optionally after a cached prefix

    def embed(self, input_ids: Tensor) -> Tensor:  # input embeddings (the oracle's)
        ...


@dataclass
class HybridSegment:
    logits: Tensor  # (B, T, V), or (N, V) at the selected positions
    z_H: Tensor  # (B, d_h)
    q_halt_logits: Tensor | None  # (B,), with use_act
    q_continue_logits: Tensor | None


@dataclass
class Conditioning:
    """What decoding needs (hybrid.generate): z_H is fixed per prompt, applied to every new token."""

    condition: Callable[[Tensor], Tensor]  # states at the cut (B, T, D) → conditioned states
    logit_bias: Tensor | None  # (B, V), with logit_bias_head
    segments_used: Tensor  # (B,): all segments, or the q-head's halting segment with use_act
    layer: int | None  # the decoder layer whose output `condition` takes; None: the pre-norm last states


class HybridLM(nn.Module):
    def __init__(self, config: HybridConfig, head: LogitHead) -> None:
        super().__init__()
        self.config = config
        self.head = head  # frozen, not registered (a dataclass, not a module)
        self.layer = head.layer_at(config.inject_depth)  # None: after the last layer
        self.bridge = build_bridge(config, head.hidden_size, head.embed)
        self.controller = build_controller(config)
        self.injector = build_injector(config, head.hidden_size)
        self.vocab_bias = VocabBias(config.d_h, head.vocab_size, config.logit_bias_init) if config.logit_bias_head else None

    def latents(self, hidden_states: Tensor, attention_mask: Tensor, prompt_lengths: Tensor, n_segments: int | None = None, input_ids: Tensor | None = None) -> Iterator[SegmentOutput]:
        """Bridge, then the controller's segments: `segments` of them in training, `eval_segments`
        in eval mode. input_ids: the teacher-forced ids, which only the oracle reads."""
        if n_segments is None:
            n_segments = self.config.segments if self.training else self.config.eval_segments
        if isinstance(self.bridge, AnswerBridge):
            if input_ids is None:
                raise ValueError("the oracle controller reads the gold answer: pass the teacher-forced input_ids")
            x = self.bridge(hidden_states, attention_mask, prompt_lengths, input_ids)
        else:
            x = self.bridge(hidden_states, attention_mask, prompt_lengths)
        return self.controller.segments(x, n_segments)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor,
        prompt_lengths: Tensor,
        n_segments: int | None = None,
        positions: Tensor | None = None,
        input_ids: Tensor | None = None,
        prefix_kv: Tensor | None = None,
        prefix_mask: Tensor | None = None,
        supervised_only: bool = False,
    ) -> list[HybridSegment]:
        """Each segment's logits on the LLM's states at the cut (B, T, D), conditioned on its z_H;
        with supervised_only, those of the segments the training loss reads (config.supervised).

        positions (B, T) bool: compute logits only there, as (N, V) in row-major order. Training
        needs only the states that predict a target token, and the LM head over the vocabulary
        is most of a cached step's cost. After the last layer injectors are position-wise, so
        selecting before injecting is exact. After layer k the states from the last prompt token
        on are injected (the tokens before it are the prompt's own context, so their keys and
        values above k stay the LLM's) and the top layers run, then the positions are selected;
        with the cached prefix_kv / prefix_mask (FeatureBatch) they run over those states only,
        else over the whole sequence. All segments go through the top layers and the LM head
        together: one pass over their weights (the LM head's V x D is the largest matrix here)
        instead of one per segment, forward and backward.
        """
        outputs = list(self.latents(hidden_states, attention_mask, prompt_lengths, n_segments, input_ids))
        if supervised_only:
            outputs = self.config.supervised(outputs)
        if self.layer is not None:
            rows, hidden = self._top_layers(outputs, hidden_states, attention_mask, prompt_lengths, positions, prefix_kv, prefix_mask)
        elif positions is None:
            rows = None
            hidden = torch.cat([self.injector(hidden_states, out.z_H) for out in outputs])
        else:
            rows = positions.nonzero()[:, 0]  # (N,): the row of each selected state
            selected = hidden_states[positions].unsqueeze(1)  # (N, 1, D): one-token "sequences"
            hidden = torch.cat([self.injector(selected, out.z_H.index_select(0, rows)) for out in outputs])
        all_logits = self.head.logits(hidden).chunk(len(outputs))  # segment-major
        segments = []
        for out, logits in zip(outputs, all_logits, strict=True):
            if self.vocab_bias is not None:
                bias = self.vocab_bias(out.z_H)  # (B, V)
                logits = logits + (bias if rows is None else bias.index_select(0, rows)).unsqueeze(1)  # backward: index_add, not a scatter
            segments.append(HybridSegment(logits if rows is None else logits[:, 0], out.z_H, out.q_halt_logits, out.q_continue_logits))
        return segments

    def _top_layers(self, outputs: list[SegmentOutput], hidden: Tensor, attention_mask: Tensor, prompt_lengths: Tensor, positions: Tensor | None, prefix_kv: Tensor | None, prefix_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """After layer k: (rows (N,), the pre-norm last states (M·N, 1, D) at `positions`, segment-major)."""
        if positions is None:
            raise ValueError("with inject_depth < 1 logits are computed at the answer positions only: pass positions")
        M, T = len(outputs), attention_mask.shape[1]
        start = last_prompt_position(attention_mask, prompt_lengths).view(-1, 1)  # (B, 1): the first injected position
        if prefix_kv is None:  # the whole sequence through the top layers (the reference for the cached prefix)
            from_start = (torch.arange(T, device=hidden.device) >= start).unsqueeze(-1)
            injected = torch.cat([torch.where(from_start, self.injector(hidden, out.z_H), hidden) for out in outputs])
            top = self.head.top_states(injected, attention_mask.repeat(M, 1), self.layer)
            selected = positions
        else:  # from the last prompt token on, after the cached prefix
            span = int((attention_mask.sum(1, keepdim=True) - start).max())
            index = (start + torch.arange(span, device=hidden.device)).clamp_max(T - 1)  # (B, S)
            span_mask = attention_mask.gather(1, index) * (start + torch.arange(span, device=hidden.device) < T)
            states = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            injected = torch.cat([self.injector(states, out.z_H) for out in outputs])
            top = self.head.top_states(injected, span_mask.repeat(M, 1), self.layer, prefix_kv.repeat(M, *[1] * (prefix_kv.ndim - 1)), prefix_mask.repeat(M, 1))
            selected = positions.gather(1, index) & span_mask.bool()
            if int(selected.sum()) != int(positions.sum()):
                raise ValueError("positions before the last prompt token: the cached prefix does not cover them")
        return selected.nonzero()[:, 0], torch.cat([part[selected] for part in top.chunk(M)]).unsqueeze(1)

    def conditioning(self, hidden_states: Tensor, attention_mask: Tensor, prompt_lengths: Tensor, n_segments: int | None = None) -> Conditioning:
        """z_H from the prompt's states; with use_act each row keeps the z_H of the segment its
        q-head halts at."""
        if self.config.controller == "oracle":
            raise ValueError("the oracle controller reads the gold answer, so it cannot condition decoding")
        outputs = list(self.latents(hidden_states, attention_mask, prompt_lengths, n_segments))
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        used = halting_segments(outputs) if self.config.use_act else torch.full_like(rows, len(outputs))
        z_H = torch.stack([o.z_H for o in outputs])[used - 1, rows]  # (B, d_h)
        logit_bias = self.vocab_bias(z_H) if self.vocab_bias is not None else None
        return Conditioning(self.injector.condition(z_H), logit_bias, used, self.layer)

    def loss(self, segments: Sequence[HybridSegment], targets: Tensor, correct: Sequence[Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Deep supervision: the sum over the given segments of the token-mean CE on the targets
        (all of them, or the last without deep_supervision), plus with use_act 0.5 · (q_halt +
        q_continue) as HRM's loss head.

        targets: the labels the segments' logits predict (`supervised_positions`), IGNORE_LABEL_ID
        where none. correct: with use_act, one (B,) tensor per segment: the task verifier's score
        of that segment's answer, 1.0 right, 0.0 wrong (partial credit in between is a soft target).
        """
        if not segments:
            raise ValueError("loss needs the outputs of at least one segment")
        if self.config.use_act != (correct is not None):
            raise ValueError(f"pass the verifier's per-segment correctness exactly when use_act is on (use_act={self.config.use_act})")
        lm_losses = torch.stack([token_mean_loss(s.logits, targets, self.config.loss_type) for s in segments])  # (M,)
        total = lm_losses.sum()
        metrics = {"lm_loss": lm_losses.detach()}
        if correct is not None:
            if len(correct) != len(segments):
                raise ValueError(f"got correctness for {len(correct)} segments but {len(segments)} segment outputs")
            q_halt_loss, q_continue_loss = act_losses(segments, correct, self.config.act_penalty)
            total = total + 0.5 * (q_halt_loss + q_continue_loss)
            metrics.update(q_halt_loss=q_halt_loss.detach(), q_continue_loss=q_continue_loss.detach())
        return total, metrics


def supervised_positions(labels: Tensor) -> tuple[Tensor, Tensor]:
    """From labels aligned with input_ids (B, T): the states that predict a target token (B, T)
    bool, i.e. position t where labels[t + 1] is not ignored, and those targets (N,)."""
    next_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_LABEL_ID)
    positions = next_labels != IGNORE_LABEL_ID
    return positions, next_labels[positions]


def token_mean_loss(logits: Tensor, targets: Tensor, loss_type: str) -> Tensor:
    """Cross-entropy averaged over the non-ignored targets (the prototype's reduction)."""
    return get_loss_fn(loss_type)(logits, targets).sum() / (targets != IGNORE_LABEL_ID).sum().clamp_min(1)


def act_losses(segments: Sequence[SegmentOutput | HybridSegment], correct: Sequence[Tensor], act_penalty: float) -> tuple[Tensor, Tensor]:
    """The q-head's losses, each summed over segments of a batch mean.

    Halt: BCE of Q(halt) against "the verifier accepts this segment's answer" (HRM's target).
    Continue: BCE of Q(continue) against HRM's bootstrapped value of the next segment (only its
    halt value when the next segment is the last one run), minus act_penalty, the cost of the
    extra segment (Q-learning with a step cost; clamped at 0). The last segment cannot continue
    and gets no continue loss. All segments run in training, so the q-head learns off-policy.
    """
    q_halt = torch.stack([s.q_halt_logits for s in segments])  # (M, B)
    q_continue = torch.stack([s.q_continue_logits for s in segments])
    correct = torch.stack([torch.as_tensor(c, device=q_halt.device) for c in correct]).to(q_halt.dtype)
    if correct.shape != q_halt.shape:
        raise ValueError(f"correctness {tuple(correct.shape)} does not match the q-logits (segments, batch) {tuple(q_halt.shape)}")
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, correct, reduction="none").mean(1).sum()
    with torch.no_grad():
        next_is_last = (torch.arange(1, len(segments), device=q_halt.device) == len(segments) - 1).unsqueeze(1)  # (M-1, 1)
        target = (q_continue_target(q_halt[1:], q_continue[1:], halt_only=next_is_last) - act_penalty).clamp_min(0)
    q_continue_loss = F.binary_cross_entropy_with_logits(q_continue[:-1], target, reduction="none").mean(1).sum()
    return q_halt_loss, q_continue_loss
