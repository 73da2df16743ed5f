import math

import pytest
import torch

from puzzle_hrm.losses import IGNORE_LABEL_ID, act_loss, get_loss_fn, log_stablemax, softmax_cross_entropy, stablemax_cross_entropy
from puzzle_hrm.model import HRMCarry, HRMInnerCarry


def s_def(x: float) -> float:
    """The paper's s(x): x + 1 for x >= 0, 1 / (1 - x) otherwise."""
    return x + 1 if x >= 0 else 1 / (1 - x)


def test_stablemax_matches_its_definition():
    logits = [[2.5, -1.0, 0.0, -7.25], [-0.5, 0.25, 30.0, -100.0]]
    labels = [2, 2]
    got = stablemax_cross_entropy(torch.tensor(logits), torch.tensor(labels))
    for row, label, value in zip(logits, labels, got.tolist()):
        s = [s_def(v) for v in row]
        assert value == pytest.approx(-math.log(s[label] / sum(s)), rel=1e-12)


def test_stablemax_is_computed_in_float64_and_normalised():
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    assert stablemax_cross_entropy(x, torch.zeros(3, dtype=torch.long)).dtype == torch.float64
    torch.testing.assert_close(log_stablemax(x.double()).exp().sum(-1), torch.ones(3, dtype=torch.float64))


def test_ignored_tokens_cost_nothing():
    logits = torch.randn(2, 4, 6)
    labels = torch.tensor([[1, IGNORE_LABEL_ID, 2, IGNORE_LABEL_ID], [IGNORE_LABEL_ID] * 4])
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        loss = fn(logits, labels)
        assert loss.shape == labels.shape
        assert (loss[labels == IGNORE_LABEL_ID] == 0).all() and (loss[labels != IGNORE_LABEL_ID] > 0).all()


def test_softmax_option_matches_torch():
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    torch.testing.assert_close(softmax_cross_entropy(logits, labels), torch.nn.functional.cross_entropy(logits, labels, reduction="none"))


def test_both_losses_take_the_models_float32_logits_slice():
    """The model's logits drop the puzzle-embedding positions: a non-contiguous float32 view on CPU."""
    full, labels = torch.randn(2, 1 + 4, 6), torch.randint(0, 6, (2, 4))
    logits = full[:, 1:]
    assert not logits.is_contiguous()
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        torch.testing.assert_close(fn(logits, labels), fn(logits.contiguous(), labels))


def test_unknown_loss_type_is_rejected():
    with pytest.raises(ValueError, match="loss_type"):
        get_loss_fn("focal")


def test_act_loss_terms_and_metrics_by_hand():
    labels = torch.tensor([[1, 2, IGNORE_LABEL_ID], [0, 0, 0]])
    logits = torch.full((2, 3, 3), -1.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 3.0  # row 0 fully correct
    logits[1, :, 1] = 3.0  # row 1 all wrong
    q_halt, q_cont, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, -1.0]), torch.tensor([0.25, 0.75])
    carry = HRMCarry(HRMInnerCarry(torch.zeros(1), torch.zeros(1)), torch.tensor([3, 5]), torch.tensor([True, True]), {"labels": labels})
    total, metrics = act_loss(carry, {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_cont, "target_q_continue": target})
    per_token = stablemax_cross_entropy(logits, labels)
    lm = per_token[0].sum() / 2 + per_token[1].sum() / 3
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    qh = bce(q_halt, torch.tensor([1.0, 0.0]), reduction="sum")
    qc = bce(q_cont, target, reduction="sum")
    torch.testing.assert_close(total, (lm + 0.5 * (qh + qc)).to(total.dtype))
    assert metrics["count"] == 2 and metrics["exact_accuracy"] == 1 and metrics["steps"] == 8
    assert metrics["accuracy"].item() == pytest.approx(1.0)
    assert metrics["q_halt_accuracy"] == 1  # row 0: q>=0 and correct; row 1: q>=0 but wrong
