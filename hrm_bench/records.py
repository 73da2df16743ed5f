"""Result rows -> results/*.csv plus a Markdown copy of each table, written atomically.

The CSV is the record; the Markdown file beside it (runs.md next to runs.csv) is regenerated from
it on every append for reading on GitHub. Both are written to a temporary file in the same folder
and moved into place with os.replace, so a crash leaves the old table whole. A CSV whose header
is not the expected one is refused, never rewritten, except an older table whose columns are the
expected ones with some missing (a contract before columns were added): it gains them, empty. Cells are kept as the text they were written
as, so SHAs and version strings round-trip unchanged. The read-modify-rewrite of an append holds
a lock file beside the table (<table>.lock, filelock), so runs finishing at the same time all keep
their rows.
"""

from __future__ import annotations

import datetime
import logging
import math
import numbers
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from filelock import FileLock

from puzzle_hrm.data.format import atomic_write_text

logger = logging.getLogger(__name__)

# One row per run (results/runs.csv): the DESIGN.md contract, plus `cuda` after `torch` so the
# row names both library versions, and `valid_path_rate` (Maze: optimal S->G paths, see
# puzzle_hrm.data.maze.path_metrics), and `config`: the knobs that set the result (`key=value ...`,
# hrm_bench.run.config_column). A column that does not apply to a run stays empty.
RUN_COLUMNS = (
    "date", "command", "commit", "suite", "model", "variant", "data", "data_provenance", "seed",
    "hardware", "device", "n_gpus", "torch", "cuda", "params", "steps", "wall_s",
    "train_examples_per_s", "train_tokens_per_s", "tflops", "mfu", "peak_mem_gib",
    "exact_accuracy", "token_accuracy", "mean_halt_steps", "q_halt_accuracy",
    "pass_at_1", "pass_at_2", "valid_path_rate", "verifier_accuracy", "eval_puzzles_per_s",
    "decode_tokens_per_s", "config", "stop_reason",
)  # fmt: skip
# stop_reason: what ended the training: schedule (its last step) | max_steps | max_train_seconds.
# One row per performance measurement (results/perf.csv); path is "fast" or "reference".
PERF_COLUMNS = (
    "date", "command", "commit", "device", "profile", "path", "config", "shape", "batch",
    "train_examples_per_s", "eval_puzzles_per_s", "tflops", "mfu", "peak_mem_gib", "warmup_s",
)  # fmt: skip
SCALING_COLUMNS = PERF_COLUMNS + ("n_gpus", "scaling_efficiency")  # results/scaling.csv

# Columns shown verbatim in Markdown; the others are numbers (floats to 4 significant digits, or
# rounded to an integer from 10^4 up).
# Needed because "13.0" (a CUDA version) and "1.30" (a float) look alike once stored as text.
TEXT_COLUMNS = frozenset(
    {"date", "command", "commit", "suite", "model", "variant", "data", "data_provenance", "hardware",
     "device", "torch", "cuda", "profile", "path", "config", "shape"}
)  # fmt: skip


def append_row(csv_path: str | Path, row: Mapping[str, object], columns: Sequence[str], header: str = "") -> None:
    """Append `row` to the table at csv_path (created if missing) and rewrite its Markdown copy.

    Keys of `row` must be in `columns`; missing ones become empty cells, as do None and NaN.
    `header` is the text above the Markdown table (e.g. the FLOP formula, which data are stand-ins).
    """
    csv_path = Path(csv_path)
    columns = list(columns)
    unknown = [key for key in row if key not in columns]
    if unknown:
        raise ValueError(f"{csv_path}: unknown columns {unknown}; expected a subset of {columns}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(csv_path)):
        table = _read_table(csv_path, columns)
        table.loc[len(table)] = [_cell(row.get(c)) for c in columns]
        atomic_write_text(csv_path, table.to_csv(index=False, lineterminator="\n"))
        preamble = f"{header.strip()}\n\n" if header.strip() else ""
        atomic_write_text(csv_path.with_suffix(".md"), preamble + markdown_table(table))
    logger.info("appended a row to %s (%d rows)", csv_path, len(table))


HAND_NOTES = "## Notes (by hand)"


def write_generated_page(path: str | Path, text: str) -> Path | None:
    """Write a generated Markdown page; an older page there that holds hand-written notes is moved
    aside first (to <stem>.<its mtime, UTC>.md, or <stem>.<mtime>-2.md if that name is taken), so a
    rerun never erases what a person wrote. Returns where the old page went, or None."""
    path = Path(path)
    kept = None
    if path.is_file() and HAND_NOTES in path.read_text(errors="replace"):
        stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
        copies = 1
        while kept.exists():  # an earlier page kept within the same second stays too
            copies += 1
            kept = path.with_name(f"{path.stem}.{stamp}-{copies}{path.suffix}")
        os.replace(path, kept)
        logger.info("%s held hand-written notes: kept as %s", path, kept)
    atomic_write_text(path, text)
    return kept


def lock_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".lock")


def check_writable(directory: str | Path) -> Path:
    """Make sure rows can be written to `directory` before a run spends its time training: create it,
    then create and remove a file there. Raises OSError naming the directory."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise OSError(f"{directory}: result rows cannot be written there ({err.strerror or err}); "
                      "pass results_dir=<a writable folder>") from None
    return directory


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of `table`, whose cells are text as append_row stores them."""
    columns = list(table.columns)
    lines = [_markdown_line(columns), _markdown_line(["---"] * len(columns))]
    for values in table.itertuples(index=False):
        lines.append(_markdown_line([_format_cell(c, v) for c, v in zip(columns, values, strict=True)]))
    return "\n".join(lines) + "\n"


def git_commit(repo_dir: str | Path) -> str:
    """Short SHA of HEAD, with "-dirty" if tracked or untracked files differ. The HRM_BENCH_COMMIT
    environment variable wins when set: a working tree copied to a remote GPU may carry a stale or
    no .git, and the caller knows which commit it copied ("unknown" if neither is available)."""
    if os.environ.get("HRM_BENCH_COMMIT"):
        return os.environ["HRM_BENCH_COMMIT"]
    try:
        sha = _git(repo_dir, "rev-parse", "--short", "HEAD")
        dirty = _git(repo_dir, "status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def run_stamp(module: str, repo_dir: str | Path) -> dict[str, str]:
    """The date, command line and commit that open every result row."""
    return {
        "date": now_utc_iso(),
        "command": f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": git_commit(repo_dir),
    }


def now_utc_iso() -> str:
    """Current UTC time to the second, e.g. 2025-07-01T12:34:56Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_table(csv_path: Path, columns: list[str]) -> pd.DataFrame:
    """The table at csv_path (empty if missing) with exactly `columns`; an older table whose columns are
    `columns` in order with some missing gets those as empty cells."""
    if not csv_path.exists():
        return pd.DataFrame(columns=columns, dtype=str)
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if not _is_subsequence(list(table.columns), columns):
        raise ValueError(
            f"{csv_path}: header does not match the expected columns; refusing to rewrite it.\n"
            f"  file:     {list(table.columns)}\n  expected: {columns}"
        )
    if missing := [c for c in columns if c not in table.columns]:
        logger.info("%s: adding the new column(s) %s", csv_path, missing)
    return table.reindex(columns=columns, fill_value="")


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(column in remaining for column in part)  # `in` advances the iterator: order is kept


def _cell(value: object) -> str:
    """The CSV text of a value: empty for None/NaN, shortest round-trip repr for floats."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def _format_cell(column: str, text: str) -> str:
    if column in TEXT_COLUMNS or not text:
        return text
    try:
        int(text)
        return text
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isnan(number):
        return ""
    return f"{number:.0f}" if abs(number) >= 1e4 else f"{number:.4g}"  # no 1.235e+04 for large counts


def _markdown_line(cells: Sequence[str]) -> str:
    escaped = (str(cell).replace("|", r"\|").replace("\n", " ") for cell in cells)
    return "| " + " | ".join(escaped) + " |"


def figure(width: float = 7, height: float = 4, **subplots):
    """A matplotlib figure and axes on the file-only Agg backend (no display on CI or GPU machines);
    `subplots` go to plt.subplots (ncols=2: an array of two axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), **subplots)


def save_figure(fig, path: Path) -> None:
    """Save a plot as PNG atomically (temp file + rename), like the tables."""
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def _git(repo_dir: str | Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True, timeout=10)
    return result.stdout.strip()
