"""PuzzleLoader: official sampling, padding, rank slicing and exact resume."""

import itertools

import numpy as np
import pytest
import torch

from puzzle_hrm.data.format import IGNORE_LABEL_ID, DatasetMetadata, write_split
from puzzle_hrm.data.loader import PuzzleLoader, official_total_steps, sample_train_batches

VOCAB = 1000


def write_dataset(root, group_puzzle_sizes: list[list[int]], ignore_label_id: int | None = 0, split="train") -> None:
    """Row i of inputs is [group, puzzle, example index, ...]: each batch row says where it came from.
    Puzzle p has identifier p % 5 + 1; labels repeat inputs with column 3 set to 0 (the ignore id)."""
    rows, puzzle_indices, group_indices = [], [0], [0]
    for group, sizes in enumerate(group_puzzle_sizes):
        for size in sizes:
            puzzle = len(puzzle_indices) - 1
            rows += [[group, puzzle, len(rows) + k, 7] for k in range(size)]
            puzzle_indices.append(len(rows))
        group_indices.append(len(puzzle_indices) - 1)
    inputs = np.array(rows, np.int64).reshape(-1, 4)
    labels = inputs.copy()
    labels[:, 3] = 0
    num_puzzles = len(puzzle_indices) - 1
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": (np.arange(num_puzzles) % 5 + 1).astype(np.int32),
        "puzzle_indices": np.array(puzzle_indices, np.int32),
        "group_indices": np.array(group_indices, np.int32),
    }
    metadata = DatasetMetadata(pad_id=0, ignore_label_id=ignore_label_id, blank_identifier_id=0, vocab_size=VOCAB,
                               seq_len=4, num_puzzle_identifiers=6, total_groups=len(group_puzzle_sizes),
                               mean_puzzle_examples=len(rows) / num_puzzles, sets=["all"])
    write_split(root, split, metadata, {"all": arrays})


def take(loader: PuzzleLoader, n: int) -> list[dict[str, torch.Tensor]]:
    return [batch for _, batch, _ in itertools.islice(loader, n)]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("inputs", "labels", "puzzle_identifiers"):
            assert torch.equal(x[key], y[key])


def test_train_batches_take_one_puzzle_per_group_per_epoch(tmp_path):
    write_dataset(tmp_path, [[1, 1, 1]] * 16)  # 16 groups of 3 one-example puzzles
    loader = PuzzleLoader(tmp_path, "train", global_batch_size=4, mode="train", epochs_per_iter=2)
    items = list(loader.iteration())
    assert len(items) == 8  # 2 epochs x 16 groups / 4
    for epoch in (items[:4], items[4:]):
        groups = torch.cat([batch["inputs"][:, 0] for _, batch, _ in epoch])
        assert sorted(groups.tolist()) == list(range(16))  # every group exactly once per epoch
    for set_name, batch, effective in items:
        assert set_name == "all" and effective == 4
        assert batch["inputs"].shape == (4, 4) and batch["inputs"].dtype == torch.int32
        assert torch.equal(batch["puzzle_identifiers"], batch["inputs"][:, 1] % 5 + 1)


def test_train_stream_matches_official_draws(tmp_path):
    """Draw for draw: permutation of groups, then one rng.integers per group, Philox(seed + 1)."""
    sizes = [[1] * (g % 3 + 1) for g in range(12)]
    write_dataset(tmp_path, sizes)
    group_indices = np.cumsum([0] + [len(s) for s in sizes])
    rng = np.random.Generator(np.random.Philox(seed=5 + 1))
    order = rng.permutation(12)
    expected = [rng.integers(group_indices[g], group_indices[g + 1]) for g in order]
    loader = PuzzleLoader(tmp_path, "train", global_batch_size=4, mode="train", seed=5)
    got = torch.cat([batch["inputs"][:, 1] for _, batch, _ in loader.iteration()])
    assert got.tolist() == expected


def test_multi_example_puzzles_fill_batches_without_replacement():
    puzzle_indices = np.array([0, 5, 7, 10], np.int32)  # puzzles of 5, 2 and 3 examples
    group_indices = np.array([0, 1, 2, 3], np.int32)
    batches = list(sample_train_batches(group_indices, puzzle_indices, 4, epochs_per_iter=3, seed=0))
    assert batches and all(len(examples) == 4 for examples, _ in batches)
    for examples, puzzles in batches:
        assert np.all(puzzle_indices[puzzles] <= examples) and np.all(examples < puzzle_indices[puzzles + 1])
        for puzzle in np.unique(puzzles):
            assert len(set(examples[puzzles == puzzle])) == (puzzles == puzzle).sum()


def test_short_last_batch_is_dropped(tmp_path):
    write_dataset(tmp_path, [[1]] * 10)
    loader = PuzzleLoader(tmp_path, "train", global_batch_size=4, mode="train")
    assert len(list(loader.iteration())) == 2


def test_test_mode_covers_every_example_once_with_padding(tmp_path):
    write_dataset(tmp_path, [[2, 1], [3], [1, 1, 2]], split="test")  # 10 examples
    items = list(PuzzleLoader(tmp_path, "test", global_batch_size=4, mode="test"))
    assert [effective for _, _, effective in items] == [4, 4, 2]
    inputs = torch.cat([batch["inputs"] for _, batch, _ in items])
    assert inputs[:10, 2].tolist() == list(range(10))  # in order, once each
    assert torch.equal(torch.cat([b["puzzle_identifiers"] for _, b, _ in items])[:10], inputs[:10, 1] % 5 + 1)
    last = items[-1][1]
    assert torch.all(last["inputs"][2:] == 0)  # pad_id
    assert torch.all(last["labels"][2:] == IGNORE_LABEL_ID)
    assert torch.all(last["puzzle_identifiers"][2:] == 0)  # blank_identifier_id


@pytest.mark.parametrize("ignore_label_id", [0, None])
def test_ignore_label_conversion(tmp_path, ignore_label_id):
    write_dataset(tmp_path, [[1]] * 4, ignore_label_id=ignore_label_id)
    (batch,) = take(PuzzleLoader(tmp_path, "train", global_batch_size=4, mode="train"), 1)
    expected = batch["inputs"].clone()
    expected[:, 3] = 0
    if ignore_label_id == 0:
        expected[expected == 0] = IGNORE_LABEL_ID
    assert torch.equal(batch["labels"], expected)


@pytest.mark.parametrize("mode", ["train", "test"])
def test_rank_slices_concatenate_to_global_batch(tmp_path, mode):
    write_dataset(tmp_path, [[1, 2]] * 9, split=mode)  # 27 examples: test mode ends on a padded batch
    whole = take(PuzzleLoader(tmp_path, mode, 6, mode, seed=3), 10)
    halves = [take(PuzzleLoader(tmp_path, mode, 6, mode, seed=3, rank=r, world_size=2), 10) for r in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == (5 if mode == "test" else 10)
    for i, batch in enumerate(whole):
        for key in batch:
            assert torch.equal(torch.cat([halves[0][i][key], halves[1][i][key]]), batch[key])


@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 9, 13])
def test_resume_yields_identical_following_batches(tmp_path, consumed):
    write_dataset(tmp_path, [[1, 2, 1]] * 10)  # 5 batches of 4 per iteration with epochs_per_iter=2
    reference = PuzzleLoader(tmp_path, "train", 4, "train", seed=11, epochs_per_iter=2)
    stream = iter(reference)
    for _ in range(consumed):
        next(stream)
    state = reference.state_dict()
    expected = [next(stream)[1] for _ in range(7)]

    resumed = PuzzleLoader(tmp_path, "train", 4, "train", seed=11, epochs_per_iter=2)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 7), expected)


def test_resume_rejects_other_batch_settings(tmp_path):
    write_dataset(tmp_path, [[1]] * 8)
    state = PuzzleLoader(tmp_path, "train", 4, "train").state_dict()
    with pytest.raises(ValueError, match="global_batch_size"):
        PuzzleLoader(tmp_path, "train", 2, "train").load_state_dict(state)


def test_seed_controls_the_stream(tmp_path):
    write_dataset(tmp_path, [[1, 1]] * 32)
    runs = {seed: take(PuzzleLoader(tmp_path, "train", 8, "train", seed=seed), 6) for seed in (0, 0, 1)}
    assert_same_batches(runs[0], take(PuzzleLoader(tmp_path, "train", 8, "train", seed=0), 6))
    assert not all(torch.equal(a["inputs"], b["inputs"]) for a, b in zip(runs[0], runs[1]))


def test_iterations_advance_the_seed(tmp_path):
    write_dataset(tmp_path, [[1]] * 8)
    first, second = take(PuzzleLoader(tmp_path, "train", 8, "train"), 2)
    assert sorted(first["inputs"][:, 0].tolist()) == sorted(second["inputs"][:, 0].tolist()) == list(range(8))
    assert not torch.equal(first["inputs"], second["inputs"])  # Philox(seed + 1) vs Philox(seed + 2)


def test_reads_rows_from_memory_map(tmp_path):
    write_dataset(tmp_path, [[1]] * 8)
    loader = PuzzleLoader(tmp_path, "train", 4, "train")
    assert isinstance(loader._data["all"]["inputs"], np.memmap)


def test_configuration_errors(tmp_path):
    write_dataset(tmp_path, [[1]] * 3)
    with pytest.raises(ValueError, match="not a multiple of world size"):
        PuzzleLoader(tmp_path, "train", 5, "train", world_size=2)
    with pytest.raises(ValueError, match="no full batch"):
        next(iter(PuzzleLoader(tmp_path, "train", 4, "train")))


def test_official_total_steps():
    metadata = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
                               num_puzzle_identifiers=1, total_groups=1000, mean_puzzle_examples=1, sets=["all"])
    assert official_total_steps(metadata, epochs=20000, global_batch_size=384) == 52083
