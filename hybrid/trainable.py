"""HybridTrainable: HybridLM (the HRM controller on a frozen LLM) behind the `Trainable` protocol.

Trains on cached LLM states at the injection cut (hybrid.features); answers by running the LLM
over the prompts once, the controller once per prompt (eval_segments), then KV-cache decoding with
its conditioning (at the same cut).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrid.backbone import Backbone
from hybrid.baselines import seeded
from hybrid.config import HybridConfig
from hybrid.features import FeatureBatch
from hybrid.generate import Answers, DecodeConfig, generate, position_ids
from hybrid.model import HybridLM, supervised_positions
from hybrid.tasks import Collator, Example
from hybrid.train import CorrectFn, evaluating


def label_aligned(predicted: Tensor, positions: Tensor) -> Tensor:
    """(N,) predictions made at `positions` (B, T) (state t predicts token t + 1) -> (B, T) ids
    aligned with the labels; zeros where nothing was predicted."""
    at_states = torch.zeros(positions.shape, dtype=predicted.dtype, device=predicted.device)
    at_states[positions] = predicted
    return torch.nn.functional.pad(at_states[:, :-1], (1, 0))


class HybridTrainable(nn.Module):
    uses_cached_states = True

    @property
    def cache_layer(self) -> int | None:
        """The decoder layer whose output the feature cache must hold (None: the pre-norm last states)."""
        return self.lm.layer

    def __init__(self, config: HybridConfig, backbone: Backbone, collator: Collator) -> None:
        super().__init__()
        self.lm = HybridLM(config, backbone)  # its parameters and state_dict are the trainable parts only
        self.backbone = backbone
        self.collator = collator

    def training_loss(self, batch: FeatureBatch, correct_fn: CorrectFn) -> tuple[Tensor, dict[str, float]]:
        batch = batch.to(self.backbone.device)
        positions, targets = supervised_positions(batch.labels)
        segments = list(self.lm(batch.hidden_states, batch.attention_mask, batch.prompt_lengths, n_segments=self.lm.config.segments, positions=positions, input_ids=batch.input_ids, prefix_kv=batch.prefix_kv, prefix_mask=batch.prefix_mask, supervised_only=True))
        correct = None
        if self.lm.config.use_act:
            correct = correct_fn([label_aligned(s.logits.detach().argmax(-1), positions) for s in segments])
        loss, parts = self.lm.loss(segments, targets, correct)
        scalars = {"loss": float(loss.detach()), "lm_loss": float(parts["lm_loss"][-1])}  # the last segment's CE
        if correct is not None:
            scalars.update(q_halt_loss=float(parts["q_halt_loss"]), q_continue_loss=float(parts["q_continue_loss"]), train_accuracy=float(correct[-1].mean()))
        return loss, scalars

    @torch.no_grad()
    def answer(self, examples: list[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        """In eval mode (hybrid.train.evaluating)."""
        with evaluating(self):
            return self._answer(examples, decode, generator)

    def _answer(self, examples: list[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        prompts = self.collator.prompts(examples)
        ids, mask = prompts["input_ids"].to(self.backbone.device), prompts["attention_mask"].to(self.backbone.device)
        hidden, _ = self.backbone.hidden_states(ids, mask, position_ids(mask), layer=self.lm.layer)
        cond = self.lm.conditioning(hidden.float(), mask, mask.sum(1), n_segments=self.lm.config.eval_segments)
        out = generate(self.backbone, ids, mask, seeded(decode, generator), condition=cond.condition, logit_bias=cond.logit_bias, condition_layer=cond.layer)
        return out.answers(self.backbone.tokenizer, cond.segments_used)


def hybrid_trainable(config: HybridConfig, backbone: Backbone, collator: Collator) -> nn.Module:
    """The trainable for a controller config: soft-prefix injection (hybrid.prefix) or a cut's injector."""
    if config.injector == "prefix":
        from hybrid.prefix import PrefixTrainable  # it builds on this module's neighbours, not on it

        return PrefixTrainable(config, backbone, collator)
    return HybridTrainable(config, backbone, collator)
