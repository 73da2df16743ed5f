"""CPU micro-benchmark workloads: one definition shared by `benchmarks/` (pytest-benchmark) and
`python -m hrm_bench.perf.regress` (the CI regression check).

Each workload is built once by `build(bench)` (untimed setup through the project's own functions:
the Sudoku builder, `PuzzleLoader`, `train.build_state`) and returns a zero-argument callable that
does one unit of work. Shapes are small but those of the real recipes: 9x9 Sudoku (81 cells,
vocabulary 11) with a 64-wide HRM for the model workloads, the loss at the batch of 384 of the
official Sudoku-Extreme-1k recipe, ARC's per-GPU batch of 96 rows of 512 for the puzzle-embedding
update; for the hybrid, a cached-state training step of the HRM controller (3 segments) on a tiny
LLM whose LM head has 8,192 rows, so that the head keeps the share of the step it has with a real
LLM.

`configure_process()` holds the measurement settings both use: THREADS torch threads and an
allocator that keeps freed memory.

`CALIBRATION` is a fixed matmul + elementwise + small-op mix with no project code in it: regress
divides every workload's time by it, measured in the same run, so the machine's speed cancels.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from hrm_bench.perf.hybrid_speed import cached_step
from hybrid.backbone import tiny_backbone
from hybrid.config import HybridConfig
from puzzle_hrm.config import HRMConfig
from puzzle_hrm.data.format import DatasetMetadata
from puzzle_hrm.data.loader import Batch, PuzzleLoader
from puzzle_hrm.data.sudoku import SudokuBuildConfig, build
from puzzle_hrm.evaluate import rollout
from puzzle_hrm.losses import stablemax_cross_entropy
from puzzle_hrm.sparse_embedding import CastedSparseEmbedding, SparseEmbeddingSignSGD, signsgd_update_without_sync
from puzzle_hrm.train import TrainConfig, TrainState, build_state, train_step

BATCH = 16  # model, loader and rollout batch
LOSS_BATCH = 384  # the official Sudoku-Extreme-1k global batch
ARCH = HRMConfig(
    hidden_size=64, num_heads=4, expansion=4, H_layers=1, L_layers=1, puzzle_emb_ndim=64, halt_max_steps=2, forward_dtype="float32"
)
DATA = SudokuBuildConfig(source="generate", box=3, num_train=64, num_test=32, num_aug=7, min_blanks=40, max_blanks=50, seed=0)
SIGNSGD_ROWS, SIGNSGD_TABLE, SIGNSGD_DIM = 96, 20_000, 512  # ARC: per-GPU batch 96, puzzle_emb_ndim 512
HYBRID_VOCAB = 8192  # LM-head rows of the hybrid workload's tiny LLM

THREADS = 1  # on a shared 2-core machine a busy neighbour stalls a 2-thread kernel far more
Work = Callable[[], object]
# glibc mallopt parameters: never return freed memory to the kernel, serve blocks up to 32 MiB
# from the heap; a fresh mmap per large tensor costs thousands of page faults per call, whose
# price varies with the other processes on the machine.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BLOCK_MAX = 32 * 2**20


def configure_process() -> None:
    """Measurement settings: THREADS torch threads; on glibc, allocations that stay in the heap."""
    torch.set_num_threads(THREADS)
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    if hasattr(libc, "mallopt"):  # glibc only
        libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCK_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


@dataclass
class Bench:
    """What the workloads share: a small 9x9 Sudoku set in the official layout under `workdir`."""

    workdir: Path

    @cached_property
    def data_dir(self) -> Path:
        return build(dataclasses.replace(DATA, output_dir=str(self.workdir / "sudoku9")))

    def loader(self) -> PuzzleLoader:
        return PuzzleLoader(self.data_dir, "train", BATCH, mode="train", seed=0, epochs_per_iter=16)

    @cached_property
    def metadata(self) -> DatasetMetadata:
        return self.loader().metadata

    @cached_property
    def batch(self) -> Batch:
        return next(iter(self.loader()))[1]

    def train_config(self) -> TrainConfig:
        return TrainConfig(data_path=str(self.data_dir), global_batch_size=BATCH, lr_warmup_steps=0, total_steps=10**6)

    def train_state(self) -> TrainState:
        return build_state(self.train_config(), ARCH, self.metadata, torch.device("cpu"))


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build: Callable[[Bench], Work]


def _train_step(bench: Bench) -> Work:
    state, cfg = bench.train_state(), bench.train_config()
    state.model.train()
    return lambda: train_step(state, state.model, bench.batch, cfg, world_size=1)


def _eval_rollout(bench: Bench) -> Work:
    model = bench.train_state().model.eval()
    return lambda: rollout(model, bench.batch)


def _loss(bench: Bench) -> Work:
    generator = torch.Generator().manual_seed(0)
    shape = (LOSS_BATCH, bench.metadata.seq_len)
    logits = torch.randn(*shape, bench.metadata.vocab_size, generator=generator, requires_grad=True)
    labels = torch.randint(1, bench.metadata.vocab_size, shape, generator=generator, dtype=torch.int32)
    return lambda: torch.autograd.grad(stablemax_cross_entropy(logits, labels).sum(), logits)


def _loader(bench: Bench) -> Work:
    batches = iter(bench.loader())
    return lambda: next(batches)


def _signsgd(bench: Bench) -> Work:
    generator = torch.Generator().manual_seed(0)
    embedding = CastedSparseEmbedding(SIGNSGD_TABLE, SIGNSGD_DIM, SIGNSGD_ROWS, init_std=0.02, cast_to=torch.float32)
    optimizer = SparseEmbeddingSignSGD(embedding, lr=1e-2, weight_decay=0.1)
    embedding.local_ids.copy_(torch.randint(0, SIGNSGD_TABLE, (SIGNSGD_ROWS,), generator=generator))
    embedding.local_weights.grad = torch.randn(SIGNSGD_ROWS, SIGNSGD_DIM, generator=generator)
    return optimizer.step


def _signsgd_without_sync(bench: Bench) -> Work:
    """The GPU form of the same update (fixed-size tensors, no `unique`), run on the CPU."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(SIGNSGD_TABLE, SIGNSGD_DIM, generator=generator) * 0.02
    ids = torch.randint(0, SIGNSGD_TABLE, (SIGNSGD_ROWS,), generator=generator)
    grad = torch.randn(SIGNSGD_ROWS, SIGNSGD_DIM, generator=generator)
    return lambda: signsgd_update_without_sync(grad, ids, weights, 1e-2, 0.1)


def _hybrid_step(bench: Bench) -> Work:
    config = HybridConfig(d_h=64, num_heads=4, H_layers=1, L_layers=1)
    return cached_step(tiny_backbone(vocab_size=HYBRID_VOCAB), config, batch_size=BATCH).run


def _calibration(bench: Bench) -> Work:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(128, 128, generator=generator)
    activations = torch.randn(1024, 1024, generator=generator)  # 4 MiB: past the L2 cache
    small = torch.zeros(8)

    def kernel() -> None:
        product = matrix
        for _ in range(8):  # compute-bound: 8 small GEMMs
            product = torch.tanh(product @ matrix)
        torch.sigmoid(activations).mul_(activations).add_(1.0)  # memory-bound elementwise
        for _ in range(32):  # dispatcher-bound: tiny ops, as in the optimizer and ACT bookkeeping
            small.add_(1.0)

    return kernel


WORKLOADS = (
    Workload("train_step", "one ACT segment: forward + stablemax/Q losses + backward + SignSGD/AdamW", _train_step),
    Workload("eval_rollout", f"inference rollout of halt_max_steps={ARCH.halt_max_steps} segments", _eval_rollout),
    Workload("loss", f"stablemax cross-entropy forward + backward, {LOSS_BATCH}x81x11 logits", _loss),
    Workload("loader", f"next train batch of {BATCH} from the memory-mapped official layout", _loader),
    Workload("signsgd", f"SignSGD sparse update of {SIGNSGD_ROWS} rows of {SIGNSGD_DIM} in a {SIGNSGD_TABLE}-row table", _signsgd),
    Workload("signsgd_without_sync", f"the same update in its GPU form (no unique), {SIGNSGD_ROWS} rows", _signsgd_without_sync),
    Workload("hybrid_step", f"hybrid: cached-state HRM-controller step (3 segments, GRB, LM head of {HYBRID_VOCAB} rows, AdamW)", _hybrid_step),
)
CALIBRATION = Workload("calibration", "fixed matmul + elementwise + small-op mix (no project code)", _calibration)
