"""The training loop: bit-identical resume, evaluation curve, verifier scores of teacher-forced answers."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from hybrid.backbone import tiny_backbone
from hybrid.tasks import Collator, Example, get_task
from hybrid.train import HybridTrainConfig, TrainData, Trainable, answer_scores, evaluate, evaluating, fit
from hybrid.trainable import HybridTrainable, label_aligned
from puzzle_hrm.data.format import IGNORE_LABEL_ID
from tests.hybrid.tiny import tiny_config


@pytest.fixture(scope="module")
def setup():
    backbone = tiny_backbone()
    config = HybridTrainConfig(train_n=24, eval_n=4, batch_size=4, max_steps=4, eval_every=2, log_samples_every=2, max_new_tokens=4, progress=False)
    data = TrainData.build(config, Collator(backbone.tokenizer, backbone.max_positions))
    data.cache_states(backbone, None)
    return backbone, data, config


def trained(setup, output_dir, steps: int, resume: bool, act: bool = True, **overrides) -> HybridTrainable:
    backbone, data, config = setup
    torch.manual_seed(0)
    model = HybridTrainable(tiny_config(use_act=act), backbone, data.collator)
    fit(model, data, replace(config, max_steps=steps, resume=resume, output_dir=str(output_dir), **overrides))
    return model


def test_resume_continues_bit_identically(setup, tmp_path):
    straight = trained(setup, tmp_path / "straight", 4, resume=False, eval_every=100, log_samples_every=0)
    trained(setup, tmp_path / "resumed", 2, resume=False, eval_every=100, log_samples_every=0)
    resumed = trained(setup, tmp_path / "resumed", 4, resume=True, eval_every=100, log_samples_every=0)
    assert isinstance(straight, Trainable)
    untrained = HybridTrainable(tiny_config(use_act=True), setup[0], setup[1].collator).state_dict()
    for name, weight in straight.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name
    assert any(not torch.equal(w, untrained[k]) for k, w in straight.state_dict().items())  # it did train


def test_a_time_budget_stops_after_the_step_that_spends_it_evaluated_saved_and_resumable(setup, tmp_path):
    """max_train_seconds=0 ends the run after its first step with a final evaluation and a checkpoint;
    resuming without the budget then reaches the very weights of an uninterrupted run."""
    backbone, data, config = setup
    torch.manual_seed(0)
    cut = HybridTrainable(tiny_config(use_act=False), backbone, data.collator)
    result = fit(cut, data, replace(config, max_train_seconds=0.0, eval_every=100, log_samples_every=0, output_dir=str(tmp_path / "cut")))
    assert (result.steps, result.stop_reason, result.train_examples) == (1, "max_train_seconds", config.batch_size)
    assert [int(r["step"]) for r in csv.DictReader((tmp_path / "cut" / "eval_curve.csv").open())] == [1]
    assert result.final_eval.items() <= result.curve[-1].items()
    resumed = trained(setup, tmp_path / "cut", 4, resume=True, act=False, eval_every=100, log_samples_every=0)
    straight = trained(setup, tmp_path / "straight", 4, resume=False, act=False, eval_every=100, log_samples_every=0)
    for name, weight in straight.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name


def test_a_time_budget_the_run_does_not_reach_changes_nothing(setup, tmp_path):
    backbone, data, config = setup
    torch.manual_seed(0)
    model = HybridTrainable(tiny_config(use_act=False), backbone, data.collator)
    result = fit(model, data, replace(config, max_train_seconds=1e9, output_dir=str(tmp_path)))
    assert (result.steps, result.stop_reason) == (config.max_steps, "max_steps")


def test_the_eval_curve_has_one_row_per_evaluation(setup, tmp_path):
    trained(setup, tmp_path, 4, resume=False, act=False)
    rows = list(csv.DictReader((tmp_path / "eval_curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(0.0 <= float(r["verifier_accuracy"]) <= 1.0 for r in rows)
    assert "verifier_accuracy/addition" in rows[0]
    assert float(rows[0]["mean_segments"]) == tiny_config().eval_segments and float(rows[0]["decode_tokens_per_s"]) > 0


def test_a_fresh_run_starts_a_new_curve_and_a_resumed_one_extends_an_older_one(setup, tmp_path):
    curve = tmp_path / "eval_curve.csv"
    curve.write_text("step,verifier_accuracy\n7,0.5\n")  # a previous run's curve, with fewer columns
    trained(setup, tmp_path, 2, resume=False, act=False)
    assert [r["step"] for r in csv.DictReader(curve.open())] == ["2"]
    curve.write_text("step,verifier_accuracy\n2,0.5\n")  # as if written by an older version
    trained(setup, tmp_path, 4, resume=True, act=False)
    rows = list(csv.DictReader(curve.open()))
    assert [r["step"] for r in rows] == ["2", "4"] and rows[0]["decode_tokens_per_s"] == "" and float(rows[1]["decode_tokens_per_s"]) > 0


def test_mean_segments_follow_the_q_heads_halting(setup):
    """With ACT, each answer comes from the segment its q-head halts at: force halting at once, then never."""
    backbone, data, config = setup
    torch.manual_seed(0)
    model = HybridTrainable(tiny_config(use_act=True), backbone, data.collator)
    for halt_bias, expected in ((50.0, 1.0), (-50.0, float(tiny_config().eval_segments))):
        with torch.no_grad():
            model.lm.controller.q_head.weight.zero_()
            model.lm.controller.q_head.bias.copy_(torch.tensor([halt_bias, 0.0]))
        assert evaluate(model.answer, data, config)[0]["mean_segments"] == expected


def test_batches_depend_only_on_the_step_and_cover_each_epoch(setup):
    _, data, _ = setup
    assert torch.equal(data.indices(7, 4), data.indices(7, 4))
    epoch = torch.cat([data.indices(s, 4) for s in range(len(data.train) // 4)])
    assert sorted(epoch.tolist()) == list(range(len(data.train)))
    assert not set(ex.question for ex in data.eval) & set(ex.question for ex in data.train)


def test_answer_scores_decode_the_teacher_forced_answer_and_verify_it(setup):
    backbone, data, _ = setup
    task = get_task("addition")
    examples = [Example("addition", "What is 1 + 2?", "3"), Example("addition", "What is 2 + 2?", "4")]
    batch = data.collator(examples)
    labels = batch["labels"]
    right = torch.where(labels == IGNORE_LABEL_ID, 0, labels)  # the gold answer + EOS
    wrong = right.clone()
    wrong[1][labels[1] != IGNORE_LABEL_ID] = backbone.tokenizer.convert_tokens_to_ids("7")
    scores = answer_scores([right, wrong], labels, examples, {"addition": task}, backbone.tokenizer)
    assert scores[0].tolist() == [1.0, 1.0] and scores[1].tolist() == [1.0, 0.0]


def test_label_aligned_puts_state_t_predictions_at_label_t_plus_1():
    positions = torch.tensor([[False, True, True, False], [True, False, False, False]])
    aligned = label_aligned(torch.tensor([5, 6, 7]), positions)
    assert aligned.tolist() == [[0, 0, 5, 6], [0, 7, 0, 0]]


def test_the_cache_on_disk_is_reused_and_gives_the_same_batches(setup, tmp_path):
    backbone, data, _ = setup
    in_memory = data.cache.batch([0, 1])
    on_disk = TrainData(data.tasks, data.train, data.eval, data.collator, data.seed)
    on_disk.cache_states(backbone, str(tmp_path / "cache"))
    reopened = TrainData(data.tasks, data.train, data.eval, data.collator, data.seed)
    reopened.cache_states(backbone, str(tmp_path / "cache"))
    assert isinstance(reopened.cache.hidden, np.memmap)  # loaded from disk, not rebuilt
    assert torch.equal(reopened.cache.batch([0, 1]).hidden_states, in_memory.hidden_states)


def test_resume_refuses_other_settings_and_a_plain_rerun_keeps_the_checkpoint(setup, tmp_path):
    quiet = {"act": False, "eval_every": 100, "log_samples_every": 0}
    trained(setup, tmp_path, 2, resume=False, **quiet)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="a checkpoint of an earlier run is there; pass resume=true"):
        trained(setup, tmp_path, 1, resume=False, **quiet)
    with pytest.raises(ValueError, match=r"train.lr: 0.001 -> 0.01\)"):
        trained(setup, tmp_path, 4, resume=True, lr=1e-2, **quiet)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("overrides", [dict(), dict(inject_depth=0.5, input_tokens=2, logit_bias_head=False)])
def test_the_optimizer_holds_every_trainable_parameter_once_with_the_configs_lr_and_wd(setup, overrides):
    from hybrid.train import build_optimizer

    backbone, data, config = setup
    model = HybridTrainable(tiny_config(**overrides), backbone, data.collator)
    optimizer = build_optimizer(model, replace(config, lr=2e-3, weight_decay=0.05))
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(held) == len({id(p) for p in held})
    assert {id(p) for p in held} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not {id(p) for p in held} & {id(p) for p in backbone.model.parameters()}
    assert all(g["lr"] == 2e-3 and g["weight_decay"] == 0.05 and g["betas"] == config.betas for g in optimizer.param_groups)


def test_evaluating_sets_eval_mode_and_restores_the_modules_own_even_on_error():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    for mode in (True, False):
        module.train(mode)
        with pytest.raises(KeyError), evaluating(module):
            assert not module.training and not module[1].training
            raise KeyError
        assert module.training is mode and module[1].training is mode
    not_a_module = object()  # LoRATrainable: passes through untouched
    with evaluating(not_a_module):
        pass
