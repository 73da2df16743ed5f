"""The command lines' error boundary: a refusal is one line, `error: <file or key>: <problem>`, exit 2.

Bad input (a malformed file, an unknown key, a wrong type, a missing path) is reported by the code
that finds it as a ValueError / OSError whose message starts with the file or key. At the entry point
these become one line on stderr instead of a traceback; HRM_BENCH_DEBUG=1 (or Hydra's
HYDRA_FULL_ERROR=1) lets them through with the traceback. A stop signal exits 130 with a resume hint.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from puzzle_hrm.stop import EXIT_STATUS, TrainingInterrupted

REFUSAL_STATUS = 2  # as argparse: the input was refused
DEBUG_VARIABLES = ("HRM_BENCH_DEBUG", "HYDRA_FULL_ERROR")


def debugging() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARIABLES)


def one_line(err: BaseException) -> str:
    """The message on one line (nested causes are part of the message already)."""
    text = str(err) or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


@contextmanager
def refusals(resume_hint: str = "") -> Iterator[None]:
    """Turn refusals into `error: ...` + exit 2, and an interrupted training into exit 130."""
    try:
        yield
    except TrainingInterrupted as err:
        hint = f"; resume with: {resume_hint}" if resume_hint and err.checkpoint else ""
        print(f"stopped: {err}{hint}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
    except (ValueError, OSError) as err:
        if debugging():
            raise
        message = one_line(err)
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{err.filename}: {message}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(REFUSAL_STATUS) from None
