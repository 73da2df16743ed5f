import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hrm_bench import metrics
from hrm_bench.metrics import (
    PeakMemory,
    Throughput,
    block_flops,
    count_parameters,
    dense_param_flops,
    hrm_flops_per_example,
    inner_forward_flops,
    mfu,
    model_tflops,
    puzzle_emb_params,
)
from puzzle_hrm.config import HRMConfig

# d=8, intermediate_size=256 (rounded up to a multiple of 256), T = 4 + 1 puzzle position, V=5.
TINY = HRMConfig(
    batch_size=2, seq_len=4, puzzle_emb_ndim=8, num_puzzle_identifiers=3, vocab_size=5,
    H_cycles=2, L_cycles=3, H_layers=1, L_layers=2, hidden_size=8, expansion=1.0, num_heads=2,
    halt_max_steps=4, forward_dtype="float32",
)  # fmt: skip


def test_tiny_config_by_hand():
    assert (TINY.intermediate_size, TINY.total_seq_len) == (256, 5)
    block = 2 * 5 * (3 * 64 + 64 + 2 * 8 * 256 + 256 * 8) + 4 * 5 * 5 * 8  # 64000 matmul + 800 attention
    l_pass, h_pass = 2 * block, 1 * block
    heads = 2 * 4 * 8 * 5 + 2 * 8 * 2
    forward = 2 * 3 * l_pass + 2 * h_pass + heads
    assert block_flops(TINY) == block == 64800
    assert inner_forward_flops(TINY) == forward == 907552
    assert hrm_flops_per_example(TINY, training=False) == forward
    assert hrm_flops_per_example(TINY, training=True) == forward + 2 * (l_pass + h_pass + heads) + forward


def test_no_target_q_forward_without_act():
    cfg = dataclasses.replace(TINY, halt_max_steps=1)
    grad_part = 2 * (3 * block_flops(cfg) + 2 * 4 * 8 * 5 + 2 * 8 * 2)
    assert hrm_flops_per_example(cfg, training=True) == inner_forward_flops(cfg) + grad_part


def test_training_costs_more_than_eval():
    for cfg in (TINY, HRMConfig()):
        assert hrm_flops_per_example(cfg, training=True) > hrm_flops_per_example(cfg, training=False)


def test_forward_is_linear_in_H_cycles_and_gradient_part_is_not():
    f = {h: inner_forward_flops(dataclasses.replace(TINY, H_cycles=h)) for h in (1, 2, 3)}
    per_cycle = (TINY.L_cycles * TINY.L_layers + TINY.H_layers) * block_flops(TINY)
    assert f[3] - f[2] == f[2] - f[1] == per_cycle
    # one-step gradient: training minus the two forwards stays the same whatever H_cycles is
    grad = {h: hrm_flops_per_example(dataclasses.replace(TINY, H_cycles=h), True) - 2 * f[h] for h in (1, 2, 3)}
    assert grad[1] == grad[2] == grad[3]


def test_block_formula_matches_torch_flop_counter():
    """A plain post-norm block with the HRM shapes (explicit attention: torch does not count CPU SDPA)."""
    d, i, t, heads = TINY.hidden_size, TINY.intermediate_size, TINY.total_seq_len, TINY.num_heads
    qkv, o, gate_up, down = (torch.randn(n, m) for n, m in [(3 * d, d), (d, d), (2 * i, d), (d, i)])
    x = torch.randn(1, t, d)

    def block(x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, qkv).view(1, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x (1, h, T, hd)
        scores = (q @ k.transpose(-2, -1) / (d // heads) ** 0.5).softmax(-1)  # (1, h, T, T), no causal mask
        attn = (scores @ v).transpose(1, 2).reshape(1, t, d)
        x = F.rms_norm(x + F.linear(attn, o), (d,))
        g, u = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.rms_norm(x + F.linear(F.silu(g) * u, down), (d,))

    with FlopCounterMode(display=False) as counter:
        block(x)
    assert counter.get_total_flops() == block_flops(TINY)


def test_dense_param_flops_and_tflops_and_mfu():
    assert dense_param_flops(params=10, tokens=5, passes=3) == 300
    assert model_tflops(2e12, examples_per_s=3.0) == 6.0
    assert mfu(494.7, 989.4) == pytest.approx(0.5)
    assert mfu(494.7, 989.4, n_devices=2) == pytest.approx(0.25)
    assert mfu(494.7, None) is None


def test_count_parameters_skips_buffers_and_can_skip_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))  # 16 + 8
    model.register_buffer("table", torch.zeros(100, 3))
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == 24
    assert count_parameters(model, trainable_only=True) == 16


def test_puzzle_emb_params():
    assert puzzle_emb_params(TINY) == 3 * 8
    assert puzzle_emb_params(dataclasses.replace(TINY, puzzle_emb_ndim=0)) == 0


def test_peak_memory_on_cpu_is_process_rss():
    with PeakMemory("cpu") as peak:
        block = torch.ones(64, 2**20, dtype=torch.uint8)  # 64 MiB, touched
        assert block.sum() > 0
    assert 64 / 1024 < peak.gib() < 1024


def fake_clock(*times: float):
    it = iter(times)
    return lambda: next(it)


def test_throughput_excludes_warmup():
    timer = Throughput(warmup_steps=2, clock=fake_clock(0.0, 10.0, 12.0))  # start, end of warm-up, stop
    for _ in range(5):
        timer.step(examples=4, tokens=36)
    timer.stop()
    assert (timer.steps, timer.examples, timer.tokens) == (5, 12, 108)
    assert (timer.warmup_s, timer.wall_s) == (10.0, 2.0)
    assert (timer.examples_per_s, timer.tokens_per_s) == (6.0, 54.0)


def test_throughput_without_warmup_and_with_only_warmup():
    timer = Throughput(warmup_steps=0, clock=fake_clock(1.0, 5.0))
    timer.step(examples=8, tokens=8)
    assert timer.stop().examples_per_s == 2.0 and timer.warmup_s == 0.0

    timer = Throughput(warmup_steps=3, clock=fake_clock(0.0, 7.0))
    timer.step(examples=8, tokens=8)
    timer.stop()
    assert (timer.examples_per_s, timer.tokens_per_s, timer.wall_s, timer.warmup_s) == (None, None, 0.0, 7.0)


def test_throughput_must_be_stopped_before_reading():
    timer = Throughput()
    timer.step(examples=1, tokens=1)
    with pytest.raises(RuntimeError, match="stop"):
        _ = timer.examples_per_s


def test_throughput_synchronises_only_at_boundaries(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    timer = Throughput(device="cuda", warmup_steps=1)
    for _ in range(100):
        timer.step(examples=1, tokens=1)
    assert len(calls) == 2  # creation, end of warm-up
    timer.stop()
    assert len(calls) == 3


def test_cpu_never_synchronises(monkeypatch):
    monkeypatch.setattr(metrics.torch.cuda, "synchronize", lambda device=None: pytest.fail("synchronised on CPU"))
    Throughput(device="cpu", warmup_steps=1).stop()
