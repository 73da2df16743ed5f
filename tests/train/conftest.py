from pathlib import Path

import pytest

from puzzle_hrm.config import HRMConfig
from puzzle_hrm.data.sudoku import SudokuBuildConfig, build
from puzzle_hrm.train import TrainConfig


@pytest.fixture(scope="session")
def sudoku4(tmp_path_factory) -> Path:
    """A generated 4x4 Sudoku set (real puzzles with unique solutions, made offline)."""
    out = tmp_path_factory.mktemp("data") / "sudoku4"
    return build(SudokuBuildConfig(source="generate", output_dir=str(out), box=2, num_train=256, num_test=64, min_blanks=2, max_blanks=6, seed=1))


@pytest.fixture(scope="session")
def sudoku4_learning(tmp_path_factory) -> Path:
    """2,000 generated 4x4 training puzzles and 200 unseen test ones: enough for a model to really learn."""
    out = tmp_path_factory.mktemp("learn") / "sudoku4"
    return build(SudokuBuildConfig(source="generate", output_dir=str(out), box=2, num_train=2000, num_test=200, min_blanks=2, max_blanks=6, seed=0))


def small_arch(**overrides) -> HRMConfig:
    base = dict(hidden_size=32, num_heads=2, expansion=2, H_layers=1, L_layers=1, puzzle_emb_ndim=32, halt_max_steps=3, forward_dtype="float32")
    base.update(overrides)
    return HRMConfig(**base)


def small_train(data: Path, **overrides) -> TrainConfig:
    base = dict(
        data_path=str(data), global_batch_size=8, epochs=1000, eval_interval=1000, lr=1e-3, puzzle_emb_lr=1e-2,
        lr_warmup_steps=3, max_steps=12, progress=False, log_every=4, eval_max_batches=2,
    )
    base.update(overrides)
    return TrainConfig(**base)
