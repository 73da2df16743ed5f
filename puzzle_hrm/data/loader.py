"""Batches from an official-layout dataset, sampled exactly as the official `PuzzleDataset` does.

Train mode (official `_iter_train` / `_sample_batch`): an *iteration* walks `epochs_per_iter`
shuffled passes over the groups of one set with `rng = Philox(seed + iters)`, `iters` counting
set-iterations from 1. Each group contributes one puzzle drawn uniformly from it, and each puzzle
its examples (without replacement) until the global batch is full; a short final batch is dropped.
Test mode walks every example once, in order, padding the last batch.

Index sampling is kept apart from gathering rows, so a checkpointed position (iteration, batches
already yielded) is resumed by replaying cheap index draws, never the data reads.
"""

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from puzzle_hrm.data.format import IGNORE_LABEL_ID, DatasetMetadata, SetArrays, read_split

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]  # inputs (B, seq_len), labels (B, seq_len), puzzle_identifiers (B,); int32


def examples_per_epoch(metadata: DatasetMetadata) -> float:
    """Expected examples in one epoch: every group once, `mean_puzzle_examples` examples each."""
    return metadata.total_groups * metadata.mean_puzzle_examples


def steps_per_epoch(metadata: DatasetMetadata, global_batch_size: int) -> float:
    return examples_per_epoch(metadata) / global_batch_size


def official_total_steps(metadata: DatasetMetadata, epochs: int, global_batch_size: int) -> int:
    """The official pretrain.py schedule length: int(epochs * total_groups * mean_puzzle_examples / batch)."""
    return int(epochs * steps_per_epoch(metadata, global_batch_size))


def sample_train_batches(
    group_indices: np.ndarray, puzzle_indices: np.ndarray, global_batch_size: int, epochs_per_iter: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Global batches of one train iteration as (example indices, puzzle indices), official order.

    `rng` is consumed exactly as in the official code (permutations, then one `integers` per group),
    so group order and puzzle picks match it draw for draw. The official code picks the examples
    inside a puzzle with the *unseeded global* `np.random.choice`; we use a second seeded stream
    instead, which keeps runs reproducible and leaves `rng` untouched. For one-example puzzles
    (Sudoku, Maze) the batches are identical to the official ones.
    """
    rng = np.random.Generator(np.random.Philox(seed=seed))
    example_rng = np.random.Generator(np.random.Philox(seed=[seed, 1]))
    num_groups = len(group_indices) - 1
    # int32 array, not a Python list (9x smaller): an iteration can span thousands of epochs
    group_order = np.concatenate([rng.permutation(num_groups).astype(np.int32) for _ in range(epochs_per_iter)])
    pos = 0
    while pos < len(group_order):
        examples: list[int] = []
        puzzles: list[int] = []
        while pos < len(group_order) and len(examples) < global_batch_size:
            group = int(group_order[pos])
            pos += 1
            puzzle = int(rng.integers(group_indices[group], group_indices[group + 1]))
            start, end = int(puzzle_indices[puzzle]), int(puzzle_indices[puzzle + 1])
            take = min(end - start, global_batch_size - len(examples))
            # choice(1, 1) is always [0]: skipping the call keeps one-example puzzles (Sudoku, Maze) fast
            picks = [0] if end - start == 1 else example_rng.choice(end - start, take, replace=False).tolist()
            examples += [start + i for i in picks]
            puzzles += [puzzle] * take
        if len(examples) < global_batch_size:
            return  # official: drop the last, short batch
        yield np.array(examples, dtype=np.int64), np.array(puzzles, dtype=np.int32)


class PuzzleLoader:
    """Iterable of (set_name, batch, global_effective_batch_size) over one split of a dataset.

    Train mode iterates forever (one official iteration after another); test mode makes one pass.
    Each rank gets rows [rank * B, (rank + 1) * B) of every global batch, B = global / world_size.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        global_batch_size: int,
        mode: Literal["train", "test"],
        seed: int = 0,
        epochs_per_iter: int = 1,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,  # page-locked tensors for faster host-to-GPU copies (needs CUDA)
    ):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if global_batch_size <= 0 or global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} is not a multiple of world size {world_size}")
        if not 0 <= rank < world_size or epochs_per_iter < 1 or seed < 0:
            raise ValueError(f"need 0 <= rank < world_size, epochs_per_iter >= 1, seed >= 0; got {rank=}, "
                             f"{epochs_per_iter=}, {seed=}")
        self.split, self.mode, self.seed = split, mode, seed
        self.global_batch_size, self.epochs_per_iter = global_batch_size, epochs_per_iter
        self.rank, self.local_batch_size, self.pin_memory = rank, global_batch_size // world_size, pin_memory
        self.metadata, self._data = read_split(data_dir, split, mmap=True)
        logger.info("%s/%s: %d groups, %s examples, %s mode", data_dir, split, self.metadata.total_groups,
                    {name: len(data["inputs"]) for name, data in self._data.items()}, mode)
        self._iters = 0  # official `_iters`: set-iterations started; seeds the sampler with seed + _iters
        self._batches = 0  # batches yielded in set-iteration `_iters` (0: it is finished or not begun)

    # -- position -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The train position; load it into a fresh loader to get exactly the batches that follow."""
        return {"iters": self._iters, "batches": self._batches, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "epochs_per_iter": self.epochs_per_iter}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch_size", "epochs_per_iter"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: checkpoint has {key}={state[key]}, loader has {getattr(self, key)}")
        self._iters, self._batches = state["iters"], state["batches"]

    # -- batches --------------------------------------------------------------------------------

    def _collate(self, inputs: np.ndarray, labels: np.ndarray, identifiers: np.ndarray) -> Batch:
        """int32 tensors; ignore labels -> IGNORE_LABEL_ID; pad a short batch to the local batch size."""
        batch = {"inputs": inputs, "labels": labels, "puzzle_identifiers": identifiers}
        batch = {k: v.astype(np.int32) for k, v in batch.items()}  # a copy: the memory map stays read-only
        if self.metadata.ignore_label_id is not None:
            batch["labels"][batch["labels"] == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        pad = self.local_batch_size - len(identifiers)
        if pad > 0:
            fill = {"inputs": self.metadata.pad_id, "labels": IGNORE_LABEL_ID,
                    "puzzle_identifiers": self.metadata.blank_identifier_id}
            batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1), constant_values=fill[k])
                     for k, v in batch.items()}
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        return {k: v.pin_memory() for k, v in tensors.items()} if self.pin_memory else tensors

    def _gather(self, data: SetArrays, examples: np.ndarray | slice, puzzles: np.ndarray) -> Batch:
        """Read only the batch's rows from the memory-mapped arrays."""
        return self._collate(data["inputs"][examples], data["labels"][examples], data["puzzle_identifiers"][puzzles])

    def iteration(self) -> Iterator[tuple[str, Batch, int]]:
        """One official train iteration over every set, continuing from the current position."""
        sets = self.metadata.sets
        first = (self._iters - 1) % len(sets) if self._batches else self._iters % len(sets)
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        for set_name in sets[first:]:
            if not self._batches:
                self._iters += 1
            data = self._data[set_name]
            stream = sample_train_batches(data["group_indices"], data["puzzle_indices"], self.global_batch_size,
                                          self.epochs_per_iter, self.seed + self._iters)
            stream = itertools.islice(stream, self._batches, None)  # resume: replay index draws only
            batch = next(stream, None)
            while batch is not None:
                following = next(stream, None)  # look ahead so the position marks a finished iteration
                self._batches = 0 if following is None else self._batches + 1
                examples, puzzles = batch
                yield set_name, self._gather(data, examples[lo:hi], puzzles[lo:hi]), self.global_batch_size
                batch = following

    def _iter_test(self) -> Iterator[tuple[str, Batch, int]]:
        for set_name, data in self._data.items():
            total = len(data["inputs"])
            for start in range(0, total, self.global_batch_size):
                end = min(total, start + self.global_batch_size)
                lo = min(end, start + self.rank * self.local_batch_size)
                hi = min(end, lo + self.local_batch_size)
                puzzles = np.searchsorted(data["puzzle_indices"], np.arange(lo, hi), side="right") - 1
                yield set_name, self._gather(data, slice(lo, hi), puzzles), end - start

    def __iter__(self) -> Iterator[tuple[str, Batch, int]]:
        if self.mode == "test":
            yield from self._iter_test()
            return
        while True:
            empty = True
            for item in self.iteration():
                empty = False
                yield item
            if empty:
                raise ValueError(f"{self.split}: an iteration holds no full batch of {self.global_batch_size}; "
                                 "lower global_batch_size or raise epochs_per_iter")
