"""suite=variants / suite=ablations: every (base, variant, seed) is a run of hrm_bench.run, one table per base."""

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from hrm_bench.suites import sweep
from hrm_bench.records import RUN_COLUMNS
from hrm_bench.run import REPO_ROOT

CONF = REPO_ROOT / "hrm_bench" / "conf"


def compose_cfg(overrides: list[str]):
    return compose(config_name="config", overrides=overrides)


@pytest.fixture
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


@pytest.mark.parametrize("suite", ["variants", "ablations"])
def test_every_run_of_the_cpu_tier_plans(hydra_conf, suite):
    from hrm_bench import run as bench_run

    plan = sweep.plan_from_config(compose_cfg([f"suite={suite}", "hardware=cpu"]))
    for base in plan.bases:
        for label in plan.variants:
            overrides = sweep.run_overrides(plan, base, label, plan.seeds[0])
            run_plan = bench_run.plan_from_config(compose_cfg(overrides), overrides=overrides)
            assert run_plan.variant == label and run_plan.profile.name == "cpu"
            assert run_plan.train.max_steps <= 300 and run_plan.train.max_train_seconds is None  # step budgets: same result under load


def test_ablation_knobs_reach_the_run(hydra_conf):
    from hrm_bench import run as bench_run

    plan = sweep.plan_from_config(compose_cfg(["suite=ablations", "hardware=cpu"]))

    def planned(base, label):
        overrides = sweep.run_overrides(plan, base, label, 0)
        return bench_run.plan_from_config(compose_cfg(overrides), overrides=overrides)

    assert planned("sudoku", "act_test_2x").train.eval_halt_max_steps == 4  # the cpu block's value wins
    assert planned("arc1", "default").train.max_steps == 20  # the base's budget over every run's
    assert planned("sudoku", "num_aug").data["output_dir"] == "datasets/sudoku-cpu-ablation-aug-4"
    assert planned("sudoku", "full_gradient").arch.one_step_gradient is False
    assert planned("sudoku", "bce_halting").arch.act_continue_loss is False
    variants = sweep.plan_from_config(compose_cfg(["suite=variants", "hardware=cpu"]))
    trm = bench_run.plan_from_config(compose_cfg(o := sweep.run_overrides(variants, "sudoku", "trm_mlp", 1)), overrides=o)
    assert (trm.model_name, trm.arch.mlp_t, trm.arch.L_cycles, trm.train.ema, trm.seed) == ("trm_mlp", True, 2, True, 1)


def test_a_tiny_sweep_writes_rows_a_table_and_a_plot(hydra_conf, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_cfg(["suite=variants", "hardware=cpu", f"results_dir={tmp_path / 'results'}", f"checkpoint_root={tmp_path / 'ckpt'}",
                       "suite.seeds=[0,1]"])
    OmegaConf.update(cfg, "suite.overrides", [f"suite.cpu.data.output_dir={tmp_path / 'data'}", "suite.cpu.data.num_train=64",
                                              "suite.cpu.data.num_test=16", "++suite.train.log_every=2"])
    OmegaConf.update(cfg, "suite.cpu.overrides", ["++suite.train.max_steps=2", "++suite.train.max_train_seconds=60", "++suite.train.progress=false"])
    rows = sweep.main(cfg)["sudoku"]
    assert [(r["variant"], r["seed"]) for r in rows] == [(v, s) for v in ("hrm", "trm", "trm_mlp", "transformer") for s in (0, 1)]
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert list(table.columns) == list(RUN_COLUMNS) and set(table["suite"]) == {"variants"}
    assert table["model"].tolist()[::2] == ["hrm_v1", "trm", "trm_mlp", "transformer"]
    assert "ema=True" in table["config"][2] and "mlp_t=True" in table["config"][4] and "H_cycles=2" in table["config"][0]
    params = dict(zip(table["variant"], table["params"]))
    assert params["hrm"] == params["transformer"] == params["trm"] > params["trm_mlp"]  # two blocks each; a token MLP is smaller than attention
    assert (table["tflops"] > 0).all()
    text = (tmp_path / "results" / "variants-sudoku-cpu.md").read_text()
    assert "| trm_mlp |" in text and "exact_accuracy (mean ± std)" in text and "| 2 |" in text
    assert (tmp_path / "results" / "variants-sudoku-cpu.png").stat().st_size > 0
