"""LoRA baseline: peft LoRA on the LLM's top layers, as many trainable parameters as the HRM.

The fair question is "the same number of trainable parameters, spent inside the LLM instead of
on a controller beside it". `lora_config_for_budget` solves for the rank: a rank-r adapter on a
Linear(in, out) has r · (in + out) parameters, so the count is r · (sum of in + out over the
adapted projections) and r = round(target / that sum). The achieved count is within half a
rank's step of the target. With `layers=None` the adapters go on the fewest top layers whose
rank still fits under the smallest adapted projection (a rank above min(in, out) adds
parameters but no capacity).

SmolLM2-135M against the default HybridConfig (GRB + vocab bias, 53,682,178 parameters): rank
188 on the top 28 of 30 layers, all seven projections, 53,566,464 parameters (-0.22%). Without
the vocab bias (28,516,353): rank 187 on the top 15 layers, 28,543,680 (+0.10%).

Nothing can be cached: LoRA changes the LLM's own states, so every step runs the LLM
(`uses_cached_states = False`). The adapters are injected (`peft.inject_adapter_in_model`) into
a private copy of the model, which stays a plain transformers model: `Backbone` and the KV-cache
`hybrid.generate` work on it unchanged, and the shared frozen backbone the other baselines use
is never touched (the copy costs one more model in memory).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import Tensor, nn

from hybrid.backbone import Backbone
from hybrid.baselines import generated_answers
from hybrid.config import LOSSES
from hybrid.generate import Answers, DecodeConfig
from hybrid.model import supervised_positions, token_mean_loss
from hybrid.tasks import Collator, Example
from hybrid.train import CorrectFn

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama / Qwen2 / Mistral / Gemma names
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class LoRABudget:
    """The solved adapter: its peft config and how close its size came to the target."""

    config: LoraConfig
    rank: int
    layers: tuple[int, ...]  # decoder layer indices that get adapters (the top ones)
    params_per_rank: int  # sum of in + out over the adapted projections
    target_params: int

    @property
    def params(self) -> int:
        return self.rank * self.params_per_rank

    @property
    def relative_error(self) -> float:
        return (self.params - self.target_params) / self.target_params


def adaptable_projections(model: nn.Module, modules: Sequence[str]) -> dict[int, list[nn.Linear]]:
    """Decoder layer index → its Linear projections named in `modules`."""
    found: dict[int, list[nn.Linear]] = {}
    for name, module in model.named_modules():
        match = _LAYER_INDEX.search(f"{name}.")
        if match and isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in modules:
            found.setdefault(int(match.group(1)), []).append(module)
    if not found:
        raise ValueError(f"no Linear named {tuple(modules)} inside the decoder layers of {type(model).__name__}")
    return found


def lora_config_for_budget(
    backbone: Backbone,
    target_params: int,
    layers: int | None = None,
    modules: Sequence[str] = ATTENTION_PROJECTIONS + MLP_PROJECTIONS,
    alpha_per_rank: float = 2.0,
) -> LoRABudget:
    """The rank whose LoRA on the top `layers` decoder layers has closest to `target_params`
    trainable parameters (`layers=None`: the fewest top layers that can hold it)."""
    if target_params < 1:
        raise ValueError(f"target_params must be >= 1, got {target_params}")
    projections = adaptable_projections(backbone.model, modules)
    n_layers = len(projections)
    if layers is not None and not 1 <= layers <= n_layers:
        raise ValueError(f"layers must be in [1, {n_layers}] (the model's decoder layers), got {layers}")
    for n in [layers] if layers is not None else range(1, n_layers + 1):
        chosen = tuple(sorted(projections)[-n:])
        linears = [linear for index in chosen for linear in projections[index]]
        per_rank = sum(linear.in_features + linear.out_features for linear in linears)
        max_rank = min(min(linear.in_features, linear.out_features) for linear in linears)
        rank = max(1, round(target_params / per_rank))
        if rank <= max_rank:
            break
    else:
        raise ValueError(
            f"{target_params:,} parameters need rank {rank} on the top {n} layers, above the smallest adapted projection's "
            f"{max_rank}: {'adapt more layers or more modules' if layers is not None else 'the budget exceeds a full-rank LoRA of the model'}"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha_per_rank * rank,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(modules),
        layers_to_transform=list(chosen),
        layers_pattern="layers",
    )
    return LoRABudget(config, rank, chosen, per_rank, target_params)


@dataclass
class LoRAOptions:
    """How the LoRA baseline is built; its size comes from the target parameter count."""

    layers: int | None = None  # top decoder layers to adapt; None: the fewest that fit the budget
    modules: tuple[str, ...] = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
    alpha_per_rank: float = 2.0  # lora_alpha = alpha_per_rank · rank (scale alpha / r stays 2 at every rank)
    loss: str = "softmax"  # "softmax" | "stablemax", as HybridConfig.loss
    decode_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


class LoRATrainable:
    """The LLM with LoRA adapters, trained with CE on the target tokens (prompt masked)."""

    uses_cached_states = False  # the adapters change the LLM's states: every step runs the LLM

    def __init__(self, backbone: Backbone, collator: Collator, target_params: int, options: LoRAOptions | None = None) -> None:
        self.options = options = options or LoRAOptions()
        self.collator = collator
        self.budget = lora_config_for_budget(backbone, target_params, options.layers, options.modules, options.alpha_per_rank)
        model = copy.deepcopy(backbone.model)  # peft injects in place; the shared backbone stays as it is
        self.backbone = Backbone.wrap(model, backbone.tokenizer)  # freezes every base weight of the copy ...
        inject_adapter_in_model(self.budget.config, model)  # ... then adds the adapters, trainable
        if self.num_trainable_params() != self.budget.params:
            raise RuntimeError(f"peft made {self.num_trainable_params():,} trainable parameters, the budget counted {self.budget.params:,}")

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in self.backbone.model.named_parameters() if p.requires_grad)

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def training_loss(self, batch: dict[str, Any], correct_fn: CorrectFn | None = None) -> tuple[Tensor, dict[str, float]]:
        """Token-mean CE on the answer tokens of a collator batch (`correct_fn` unused: no ACT here)."""
        device = self.backbone.device
        hidden, _ = self.backbone.hidden_states(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        positions, targets = supervised_positions(batch["labels"].to(device))
        loss = token_mean_loss(self.backbone.logits(hidden[positions]), targets, f"{self.options.loss}_cross_entropy")
        return loss, {"lm_loss": loss.item()}

    def answer(self, examples: Sequence[Example], decode: DecodeConfig, generator: torch.Generator) -> Answers:
        return generated_answers(self.backbone, self.collator, examples, decode, generator, self.options.decode_batch_size)

    def state_dict(self) -> dict[str, Tensor]:
        """The adapters only (the base weights are the backbone's)."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_parameters())
        if state.keys() != params.keys():
            raise KeyError(f"adapter keys differ: missing {sorted(params.keys() - state.keys())[:4]}, unexpected {sorted(state.keys() - params.keys())[:4]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
