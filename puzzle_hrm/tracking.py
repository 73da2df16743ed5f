"""Progress bar and optional Weights & Biases logging, kept out of the training maths.

wandb is off by default; when on without credentials or network it runs in offline mode, so a
run never fails because of tracking.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class Tracker:
    def __init__(self, cfg: Any, total: int, initial: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and cfg.progress), dynamic_ncols=True)
        self.run = None
        if enabled and cfg.wandb:
            self.run = self._start_wandb(cfg)

    @staticmethod
    def _start_wandb(cfg: Any):
        try:
            import wandb
        except ImportError as err:
            raise ImportError("wandb=true needs `pip install wandb` (the [track] extra)") from err
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        return wandb.init(project=cfg.wandb_project, config=dataclasses.asdict(cfg), mode=mode)

    def advance(self) -> None:
        self.bar.update(1)

    def log(self, scalars: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in scalars.items() if k.endswith(("lm_loss", "exact_accuracy", "accuracy", "steps"))}
        self.bar.set_postfix(shown, refresh=False)
        # Without a bar (logs, batch jobs) the log line is the progress report.
        logger.log(logging.DEBUG if self.bar.disable is False else logging.INFO, "step %d %s", step, {k: round(v, 5) for k, v in scalars.items()})
        if self.run is not None:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.bar.close()
        if self.run is not None:
            self.run.finish()
