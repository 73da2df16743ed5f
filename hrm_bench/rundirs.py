"""Run directories: one per configuration, named for people and by a hash, holding the run's row.

`<suite>-<model>-<profile>-seed<n>-<hash8>`: the prefix is what a person looks for, the hash of the
whole resolved configuration (run controls such as max_steps or resume left out, so a longer budget
continues the same run) makes two configurations never share, and so never overwrite, a checkpoint.
Beside the checkpoint, row.json keeps the run's result row: it says a finished run was recorded (and
where), and it is the fallback record when the results table cannot be written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from hrm_bench import records
from puzzle_hrm.data.format import atomic_write_text

logger = logging.getLogger(__name__)
ROW_FILE = "row.json"


def config_hash(config: Mapping[str, Any]) -> str:
    """First 8 hex digits of sha256 over the canonical JSON of `config`."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_dir(root: str | Path, prefix: str, config: Mapping[str, Any]) -> Path:
    return Path(root) / f"{prefix}-{config_hash(config)}"


def saved_row(directory: str | Path) -> dict[str, Any] | None:
    """{"row": ..., "recorded_in": csv path or None} of the run in `directory`, if it has finished."""
    path = Path(directory) / ROW_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_row(directory: str | Path, row: Mapping[str, Any], recorded_in: Path | None) -> Path:
    path = Path(directory) / ROW_FILE
    atomic_write_text(path, json.dumps({"recorded_in": str(recorded_in) if recorded_in else None, "row": dict(row)}, indent=1, default=str))
    return path


def record_row(csv_path: Path, row: Mapping[str, Any], directory: str | Path, header: str) -> None:
    """Append the row to the results table; if that fails, keep it in the run directory and say where
    (the same command with resume=true appends it later without training again). Keys starting with
    "_" are kept in row.json only (e.g. per-task scores for a comparison table)."""
    try:
        records.append_row(csv_path, {k: v for k, v in row.items() if not k.startswith("_")}, records.RUN_COLUMNS, header)
    except (OSError, ValueError) as err:
        fallback = save_row(directory, row, recorded_in=None)
        raise OSError(f"{csv_path}: the result row could not be written ({err}); it is saved in {fallback} "
                      "and is appended by the same command with resume=true") from err
    try:
        save_row(directory, row, recorded_in=csv_path)
    except OSError as err:  # the row is recorded; only the marker of a finished run is missing
        logger.warning("%s: not written (%s); the row is in %s", Path(directory) / ROW_FILE, err, csv_path)
