"""`python -m hrm_bench.run`: every shipped config composes, and a tiny CPU run writes a real row."""

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from hrm_bench import run as bench_run
from hrm_bench.datasets import BUILDERS
from hrm_bench.records import RUN_COLUMNS
from puzzle_hrm.data.arc import DEFAULT_ARC_ARCHIVE

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
        pytest.skip("planned by hrm_bench.suites.hybrid (tests/bench/test_hybrid_suite.py)")
    if cfg.suite.get("kind") == "sweep":
        pytest.skip("planned by hrm_bench.suites.sweep, every run of it (tests/bench/test_sweep_suite.py)")
    if hardware in ("cpu", "auto"):
        plan = bench_run.plan_from_config(cfg, overrides=[])
        assert plan.profile.name == "cpu" and plan.arch.forward_dtype == "float32"
        assert plan.train.max_steps is not None and plan.train.max_train_seconds is None  # a step budget: load-independent
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


@pytest.mark.parametrize(("override", "message"), [
    ("++model.H_cycle=3", r"model.H_cycle: unknown key; valid keys of model: H_cycles, H_layers"),
    ("model.H_cycles=abc", r"model.H_cycles: 'abc' is not int"),
    ("seed=abc", r"seed: 'abc' is not int"),
    ("++suite.train.lr=fast", r"suite.train.lr: 'fast' is not float"),
    ("++suite.train.max_steps=abc", r"suite.train.max_steps: 'abc' is not int or null"),
    ("++suite.train.nosuch=1", r"suite.train.nosuch: unknown key; valid keys of suite.train: beta1"),
    ("++suite.data.nosuch=1", r"suite.data.nosuch: unknown key; valid keys of suite.data: box, check_unique"),
    ("++suite.nosuch=1", r"suite.nosuch: unknown key; valid keys of suite: cpu, data"),
    ("++nosuch=1", r"nosuch: unknown key; valid keys: checkpoint_root, results_dir, seed, variant"),
    ("hardware.compile=maybe", r"hardware.compile: 'maybe' is not bool or null"),
    ("++suite.eval.nosuch=1", r"suite.eval.nosuch: unknown key; valid keys of suite.eval: test_time_steps"),
    ("suite.eval.test_time_steps=abc", r"suite.eval.test_time_steps: 'abc' is not int or null"),
])
def test_unknown_keys_and_wrong_types_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        bench_run.plan_from_config(compose_cfg([override]), overrides=[override])


def test_run_directories_are_named_by_the_whole_configuration():
    def directory(*overrides: str) -> str:
        return bench_run.plan_from_config(compose_cfg(list(overrides)), overrides=list(overrides)).train.checkpoint_dir

    default, variant = directory("seed=1"), directory("seed=1", "model.H_cycles=3", "variant=H3")
    assert default.startswith("checkpoints/sudoku-hrm_v1-cpu-seed1-") and variant.startswith("checkpoints/sudoku-hrm_v1-cpu-seed1-")
    assert default != variant and default != directory("seed=1", "++suite.train.lr=1e-4")
    # run controls and labels name the same run: a longer budget continues it
    assert default == directory("seed=1", "++suite.train.max_steps=4000", "++suite.train.resume=true", "variant=longer")


def tiny_run(tmp_path, *overrides: str) -> dict:
    """A few steps of a suite's CPU tier, writing under tmp_path; returns the row."""
    overrides = [
        f"results_dir={tmp_path / 'results'}",
        f"checkpoint_root={tmp_path / 'ckpt'}",
        f"suite.cpu.data.output_dir={tmp_path / 'data'}",
        "++suite.train.progress=false",
        *overrides,
    ]
    return bench_run.run(bench_run.plan_from_config(compose_cfg(overrides), overrides=overrides))


def test_tiny_cpu_run_appends_a_complete_row(tmp_path):
    row = tiny_run(tmp_path, "suite.cpu.data.num_train=64", "suite.cpu.data.num_test=16", "++suite.train.max_steps=6",
                   "++suite.train.log_every=3", "suite.eval.test_time_steps=5")
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert list(table.columns) == list(RUN_COLUMNS) and len(table) == 1
    assert row["steps"] == 6 and row["hardware"] == "cpu" and row["suite"] == "sudoku"
    assert row["data_provenance"].startswith("stand-in")
    assert row["peak_mem_gib"] > 0 and row["eval_puzzles_per_s"] > 0 and row["train_examples_per_s"] > 0
    assert 0.0 <= row["exact_accuracy"] <= row["token_accuracy"] <= 1.0
    assert (tmp_path / "results" / "runs.md").read_text().count("sudoku") >= 1
    assert (tmp_path / "ckpt").exists()
    evals = pd.read_csv(next((tmp_path / "results" / "evals").glob("sudoku-hrm_v1-cpu-seed0-*.csv")))
    assert evals["step"].tolist() == [6] and evals["exact_accuracy"].tolist() == [row["exact_accuracy"]]
    assert (evals["date"] == row["date"]).all() and (evals["command"] == row["command"]).all()
    curves = json.loads(next((tmp_path / "results" / "test_time").glob("*.json")).read_text())
    assert len(curves["exact_accuracy_by_steps"]) == 5  # the run's halt_max_steps is 2; the curve goes on to 5
    assert curves["exact_accuracy_by_steps"][1] == row["exact_accuracy"] and curves["date"] == row["date"]


def test_a_finished_run_is_not_recorded_twice_and_a_row_without_training_has_no_throughput(tmp_path, capsys):
    small = ["suite.cpu.data.num_train=64", "suite.cpu.data.num_test=16", "++suite.train.max_steps=2", "++suite.train.log_every=1"]
    first = tiny_run(tmp_path, *small)
    again = tiny_run(tmp_path, *small, "++suite.train.resume=true")
    assert again == first and "run already finished at step 2" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "results" / "runs.csv")) == 1
    (row_file,) = (tmp_path / "ckpt").glob("*/row.json")
    row_file.unlink()  # as if the evaluation had failed after the last checkpoint: evaluate and record, no training
    evaluated = tiny_run(tmp_path, *small, "++suite.train.resume=true")
    assert evaluated["steps"] == 2 and evaluated["train_examples_per_s"] is None and evaluated["tflops"] is None
    assert evaluated["exact_accuracy"] == first["exact_accuracy"] and evaluated["stop_reason"] == "max_steps"
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert len(table) == 2 and table["train_examples_per_s"].isna().tolist() == [False, True]


@pytest.mark.skipif(not DEFAULT_ARC_ARCHIVE.exists(), reason="ARC task archive not present")
def test_tiny_arc_run_scores_pass_at_k_and_writes_the_submission(tmp_path):
    row = tiny_run(tmp_path, "suite=arc1", "suite.cpu.data.max_tasks=1", "suite.cpu.data.num_aug=2", "++suite.train.max_steps=2",
                   "++suite.train.log_every=1", "suite.cpu.train.global_batch_size=4", "model.hidden_size=16", "model.num_heads=2",
                   "model.puzzle_emb_ndim=16", "suite.scoring.vote=q_halt")
    assert row["suite"] == "arc1" and row["data_provenance"] == "arc:arc_raw.tar.gz"
    assert 0.0 <= row["pass_at_1"] <= row["pass_at_2"] <= 1.0
    (submission,) = (tmp_path / "results" / "submissions").iterdir()
    assert submission.name.startswith("arc1-hrm_v1-cpu-seed0-")
    attempts = json.loads(submission.read_text())
    assert list(attempts) == ["00576224"]  # the first evaluation task; its one test pair, two attempts
    assert len(attempts["00576224"]) == 1 and set(attempts["00576224"][0]) == {"attempt_1", "attempt_2"}
    table = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert table["pass_at_2"].tolist() == [row["pass_at_2"]] and table["valid_path_rate"].isna().all()
    curves = json.loads(next((tmp_path / "results" / "test_time").glob("arc1-*.json")).read_text())
    assert [c["votes"] for c in curves["arc_votes"]] == [1, 2, 3]  # original + 2 augmentations
    assert curves["arc_votes"][-1]["pass@2"] == row["pass_at_2"] and curves["arc_tasks"] == 1


def test_tiny_maze_run_records_the_valid_path_rate(tmp_path):
    row = tiny_run(tmp_path, "suite=maze", "suite.cpu.data.num_train=16", "suite.cpu.data.num_test=4", "++suite.data.min_path_length=40", "++suite.train.max_steps=2",
                   "++suite.train.log_every=1", "suite.cpu.train.global_batch_size=4", "model.hidden_size=16", "model.num_heads=2",
                   "model.puzzle_emb_ndim=16")
    assert 0.0 <= row["exact_accuracy"] <= row["valid_path_rate"] <= 1.0  # an exact answer is a valid path
    assert pd.read_csv(tmp_path / "results" / "runs.csv")["valid_path_rate"].tolist() == [row["valid_path_rate"]]
    curves = json.loads(next((tmp_path / "results" / "test_time").glob("maze-*.json")).read_text())
    assert curves["valid_path_rate_by_steps"][-1] == row["valid_path_rate"]
    assert len(curves["valid_path_rate_by_steps"]) == len(curves["exact_accuracy_by_steps"])
