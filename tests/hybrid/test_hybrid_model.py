"""HybridLM: frozen backbone, logits per segment, the deep-supervision + ACT loss, decoding conditioning."""

import pytest
import torch
import torch.nn.functional as F

from hybrid.backbone import tiny_backbone
from hybrid.generate import DecodeConfig, conditioned_logits, generate, position_ids
from hybrid.model import HybridLM, HybridSegment, act_losses, supervised_positions, token_mean_loss
from hybrid.tasks import pad
from puzzle_hrm.data.format import IGNORE_LABEL_ID
from puzzle_hrm.losses import stablemax_cross_entropy

from .tiny import right_padded_batch, tiny_config

IGNORE = IGNORE_LABEL_ID


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


def build(backbone, **overrides) -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(tiny_config(**overrides), backbone)


def states(backbone, seed: int = 0):
    batch = right_padded_batch([9, 12, 7], [5, 8, 3], backbone.vocab_size, seed=seed)
    with torch.no_grad():
        hidden, _ = backbone.hidden_states(batch["input_ids"], batch["attention_mask"])
    return hidden, batch


def test_supervised_positions_shift_the_labels():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE], [IGNORE, 5, 6, 9, 4]])
    positions, targets = supervised_positions(labels)
    assert positions.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [7, 8, 5, 6, 9, 4]


def test_only_the_controller_side_trains_and_the_backbone_stays_bit_identical(backbone):
    model = build(backbone, injector="cab", use_act=True)
    backbone_params = dict(backbone.model.named_parameters())
    before = {n: p.clone() for n, p in backbone_params.items()}
    ids = {id(p) for p in backbone_params.values()}
    assert not any(id(p) in ids for p in model.parameters())
    assert not any(k.startswith(("head", "model.")) for k in model.state_dict())
    assert {k.split(".")[0] for k in model.state_dict()} == {"bridge", "controller", "injector", "vocab_bias"}

    hidden, batch = states(backbone)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    positions, targets = supervised_positions(batch["labels"])
    segments = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"], positions=positions))
    loss, _ = model.loss(segments, targets, correct=[torch.tensor([1.0, 0.0, 1.0])] * 3)
    loss.backward()
    assert all(p.grad is None for p in backbone_params.values())
    trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert {n.split(".")[0] for n in trained} == {"bridge", "controller", "injector", "vocab_bias"}
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in backbone_params.items())


@pytest.mark.parametrize("injector", ["grb", "cab"])
def test_logits_at_selected_positions_equal_the_full_logits(backbone, injector):
    model = build(backbone, injector=injector)
    hidden, batch = states(backbone)
    positions, _ = supervised_positions(batch["labels"])
    full = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"]))
    picked = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"], positions=positions))
    assert len(full) == len(picked) == 3
    for f, p in zip(full, picked):
        assert f.logits.shape == (3, 12, backbone.vocab_size) and p.logits.shape == (int(positions.sum()), backbone.vocab_size)
        torch.testing.assert_close(p.logits, f.logits[positions], rtol=0, atol=1e-5)
        assert torch.equal(p.z_H, f.z_H)
    assert not torch.allclose(full[0].logits, full[-1].logits)  # segments do differ


def test_closed_gates_give_the_llm_only_logits(backbone):
    model = build(backbone)
    hidden, batch = states(backbone)
    with torch.no_grad():
        model.injector.gate.fill_(float("-inf"))
        model.vocab_bias.gate.fill_(float("-inf"))
        segments = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"]))
    assert all(torch.equal(s.logits, backbone.logits(hidden)) for s in segments)


def test_segment_counts_for_training_and_evaluation(backbone):
    model = build(backbone, segments=2, eval_segments=5)
    hidden, batch = states(backbone)
    args = (hidden, batch["attention_mask"], batch["prompt_lengths"])
    assert len(list(model.train()(*args))) == 2
    assert len(list(model.eval()(*args))) == 5
    assert len(list(model(*args, n_segments=1))) == 1


@pytest.mark.parametrize("depth", [1.0, 0.5])
def test_without_deep_supervision_the_loss_and_its_gradient_are_the_last_segments(backbone, depth):
    hidden, batch = states(backbone)
    positions, targets = supervised_positions(batch["labels"])
    args = (hidden, batch["attention_mask"], batch["prompt_lengths"])
    deep, last = build(backbone, inject_depth=depth), build(backbone, inject_depth=depth, deep_supervision=False)
    assert all(torch.equal(p, q) for p, q in zip(deep.parameters(), last.parameters(), strict=True))
    every = list(deep(*args, positions=positions, supervised_only=True))
    supervised = list(last(*args, positions=positions, supervised_only=True))
    assert len(every) == 3 and len(supervised) == 1 and len(list(last(*args, positions=positions))) == 3
    torch.testing.assert_close(supervised[0].logits, every[-1].logits, rtol=0, atol=1e-5)
    loss, metrics = last.loss(supervised, targets)
    expected = token_mean_loss(every[-1].logits, targets, deep.config.loss_type)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    for (name, p), q in zip(last.named_parameters(), deep.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="needs deep_supervision"):
        tiny_config(use_act=True, deep_supervision=False)


@pytest.mark.parametrize("loss", ["softmax", "stablemax"])
def test_loss_is_the_sum_over_segments_of_the_token_mean_cross_entropy(loss):
    model = build(tiny_backbone(), loss=loss)
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([3, 1, IGNORE, 4])
    segments = [HybridSegment(torch.randn(4, 6, generator=g), torch.zeros(4, 2), None, None) for _ in range(3)]
    total, metrics = model.loss(segments, targets)
    valid = targets != IGNORE
    if loss == "softmax":
        per_segment = [F.cross_entropy(s.logits[valid], targets[valid]) for s in segments]
    else:  # true stablemax, s(x) = x + 1 (x >= 0) or 1 / (1 - x)
        def log_stablemax(x):
            s = torch.where(x >= 0, x + 1, 1 / (1 - x))
            return (s / s.sum(-1, keepdim=True)).log()

        per_segment = [-log_stablemax(s.logits[valid].double()).gather(1, targets[valid, None]).mean() for s in segments]
    torch.testing.assert_close(metrics["lm_loss"], torch.stack(per_segment).to(metrics["lm_loss"].dtype))
    torch.testing.assert_close(total, sum(per_segment).to(total.dtype))
    if loss == "stablemax":
        torch.testing.assert_close(stablemax_cross_entropy(segments[0].logits, targets).sum() / 3, per_segment[0])


def q_segments(q_halt, q_continue):
    return [HybridSegment(torch.zeros(2, 5), torch.zeros(2, 4), torch.tensor(h), torch.tensor(c)) for h, c in zip(q_halt, q_continue)]


def test_act_targets_follow_the_verifier_and_the_bootstrapped_next_segment():
    q_halt = [[0.5, -1.0], [2.0, 0.0], [-3.0, 1.0]]
    q_continue = [[0.0, 1.0], [-1.0, 3.0], [4.0, 0.5]]
    correct = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])]
    halt_loss, continue_loss = act_losses(q_segments(q_halt, q_continue), correct, act_penalty=0.0)
    bce = F.binary_cross_entropy_with_logits
    expected_halt = sum(bce(torch.tensor(h), c) for h, c in zip(q_halt, correct))
    # segment 1 continues into segment 2 (not the last): max of its halt and continue values;
    # segment 2 continues into the last one, which must halt: its halt value only; segment 3: none
    target_1 = torch.sigmoid(torch.tensor([max(2.0, -1.0), max(0.0, 3.0)]))
    target_2 = torch.sigmoid(torch.tensor(q_halt[2]))
    expected_continue = bce(torch.tensor(q_continue[0]), target_1) + bce(torch.tensor(q_continue[1]), target_2)
    torch.testing.assert_close(halt_loss, expected_halt)
    torch.testing.assert_close(continue_loss, expected_continue)

    penalised = act_losses(q_segments(q_halt, q_continue), correct, act_penalty=0.3)[1]
    expected = bce(torch.tensor(q_continue[0]), target_1 - 0.3) + bce(torch.tensor(q_continue[1]), (target_2 - 0.3).clamp_min(0))
    torch.testing.assert_close(penalised, expected)


def test_act_loss_wiring_and_errors(backbone):
    model = build(backbone, use_act=True)
    targets = torch.tensor([1, 2])
    segments = q_segments([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2)
    correct = [torch.tensor([1.0, 0.0])] * 2
    total, metrics = model.loss(segments, targets, correct)
    torch.testing.assert_close(total, metrics["lm_loss"].sum() + 0.5 * (metrics["q_halt_loss"] + metrics["q_continue_loss"]))
    with pytest.raises(ValueError, match="use_act"):
        model.loss(segments, targets)
    with pytest.raises(ValueError, match="use_act"):
        build(backbone).loss(segments, targets, correct)
    with pytest.raises(ValueError, match="correctness for 1 segments"):
        model.loss(segments, targets, correct[:1])
    with pytest.raises(ValueError, match="does not match"):
        model.loss(segments, targets, [torch.tensor([1.0, 0.0, 1.0])] * 2)
    with pytest.raises(ValueError, match="at least one segment"):
        model.loss([], targets)


def test_conditioning_reproduces_the_last_segment_for_decoding(backbone):
    model = build(backbone, eval_segments=4).eval()
    hidden, batch = states(backbone)
    with torch.no_grad():
        last = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"]))[-1]
        cond = model.conditioning(hidden, batch["attention_mask"], batch["prompt_lengths"])
        logits = backbone.logits(cond.condition(hidden)) + cond.logit_bias.unsqueeze(1)
    assert cond.segments_used.tolist() == [4, 4, 4]
    torch.testing.assert_close(logits, last.logits, rtol=0, atol=0)


@pytest.mark.parametrize("injector", ["grb", "cab"])
def test_decoding_left_padded_prompts_conditions_like_training(backbone, injector):
    """generate() sees the prompt alone, left-padded; training sees prompt + target, right-padded.
    The HRM must read the same prompt either way, so the first answer token gets the same logits."""
    model = build(backbone, injector=injector, eval_segments=2).eval()
    hidden, batch = states(backbone)
    plen = batch["prompt_lengths"]
    ids, mask = pad([row[:n].tolist() for row, n in zip(batch["input_ids"], plen)], backbone.tokenizer.pad_token_id, "left")
    with torch.no_grad():
        trained = list(model(hidden, batch["attention_mask"], plen))[-1].logits[torch.arange(3), plen - 1]
        prompt_states, _ = backbone.hidden_states(ids, mask, position_ids(mask))
        cond = model.conditioning(prompt_states, mask, mask.sum(1))
        decoded = conditioned_logits(backbone, prompt_states[:, -1:], cond.condition, cond.logit_bias)
        first = generate(backbone, ids, mask, DecodeConfig(max_new_tokens=1), condition=cond.condition, logit_bias=cond.logit_bias).tokens[:, 0]
    torch.testing.assert_close(decoded, trained, rtol=0, atol=1e-4)
    assert torch.equal(first, trained.argmax(-1))


def test_conditioning_with_act_keeps_each_rows_halting_segment(backbone):
    model = build(backbone, use_act=True, eval_segments=3).eval()
    hidden, batch = states(backbone)
    with torch.no_grad():
        model.controller.q_head.weight.normal_(generator=torch.Generator().manual_seed(1))
        model.controller.q_head.bias.zero_()
        outputs = list(model(hidden, batch["attention_mask"], batch["prompt_lengths"]))
        cond = model.conditioning(hidden, batch["attention_mask"], batch["prompt_lengths"])
    halt = torch.stack([o.q_halt_logits > o.q_continue_logits for o in outputs])
    halt[-1] = True
    first = [int(halt[:, row].nonzero()[0]) for row in range(3)]
    assert cond.segments_used.tolist() == [f + 1 for f in first]
    assert len(set(first)) > 1  # the rows really halt at different segments
    for row, f in enumerate(first):
        torch.testing.assert_close(cond.condition(hidden)[row], model.injector(hidden, outputs[f].z_H)[row], rtol=0, atol=0)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(backbone):
    model = build(backbone, injector="grb")
    hidden, batch = states(backbone)
    positions, targets = supervised_positions(batch["labels"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(10):
        loss, _ = model.loss(list(model(hidden, batch["attention_mask"], batch["prompt_lengths"], positions=positions)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
