"""TRM and the plain transformer against their papers' descriptions, and the HRM options they brought
(full last-cycle gradient, BCE-only halting)."""

import dataclasses

import pytest
import torch

from puzzle_hrm.config import HRMConfig
from puzzle_hrm.losses import act_loss
from puzzle_hrm.model import HRM
from puzzle_hrm.registry import MODELS, build_model, model_config, model_keys, model_name_of
from puzzle_hrm.transformer import Transformer, TransformerConfig
from puzzle_hrm.trm import TRM, TRMConfig

from .conftest import random_batch, tiny_config

SHAPES = dict(batch_size=6, seq_len=16, vocab_size=6, num_puzzle_identifiers=5, hidden_size=32, num_heads=4, expansion=2,
              halt_max_steps=4, forward_dtype="float32")


def tiny_trm(**overrides) -> TRMConfig:
    return TRMConfig(**{**SHAPES, "puzzle_emb_ndim": 32, "puzzle_emb_len": 2, "H_cycles": 3, "L_cycles": 2, **overrides})


def record_updates(net: torch.nn.Module) -> list[dict]:
    """Per call of `net`: whether grad was on, and (after backward) the gradient its output received."""
    calls: list[dict] = []

    def hook(_module, _inputs, output):
        call = {"grad_enabled": torch.is_grad_enabled(), "grad": None}
        if output.requires_grad:
            output.register_hook(lambda g: call.__setitem__("grad", g.abs().sum().item()))
        calls.append(call)

    net.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("mlp_t", [False, True])
def test_trm_gradient_reaches_every_update_of_the_last_recursion_and_none_earlier(mlp_t):
    cfg = tiny_trm(mlp_t=mlp_t)
    torch.manual_seed(0)
    model = TRM(cfg).train()
    calls = record_updates(model.inner.L_level)  # the one network: n latent updates + 1 answer update per recursion
    batch = random_batch(cfg)
    _, outputs = model(carry=model.initial_carry(batch), batch=batch)
    outputs["logits"].square().sum().backward()
    per_recursion = cfg.L_cycles + 1
    assert len(calls) == cfg.H_cycles * per_recursion  # one forward per step (no Q-continue target pass)
    earlier, last = calls[:-per_recursion], calls[-per_recursion:]
    assert not any(c["grad_enabled"] for c in earlier)
    assert all(c["grad_enabled"] and c["grad"] > 0 for c in last)


def test_trm_gradient_equals_backprop_through_the_last_recursion_from_no_grad_states():
    cfg = tiny_trm()
    torch.manual_seed(0)
    inner = TRM(cfg).inner
    batch = random_batch(cfg)
    carry = inner.reset_carry(torch.ones(cfg.batch_size, dtype=torch.bool), inner.empty_carry(cfg.batch_size, torch.device("cpu")))
    inner(carry, batch)[1].square().sum().backward()
    grad_model = inner.L_level.layers[0].self_attn.qkv_proj.weight.grad.clone()
    inner.zero_grad()
    net, x, cos_sin = inner.L_level, inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"]), inner.cos_sin()
    y, z = carry.z_H, carry.z_L  # answer y, latent z
    with torch.no_grad():
        for _ in range(cfg.H_cycles - 1):
            for _ in range(cfg.L_cycles):
                z = net(z, y + x, cos_sin)
            y = net(y, z, cos_sin)
    for _ in range(cfg.L_cycles):
        z = net(z, y + x, cos_sin)
    y = net(y, z, cos_sin)
    inner.lm_head(y)[:, inner.puzzle_emb_len :].square().sum().backward()
    torch.testing.assert_close(grad_model, inner.L_level.layers[0].self_attn.qkv_proj.weight.grad)


def test_hrm_full_last_cycle_gradient_option():
    cfg = tiny_config(one_step_gradient=False, H_cycles=2, L_cycles=3)
    model = HRM(cfg).train()
    L, H = record_updates(model.inner.L_level), record_updates(model.inner.H_level)
    batch = random_batch(cfg)
    model(carry=model.initial_carry(batch), batch=batch)[1]["logits"].square().sum().backward()
    first_forward = slice(0, cfg.H_cycles * cfg.L_cycles)  # the Q-continue target pass comes after
    assert [c["grad_enabled"] for c in L[first_forward]] == [False] * cfg.L_cycles + [True] * cfg.L_cycles
    assert all(c["grad"] > 0 for c in L[cfg.L_cycles : 2 * cfg.L_cycles])
    assert [c["grad_enabled"] for c in H[: cfg.H_cycles]] == [False, True]


@pytest.mark.parametrize("model_cls, cfg", [(HRM, tiny_config(act_continue_loss=False)), (TRM, tiny_trm())])
def test_bce_only_halting_runs_one_forward_per_step_and_has_no_continue_loss(model_cls, cfg):
    torch.manual_seed(0)
    model = model_cls(cfg).train()
    inner_calls = []
    model.inner.register_forward_hook(lambda *_: inner_calls.append(1))
    batch = random_batch(cfg)
    carry = model.initial_carry(batch)
    for step in range(1, 4):
        carry, outputs = model(carry=carry, batch=batch)
        assert len(inner_calls) == step  # HRM's default runs two (the target-Q pass)
        assert "q_continue_logits" not in outputs and "target_q_continue" not in outputs
        total, metrics = act_loss(carry, outputs)
        assert "q_continue_loss" not in metrics
        torch.testing.assert_close(total, metrics["lm_loss"] + 0.5 * metrics["q_halt_loss"])


def test_bce_only_halting_halts_when_q_halt_is_positive():
    cfg = tiny_trm(halt_exploration_prob=0.0)
    model = TRM(cfg).train()
    batch = random_batch(cfg)
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([0.5, 9.0]))  # q_halt > 0 (the unused continue logit is larger)
    carry, _ = model(carry=model.initial_carry(batch), batch=batch)
    assert carry.halted.all()
    with torch.no_grad():
        model.inner.q_head.bias.copy_(torch.tensor([-0.5, -9.0]))
    carry, _ = model(carry=model.initial_carry(batch), batch=batch)
    assert not carry.halted.any()


def test_hrm_default_still_trains_the_continue_head_with_a_second_forward(cfg):
    model = HRM(cfg).train()
    inner_calls = []
    model.inner.register_forward_hook(lambda *_: inner_calls.append(1))
    batch = random_batch(cfg)
    _, outputs = model(carry=model.initial_carry(batch), batch=batch)
    assert len(inner_calls) == 2 and "target_q_continue" in outputs


def test_token_mlp_mixes_positions_without_attention():
    cfg = tiny_trm(mlp_t=True, pos_encodings="none")
    model = TRM(cfg).eval()
    assert not any("self_attn" in name for name, _ in model.named_parameters())
    batch = random_batch(cfg)
    other = {**batch, "inputs": batch["inputs"].clone()}
    other["inputs"][:, 0] = (other["inputs"][:, 0] + 1) % cfg.vocab_size
    logits = [model(carry=model.initial_carry(b), batch=b)[1]["logits"] for b in (batch, other)]
    assert not torch.allclose(logits[0][:, 1:], logits[1][:, 1:])  # position 0's token reached the others


def test_transformer_runs_its_blocks_once_per_step_all_with_gradient():
    cfg = TransformerConfig(**SHAPES, puzzle_emb_ndim=32, H_layers=2)
    model = Transformer(cfg).train()
    calls = record_updates(model.inner.H_level)
    batch = random_batch(cfg)
    carry, outputs = model(carry=model.initial_carry(batch), batch=batch)
    outputs["logits"].square().sum().backward()
    assert [c["grad_enabled"] for c in calls] == [True, False]  # the step, then the no-grad target-Q pass
    assert calls[0]["grad"] > 0
    assert [f.name for f in dataclasses.fields(carry.inner_carry)] == ["z_H"]


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_published_sizes():
    """TRM paper: TRM-MLP 5 M on Sudoku-Extreme, TRM-Att 7 M; ours at its configs: 5,028,866 and 6,828,034
    (ARC shapes 6,829,058). The sparse puzzle-embedding table is a buffer, counted by neither."""
    sudoku = dict(seq_len=81, vocab_size=11, batch_size=1)
    trm_mlp = params(TRM(TRMConfig(**sudoku, mlp_t=True, pos_encodings="none")))
    trm_att = params(TRM(TRMConfig(**sudoku)))
    trm_arc = params(TRM(TRMConfig(seq_len=900, vocab_size=12, batch_size=1, L_cycles=4)))
    assert (trm_mlp, trm_att, trm_arc) == (5_028_866, 6_828_034, 6_829_058)
    assert abs(trm_mlp / 5e6 - 1) < 0.02 and abs(trm_att / 7e6 - 1) < 0.05
    hrm, transformer = params(HRM(HRMConfig(**sudoku))), params(Transformer(TransformerConfig(**sudoku)))
    assert transformer == hrm == 27_275_266  # 8 blocks either way: the "same size" baseline


def test_registry_builds_each_model_and_refuses_unknown_keys():
    for name, (config_cls, model_cls) in MODELS.items():
        cfg = model_config(name, {**SHAPES, "puzzle_emb_ndim": 32})
        assert isinstance(cfg, config_cls) and type(build_model(cfg)) is model_cls
        assert model_name_of(cfg) in (name, "trm")
    assert "H_layers" not in model_keys("trm") and "mlp_t" in model_keys("trm_mlp")
    with pytest.raises(ValueError, match=r"model.H_layers: unknown key"):
        model_config("trm", {"H_layers": 4})
    with pytest.raises(ValueError, match="unknown model 'gpt'"):
        model_config("gpt", {})
    with pytest.raises(ValueError, match="puzzle_emb_len must be 0"):
        TRMConfig(puzzle_emb_ndim=0)
