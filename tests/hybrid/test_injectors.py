"""Prompt bridge (pooling exact under padding) and injectors (gated, position-wise)."""

import pytest
import torch

from hybrid.backbone import tiny_backbone
from hybrid.injectors import CAB, GRB, PromptBridge, VocabBias, build_injector
from puzzle_hrm.layers import rms_norm

from .tiny import tiny_config

D, D_H = 64, 32


def make_injectors() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "grb": build_injector(tiny_config(injector="grb"), D),
        "cab": build_injector(tiny_config(injector="cab", cab_mem_tokens=3), D),
    }


def test_bridge_pools_mean_and_last_of_the_prompt_only():
    torch.manual_seed(0)
    bridge = PromptBridge(D, D_H, eps=1e-5)
    hidden = torch.randn(2, 7, D) * 30  # pre-norm scale
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    plen = torch.tensor([3, 4])
    mean, last = bridge.pool(hidden, mask, plen)
    torch.testing.assert_close(mean, torch.stack([hidden[0, :3].mean(0), hidden[1, :4].mean(0)]))
    assert torch.equal(last, torch.stack([hidden[0, 2], hidden[1, 3]]))
    expected = bridge.proj(bridge.mix(torch.cat((rms_norm(mean, 1e-5), rms_norm(last, 1e-5)), -1)))
    assert torch.equal(bridge(hidden, mask, plen), expected)

    changed = hidden.clone()
    changed[:, 4:] += 100.0  # the target region and padding
    assert torch.equal(bridge(changed, mask, plen), bridge(hidden, mask, plen))
    changed[1, 0] += 1.0  # a prompt token
    assert not torch.equal(bridge(changed, mask, plen)[1], bridge(hidden, mask, plen)[1])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_bridge_is_exact_for_an_example_alone_and_inside_a_padded_batch(padding_side):
    torch.manual_seed(0)
    bridge = PromptBridge(D, D_H, eps=1e-5)
    alone = torch.randn(1, 5, D) * 10
    batch = torch.randn(3, 9, D) * 10  # other rows longer, so row 1 is padded by 4
    mask = torch.ones(3, 9, dtype=torch.long)
    span = slice(0, 5) if padding_side == "right" else slice(4, 9)
    batch[1] = float("nan")  # whatever the LLM left at padding must not leak in
    batch[1, span] = alone[0]
    mask[1] = 0
    mask[1, span] = 1
    plen_alone, plen_batch = torch.tensor([3]), torch.tensor([6, 3, 2])

    pooled_alone = bridge.pool(alone, torch.ones(1, 5, dtype=torch.long), plen_alone)
    pooled_batch = bridge.pool(batch, mask, plen_batch)
    for a, b in zip(pooled_alone, pooled_batch):
        assert torch.equal(a[0], b[1])  # bit-exact: running sums, no batch-dependent reduction
    torch.testing.assert_close(bridge(batch, mask, plen_batch)[1], bridge(alone, torch.ones(1, 5, dtype=torch.long), plen_alone)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("plen", [[0, 3], [3, 6]])
def test_bridge_rejects_prompt_lengths_outside_the_attended_tokens(plen):
    bridge = PromptBridge(D, D_H, eps=1e-5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="prompt_lengths"):
        bridge(torch.randn(2, 5, D), mask, torch.tensor(plen))


@pytest.mark.parametrize("kind", ["grb", "cab"])
def test_injector_acts_only_through_its_gate(kind):
    injector = make_injectors()[kind]
    hidden, z_H = torch.randn(2, 6, D) * 10, torch.randn(2, D_H)
    out = injector(hidden, z_H)
    assert out.shape == hidden.shape and not torch.equal(out, hidden)
    # the residual is sigmoid(gate) · delta
    torch.testing.assert_close(out - hidden, torch.sigmoid(injector.gate) * injector.delta(hidden, z_H).expand_as(hidden))
    with torch.no_grad():
        injector.gate.fill_(float("-inf"))
    assert torch.equal(injector(hidden, z_H), hidden)


@pytest.mark.parametrize("kind", ["grb", "cab"])
def test_closed_gates_give_the_llm_only_logits_exactly(kind):
    backbone = tiny_backbone()
    torch.manual_seed(0)
    injector, vocab_bias = make_injectors()[kind], VocabBias(D_H, backbone.vocab_size, gate_init=-2.0)
    ids = torch.randint(1, backbone.vocab_size, (2, 8))
    hidden, _ = backbone.hidden_states(ids)
    z_H = torch.randn(2, D_H)
    with torch.no_grad():
        injector.gate.fill_(float("-inf"))
        vocab_bias.gate.fill_(float("-inf"))
    logits = backbone.logits(injector(hidden, z_H)) + vocab_bias(z_H).unsqueeze(1)
    assert torch.equal(logits, backbone.logits(hidden))


@pytest.mark.parametrize("kind", ["grb", "cab"])
def test_injector_is_position_wise_so_decoding_can_apply_it_token_by_token(kind):
    injector = make_injectors()[kind]
    hidden, z_H = torch.randn(2, 7, D) * 10, torch.randn(2, D_H)
    condition = injector.condition(z_H)  # z_H fixed per prompt, as generate() uses it
    whole = condition(hidden)
    prefix_then_token = torch.cat((condition(hidden[:, :6]), condition(hidden[:, 6:])), dim=1)
    torch.testing.assert_close(prefix_then_token, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole, injector(hidden, z_H), rtol=0, atol=0)
    # and no token depends on another one
    shuffled = torch.randperm(7)
    torch.testing.assert_close(condition(hidden[:, shuffled]), whole[:, shuffled], rtol=0, atol=1e-5)


def test_cab_attends_over_its_memory_tokens():
    torch.manual_seed(0)
    cab = CAB(D_H, D, num_heads=4, mem_tokens=1, gate_init=0.0, eps=1e-5, attn_backend="sdpa")
    hidden, z_H = torch.randn(2, 5, D), torch.randn(2, D_H)
    delta = cab.delta(hidden, z_H)
    # one memory token: every token gets all of its value, whatever its query
    value = cab.kv_proj(cab.memory(z_H))[:, D:]
    torch.testing.assert_close(delta, cab.o_proj(value).unsqueeze(1).expand(2, 5, D), rtol=0, atol=1e-5)
    cab4 = CAB(D_H, D, num_heads=4, mem_tokens=4, gate_init=0.0, eps=1e-5, attn_backend="sdpa")
    delta4 = cab4.delta(hidden, z_H)
    assert not torch.allclose(delta4[:, 0], delta4[:, 1])  # with several memories queries choose


def test_cab_needs_heads_that_divide_the_llm_width():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        CAB(D_H, 66, num_heads=4, mem_tokens=2, gate_init=0.0, eps=1e-5, attn_backend="sdpa")


def test_gate_initialisation_and_gradients():
    injectors = make_injectors()
    assert injectors["grb"].gate.item() == -2.0 and injectors["cab"].gate.item() == -1.5
    assert isinstance(injectors["grb"], GRB) and isinstance(injectors["cab"], CAB)
    vocab_bias = VocabBias(D_H, 50, gate_init=-2.0)
    z_H = torch.randn(3, D_H)
    bias = vocab_bias(z_H)
    assert bias.shape == (3, 50)
    torch.testing.assert_close(bias, torch.sigmoid(torch.tensor(-2.0)) * vocab_bias.proj(z_H))
    for module, out in [(vocab_bias, bias), *((inj, inj(torch.randn(2, 4, D), z_H[:2])) for inj in injectors.values())]:
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
