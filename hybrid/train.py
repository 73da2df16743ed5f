"""Training the hybrid and its baselines: one loop, any model that implements `Trainable`.

The loop never knows which model it trains: the hybrid (HRM controller on cached LLM states),
the HRM-only model and LoRA all plug in through this small protocol.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from hybrid.generate import DecodeConfig
from hybrid.tasks import Example

# Per segment, the (B, T) token ids the model predicts for each label position (teacher-forced
# argmax, read only where labels != IGNORE_LABEL_ID) -> per segment the (B,) verifier scores.
CorrectFn = Callable[[Sequence[Tensor]], list[Tensor]]


@runtime_checkable
class Trainable(Protocol):
    """What the training loop needs of a model."""

    uses_cached_states: bool  # True: batches are FeatureBatch (hybrid.features); False: the collator's dict batches

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters only (the frozen LLM's are not among them)."""
        ...

    def training_loss(self, batch: Any, correct_fn: CorrectFn) -> tuple[Tensor, dict[str, float]]:
        """The loss to backpropagate and scalars to log; call correct_fn only when ACT needs verifier scores."""
        ...

    def answer(self, examples: list[Example], decode: DecodeConfig, generator: torch.Generator) -> list[str]:
        """Generated completions for evaluation (the verifier reads them)."""
        ...

    def state_dict(self) -> Mapping[str, Tensor]:
        """The trainable parts only."""
        ...

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> Any: ...
