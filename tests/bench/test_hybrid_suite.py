"""`python -m hrm_bench.run suite=hybrid` on the tiny backbone: every variant, one row each, one table."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir

from hrm_bench.suites import hybrid as hybrid_suite
from hrm_bench.run import REPO_ROOT

CONF = REPO_ROOT / "hrm_bench" / "conf"
TINY = [
    "++suite.backbone=tiny",
    "++suite.train.train_n=8",
    "++suite.train.eval_n=4",
    "++suite.train.batch_size=4",
    "++suite.train.max_steps=1",
    "++suite.train.eval_every=1",
    "++suite.train.max_new_tokens=3",
    "++suite.train.tasks=[addition]",
    "++suite.model.d_h=16",
    "++suite.model.num_heads=2",
    "++suite.model.H_layers=1",
    "++suite.model.L_layers=1",
    "++suite.model.segments=2",
    "++suite.model.inner_T=2",
    "++suite.variant_train.lora={max_steps: 1}",
    "suite.variants=[llm_few_shot,hrm_grb,hrm_cab_vocab,hrm_grb_act,hrm_only,lora]",  # every kind of variant, kept fast
]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_the_cpu_tier_plans_every_variant():
    plan = hybrid_suite.plan_from_config(compose_cfg(["suite=hybrid", "hardware=cpu"]), overrides=[])
    assert plan.variants == hybrid_suite.VARIANTS and plan.backbone == "smollm2"
    assert plan.train.max_steps == 40 and plan.model["d_h"] == 128 and plan.variant_train["lora"]["max_steps"] == 10
    with pytest.raises(ValueError, match="unknown hybrid variants"):
        hybrid_suite.plan_from_config(compose_cfg(["suite=hybrid", "hardware=cpu", "suite.variants=[gpt5]"]), overrides=[])


def test_tiny_suite_writes_one_row_per_variant_and_the_table(tmp_path):
    overrides = ["suite=hybrid", "hardware=cpu", f"results_dir={tmp_path}", f"checkpoint_root={tmp_path / 'ckpt'}", *TINY]
    rows = hybrid_suite.main(compose_cfg(overrides), overrides)
    written = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [r["variant"] for r in written] == [r["variant"] for r in rows]
    by_variant = {r["variant"]: r for r in written}
    assert set(by_variant) == {"llm_few_shot", "hrm_grb", "hrm_cab_vocab", "hrm_grb_act", "hrm_only", "lora"}
    assert by_variant["llm_few_shot"]["params"] == "0" and by_variant["hrm_grb"]["steps"] == "1"
    assert int(by_variant["hrm_cab_vocab"]["params"]) > int(by_variant["hrm_grb"]["params"])
    assert abs(int(by_variant["lora"]["params"]) / int(by_variant["hrm_grb"]["params"]) - 1) < 0.1  # matched budget
    assert all(r["suite"] == "hybrid" and 0 <= float(r["verifier_accuracy"]) <= 1 for r in written)
    assert all(float(r["decode_tokens_per_s"]) > 0 for r in written)
    # segments used: every one of the 2 for the HRM variants without ACT, 1..2 with it, none without an HRM
    assert by_variant["hrm_grb"]["mean_halt_steps"] == by_variant["hrm_only"]["mean_halt_steps"] == "2.0"
    assert 1 <= float(by_variant["hrm_grb_act"]["mean_halt_steps"]) <= 2
    assert by_variant["llm_few_shot"]["mean_halt_steps"] == by_variant["lora"]["mean_halt_steps"] == ""
    table = (tmp_path / "hybrid-cpu.md").read_text()
    assert all(f"| {r['variant']} |" in table for r in rows) and "mean segments" in table and "decode tok/s" in table


def test_a_run_cut_by_its_time_budget_says_so_in_its_row(tmp_path):
    overrides = ["suite=hybrid", "hardware=cpu", f"results_dir={tmp_path}", f"checkpoint_root={tmp_path / 'ckpt'}", *TINY,
                 "++suite.train.max_steps=3", "++suite.train.max_train_seconds=0", "suite.variants=[llm_zero_shot,hrm_grb]"]
    rows = {r["variant"]: r for r in hybrid_suite.main(compose_cfg(overrides), overrides)}
    assert (rows["hrm_grb"]["steps"], rows["hrm_grb"]["stop_reason"]) == (1, "max_train_seconds")
    assert (rows["llm_zero_shot"]["steps"], rows["llm_zero_shot"]["stop_reason"]) == (0, None)


def test_a_bfloat16_llm_runs_every_kind_of_variant(tmp_path):
    overrides = ["suite=hybrid", "hardware=cpu", f"results_dir={tmp_path}", f"checkpoint_root={tmp_path / 'ckpt'}", *TINY, "suite.backbone_dtype=bfloat16"]
    plan = hybrid_suite.plan_from_config(compose_cfg(overrides), overrides)
    assert plan.backbone_dtype == torch.bfloat16
    rows = hybrid_suite.run_suite(plan)
    assert len(rows) == 6 and all(0 <= r["verifier_accuracy"] <= 1 and r["decode_tokens_per_s"] > 0 for r in rows)
    config = f"backbone_dtype=bfloat16 matmul_precision=highest transformers={transformers.__version__}"
    assert f"backbone: tiny ({config})" in (tmp_path / "hybrid-cpu.md").read_text()
    assert {row["config"] for row in csv.DictReader((tmp_path / "runs.csv").open())} == {config}  # the row says what set its numerics
    with pytest.raises(ValueError, match="backbone_dtype must be one of"):
        hybrid_suite.plan_from_config(compose_cfg(["suite=hybrid", "hardware=cpu", "suite.backbone_dtype=fp8"]), overrides=[])
    with pytest.raises(ValueError, match="matmul_precision must be one of"):
        hybrid_suite.plan_from_config(compose_cfg(["suite=hybrid", "hardware=cpu", "suite.matmul_precision=tf32"]), overrides=[])


def test_the_suite_runs_under_its_matmul_precision_and_restores_the_processs(monkeypatch):
    overrides = ["suite=hybrid", "hardware=cpu", *TINY, "suite.matmul_precision=medium"]
    plan = hybrid_suite.plan_from_config(compose_cfg(overrides), overrides)
    seen = []
    monkeypatch.setattr(hybrid_suite, "compare_variants", lambda plan: seen.append(torch.get_float32_matmul_precision()) or [])
    before = torch.get_float32_matmul_precision()
    assert hybrid_suite.run_suite(plan) == [] and seen == ["medium"]
    assert torch.get_float32_matmul_precision() == before != "medium"


def test_mid_depth_and_prefix_variants_are_evaluated_at_every_eval_segments_count(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=hybrid_suite.logger.name)
    tiny = [o for o in TINY if not o.startswith("suite.variants")]
    overrides = ["suite=hybrid", "hardware=cpu", f"results_dir={tmp_path}", f"checkpoint_root={tmp_path / 'ckpt'}", *tiny, "suite.variants=[hrm_grb,hrm_grb_mid,hrm_prefix_centered]", "++suite.eval_segments=[1,3]"]
    plan = hybrid_suite.plan_from_config(compose_cfg(overrides), overrides)
    assert plan.eval_segments == (1, 3)
    rows = hybrid_suite.run_suite(plan)
    assert [r["variant"] for r in rows] == [f"{v}{s}" for v in ("hrm_grb", "hrm_grb_mid", "hrm_prefix_centered") for s in ("", "@seg1", "@seg3")]
    assert [r["mean_halt_steps"] for r in rows] == [2.0, 1.0, 3.0] * 3
    agreement = [m for m in caplog.messages if "answers that differ from @seg1: @seg3 " in m]
    assert [m.split()[2] for m in agreement] == ["hrm_grb", "hrm_grb_mid", "hrm_prefix_centered"]
    assert hybrid_suite.segment_agreement({1: ["a", "b", "c"], 8: ["a", "x", "c"], 3: ["a", "b", "c"]}) == "answers that differ from @seg1: @seg8 1 of 3, @seg3 0 of 3"
    table = (tmp_path / "hybrid-cpu.md").read_text()
    assert "| hrm_grb_mid@seg3 |" in table and "after half the LLM's layers" in table


def test_the_gpu_tier_adds_chain_sum_and_the_segment_sweep():
    cfg = compose_cfg(["suite=hybrid", "hardware=h200"])
    suite = cfg.suite
    assert list(suite.gpu.train.tasks) == ["addition", "basic_arithmetic", "chain_sum"] and list(suite.gpu.eval_segments) == [1, 3, 8]
    assert {"hrm_grb_mid", "hrm_cab_mid", "hrm_tokens_grb_mid"} <= set(suite.variants)
