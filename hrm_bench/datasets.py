"""Suites name their data by builder + parameters; this builds it once, where the suite says.

A built directory is reused only when its recorded build parameters (build_config.json) equal the
suite's, so a changed suite never trains silently on stale data. The record is written last, when
every split is complete; a build in progress carries a marker file instead. A rebuild sets the older
build aside and puts it back if it fails, so a failed or killed build never leaves a matching record
over splits from two builds. (The build runs in output_dir itself: dataset.json records that path.)
Shipped sources given relative to the repository (datasets/sources/...) are found from any directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from puzzle_hrm.data import arc, maze, sudoku
from puzzle_hrm.data.format import atomic_write_text

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STAMP = "build_config.json"
IN_PROGRESS = ".build-in-progress"
BUILDERS = {
    "sudoku": (sudoku.SudokuBuildConfig, sudoku.build),
    "maze": (maze.MazeBuildConfig, maze.build),
    "arc": (arc.ARCBuildConfig, arc.build),
}
SOURCE_KEYS = ("source", "tdoku_archive")  # builder options that may name a shipped file or folder


def shipped(params: dict) -> dict:
    """Relative source paths that exist in the repository but not here resolve to the repository's."""
    resolved = dict(params)
    for key in SOURCE_KEYS:
        value = resolved.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and not Path(value).exists() and (REPO_ROOT / value).exists():
            resolved[key] = str(REPO_ROOT / value)
    return resolved


def ensure_dataset(data: dict, build: bool = True) -> Path:
    """Return the dataset directory, building it first if it is missing (only when `build`)."""
    params = dict(data)
    name = params.pop("builder")
    if name not in BUILDERS:
        raise ValueError(f"unknown data builder {name!r}; known: {sorted(BUILDERS)}")
    config_cls, build_fn = BUILDERS[name]
    config = config_cls(**params)  # the record names the suite's paths, wherever they resolve
    out = Path(config.output_dir)
    stamp = out / STAMP
    wanted = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() == wanted:
        logger.info("reusing dataset %s", out)
        return out
    if not build:
        return out
    if stamp.exists():
        logger.warning("dataset %s was built with other parameters; rebuilding", out)
    logger.info("building dataset %s with %s", out, name)
    rebuild(config_cls(**shipped(params)), build_fn, wanted)
    return out


def rebuild(config, build_fn, record: str) -> None:
    """build_fn(config) into config.output_dir, an older complete build set aside until it succeeds."""
    out = Path(config.output_dir)
    aside = out.with_name(out.name + ".previous")
    if aside.exists():
        shutil.rmtree(aside)  # left by a rebuild that was killed after it set the older build aside
    if (out / STAMP).exists():
        out.rename(aside)
    elif (out / IN_PROGRESS).exists():
        shutil.rmtree(out)  # a build that was killed
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and was not built here (no {STAMP}); remove it or choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS).write_text("")
    try:
        build_fn(config)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        if aside.exists():
            aside.rename(out)
        raise
    atomic_write_text(out / STAMP, record)
    (out / IN_PROGRESS).unlink()
    if aside.exists():
        shutil.rmtree(aside)
