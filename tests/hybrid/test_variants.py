"""The model's variant options: injection after layer k (cached prefix = whole-sequence reference =
decoding), the token-window bridge, the gradient ablations, plain and oracle controllers."""

import pytest
import torch

from hybrid.backbone import tiny_backbone
from hybrid.controller import FeedForwardController, HRMController
from hybrid.features import FeatureCache
from hybrid.generate import DecodeConfig, generate, position_ids
from hybrid.injectors import TokenBridge
from hybrid.model import HybridLM, supervised_positions
from hybrid.tasks import pad

from .tiny import right_padded_batch, tiny_config


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0, num_layers=4)


def batch_and_cache(backbone, layer):
    batch = right_padded_batch([9, 12, 7], [5, 8, 3], backbone.vocab_size)
    return batch, FeatureCache.build(backbone, [batch], layer=layer).batch([0, 1, 2])


def build(backbone, **overrides) -> HybridLM:
    torch.manual_seed(0)
    model = HybridLM(tiny_config(**{"logit_bias_head": False, **overrides}), backbone)
    with torch.no_grad():
        model.injector.gate.fill_(2.0)  # a strong signal, so a wrong path would show
    return model


def test_layer_at_maps_depth_to_a_decoder_layer(backbone):
    assert [backbone.layer_at(d) for d in (0.25, 0.5, 0.75, 1.0)] == [0, 1, 2, None]
    with pytest.raises(ValueError, match="inject_depth must be in"):
        backbone.layer_at(0.0)


def test_top_states_from_layer_k_continue_the_models_own_forward(backbone):
    batch = right_padded_batch([9, 12, 7], [5, 8, 3], backbone.vocab_size)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        final, _ = backbone.hidden_states(ids, mask)
        at_k, _ = backbone.hidden_states(ids, mask, layer=1)
        top = backbone.top_states(at_k, mask, 1)
    real = mask.bool()
    torch.testing.assert_close(top[real], final[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("injector", ["grb", "cab"])
def test_cached_prefix_gives_the_whole_sequence_logits(backbone, injector):
    model = build(backbone, injector=injector, inject_depth=0.5)
    assert model.layer == 1
    _, cached = batch_and_cache(backbone, model.layer)
    positions, _ = supervised_positions(cached.labels)
    args = (cached.hidden_states, cached.attention_mask, cached.prompt_lengths)
    whole = model(*args, positions=positions)
    fast = model(*args, positions=positions, prefix_kv=cached.prefix_kv, prefix_mask=cached.prefix_mask)
    for a, b in zip(whole, fast, strict=True):
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-4)
    unconditioned = backbone.logits(backbone.hidden_states(cached.input_ids, cached.attention_mask)[0][positions])
    assert (fast[-1].logits - unconditioned).abs().max() > 1e-2  # the injection reached the logits


def test_injection_after_layer_k_decodes_as_it_trains(backbone):
    """Teacher-forced logits of training equal the logits decoding gives after the same tokens."""
    model = build(backbone, inject_depth=0.5, eval_segments=3).eval()
    batch, cached = batch_and_cache(backbone, model.layer)
    positions, _ = supervised_positions(cached.labels)
    with torch.no_grad():
        trained = model(cached.hidden_states, cached.attention_mask, cached.prompt_lengths, positions=positions, prefix_kv=cached.prefix_kv, prefix_mask=cached.prefix_mask)[-1].logits
    plen = batch["prompt_lengths"]
    ids, mask = pad([row[:n].tolist() for row, n in zip(batch["input_ids"], plen)], backbone.tokenizer.pad_token_id, "left")
    with torch.no_grad():
        prompt_states, _ = backbone.hidden_states(ids, mask, position_ids(mask), layer=model.layer)
        cond = model.conditioning(prompt_states, mask, mask.sum(1))
        captured = []
        backbone.lm_head.register_forward_hook(lambda _m, _a, out: captured.append(out[:, -1].clone()))
        generate(backbone, ids, mask, DecodeConfig(max_new_tokens=1), condition=cond.condition, condition_layer=cond.layer)
        backbone.lm_head._forward_hooks.clear()
    first = torch.cat([positions[row].nonzero()[:1] for row in range(3)])  # each row's first answer position
    row_starts = torch.cat([torch.zeros(1, dtype=torch.long), positions.sum(1).cumsum(0)[:-1]])
    torch.testing.assert_close(captured[0], trained[row_starts], rtol=0, atol=1e-4)
    assert first.view(-1).tolist() == (plen - 1).tolist()


def test_token_bridge_reads_the_last_prompt_tokens_for_either_padding():
    bridge = TokenBridge(8, 4, tokens=2, eps=1e-5)
    hidden = torch.randn(1, 5, 8)
    right = bridge(hidden, torch.tensor([[1, 1, 1, 1, 0]]), torch.tensor([3]))
    left = bridge(torch.cat((torch.zeros(1, 2, 8), hidden[:, :3]), 1), torch.tensor([[0, 0, 1, 1, 1]]), torch.tensor([3]))
    torch.testing.assert_close(left, right, rtol=0, atol=0)
    assert right.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="input_tokens=2 exceeds a prompt of 1"):
        bridge(hidden, torch.ones(1, 5, dtype=torch.long), torch.tensor([1]))


def grads_of(controller, x, steps):
    controller.zero_grad()
    sum(out.z_H.square().sum() for out in controller.segments(x, steps)).backward()
    return torch.cat([p.grad.flatten() for p in controller.parameters() if p.grad is not None])


def test_gradient_ablations_change_what_is_differentiated():
    x = torch.randn(3, 2, 32)
    torch.manual_seed(0)
    one_step = HRMController(tiny_config())
    state = one_step.state_dict()
    variants = {}
    for name, overrides in {"full_segment": dict(one_step_grad=False), "all_segments": dict(one_step_grad=False, detach_segments=False)}.items():
        controller = HRMController(tiny_config(**overrides))
        controller.load_state_dict(state)
        variants[name] = grads_of(controller, x, 3)
    base = grads_of(one_step, x, 3)
    assert not torch.allclose(base, variants["full_segment"])
    assert not torch.allclose(variants["full_segment"], variants["all_segments"])
    twin = HRMController(tiny_config(one_step_grad=False, detach_segments=False))
    twin.load_state_dict(state)
    with torch.no_grad():  # the forward values are the same: only the gradient path differs
        for a, b in zip(one_step.segments(x, 3), twin.segments(x, 3)):
            torch.testing.assert_close(a.z_H, b.z_H, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_plain_controllers_give_one_output_for_every_segment(kind):
    controller = FeedForwardController(tiny_config(controller=kind))
    outs = list(controller.segments(torch.randn(3, 32), 3))
    assert len(outs) == 3 and all(o.z_H is outs[0].z_H for o in outs)
    assert outs[0].z_H.shape == (3, 32)


def test_the_oracle_reads_the_answer_and_refuses_to_decode(backbone):
    model = build(backbone, controller="oracle")
    batch, cached = batch_and_cache(backbone, None)
    args = (cached.hidden_states, cached.attention_mask, cached.prompt_lengths)
    z = model(*args, input_ids=cached.input_ids)[-1].z_H
    changed = cached.input_ids.clone()
    changed[0, 6] += 1  # an answer token of row 0 (prompt length 5)
    z_changed = model(*args, input_ids=changed)[-1].z_H
    assert not torch.equal(z[0], z_changed[0]) and torch.equal(z[1:], z_changed[1:])
    with pytest.raises(ValueError, match="pass the teacher-forced input_ids"):
        model(*args)
    with pytest.raises(ValueError, match="cannot condition decoding"):
        model.conditioning(*args)


@pytest.mark.parametrize("kind", ["grb", "cab"])
def test_relative_injection_is_the_gates_share_of_the_stream_at_any_scale(kind):
    from hybrid.injectors import build_injector

    torch.manual_seed(0)
    injector = build_injector(tiny_config(injector=kind, relative_injection=True), 16)
    hidden, z_H = torch.randn(2, 3, 16), torch.randn(2, 32)
    with torch.no_grad():
        small, large = injector(hidden, z_H) - hidden, injector(30 * hidden, z_H) - 30 * hidden
    torch.testing.assert_close(large, 30 * small, rtol=1e-4, atol=1e-5)  # CAB's queries see the normalised state


def test_centered_bridge_uses_batch_statistics_in_training_and_running_ones_for_decoding():
    from hybrid.injectors import PromptBridge

    torch.manual_seed(0)
    bridge = PromptBridge(8, 4, eps=1e-5, centered=True)
    hidden = torch.randn(6, 5, 8) + 3.0  # a large shared component, as a chat template gives
    mask, plen = torch.ones(6, 5, dtype=torch.long), torch.full((6,), 4)
    for _ in range(200):
        bridge(hidden, mask, plen)
    mean, last = bridge.pool(hidden, mask, plen)
    pooled = torch.cat((mean, last), -1)
    torch.testing.assert_close(bridge.standardise.running_mean, pooled.mean(0), rtol=1e-3, atol=1e-3)
    bridge.eval()
    alone = bridge(hidden[:1], mask[:1], plen[:1])
    torch.testing.assert_close(alone, bridge(hidden, mask, plen)[:1], rtol=0, atol=1e-6)
