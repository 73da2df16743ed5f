"""recipe=multi_gpu | single_gpu: the official recipes' batch and learning rates in a suite's gpu tier."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hrm_bench.run import merge_tier

CONF = str(Path(__file__).resolve().parents[2] / "hrm_bench" / "conf")


@pytest.mark.parametrize("recipe, batch, lr", [(None, 384, 7e-5), ("single_gpu", 384, 7e-5), ("multi_gpu", 768, 1e-4)])
def test_recipe_sets_the_gpu_tier_of_sudoku(recipe, batch, lr):
    overrides = ["suite=sudoku", *([f"recipe={recipe}"] if recipe else [])]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    train = merge_tier(cfg, "gpu", overrides)["train"]
    assert (train["global_batch_size"], train["lr"], train["puzzle_emb_lr"]) == (batch, lr, lr)
    assert train["weight_decay"] == train["puzzle_emb_weight_decay"] == 1.0
    assert train["epochs"] == 20000 and train["eval_interval"] == 2000  # the rest of the recipe is the suite's
