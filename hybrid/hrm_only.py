"""HRM-only baseline: the same controller with no LLM, trained from scratch.

    prompt ids ──embed──► encoder (puzzle_hrm HRMBlocks)            (B, P, d_model)
               ──PromptBridge (mean + last, as the hybrid)──► x       (B, d_h)
    for each segment m (deep supervision, states detached between segments):
        z_H^m  = HRMController segment                               (B, d_h)
        prefix = sigmoid(gate) · W(z_H^m) as m prefix tokens          (B, prefix_tokens, d_model)
        logits = decoder(prefix + answer tokens so far) @ embedᵀ  →  CE on answer + EOS

Choices (the published HRM-LM prototype offers a gated prefix or a cross-attention memory):
- Gated prefix. Every decoder layer attends to z_H, and decoding needs no extra machinery: the
  prefix is the first entry of an ordinary causal KV cache. The decoder sees only the prefix and
  its own answer tokens, never the prompt: everything it knows of the question passes through
  the pooled bridge and the HRM, which is what this baseline is meant to test.
- Encoder: puzzle_hrm's post-norm HRMBlocks with RoPE. They attend bidirectionally without a
  mask, so prompts are encoded in groups of equal length (no padding ever seen; a row's result
  does not depend on its batch).
- Decoder: a small Llama stack from transformers (puzzle_hrm has no causal attention), fed
  embeddings only; its own token table is dropped in favour of the shared one.
- Vocabulary: the LLM's tokenizer, all ids; one token table shared by encoder, decoder inputs
  and the output layer (tied), which keeps it to vocab · d_model parameters.

Size with SmolLM2's tokenizer (49,152 ids) and the default configs: 44,041,473 parameters, of
which the controller 27.26M (as in the hybrid), the token table 12.58M, encoder 1.70M, decoder
1.71M, prefix 0.52M, bridge 0.26M.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache, LlamaConfig, LlamaModel, PreTrainedTokenizerBase

from hybrid.backbone import cache_keyword
from hybrid.baselines import seeded
from hybrid.config import HybridConfig
from hybrid.controller import HRMController, SegmentOutput, halting_segments
from hybrid.generate import Answers, DecodeConfig, Generation, next_token
from hybrid.injectors import PromptBridge
from hybrid.model import act_losses, token_mean_loss
from hybrid.tasks import Collator, Example, pad
from hybrid.train import CorrectFn
from puzzle_hrm.config import swiglu_intermediate_size
from puzzle_hrm.data.format import IGNORE_LABEL_ID
from puzzle_hrm.layers import CastedEmbedding, CastedLinear, HRMBlock, RotaryEmbedding


@dataclass
class HRMOnlyConfig:
    """The parts around the controller; the controller itself is a HybridConfig, as in the hybrid."""

    d_model: int = 256  # width of the token table, encoder and decoder
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_heads: int = 4  # encoder and decoder heads
    prefix_tokens: int = 4  # z_H becomes this many decoder prefix tokens
    prefix_gate_init: float = 0.0  # sigmoid(0) = 0.5 of the prefix at step 0
    max_positions: int = 1024  # longest prompt (encoder), and prefix + answer (decoder)
    rope_theta: float = 10000.0
    decode_batch_size: int = 32

    def __post_init__(self) -> None:
        sizes = {name: getattr(self, name) for name in ("d_model", "encoder_layers", "decoder_layers", "num_heads", "prefix_tokens", "max_positions", "decode_batch_size")}
        too_small = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if too_small:
            raise ValueError(f"these must be >= 1: {', '.join(too_small)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")


@dataclass
class AnswerBatch:
    """A collator batch split for this model: the prompt alone, and the answer + EOS as targets."""

    prompt_ids: Tensor  # (B, P) right-padded
    prompt_lengths: Tensor  # (B,)
    targets: Tensor  # (B, N) answer + EOS ids, IGNORE_LABEL_ID after each row's end

    @classmethod
    def from_collated(cls, batch: dict[str, Any]) -> AnswerBatch:
        labels, prompt_lengths = batch["labels"], torch.as_tensor(batch["prompt_lengths"], device=batch["labels"].device)
        answer_lengths = (labels != IGNORE_LABEL_ID).sum(1)
        cols = prompt_lengths[:, None] + torch.arange(int(answer_lengths.max()), device=labels.device)  # (B, N)
        targets = labels.gather(1, cols.clamp(max=labels.shape[1] - 1))
        targets[cols >= (prompt_lengths + answer_lengths)[:, None]] = IGNORE_LABEL_ID
        return cls(batch["input_ids"][:, : int(prompt_lengths.max())], prompt_lengths, targets)


class HRMOnly(nn.Module):
    def __init__(self, config: HybridConfig, vocab_size: int, options: HRMOnlyConfig | None = None) -> None:
        super().__init__()
        options = options or HRMOnlyConfig()
        self.config, self.options = config, options
        d = options.d_model
        self.embed_scale = math.sqrt(d)  # official HRM: unit-scale inputs from a table of std 1/sqrt(d)
        self.embed = CastedEmbedding(vocab_size, d, init_std=1 / self.embed_scale, cast_to=torch.float32)
        self.rotary = RotaryEmbedding(d // options.num_heads, options.max_positions, options.rope_theta)
        intermediate = swiglu_intermediate_size(d, config.expansion)
        self.encoder = nn.ModuleList(HRMBlock(d, options.num_heads, intermediate, config.rms_norm_eps, config.attn_backend) for _ in range(options.encoder_layers))
        self.bridge = PromptBridge(d, config.d_h, config.rms_norm_eps)
        self.controller = HRMController(config)
        self.prefix = CastedLinear(config.d_h, options.prefix_tokens * d, bias=False)
        self.prefix_gate = nn.Parameter(torch.tensor(float(options.prefix_gate_init)))
        self.decoder = LlamaModel(
            LlamaConfig(
                vocab_size=1,  # unused: the decoder is fed embeddings from the shared table (removed below)
                bos_token_id=None,  # no ids of its own either
                eos_token_id=None,
                hidden_size=d,
                intermediate_size=intermediate,
                num_hidden_layers=options.decoder_layers,
                num_attention_heads=options.num_heads,
                num_key_value_heads=options.num_heads,
                max_position_embeddings=options.max_positions,
                rms_norm_eps=config.rms_norm_eps,
                rope_theta=options.rope_theta,
            )
        )
        self.decoder.embed_tokens = None

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.embed(ids) * self.embed_scale

    def encode(self, prompt_ids: Tensor, prompt_lengths: Tensor) -> Tensor:
        """Encoder states (B, P, d_model) of right-padded prompts, zeros at padding; each group of
        equal-length prompts runs alone, so no state ever attends to padding."""
        if int(prompt_lengths.max()) > self.options.max_positions:
            raise ValueError(f"a prompt of {int(prompt_lengths.max())} tokens exceeds max_positions {self.options.max_positions}")
        hidden = torch.zeros(*prompt_ids.shape, self.options.d_model, device=prompt_ids.device)
        cos, sin = self.rotary()
        for n in prompt_lengths.unique().tolist():
            rows = (prompt_lengths == n).nonzero()[:, 0]
            x = self.embed_tokens(prompt_ids[rows, :n])  # (b, n, d)
            for block in self.encoder:
                x = block(x, (cos[:n], sin[:n]))
            hidden[rows, :n] = x
        return hidden

    def latents(self, prompt_ids: Tensor, prompt_lengths: Tensor, n_segments: int) -> Iterator[SegmentOutput]:
        hidden = self.encode(prompt_ids, prompt_lengths)
        mask = torch.arange(prompt_ids.shape[1], device=prompt_ids.device) < prompt_lengths[:, None]
        return self.controller.segments(self.bridge(hidden, mask, prompt_lengths), n_segments)

    def prefix_embeddings(self, z_H: Tensor) -> Tensor:
        """(B, d_h) → the gated prefix (B, prefix_tokens, d_model)."""
        return torch.sigmoid(self.prefix_gate) * self.prefix(z_H).view(z_H.shape[0], self.options.prefix_tokens, self.options.d_model)

    def logits(self, decoded: Tensor) -> Tensor:
        """Decoder output states (…, d_model) → float32 logits over the tied token table."""
        return (decoded @ self.embed.embedding_weight.T).float()

    def loss(self, batch: AnswerBatch, correct_fn: CorrectFn | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Deep supervision: per segment (the last only without deep_supervision), the token-mean
        CE of the answer + EOS given z_H (teacher forcing), summed over segments; with use_act plus
        0.5 · (q_halt + q_continue) from the verifier's scores. correct_fn: per segment the (K,)
        argmax ids at the answer positions (row-major, as `batch.targets[targets != IGNORE_LABEL_ID]`)
        -> per segment (B,) scores."""
        if self.config.use_act and correct_fn is None:
            raise ValueError("use_act needs correct_fn: the verifier's scores of each segment's answers")
        prefix_len = self.options.prefix_tokens
        if prefix_len + batch.targets.shape[1] - 1 > self.options.max_positions:
            raise ValueError(f"prefix + answer of {prefix_len + batch.targets.shape[1] - 1} tokens exceeds max_positions {self.options.max_positions}")
        valid = batch.targets != IGNORE_LABEL_ID
        answer_inputs = self.embed_tokens(batch.targets[:, :-1].clamp_min(0))  # (B, N-1, d); padding past a row's end is never attended by its real tokens (causal)
        lm_losses, predictions, segments = [], [], []
        for out in self.config.supervised(self.latents(batch.prompt_ids, batch.prompt_lengths, self.config.segments)):
            decoded = self.decoder(inputs_embeds=torch.cat([self.prefix_embeddings(out.z_H), answer_inputs], 1)).last_hidden_state
            logits = self.logits(decoded[:, prefix_len - 1 :][valid])  # (K, V): the last prefix token predicts the first answer token
            lm_losses.append(token_mean_loss(logits, batch.targets[valid], self.config.loss_type))
            predictions.append(logits.detach().argmax(-1))
            segments.append(out)
        lm_losses = torch.stack(lm_losses)
        total, parts = lm_losses.sum(), {"lm_loss": lm_losses.detach()}
        if self.config.use_act:
            correct = correct_fn(predictions)
            q_halt_loss, q_continue_loss = act_losses(segments, correct, self.config.act_penalty)
            total = total + 0.5 * (q_halt_loss + q_continue_loss)
            parts.update(q_halt_loss=q_halt_loss.detach(), q_continue_loss=q_continue_loss.detach(), train_accuracy=correct[-1].float().mean())
        return total, parts

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, prompt_lengths: Tensor, decode: DecodeConfig, eos_id: int, pad_id: int) -> tuple[Generation, Tensor]:
        """Decode answers from z_H after `eval_segments` (with use_act: the q-head's halting
        segment), through a KV cache that starts with the prefix. Rows stay aligned: no padding.
        Returns the generation and each row's segments used."""
        if self.options.prefix_tokens + decode.max_new_tokens > self.options.max_positions:
            raise ValueError(f"prefix + max_new_tokens exceeds max_positions {self.options.max_positions}")
        outputs = list(self.latents(prompt_ids, prompt_lengths, self.config.eval_segments))
        rows = torch.arange(prompt_ids.shape[0], device=prompt_ids.device)
        used = halting_segments(outputs) if self.config.use_act else torch.full_like(rows, len(outputs))
        z_H = torch.stack([o.z_H for o in outputs])[used - 1, rows]  # (B, d_h)
        generator = torch.Generator(device=prompt_ids.device).manual_seed(decode.seed)
        cache = DynamicCache()
        inputs = self.prefix_embeddings(z_H)
        finished = torch.zeros_like(rows, dtype=torch.bool)
        lengths = torch.zeros_like(rows)
        tokens: list[Tensor] = []
        while len(tokens) < decode.max_new_tokens and not bool(finished.all()):
            decoded = self.decoder(inputs_embeds=inputs, use_cache=True, **{cache_keyword(self.decoder): cache}).last_hidden_state
            token = torch.where(finished, pad_id, next_token(self.logits(decoded[:, -1]), decode, generator))
            tokens.append(token)
            lengths += ~finished
            finished |= token == eos_id
            inputs = self.embed_tokens(token[:, None])
        return Generation(torch.stack(tokens, 1), lengths), used


class HRMOnlyTrainable(nn.Module):
    """HRMOnly behind the training loop's `Trainable` protocol (collator batches, verifier answers)."""

    uses_cached_states = False  # no LLM, nothing to cache

    def __init__(self, config: HybridConfig, tokenizer: PreTrainedTokenizerBase, collator: Collator, options: HRMOnlyConfig | None = None) -> None:
        super().__init__()
        self.model = HRMOnly(config, len(tokenizer), options)
        self.tokenizer = tokenizer
        self.collator = collator

    def num_trainable_params(self) -> int:
        return self.model.num_trainable_params()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def training_loss(self, batch: dict[str, Any], correct_fn: CorrectFn | None = None) -> tuple[Tensor, dict[str, float]]:
        """The loss of a collator batch; correct_fn (the loop's: label-aligned (B, T) predictions) only with use_act."""
        batch = {key: value.to(self.device) if isinstance(value, Tensor) else value for key, value in batch.items()}
        labels = batch["labels"]
        aligned = None if correct_fn is None else lambda predictions: correct_fn([label_positions(p, labels) for p in predictions])
        loss, parts = self.model.loss(AnswerBatch.from_collated(batch), aligned)
        scalars = {"loss": float(loss.detach()), "lm_loss": float(parts["lm_loss"][-1])}  # the last segment's CE
        scalars.update({name: float(value) for name, value in parts.items() if name != "lm_loss"})
        return loss, scalars

    @torch.no_grad()
    def answer(self, examples: Sequence[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        parts = []
        for start in range(0, len(examples), self.model.options.decode_batch_size):
            prompts = self.collator.prompt_ids(examples[start : start + self.model.options.decode_batch_size])
            ids, mask = (t.to(self.device) for t in pad(prompts, self.tokenizer.pad_token_id, "right"))
            out, used = self.model.generate(ids, mask.sum(1), seeded(decode, generator), self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            parts.append(out.answers(self.tokenizer, used))
        return Answers.join(parts)


def label_positions(predicted: Tensor, labels: Tensor) -> Tensor:
    """(K,) predictions of the answer tokens, row-major → (B, T) ids aligned with the labels (zeros elsewhere)."""
    aligned = torch.zeros_like(labels)
    aligned[labels != IGNORE_LABEL_ID] = predicted
    return aligned
