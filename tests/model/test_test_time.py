"""Test-time compute: accuracy after every segment of one rollout, for both halting policies.

Labels are built from the model's own answers (row i is the answer after segment 1 + i % steps), so
every segment and every cap of the Q-policy has a known, different accuracy without any training.
"""

import torch

from puzzle_hrm.evaluate import evaluate, policy_halt_steps, rollout
from puzzle_hrm.model import HRM

from .conftest import random_batch, tiny_config

STEPS = 7  # the rollout's segments; the model's halt_max_steps is 4


def test_policy_halt_steps_is_the_first_wish_capped_at_k():
    wants = torch.tensor([[False, True, False], [False, False, False], [True, True, False], [True, False, False]])
    # rows: segments 1..4; columns: a row that wants to halt at 3, one at 1, one never
    assert policy_halt_steps(wants).tolist() == [[1, 1, 1], [2, 1, 2], [3, 1, 3], [3, 1, 4]]


def test_a_longer_rollout_continues_the_reasoning_instead_of_restarting():
    cfg = tiny_config()
    model, batch = random_q_head(HRM(cfg).eval()), random_batch(cfg)
    q = rollout(model, batch, STEPS).q_halt_logits
    assert not torch.equal(q[cfg.halt_max_steps], q[0])
    with torch.inference_mode():  # what the bare model does after halt_max_steps: it restarts the rows
        carry = model.initial_carry(batch)
        for _ in range(cfg.halt_max_steps + 1):
            carry, outputs = model(carry=carry, batch=batch)
    assert torch.equal(outputs["q_halt_logits"], q[0])


def random_q_head(model: HRM) -> HRM:
    """The Q-head starts at a constant -5 (never halt); random weights make it depend on the state,
    so the Q-policy halts at different segments on different rows."""
    with torch.no_grad():
        model.inner.q_head.weight.normal_(0, 0.3)
        model.inner.q_head.bias.zero_()
    return model


def labelled_batches(seed: int = 0):
    """(model, batches for evaluate, rollout of each batch) with labels taken from the model's answers."""
    cfg = tiny_config(batch_size=14)
    torch.manual_seed(seed)
    model = random_q_head(HRM(cfg).eval())
    batches, rollouts = [], []
    for i in range(2):
        batch = random_batch(cfg, seed=i)
        result = rollout(model, batch, STEPS)
        rows = torch.arange(cfg.batch_size)
        batch["labels"] = result.step_predictions[rows % STEPS, rows].to(torch.int32)
        batch["labels"][-1, :3] = -100  # ignored tokens do not count
        batches.append(("all", batch, cfg.batch_size))
        rollouts.append(result)
    return model, batches, rollouts


def test_curves_match_the_rollout_and_the_normal_evaluation():
    model, batches, rollouts = labelled_batches()
    normal = evaluate(model, batches, torch.device("cpu"))
    longer = evaluate(model, batches, torch.device("cpu"), n_steps=STEPS)
    exact = torch.cat([((r.step_predictions == b["labels"]) | (b["labels"] == -100)).all(-1) for (_, b, _), r in zip(batches, rollouts)], 1)
    wants = torch.cat([r.wants_halt for r in rollouts], 1)  # (steps, N)
    first = torch.where(wants.any(0), wants.int().argmax(0) + 1, STEPS)
    policy = [exact[torch.clamp(first, max=k) - 1, torch.arange(exact.shape[1])].double().mean().item() for k in range(1, STEPS + 1)]
    assert longer["exact_accuracy_by_steps"] == exact.double().mean(1).tolist()
    assert longer["policy_exact_accuracy_by_steps"] == policy
    assert len(set(longer["exact_accuracy_by_steps"])) > 2 and policy != longer["exact_accuracy_by_steps"]  # not a flat curve
    assert 0 < first.float().mean() < STEPS and (first < 4).any()  # the Q-policy halts at different segments
    assert normal["exact_accuracy_by_steps"] == longer["exact_accuracy_by_steps"][:4]  # one rollout, extended
    assert normal["exact_accuracy_by_steps"][-1] == normal["exact_accuracy"]
    assert normal["policy_exact_accuracy_by_steps"][-1] == normal["policy_exact_accuracy"] == policy[3]
    headline = ("exact_accuracy", "token_accuracy", "q_halt_accuracy", "policy_exact_accuracy", "halt_step_histogram")
    assert {k: longer[k] for k in headline} == {k: normal[k] for k in headline}  # headline stays at halt_max_steps
