"""The puzzle models of the harness by name: name -> (config dataclass, model class).

The one place that knows them: training, evaluation, checkpoints and hrm_bench look models up
here, so none of them branches on the model. `trm` and `trm_mlp` are one model class; the
Hydra file of trm_mlp sets mlp_t.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from puzzle_hrm.config import HRMConfig, PuzzleModelConfig, field_names
from puzzle_hrm.model import HRM
from puzzle_hrm.transformer import Transformer, TransformerConfig
from puzzle_hrm.trm import TRM, TRMConfig
from puzzle_hrm.typed_config import typed

MODELS: dict[str, tuple[type[PuzzleModelConfig], type[nn.Module]]] = {
    "hrm_v1": (HRMConfig, HRM),
    "trm": (TRMConfig, TRM),
    "trm_mlp": (TRMConfig, TRM),
    "transformer": (TransformerConfig, Transformer),
}
DEFAULT_MODEL = "hrm_v1"  # checkpoints written before models had names hold an HRM


def _entry(name: str) -> tuple[type[PuzzleModelConfig], type[nn.Module]]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def model_config_class(name: str) -> type[PuzzleModelConfig]:
    return _entry(name)[0]


def model_keys(name: str) -> frozenset[str]:
    """The keys a `model:` config section of this model may set."""
    return field_names(model_config_class(name))


def model_config(name: str, values: dict[str, Any]) -> PuzzleModelConfig:
    """The typed config of model `name`: keys it does not know and values of the wrong type are refused, named."""
    return typed(model_config_class(name), values, "model")


def build_model(config: PuzzleModelConfig) -> nn.Module:
    """The model class that takes this config (the config's type names it)."""
    for config_cls, model_cls in MODELS.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise ValueError(f"no model takes a {type(config).__name__}")


def model_name_of(config: PuzzleModelConfig) -> str:
    """The registry name saved in checkpoints (trm for both TRM variants: mlp_t is in the config)."""
    return next(name for name, (config_cls, _) in MODELS.items() if type(config) is config_cls)
