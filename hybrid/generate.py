"""Decoding with the frozen LLM's KV cache, conditioned by the HRM.

The HRM's injector acts after the LLM's last layer, so it never changes the KV cache: the prompt
runs once, then one token per step. `condition` maps the pre-norm state of each new position
(B, 1, D) -> (B, 1, D) before the LLM's final norm and LM head (the first generated token comes
from the last prompt position); `logit_bias` (B, V) is added to the logits every step. The
controller runs once per prompt, outside `generate` (z_H depends on the prompt only), and its
callable sees every row, in order, at every step. With `condition_layer` k the condition instead
takes the output of decoder layer k at the newest position of every forward (the prompt's last
token in the prompt pass, then each new token; through Backbone.injected_at): the positions
training conditions (hybrid.model), so the prompt's context above k stays the LLM's own.
With `soft_prefix` (B, m, D) the LLM reads m soft tokens right after the prompt, through all its
layers (hybrid.prefix), and the first generated token comes from the last of them; `prompt_cache`
is then the prompt's KV cache from a pass the caller has already run (the prefix reads the prompt
to make the soft tokens), so the prompt is not run a second time. `cache_slots` k says that
prompt_cache ends in k key/value slots after the prompt (Backbone.append_kv): they take positions
as tokens do, and the soft tokens follow them.
`use_cache=False` is the slow reference decode that recomputes the whole context each step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from hybrid.backbone import Backbone

Condition = Callable[[Tensor], Tensor]


@dataclass
class DecodeConfig:
    """Decoding settings (the HRM-LM prototype's names)."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # sample among the k most likely tokens; 0: off
    top_p: float = 1.0  # sample from the smallest set holding this much probability; 1: off
    seed: int = 0  # seeds the sampling generator: same seed, same tokens

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    tokens: Tensor  # (B, N) new tokens, N <= max_new_tokens; pad after a row's EOS
    lengths: Tensor  # (B,) new tokens of each row, its EOS included

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(self.tokens, self.lengths.tolist())]

    def answers(self, tokenizer: PreTrainedTokenizerBase, segments_used: Tensor | None = None) -> Answers:
        used = None if segments_used is None else [int(n) for n in segments_used.tolist()]
        return Answers(self.texts(tokenizer), int(self.lengths.sum()), used)


@dataclass
class Answers:
    """Completions for evaluation, with what the comparison table reports about producing them."""

    texts: list[str]
    new_tokens: int  # tokens generated in all, each row's EOS included (decode tokens/s)
    segments_used: list[int] | None = None  # HRM segments each answer came from (ACT halting); None: no HRM

    @classmethod
    def join(cls, parts: Sequence[Answers]) -> Answers:
        """Batches of answers, in order, as one."""
        used = [part.segments_used for part in parts]
        if any(u is None for u in used) and not all(u is None for u in used):
            raise ValueError("cannot join answers with and without HRM segment counts")
        texts = [text for part in parts for text in part.texts]
        segments = None if all(u is None for u in used) else [n for u in used for n in u]
        return cls(texts, sum(part.new_tokens for part in parts), segments)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with -inf outside the top-k set and outside the top-p nucleus (last dim = vocabulary)."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # the tokens before already hold top_p: the top token always stays
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def next_token(logits: Tensor, config: DecodeConfig, generator: torch.Generator) -> Tensor:
    """(B, V) float logits -> (B,) token ids: argmax when greedy, else a seeded draw."""
    if config.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / config.temperature, config.top_k, config.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def extended(mask: Tensor, n: int) -> Tensor:
    """mask (B, T) followed by n positions every row attends to (slots, soft tokens, a new token)."""
    return torch.cat([mask, torch.ones_like(mask[:, :1]).expand(-1, n)], 1)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: each row's first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def conditioned_logits(backbone: Backbone, hidden: Tensor, condition: Condition | None, logit_bias: Tensor | None) -> Tensor:
    """(B, 1, D) pre-norm state of the newest position -> (B, V) float32 next-token logits."""
    if condition is not None:
        conditioned = condition(hidden)
        if conditioned.shape != hidden.shape:
            raise ValueError(f"condition must keep the shape {tuple(hidden.shape)}, it returned {tuple(conditioned.shape)}")
        hidden = conditioned
    logits = backbone.logits(hidden)[:, -1]
    return logits if logit_bias is None else logits + logit_bias


def _check_inputs(backbone: Backbone, input_ids: Tensor, attention_mask: Tensor, config: DecodeConfig, logit_bias: Tensor | None, soft_prefix: Tensor | None, cache_slots: int) -> None:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be (B, P), got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: attention_mask[:, -1] must be 1 in every row (Collator.prompts does this)")
    soft = 0 if soft_prefix is None else soft_prefix.shape[1]
    if soft_prefix is not None and (soft_prefix.ndim != 3 or soft_prefix.shape[0] != input_ids.shape[0] or soft_prefix.shape[2] != backbone.hidden_size):
        raise ValueError(f"soft_prefix must be (B={input_ids.shape[0]}, m, D={backbone.hidden_size}), got {tuple(soft_prefix.shape)}")
    total = input_ids.shape[1] + cache_slots + soft + config.max_new_tokens
    if total > backbone.max_positions:
        raise ValueError(f"prompt ({input_ids.shape[1]} tokens) + key/value slots ({cache_slots}) + soft prefix ({soft}) + max_new_tokens ({config.max_new_tokens}) = {total} exceeds the model's context of {backbone.max_positions}")
    if logit_bias is not None and (logit_bias.shape[-1] != backbone.vocab_size or logit_bias.ndim > 2):
        raise ValueError(f"logit_bias must be (B, {backbone.vocab_size}) or ({backbone.vocab_size},), got {tuple(logit_bias.shape)}")


@torch.inference_mode()
def generate(
    backbone: Backbone,
    input_ids: Tensor,
    attention_mask: Tensor,
    config: DecodeConfig = DecodeConfig(),
    *,
    condition: Condition | None = None,
    logit_bias: Tensor | None = None,
    use_cache: bool = True,
    condition_layer: int | None = None,
    soft_prefix: Tensor | None = None,
    prompt_cache: Any = None,
    cache_slots: int = 0,
) -> Generation:
    """Decode left-padded prompts until every row has emitted an EOS or max_new_tokens."""
    _check_inputs(backbone, input_ids, attention_mask, config, logit_bias, soft_prefix, cache_slots)
    if prompt_cache is not None and (soft_prefix is None or not use_cache):
        raise ValueError("prompt_cache stands for the prompt pass before a soft prefix, with use_cache=True")
    if cache_slots and prompt_cache is None:
        raise ValueError("cache_slots are key/value slots at the end of a prompt_cache: pass the cache that holds them")
    if condition_layer is not None:
        if soft_prefix is not None:
            raise ValueError("a soft prefix is read by every layer: it takes no condition_layer")
        with backbone.injected_at(condition_layer, lambda hidden: torch.cat((hidden[:, :-1], condition(hidden[:, -1:])), 1)):
            return generate(backbone, input_ids, attention_mask, config, logit_bias=logit_bias, use_cache=use_cache)
    generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
    eos_ids = torch.tensor(backbone.eos_token_ids, device=input_ids.device)
    pad_id = backbone.tokenizer.pad_token_id
    ids, mask = input_ids, attention_mask
    hidden, cache = (None, prompt_cache) if prompt_cache is not None else backbone.hidden_states(ids, mask, position_ids(mask), use_cache=use_cache)  # the prompt, once
    mask = extended(mask, cache_slots)
    if soft_prefix is not None:  # then the soft tokens, after the prompt's cache (or with the whole context, below)
        mask = extended(mask, soft_prefix.shape[1])
        hidden, cache = (backbone.hidden_states(None, mask, position_ids(mask)[:, -soft_prefix.shape[1]:], past_key_values=cache, use_cache=True, inputs_embeds=soft_prefix)
                         if use_cache else (recomputed_states(backbone, input_ids, ids[:, input_ids.shape[1]:], mask, soft_prefix), None))
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    lengths = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    tokens: list[Tensor] = []
    while True:
        token = next_token(conditioned_logits(backbone, hidden[:, -1:], condition, logit_bias), config, generator)
        token = torch.where(finished, pad_id, token)
        tokens.append(token)
        lengths += ~finished
        finished |= torch.isin(token, eos_ids)
        if len(tokens) == config.max_new_tokens or bool(finished.all()):
            break
        # Finished rows keep decoding pad tokens (mask 1): their outputs are discarded, the batch stays aligned.
        ids, mask = torch.cat([ids, token[:, None]], 1), extended(mask, 1)
        if use_cache:
            hidden, cache = backbone.hidden_states(token[:, None], mask, position_ids(mask)[:, -1:], past_key_values=cache, use_cache=True)
        else:
            hidden = recomputed_states(backbone, input_ids, ids[:, input_ids.shape[1]:], mask, soft_prefix)
    return Generation(torch.stack(tokens, 1), lengths)


def recomputed_states(backbone: Backbone, prompt_ids: Tensor, new_ids: Tensor, mask: Tensor, soft_prefix: Tensor | None) -> Tensor:
    """The whole context's pre-norm states, computed afresh (the reference decode): the prompt, the
    soft tokens if any, then the tokens generated so far."""
    if soft_prefix is None:
        return backbone.hidden_states(torch.cat((prompt_ids, new_ids), 1), mask, position_ids(mask))[0]
    embeds = torch.cat((backbone.embed(prompt_ids), soft_prefix.to(backbone.dtype), backbone.embed(new_ids)), 1)
    return backbone.hidden_states(None, mask, position_ids(mask), inputs_embeds=embeds)[0]


def benchmark_decode(backbone: Backbone, *, new_tokens: int = 64, prompt_tokens: int = 32, batch_size: int = 1, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Greedy tokens/s with the KV cache and with the recompute reference: best of `repeats`
    interleaved runs per path after a warm-up (other load on a shared machine only slows runs down).

    EOS is banned through the logit bias, so both paths decode exactly `new_tokens` per row.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, backbone.vocab_size, (batch_size, prompt_tokens), generator=generator).to(backbone.device)
    mask = torch.ones_like(ids)
    ban_eos = torch.zeros(backbone.vocab_size, device=backbone.device)
    ban_eos[list(backbone.eos_token_ids)] = float("-inf")
    paths = {"kv_cache": True, "recompute": False}
    for use_cache in paths.values():
        generate(backbone, ids, mask, DecodeConfig(max_new_tokens=2), use_cache=use_cache)  # warm-up
    best = dict.fromkeys(paths, 0.0)
    for _ in range(repeats):
        for name, use_cache in paths.items():
            start = time.perf_counter()
            out = generate(backbone, ids, mask, DecodeConfig(max_new_tokens=new_tokens), logit_bias=ban_eos, use_cache=use_cache)
            produced = int(out.lengths.sum())  # syncs the device before the clock stops
            best[name] = max(best[name], produced / (time.perf_counter() - start))
    return {"kv_cache_tokens_per_s": best["kv_cache"], "recompute_tokens_per_s": best["recompute"], "speedup": best["kv_cache"] / best["recompute"]}
