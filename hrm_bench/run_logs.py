"""Per-run files beside a result row: every evaluation of the training run, and the test-time curves.

A row of results/runs.csv holds the final numbers; the report also needs how a run got there and what
more test-time compute buys. `python -m hrm_bench.run` writes, under the run's id
(<suite>-<model>-<hardware>-seed<n>-<date>, as its ARC submission file):

  results/evals/<id>.csv       one line per evaluation (step, exact/token accuracy, Q-policy, halting)
  results/test_time/<id>.json  accuracy vs outer steps of one rollout (fixed steps, Q-policy capped at k),
                               the halting histogram, and the suite's curves (ARC votes, Maze valid paths)

Both carry the row's identity columns, so each figure traces back to its row and command. Runs made
before these files existed are read from their logs (`eval/...` lines of puzzle_hrm.tracking).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from puzzle_hrm.data.format import atomic_write_text

IDENTITY = ("date", "command", "commit", "suite", "model", "variant", "seed", "hardware", "device", "data", "data_provenance")
EVAL_COLUMNS = ("step", "exact_accuracy", "token_accuracy", "policy_exact_accuracy", "q_halt_accuracy", "mean_halt_steps",
                "count", "eval_seconds")
_LOG_EVAL = re.compile(r"\] - step (\d+) (\{'eval/.*\})$")


def run_id(suite: str, model: str, hardware: str, seed: int, date: str) -> str:
    return f"{suite}-{model}-{hardware}-seed{seed}-{date.replace(':', '')}"


def row_id(row: Mapping[str, object]) -> str:
    return run_id(str(row["suite"]), str(row["model"]), str(row["hardware"]), int(row["seed"]), str(row["date"]))


def identity(row: Mapping[str, object]) -> dict[str, object]:
    return {key: row.get(key) for key in IDENTITY}


def write_eval_curve(results_dir: Path, row: Mapping[str, object], evals: Sequence[Mapping[str, object]]) -> Path:
    """results/evals/<id>.csv: the row's identity and EVAL_COLUMNS of each evaluation, in step order."""
    lines = [{**identity(row), **{c: e.get(c) for c in EVAL_COLUMNS}} for e in evals]
    path = results_dir / "evals" / f"{row_id(row)}.csv"
    atomic_write_text(path, pd.DataFrame(lines, columns=[*IDENTITY, *EVAL_COLUMNS]).to_csv(index=False))
    return path


def write_test_time(results_dir: Path, row: Mapping[str, object], curves: Mapping[str, object]) -> Path:
    path = results_dir / "test_time" / f"{row_id(row)}.json"
    atomic_write_text(path, json.dumps({**identity(row), **curves}, indent=1))
    return path


def read_eval_curves(results_dir: Path) -> pd.DataFrame:
    """Every results/evals/*.csv, one frame (empty with the columns when there is none)."""
    frames = [pd.read_csv(p) for p in sorted((results_dir / "evals").glob("*.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*IDENTITY, *EVAL_COLUMNS])


def read_test_time(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / "test_time").glob("*.json"))]


def evals_from_log(path: Path) -> pd.DataFrame:
    """The `eval/...` lines a run logged (puzzle_hrm.tracking), one row per evaluation; `log` names the file."""
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        if match := _LOG_EVAL.search(text):
            values = ast.literal_eval(match.group(2))
            lines.append({"log": path.name, **{c: values.get(f"eval/{c}") for c in EVAL_COLUMNS}})
    return pd.DataFrame(lines, columns=["log", *EVAL_COLUMNS]).drop_duplicates("step", keep="last")
