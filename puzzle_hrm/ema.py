"""Exponential moving average of the weights (TRM's `ema=True, ema_rate=0.999`, official `models/ema.py`).

After every optimizer step each trained parameter's shadow moves toward it:
shadow ← ema_rate · shadow + (1 − ema_rate) · param, starting from the initial weights (no bias
correction, as there). Evaluation swaps the shadows in and back out, so the trained weights and the
optimizer state are untouched. The sparse puzzle-embedding table is a buffer trained by SignSGD and
has no shadow, as in the official code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.rate).add_(p.detach(), alpha=1.0 - self.rate)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights inside the block, its own weights again after it."""
        params = dict(model.named_parameters())
        trained = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in trained.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        if set(state) != set(self.shadow):
            raise ValueError(f"{where}: EMA weights do not fit the model: missing {sorted(set(self.shadow) - set(state))}, "
                             f"unexpected {sorted(set(state) - set(self.shadow))}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
