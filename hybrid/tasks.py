"""Tasks by name, their verifiers, prompt formatting and the training collator.

A task is a seeded stream of (question, answer) examples plus a verifier. reasoning-gym datasets
keep their own `score_answer`; `addition` is our toy task. Train and eval never share a
question: a question's split is fixed by a stable hash of its text, so the held-out set is
disjoint from every training set, for any seed and any size (also across seeds).
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import reasoning_gym
import torch
from reasoning_gym.factory import DATASETS as REASONING_GYM_DATASETS
from reasoning_gym.utils import extract_answer as extract_tagged_answer
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from puzzle_hrm.data.format import IGNORE_LABEL_ID

SPLITS = ("train", "eval")
EVAL_BUCKETS = 10  # one distinct question in ten is held out
DRAWS_PER_EXAMPLE = 50  # give up after this many draws per requested example (+ a constant): the task is too small

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")  # 1,234.5 or -12 or 3.25
QUESTION_HEADER = "Question:"  # opens each question of the plain (no chat template) prompt format


@dataclass(frozen=True)
class Example:
    task: str
    question: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)  # the generator's record; some verifiers read it


def split_of(question: str) -> str:
    """The split a question belongs to, decided by a stable hash of its text (not Python's salted hash)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % EVAL_BUCKETS
    return "eval" if bucket == 0 else "train"


def is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip()) is not None


def extract_answer(completion: str, numeric: bool) -> str:
    """The answer in a completion: inside reasoning-gym's <answer> tags if present, else the whole
    text; for a numeric answer, the last number in it ("12 + 35 = 47." -> "47"). A completion ends
    where the plain prompt format's next question would begin: a base model without a chat
    template (Gemma 3 270M) goes on with the pattern ("47\n\nQuestion: What is 3 + 4?...")."""
    completion = completion.split("\n" + QUESTION_HEADER, 1)[0]
    text = (extract_tagged_answer(completion) or completion).strip()
    if numeric:
        numbers = _NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else text
    return text


class Task(ABC):
    """A seeded example stream and a verifier; splits and answer extraction are shared."""

    name: str

    @abstractmethod
    def stream(self, seed: int, draws: int) -> Iterator[Example]:
        """At most `draws` examples, the same ones for the same seed."""

    @abstractmethod
    def score(self, example: Example, answer: str) -> float:
        """The verifier on an extracted answer: 1.0 right, 0.0 wrong (reasoning-gym may give partial credit)."""

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """n distinct questions of `split`, fixed by the seed."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        draws = DRAWS_PER_EXAMPLE * n + 1000
        found: dict[str, Example] = {}
        stream = self.stream(seed, draws)
        while len(found) < n:
            example = next(stream, None)
            if example is None:
                raise ValueError(f"task {self.name!r} gave only {len(found)} distinct {split} questions in {draws} draws, {n} asked for: it has too few distinct questions")
            if split_of(example.question) == split:
                found.setdefault(example.question, example)
        return list(found.values())

    def verify(self, example: Example, completion: str) -> float:
        """Score a model's completion: extract the answer the way the gold answer is written, then score it."""
        return self.score(example, extract_answer(completion, numeric=is_number(example.answer)))

    def is_correct(self, example: Example, completion: str) -> bool:
        """Full marks only: reasoning-gym gives partial credit (sudoku cells, 0.01 for a wrong number)."""
        return self.verify(example, completion) == 1.0


class AdditionTask(Task):
    """Toy task: "What is a + b?" with a, b uniform below 10**digits."""

    name = "addition"

    def __init__(self, digits: int = 2):
        if digits < 1:
            raise ValueError(f"addition needs digits >= 1, got {digits}")
        self.digits = digits

    def stream(self, seed: int, draws: int) -> Iterator[Example]:
        rng = random.Random(seed)
        for _ in range(draws):
            a, b = rng.randrange(10**self.digits), rng.randrange(10**self.digits)
            yield Example(self.name, f"What is {a} + {b}?", str(a + b), {"a": a, "b": b})

    def score(self, example: Example, answer: str) -> float:
        return float(answer.strip() == example.answer)


class ReasoningGymTask(Task):
    """A reasoning-gym dataset by name (options go to its config), scored by its own `score_answer`."""

    def __init__(self, name: str, **options: Any):
        if name not in REASONING_GYM_DATASETS:
            raise ValueError(
                f"unknown task {name!r}: use 'addition' or one of reasoning-gym's {len(REASONING_GYM_DATASETS)} datasets, "
                "e.g. basic_arithmetic, chain_sum, simple_equations, gsm_symbolic, mini_sudoku"
            )
        self.name = name
        self.options = options
        self._scorer = reasoning_gym.create_dataset(name, size=1, seed=0, **options)  # also checks the options now

    def stream(self, seed: int, draws: int) -> Iterator[Example]:
        dataset = reasoning_gym.create_dataset(self.name, size=draws, seed=seed, **self.options)
        for i in range(draws):
            entry = dataset[i]
            yield Example(self.name, entry["question"], str(entry["answer"]), entry["metadata"])

    def score(self, example: Example, answer: str) -> float:
        entry = {"question": example.question, "answer": example.answer, "metadata": example.metadata}
        return float(self._scorer.score_answer(answer, entry))


def get_task(name: str, **options: Any) -> Task:
    """`addition` (options: digits) or any reasoning-gym dataset name (options: its config fields)."""
    return AdditionTask(**options) if name == AdditionTask.name else ReasoningGymTask(name, **options)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes prompt text and an answer target text.

    With a chat template: system (if given), the shots as user/assistant turns, the question, the
    generation prompt; the target is the bare answer. Without one: "Question: …\\nAnswer:" lines
    and the target " answer" (the space belongs to the answer's first token in BPE vocabularies).
    """

    system: str | None = None  # None keeps the chat template's own default system prompt (SmolLM2 has one)
    shots: tuple[Example, ...] = ()  # few-shot examples, e.g. tuple(task.examples("train", k, seed))

    def prompt(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        if has_chat_template(tokenizer):
            messages = [{"role": "system", "content": self.system}] if self.system is not None else []
            for shot in self.shots:
                messages += [{"role": "user", "content": shot.question}, {"role": "assistant", "content": shot.answer}]
            messages.append({"role": "user", "content": question})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        header = f"{self.system}\n\n" if self.system is not None else ""
        shots = "".join(f"{QUESTION_HEADER} {shot.question}\nAnswer:{self.target(tokenizer, shot.answer)}\n\n" for shot in self.shots)
        return f"{header}{shots}{QUESTION_HEADER} {question}\nAnswer:"

    def target(self, tokenizer: PreTrainedTokenizerBase, answer: str) -> str:
        return answer if has_chat_template(tokenizer) else f" {answer}"


def pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[Tensor, Tensor]:
    """(B, T) ids and attention mask, padded on `side` ("left" for generation, "right" for training)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


@dataclass
class Collator:
    """Tokenises prompt and target separately (target = answer + EOS), so the prompt/answer border is exact.

    `collator(examples)` is a right-padded training batch, a dict (the repo's batch convention):
      input_ids (B, T) prompt + answer + EOS, then pad; attention_mask (B, T) 1 on real tokens (pad may
      equal EOS, as in SmolLM2: never infer the mask from ids); labels (B, T) the ids on answer + EOS,
      IGNORE_LABEL_ID on prompt and padding, unshifted as in HF (logits at t score labels at t + 1);
      prompt_lengths (B,); examples, the raw examples.
    `collator.prompts(examples)` is the prompts alone, left-padded for `generate`: input_ids (B, P),
      attention_mask (B, P), examples.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int  # the model's context (Backbone.max_positions); longer examples are an error, never cut
    prompt_format: PromptFormat = PromptFormat()

    def prompt_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        # A chat template writes its own special tokens (BOS included), so add none on top.
        texts = [self.prompt_format.prompt(self.tokenizer, ex.question) for ex in examples]
        return self.tokenizer(texts, add_special_tokens=not has_chat_template(self.tokenizer))["input_ids"]

    def target_ids(self, examples: Sequence[Example]) -> list[list[int]]:
        texts = [self.prompt_format.target(self.tokenizer, ex.answer) for ex in examples]
        return [ids + [self.tokenizer.eos_token_id] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _check_length(self, examples: Sequence[Example], lengths: Sequence[int]) -> None:
        for example, length in zip(examples, lengths):
            if length > self.max_length:
                raise ValueError(f"{example.task} example {example.question[:60]!r} needs {length} tokens; the model's context is {self.max_length}")

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        prompts, targets = self.prompt_ids(examples), self.target_ids(examples)
        sequences = [p + t for p, t in zip(prompts, targets)]
        self._check_length(examples, [len(s) for s in sequences])
        input_ids, attention_mask = pad(sequences, self.tokenizer.pad_token_id, "right")
        labels = torch.full_like(input_ids, IGNORE_LABEL_ID)
        for row, (p, t) in enumerate(zip(prompts, targets)):
            labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prompt_lengths": prompt_lengths, "examples": list(examples)}

    def prompts(self, examples: Sequence[Example]) -> dict[str, Any]:
        prompts = self.prompt_ids(examples)
        self._check_length(examples, [len(p) for p in prompts])
        input_ids, attention_mask = pad(prompts, self.tokenizer.pad_token_id, "left")
        return {"input_ids": input_ids, "attention_mask": attention_mask, "examples": list(examples)}
