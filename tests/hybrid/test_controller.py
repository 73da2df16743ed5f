"""HRMController: one-step gradient, detached segments, shapes, determinism, halting, config errors."""

import pytest
import torch

from hybrid.config import HybridConfig
from hybrid.controller import HRMController, SegmentOutput, halting_segments

from .tiny import tiny_config


def build(seed: int = 0, **overrides) -> HRMController:
    torch.manual_seed(seed)
    return HRMController(tiny_config(**overrides))


def test_shapes_unit_rms_and_q_head():
    controller = build(use_act=True)
    outputs = list(controller.segments(torch.randn(5, 32), n_segments=4))
    assert len(outputs) == 4
    for out in outputs:
        assert out.z_H.shape == (5, 32) and out.q_halt_logits.shape == out.q_continue_logits.shape == (5,)
        torch.testing.assert_close(out.z_H.square().mean(-1), torch.ones(5), rtol=0, atol=1e-4)  # RMSNorm on z_H
        assert out.q_halt_logits.dtype == torch.float32
    assert controller.q_head.weight.abs().sum() == 0 and controller.q_head.bias.tolist() == [-5.0, -5.0]
    assert all(o.q_halt_logits.eq(-5).all() for o in outputs)  # HRM init: no preference at first
    no_act = next(build().segments(torch.randn(5, 32), 1))
    assert no_act.q_halt_logits is None and build().q_head is None


def test_only_the_last_L_update_and_the_H_update_run_with_grad():
    controller = build(inner_T=4)
    calls = {"H": [], "L": []}
    controller.H_level.register_forward_hook(lambda *_: calls["H"].append(torch.is_grad_enabled()))
    controller.L_level.register_forward_hook(lambda *_: calls["L"].append(torch.is_grad_enabled()))
    for _ in controller.segments(torch.randn(2, 32), n_segments=2):
        pass
    assert calls["L"] == ([False] * 3 + [True]) * 2
    assert calls["H"] == [True] * 2


def manual_segments(controller: HRMController, x: torch.Tensor, n_segments: int) -> list[torch.Tensor]:
    """The paper's one-step gradient written out: every state entering a segment's last L/H update is a constant."""
    cfg = controller.config
    x = x.unsqueeze(1)
    z_H, z_L = controller.H_init.expand_as(x).clone(), controller.L_init.expand_as(x).clone()
    out = []
    for _ in range(n_segments):
        with torch.no_grad():
            for _ in range(cfg.inner_T - 1):
                z_L = controller.L_level(z_L, z_H + x, None)
        z_L = controller.L_level(z_L.detach(), z_H.detach() + x, None)
        z_H = controller.H_level(z_H.detach(), z_L, None)
        out.append(z_H[:, 0])
        z_H, z_L = z_H.detach(), z_L.detach()
    return out


@pytest.mark.parametrize("supervised", ["every segment", "last segment only"])
def test_gradients_equal_the_manual_one_step_computation(supervised):
    """Deep supervision gradients: per segment only its last L/H update; the loss of segment 2 must not
    reach back into segment 1 (states detached), and x only through each segment's last L-update."""
    controller = build()
    x = torch.randn(3, 32, requires_grad=True)
    weights = torch.randn(3, 32)

    def grads(z_list):
        controller.zero_grad()
        x.grad = None
        chosen = z_list if supervised == "every segment" else z_list[-1:]
        sum((z * weights).sum() for z in chosen).backward()
        return {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in controller.named_parameters()}}

    actual = grads([o.z_H for o in controller.segments(x, n_segments=3)])
    expected = grads(manual_segments(controller, x, 3))
    assert actual.keys() == expected.keys()
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], msg=name)
    assert actual["x"].abs().sum() > 0 and actual["L_level.layers.0.mlp.down_proj.weight"].abs().sum() > 0


def test_segments_continue_from_detached_states():
    controller = build()
    backward_calls = []
    controller.H_level.register_full_backward_hook(lambda *_: backward_calls.append(1))
    first, second = list(controller.segments(torch.randn(2, 32, requires_grad=True), n_segments=2))
    second.z_H.sum().backward()
    assert len(backward_calls) == 1  # only segment 2's H-update: nothing flows back into segment 1
    assert not torch.equal(first.z_H, second.z_H)  # yet it did start from there and move on


def test_deterministic_given_the_seed():
    x = torch.randn(4, 32)
    a = [o.z_H for o in build(seed=3).segments(x, 3)]
    b = [o.z_H for o in build(seed=3).segments(x, 3)]
    c = [o.z_H for o in build(seed=4).segments(x, 3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[-1], c[-1])


def test_bad_inputs():
    controller = build()
    with pytest.raises(ValueError, match=r"x must be \(B, d_h=32\)"):
        next(controller.segments(torch.randn(2, 1, 1, 32), 1))
    with pytest.raises(ValueError, match="n_segments"):
        next(controller.segments(torch.randn(2, 32), 0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(segments=0), "segments=0"),
        (dict(inner_T=0), "inner_T=0"),
        (dict(cab_mem_tokens=0), "cab_mem_tokens=0"),
        (dict(eval_segments=0), "eval_segments=0"),
        (dict(d_h=30, num_heads=4), "not divisible"),
        (dict(injector="film"), "injector must be one of"),
        (dict(loss="cross_entropy"), "loss must be one of"),
        (dict(act_penalty=-0.1), "act_penalty"),
        (dict(expansion=0), "expansion"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        HybridConfig(**overrides)


def test_config_defaults_are_the_prototype_ones():
    cfg = HybridConfig()
    assert (cfg.d_h, cfg.segments, cfg.inner_T, cfg.H_layers, cfg.L_layers, cfg.num_heads) == (512, 3, 3, 4, 4, 8)
    assert cfg.injector == "grb" and cfg.logit_bias_head and cfg.logit_bias_init == -2.0 and not cfg.use_act
    assert cfg.eval_segments == 3 and HybridConfig(segments=5).eval_segments == 5
    assert cfg.intermediate_size == 1536 and cfg.loss_type == "softmax_cross_entropy"


def test_halting_segments_follow_the_q_head():
    def seg(halt, cont):
        return SegmentOutput(torch.zeros(3, 1), torch.tensor(halt), torch.tensor(cont))

    outputs = [seg([1.0, -1.0, -1.0], [0.0, 0.0, 0.0]), seg([-1.0, 2.0, -1.0], [0.0, 0.0, 0.0]), seg([-1.0, -1.0, -1.0], [0.0, 0.0, 0.0])]
    # row 0 halts at once, row 1 at segment 2, row 2 never wants to: it runs all 3
    assert halting_segments(outputs).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="use_act"):
        halting_segments([SegmentOutput(torch.zeros(3, 1))])


def test_over_one_slot_only_the_value_rows_of_qkv_learn():
    """The docstring's claim: with one latent slot attention is its value path, q/k rows get no gradient."""
    torch.manual_seed(0)
    controller = HRMController(tiny_config(d_h=32, num_heads=4))
    sum(out.z_H.pow(2).sum() for out in controller.segments(torch.randn(3, 32), 2)).backward()
    for name, weight in controller.named_parameters():
        if "qkv_proj" in name:
            q_and_k, v = weight.grad[:64], weight.grad[64:]
            assert q_and_k.abs().max() < 1e-6 * v.abs().max(), name
