"""LLM-only baseline: the frozen LLM prompted zero-shot or few-shot, nothing trained.

Few-shot prompts put k solved examples from the task's TRAIN split before the question, as prior
user/assistant turns of the chat template (`PromptFormat.shots`). The splits are disjoint by a
hash of the question text, and shots are additionally never one of the questions being answered.
The shots are fixed by `shot_seed`, so every evaluation batch sees the same prompt.

`generated_answers` is the decoding step shared with the LoRA baseline: prompts through the
collator, the KV-cache `generate`, completions as text for the task's verifier (`Answers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from hybrid.backbone import Backbone
from hybrid.generate import Answers, DecodeConfig, generate
from hybrid.tasks import Collator, Example, PromptFormat, Task

SEED_RANGE = 2**31


def seeded(decode: DecodeConfig, generator: torch.Generator) -> DecodeConfig:
    """`decode` with its sampling seed drawn from the caller's generator: successive evaluation
    batches sample independently, and the same generator seed repeats a whole evaluation."""
    return replace(decode, seed=int(torch.randint(SEED_RANGE, (1,), generator=generator)))


def few_shot_format(task: Task, shots: int, seed: int, exclude: Sequence[Example] = (), system: str | None = None) -> PromptFormat:
    """A prompt format with `shots` solved TRAIN examples, none of them a question in `exclude`."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    excluded = {example.question for example in exclude}
    candidates = task.examples("train", shots + len(excluded), seed)
    chosen = tuple(example for example in candidates if example.question not in excluded)[:shots]
    return PromptFormat(system=system, shots=chosen)


def generated_answers(
    backbone: Backbone, collator: Collator, examples: Sequence[Example], decode: DecodeConfig, generator: torch.Generator, batch_size: int = 32
) -> Answers:
    """The backbone's completions of the collator's prompts, `batch_size` prompts at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for start in range(0, len(examples), batch_size):
        prompts = collator.prompts(examples[start : start + batch_size])
        out = generate(backbone, prompts["input_ids"].to(backbone.device), prompts["attention_mask"].to(backbone.device), seeded(decode, generator))
        parts.append(out.answers(backbone.tokenizer))
    return Answers.join(parts)


def llm_only_answers(
    backbone: Backbone,
    task: Task,
    examples: Sequence[Example],
    decode: DecodeConfig,
    generator: torch.Generator,
    shots: int = 0,
    *,
    shot_seed: int = 0,
    system: str | None = None,
    batch_size: int = 32,
) -> Answers:
    """Completions of the frozen LLM for `examples`, zero-shot (shots=0) or with `shots` train examples."""
    prompt_format = few_shot_format(task, shots, shot_seed, exclude=examples, system=system)
    collator = Collator(backbone.tokenizer, backbone.max_positions, prompt_format)
    return generated_answers(backbone, collator, examples, decode, generator, batch_size)
