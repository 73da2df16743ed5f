"""EMA of the weights (every model), test-time ACT steps beyond training's, and exact resume with both."""

import copy

import torch
from torch import nn

from puzzle_hrm import checkpoint as ckpt
from puzzle_hrm.data.loader import PuzzleLoader
from puzzle_hrm.ema import EMA
from puzzle_hrm.evaluate import evaluate
from puzzle_hrm.train import fit
from puzzle_hrm.trm import TRMConfig

from .conftest import small_arch, small_train
from .test_train import assert_same, eval_metrics, weights


def test_ema_weights_are_the_exponential_average():
    layer = nn.Linear(3, 2)
    w0 = layer.weight.detach().clone()
    ema = EMA(layer, rate=0.9)
    values = [torch.full_like(w0, float(v)) for v in (1.0, -2.0, 4.0)]
    for value in values:
        with torch.no_grad():
            layer.weight.copy_(value)
        ema.update(layer)
    expected = 0.9**3 * w0 + 0.1 * (0.9**2 * values[0] + 0.9 * values[1] + values[2])
    torch.testing.assert_close(ema.shadow["weight"], expected)
    with ema.applied(layer):
        torch.testing.assert_close(layer.weight, expected)
    assert torch.equal(layer.weight, values[-1])  # the trained weights are back


def test_fit_evaluates_on_the_ema_weights_and_resumes_exactly(sudoku4, tmp_path):
    arch = small_arch()
    straight = fit(small_train(sudoku4, max_steps=12, ema=True, ema_rate=0.8, checkpoint_dir=str(tmp_path / "a")), arch)
    saved = ckpt.load(tmp_path / "a" / "last.pt")
    averaged = copy.deepcopy(straight.model)
    averaged.load_state_dict({**saved["model"], **saved["ema"]})
    assert not torch.equal(saved["ema"]["inner.lm_head.weight"], saved["model"]["inner.lm_head.weight"])
    on_average = evaluate(averaged, PuzzleLoader(sudoku4, "test", 8, mode="test"), torch.device("cpu"), max_batches=2)
    assert on_average == {k: v for k, v in straight.final_eval.items() if k not in ("eval_seconds", "step")}

    fit(small_train(sudoku4, max_steps=5, ema=True, ema_rate=0.8, checkpoint_dir=str(tmp_path / "b")), arch)
    resumed = fit(small_train(sudoku4, max_steps=12, ema=True, ema_rate=0.8, checkpoint_dir=str(tmp_path / "b"), resume=True), arch)
    assert_same(weights(straight), weights(resumed))
    assert_same(saved["ema"], ckpt.load(tmp_path / "b" / "last.pt")["ema"])
    assert eval_metrics(straight) == eval_metrics(resumed)


def test_evaluation_steps_beyond_training_set_the_headline_segments(sudoku4):
    trained = fit(small_train(sudoku4, max_steps=4, eval_halt_max_steps=5), TRMConfig(**SMALL_TRM))  # trained with 3
    assert len(trained.final_eval["halt_step_histogram"]) == 5
    assert len(trained.final_eval["exact_accuracy_by_steps"]) == 5
    assert trained.final_eval["exact_accuracy"] == trained.final_eval["exact_accuracy_by_steps"][-1]


SMALL_TRM = dict(hidden_size=32, num_heads=2, expansion=2, L_layers=1, H_cycles=2, L_cycles=2, puzzle_emb_ndim=32, puzzle_emb_len=1,
                 halt_max_steps=3, forward_dtype="float32")


def test_evaluation_of_a_checkpoint_rebuilds_the_model_with_its_ema_weights(sudoku4, tmp_path):
    from puzzle_hrm.evaluate import load_for_evaluation
    from puzzle_hrm.trm import TRM

    fit(small_train(sudoku4, max_steps=3, ema=True, checkpoint_dir=str(tmp_path)), TRMConfig(**SMALL_TRM, mlp_t=True))
    saved = ckpt.load(tmp_path / "last.pt")
    assert saved["model_name"] == "trm"
    model = load_for_evaluation(str(tmp_path / "last.pt"), str(sudoku4), batch_size=8, forward_dtype="float32")
    assert type(model) is TRM and model.config.mlp_t
    assert_same({k: v for k, v in model.state_dict().items() if k in saved["ema"]}, saved["ema"])
