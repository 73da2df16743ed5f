"""Suites name their data by builder + parameters; this builds it once, where the suite says.

A built directory is reused only when its recorded build parameters equal the suite's, so a
changed suite never trains silently on stale data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from puzzle_hrm.data import arc, maze, sudoku

logger = logging.getLogger(__name__)

BUILDERS = {
    "sudoku": (sudoku.SudokuBuildConfig, sudoku.build),
    "maze": (maze.MazeBuildConfig, maze.build),
    "arc": (arc.ARCBuildConfig, arc.build),
}


def ensure_dataset(data: dict, build: bool = True) -> Path:
    """Return the dataset directory, building it first if it is missing (only when `build`)."""
    params = dict(data)
    name = params.pop("builder")
    if name not in BUILDERS:
        raise ValueError(f"unknown data builder {name!r}; known: {sorted(BUILDERS)}")
    config_cls, build_fn = BUILDERS[name]
    config = config_cls(**params)
    out = Path(config.output_dir)
    stamp = out / "build_config.json"
    wanted = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() == wanted:
        logger.info("reusing dataset %s", out)
        return out
    if not build:
        return out
    if stamp.exists():
        logger.warning("dataset %s was built with other parameters; rebuilding", out)
    logger.info("building dataset %s with %s", out, name)
    build_fn(config)
    stamp.write_text(wanted)
    return out
