"""HRM forward semantics: one-step gradient, ACT carry, halting and Q targets."""

import torch

from puzzle_hrm.model import HRM, HRMCarry

from .conftest import random_batch, tiny_config


def count_grad_enabled_calls(model: HRM):
    calls = {"H": [], "L": []}
    model.inner.H_level.register_forward_hook(lambda *_: calls["H"].append(torch.is_grad_enabled()))
    model.inner.L_level.register_forward_hook(lambda *_: calls["L"].append(torch.is_grad_enabled()))
    return calls


def test_one_step_gradient_runs_only_the_last_L_and_H_update_with_grad(cfg):
    torch.manual_seed(0)
    model = HRM(cfg).eval()
    calls = count_grad_enabled_calls(model)
    batch = random_batch(cfg)
    model(carry=model.initial_carry(batch), batch=batch)
    # H_cycles × L_cycles L-updates and H_cycles H-updates; only the final one of each with grad
    assert calls["L"] == [False] * (cfg.H_cycles * cfg.L_cycles - 1) + [True]
    assert calls["H"] == [False] * (cfg.H_cycles - 1) + [True]


def test_no_gradient_reaches_the_incoming_carry_and_new_carry_is_detached(cfg):
    torch.manual_seed(0)
    model = HRM(cfg).train()
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    carry, _ = model(carry=carry, batch=batch)  # a real state to continue from
    z_H = carry.inner_carry.z_H.clone().requires_grad_(True)
    z_L = carry.inner_carry.z_L.clone().requires_grad_(True)
    carry.inner_carry.z_H, carry.inner_carry.z_L = z_H, z_L
    carry.halted = torch.zeros_like(carry.halted)
    new_carry, outputs = model(carry=carry, batch=batch)
    outputs["logits"].sum().backward()
    assert z_H.grad is None and z_L.grad is None  # earlier segments get nothing
    assert not new_carry.inner_carry.z_H.requires_grad and not new_carry.inner_carry.z_L.requires_grad
    assert model.inner.embed_tokens.embedding_weight.grad.abs().sum() > 0  # the input path does learn


def test_gradient_equals_a_two_stage_computation(cfg):
    """The gradient must be that of the last L/H update applied to no-grad states (paper eq. one-step)."""
    torch.manual_seed(0)
    model = HRM(cfg).eval()
    inner = model.inner
    batch = random_batch(cfg)
    carry = inner.reset_carry(torch.ones(cfg.batch_size, dtype=torch.bool), inner.empty_carry(cfg.batch_size, torch.device("cpu")))
    _, logits, _ = inner(carry, batch)
    logits.square().sum().backward()
    grad_model = inner.H_level.layers[0].mlp.down_proj.weight.grad.clone()
    inner.zero_grad()
    cos_sin = inner.cos_sin()
    x = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    with torch.no_grad():
        z_H, z_L = carry.z_H, carry.z_L
        for _ in range(cfg.H_cycles * cfg.L_cycles - 1):
            z_L = inner.L_level(z_L, z_H + x, cos_sin)
            if _ % cfg.L_cycles == cfg.L_cycles - 1:
                z_H = inner.H_level(z_H, z_L, cos_sin)
    z_L = inner.L_level(z_L, z_H + x, cos_sin)
    z_H = inner.H_level(z_H, z_L, cos_sin)
    inner.lm_head(z_H)[:, inner.puzzle_emb_len :].square().sum().backward()
    torch.testing.assert_close(grad_model, inner.H_level.layers[0].mlp.down_proj.weight.grad)


def test_initial_carry_is_all_halted_and_first_call_loads_the_batch(cfg):
    model = HRM(cfg).train()
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    assert carry.halted.all() and (carry.steps == 0).all()
    carry, _ = model(carry=carry, batch=batch)
    assert (carry.steps == 1).all()
    for k in batch:
        assert torch.equal(carry.current_data[k], batch[k])


def test_halted_rows_are_reset_and_take_new_data_others_keep_theirs(cfg):
    torch.manual_seed(0)
    model = HRM(cfg).eval()
    batch, new_batch = random_batch(cfg, 0), random_batch(cfg, 1)
    carry, _ = model(carry=model.initial_carry(batch), batch=batch)
    halted = torch.tensor([True, False] * (cfg.batch_size // 2))
    carry = HRMCarry(carry.inner_carry, carry.steps, halted, carry.current_data)
    reset = model.inner.reset_carry(halted, carry.inner_carry)
    assert torch.equal(reset.z_H[halted], model.inner.H_init.expand_as(reset.z_H[halted]))
    assert torch.equal(reset.z_L[halted], model.inner.L_init.expand_as(reset.z_L[halted]))
    assert torch.equal(reset.z_H[~halted], carry.inner_carry.z_H[~halted])
    new_carry, _ = model(carry=carry, batch=new_batch)
    assert torch.equal(new_carry.current_data["inputs"][halted], new_batch["inputs"][halted])
    assert torch.equal(new_carry.current_data["inputs"][~halted], batch["inputs"][~halted])
    assert new_carry.steps.tolist() == [1 if h else 2 for h in halted.tolist()]


def test_evaluation_runs_exactly_halt_max_steps(cfg):
    model = HRM(cfg).eval()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))  # Q strongly prefers halting
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    for step in range(1, cfg.halt_max_steps + 1):
        carry, outputs = model(carry=carry, batch=batch)
        assert "target_q_continue" not in outputs
        assert carry.halted.all() == (step == cfg.halt_max_steps)


def test_training_halts_when_q_halt_exceeds_q_continue(cfg):
    cfg = tiny_config(halt_exploration_prob=0.0)
    model = HRM(cfg).train()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))
    batch = random_batch(cfg)
    carry, outputs = model(carry=model.initial_carry(batch), batch=batch)
    assert carry.halted.all() and (carry.steps == 1).all()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([-5.0, 5.0]))
    carry = model.initial_carry(batch)
    for step in range(1, cfg.halt_max_steps + 1):
        carry, _ = model(carry=carry, batch=batch)
        assert carry.halted.all() == (step == cfg.halt_max_steps)  # forced halt at the limit


def test_exploration_forces_a_minimum_of_two_steps():
    cfg = tiny_config(halt_exploration_prob=1.0, batch_size=64)
    model = HRM(cfg).train()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))
    torch.manual_seed(0)
    steps = torch.ones(64, dtype=torch.int32)
    halted = model.halt_decision(torch.full((64,), 5.0), torch.full((64,), -5.0), steps)
    assert not halted.any()  # min_halt_steps ≥ 2 for every explored row
    halt_at = torch.zeros(64, dtype=torch.int32)
    for s in range(1, cfg.halt_max_steps + 1):
        decided = model.halt_decision(torch.full((64,), 5.0), torch.full((64,), -5.0), torch.full((64,), s, dtype=torch.int32))
        halt_at = torch.where((halt_at == 0) & decided, s, halt_at)
    assert halt_at.min() >= 2


def test_target_q_continue_bootstraps_from_the_next_segment(cfg):
    cfg = tiny_config(halt_exploration_prob=0.0)
    torch.manual_seed(0)
    model = HRM(cfg).train()
    with torch.no_grad():
        model.inner.q_head.weight.normal_()
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    carry, outputs = model(carry=carry, batch=batch)
    next_halt, next_cont = model.inner(carry.inner_carry, carry.current_data)[-1]
    last = carry.steps >= cfg.halt_max_steps
    expected = torch.sigmoid(torch.where(last, next_halt, torch.maximum(next_halt, next_cont)))
    torch.testing.assert_close(outputs["target_q_continue"], expected)


def test_q_head_init_and_output_shapes(cfg):
    model = HRM(cfg)
    assert model.inner.q_head.weight.abs().sum() == 0
    assert model.inner.q_head.bias.tolist() == [-5.0, -5.0]
    assert model.puzzle_emb.weights.abs().sum() == 0  # zero-initialised puzzle embeddings
    batch = random_batch(cfg)
    carry, out = model(carry=model.initial_carry(batch), batch=batch)
    assert out["logits"].shape == (cfg.batch_size, cfg.seq_len, cfg.vocab_size)
    assert out["q_halt_logits"].shape == (cfg.batch_size,)
    assert carry.inner_carry.z_H.shape == (cfg.batch_size, cfg.seq_len + 1, cfg.hidden_size)


def test_puzzle_embedding_takes_ceil_ndim_over_hidden_positions():
    cfg = tiny_config(puzzle_emb_ndim=40, hidden_size=32)  # ceil(40/32) = 2 positions, zero-padded
    model = HRM(cfg)
    x = model.inner.input_embeddings(random_batch(cfg)["inputs"], torch.zeros(cfg.batch_size, dtype=torch.int32))
    assert x.shape[1] == cfg.seq_len + 2


def test_learned_positions_variant_runs():
    cfg = tiny_config(pos_encodings="learned", puzzle_emb_ndim=0)
    model = HRM(cfg)
    batch = random_batch(cfg)
    _, out = model(carry=model.initial_carry(batch), batch=batch)
    assert out["logits"].shape == (cfg.batch_size, cfg.seq_len, cfg.vocab_size)
