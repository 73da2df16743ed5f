"""Ctrl-C and SIGTERM stop a training loop between steps, so the state saved is a whole step's.

The first signal only sets a flag that the loop reads after its step; the loop saves a checkpoint and
raises TrainingInterrupted, which the command line turns into a resume hint and exit status 130.
A second signal gets the default behaviour (stop now), for a loop that does not get to its check.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_STATUS = 130  # the shell's status for a run stopped by Ctrl-C


class TrainingInterrupted(Exception):
    """A stop signal arrived; the state at `step` was saved to `checkpoint` (None: nowhere to save)."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint_dir: nothing was saved"
        super().__init__(f"{signal_name} at step {step}: {where}")


class StopRequest:
    """The name of the first stop signal received, or None."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the request instead of raising (main thread only:
    elsewhere signals cannot be handled and the request stays empty)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handle(signum: int, _frame) -> None:
        request.signal_name = signal.Signals(signum).name
        for sig, handler in previous.items():  # a second signal is not caught
            signal.signal(sig, handler)

    for sig in SIGNALS:
        signal.signal(sig, handle)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
