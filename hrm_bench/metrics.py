"""Throughput, FLOP count, MFU, peak memory: the measured columns of the result tables.

FLOP count (the one the result tables state). Per example and per ACT step, with d = hidden_size,
i = HRMConfig.intermediate_size (SwiGLU width), S = seq_len, T = S + puzzle_emb_len, V = vocab_size:

    block   = 2*T*(3d*d + d*d + 2d*i + i*d)      qkv_proj, o_proj, gate_up_proj, down_proj matmuls
            + 4*T*T*d                            attention scores Q K^T and values A V (non-causal)
    L_pass  = L_layers * block                   H_pass = H_layers * block
    heads   = 2*S*d*V + 2*d*2                    lm_head on the S puzzle positions, q_head on position 0
    forward = H_cycles*L_cycles*L_pass + H_cycles*H_pass + heads      (one inner forward)

    eval    = forward
    train   = forward + 2*(L_pass + H_pass + heads)       backward = 2x forward, one-step gradient:
                                                          only the last L pass, last H pass and heads
            + forward  (if halt_max_steps > 1 and act_continue_loss)   no-grad inner forward for the target Q

Other models (TRM, the plain transformer) count the same way over their blocks: cfg.layer_passes().

Embedding lookups, RMSNorm, RoPE, residual adds, softmax and the loss are left out (O(T*d), not
matmuls). The official code applies lm_head to all T positions and drops the puzzle ones; the
count keeps only the S that are used. For comparison, `dense_param_flops` is the coarse
2 * params * tokens * passes count.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from puzzle_hrm.config import HRMConfig, PuzzleModelConfig

logger = logging.getLogger(__name__)


def block_flops(cfg: PuzzleModelConfig) -> float:
    """One block on one example of T tokens (see the module docstring); TRM's token-MLP block
    (mlp_t) mixes tokens with a SwiGLU of width i_t over T: 2*d*(2T*i_t + i_t*T) instead of attention."""
    d, i, t = cfg.hidden_size, cfg.intermediate_size, cfg.total_seq_len
    if getattr(cfg, "mlp_t", False):
        return 2.0 * t * 3 * d * i + 2.0 * d * 3 * t * cfg.token_intermediate_size
    matmul_params = 3 * d * d + d * d + 2 * d * i + i * d
    return 2.0 * t * matmul_params + 4.0 * t * t * d


def heads_flops(cfg: PuzzleModelConfig) -> float:
    """lm_head on the seq_len puzzle positions plus q_head (2 logits) on the first position."""
    return 2.0 * cfg.seq_len * cfg.hidden_size * cfg.vocab_size + 2.0 * cfg.hidden_size * 2


def inner_forward_flops(cfg: PuzzleModelConfig) -> float:
    """One inner forward: every block pass of one ACT step (HRM: H_cycles*L_cycles L-level passes and
    H_cycles H-level passes; cfg.layer_passes() says it per model), then the heads."""
    return cfg.layer_passes()[0] * block_flops(cfg) + heads_flops(cfg)


def hrm_flops_per_example(cfg: PuzzleModelConfig, training: bool) -> float:
    """FLOPs of one ACT step on one example, training or evaluation, for any model of puzzle_hrm.registry:
    backward = 2x forward over the blocks that carry gradient (HRM: one-step gradient), target Q forward
    only with a Q-continue loss."""
    forward = inner_forward_flops(cfg)
    if not training:
        return forward
    with_grad = cfg.layer_passes()[1] * block_flops(cfg) + heads_flops(cfg)
    target_q = forward if cfg.halt_max_steps > 1 and cfg.act_continue_loss else 0.0
    return forward + 2.0 * with_grad + target_q


def dense_param_flops(params: int, tokens: int, passes: int) -> float:
    """The coarse 2 * params * tokens * passes count (forward only, no attention term)."""
    return 2.0 * params * tokens * passes


def model_tflops(flops_per_example: float, examples_per_s: float) -> float:
    """Achieved TFLOP/s. For evaluation, examples_per_s counts ACT steps: puzzles/s * halt_max_steps."""
    return flops_per_example * examples_per_s / 1e12


def mfu(tflops: float, peak_tflops: float | None, n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation as a fraction of n_devices * peak; None (empty cell) without a peak."""
    if peak_tflops is None:
        return None
    return tflops / (peak_tflops * n_devices)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Elements of the model's nn.Parameters.

    The sparse puzzle-embedding table is a buffer (trained by SignSGD outside the optimizer), so it
    is not counted here; see `puzzle_emb_params`.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def puzzle_emb_params(cfg: HRMConfig) -> int:
    """Entries of the sparse puzzle-embedding table (num_puzzle_identifiers x puzzle_emb_ndim)."""
    return cfg.num_puzzle_identifiers * cfg.puzzle_emb_ndim


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device: str | torch.device) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)


@dataclass
class PeakMemory:
    """Peak memory in GiB since `reset()` (or entering the `with` block).

    CUDA: torch's max_memory_allocated (tensors only, not the caching allocator's reserve).
    CPU: the process's peak resident set size (getrusage ru_maxrss, KiB on Linux, bytes on macOS);
    it cannot be reset, so it covers the whole process lifetime, not just the block.
    """

    device: str | torch.device = "cpu"

    def __enter__(self) -> PeakMemory:
        self.reset()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def reset(self) -> None:
        if _is_cuda(self.device):
            torch.cuda.reset_peak_memory_stats(self.device)

    def gib(self) -> float:
        if _is_cuda(self.device):
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        unit = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**30


@dataclass
class Throughput:
    """Examples/s and tokens/s over the steps after a warm-up (compilation, allocator, cudnn tuning).

    Create it just before the first step, call `step()` after each one and `stop()` at the end.
    The GPU is synchronised only at the two measurement boundaries (end of warm-up and `stop()`),
    never per step, so the timer does not slow the loop it measures.
    """

    device: str | torch.device = "cpu"
    warmup_steps: int = 1
    clock: Callable[[], float] = time.perf_counter
    steps: int = field(default=0, init=False)
    examples: int = field(default=0, init=False)  # counted after the warm-up only
    tokens: int = field(default=0, init=False)
    _start: float = field(init=False)
    _measure_start: float | None = field(default=None, init=False)
    _end: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        _sync(self.device)
        self._start = self.clock()
        if self.warmup_steps == 0:
            self._measure_start = self._start

    def step(self, examples: int, tokens: int) -> None:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            if self.steps == self.warmup_steps:
                _sync(self.device)
                self._measure_start = self.clock()
            return
        self.examples += examples
        self.tokens += tokens

    def stop(self) -> Throughput:
        _sync(self.device)
        self._end = self.clock()
        if self._measure_start is None:
            logger.warning("throughput: all %d steps were warm-up; nothing measured", self.steps)
            self._measure_start = self._end
        return self

    @property
    def warmup_s(self) -> float:
        self._check_stopped()
        return self._measure_start - self._start

    @property
    def wall_s(self) -> float:
        """Measured seconds, after the warm-up."""
        self._check_stopped()
        return self._end - self._measure_start

    @property
    def examples_per_s(self) -> float | None:
        """None (an empty cell) when nothing was measured after the warm-up."""
        return self._rate(self.examples)

    @property
    def tokens_per_s(self) -> float | None:
        return self._rate(self.tokens)

    def _rate(self, count: int) -> float | None:
        wall_s = self.wall_s
        return count / wall_s if count else None

    def _check_stopped(self) -> None:
        if self._end is None:
            raise RuntimeError("call Throughput.stop() before reading the measurement")
