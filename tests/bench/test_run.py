"""`python -m hrm_bench.run`: every shipped config composes, and a tiny CPU run writes a real row."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from hrm_bench import run as bench_run
from hrm_bench.datasets import BUILDERS
from hrm_bench.records import RUN_COLUMNS

CONF = Path(bench_run.__file__).parent / "conf"


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("suite", sorted(p.stem for p in (CONF / "suite").glob("*.yaml")))
@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
@pytest.mark.parametrize("hardware", sorted(p.stem for p in (CONF / "hardware").glob("*.yaml")))
def test_every_config_composes_and_plans_or_names_the_missing_gpu(suite, model, hardware):
    cfg = compose_cfg([f"suite={suite}", f"model={model}", f"hardware={hardware}"])
    if cfg.suite.get("kind") == "hybrid":
        pytest.skip("planned by hrm_bench.hybrid_suite (tests/bench/test_hybrid_suite.py)")
    if hardware in ("cpu", "auto"):
        plan = bench_run.plan_from_config(cfg, overrides=[])
        assert plan.profile.name == "cpu" and plan.arch.forward_dtype == "float32"
        assert plan.train.max_train_seconds is not None  # the CPU tier is a bounded run
        params = dict(plan.data)
        config_cls, _ = BUILDERS[params.pop("builder")]
        config_cls(**params)  # every data key is a real builder option
    else:
        with pytest.raises(ValueError, match="GPU"):
            bench_run.plan_from_config(cfg, overrides=[])


def test_command_line_keys_win_over_the_suite_tier_block():
    overrides = ["model.hidden_size=48", "++suite.train.max_steps=7"]
    plan = bench_run.plan_from_config(compose_cfg(overrides), overrides=overrides)
    assert plan.arch.hidden_size == 48  # the cpu block says 64
    assert plan.train.max_steps == 7
    assert plan.arch.H_cycles == 2 and plan.train.global_batch_size == 64


def test_tiny_cpu_run_appends_a_complete_row(tmp_path):
    overrides = [
        f"results_dir={tmp_path / 'results'}",
        f"checkpoint_root={tmp_path / 'ckpt'}",
        f"suite.cpu.data.output_dir={tmp_path / 'data'}",
        "suite.cpu.data.num_train=64",
        "suite.cpu.data.num_test=16",
        "++suite.train.max_steps=6",
        "++suite.train.progress=false",
        "++suite.train.log_every=3",
    ]
    plan = bench_run.plan_from_config(compose_cfg(overrides), overrides=overrides)
    row = bench_run.run(plan)
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert list(table.columns) == list(RUN_COLUMNS) and len(table) == 1
    assert row["steps"] == 6 and row["hardware"] == "cpu" and row["suite"] == "sudoku"
    assert row["data_provenance"].startswith("stand-in")
    assert row["peak_mem_gib"] > 0 and row["eval_puzzles_per_s"] > 0 and row["train_examples_per_s"] > 0
    assert 0.0 <= row["exact_accuracy"] <= row["token_accuracy"] <= 1.0
    assert (tmp_path / "results" / "runs.md").read_text().count("sudoku") >= 1
    assert (tmp_path / "ckpt").exists()
