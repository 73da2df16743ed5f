"""Sudoku up to symmetry: the invariant key, the exact equivalence test, classes, leaks; the stand-in."""

import json
from pathlib import Path

import numpy as np
import pytest

from puzzle_hrm.data import sudoku_standin
from puzzle_hrm.data.augment import random_sudoku_transform
from puzzle_hrm.data.sudoku import DEFAULT_TDOKU_ARCHIVE, _decode, read_csv, read_tdoku
from puzzle_hrm.data.sudoku_solver import solve
from puzzle_hrm.data.sudoku_symmetry import banded_orders, cross_leaks, equivalent, invariant_keys, symmetry_classes

from .test_sudoku import WIKI_PUZZLE, grid

needs_tdoku = pytest.mark.skipif(not DEFAULT_TDOKU_ARCHIVE.exists(), reason="shared tdoku archive not present")


@pytest.fixture(scope="module")
def real_puzzles() -> np.ndarray:
    """200 real 17-clue and 200 real hard puzzles."""
    if not DEFAULT_TDOKU_ARCHIVE.exists():
        pytest.skip("shared tdoku archive not present")
    entries = read_tdoku(DEFAULT_TDOKU_ARCHIVE, ("puzzles2_17_clue", "puzzles5_forum_hardest_1905_11+"))
    strings = [p for _, p in entries[:200]] + [p for _, p in entries[-200:]]
    return _decode(DEFAULT_TDOKU_ARCHIVE, "puzzle", strings, 9, blanks=True)


def test_banded_orders_are_the_line_part_of_the_group():
    orders = banded_orders(3)
    assert orders.shape == (6**4, 9) and len({tuple(o) for o in orders}) == 6**4
    assert all(sorted(o[3 * b : 3 * b + 3] // 3) == [o[3 * b] // 3] * 3 for o in orders[:50] for b in range(3))


@needs_tdoku
def test_key_and_equivalence_hold_under_random_group_elements(real_puzzles):
    rng = np.random.default_rng(0)
    keys = invariant_keys(real_puzzles)
    for i in rng.choice(len(real_puzzles), 40, replace=False):
        moved = random_sudoku_transform(rng).apply(real_puzzles[i])
        assert invariant_keys(moved[None])[0] == keys[i]
        assert equivalent(real_puzzles[i], moved) and equivalent(moved, real_puzzles[i])


@needs_tdoku
def test_different_puzzles_are_told_apart(real_puzzles):
    assert symmetry_classes(real_puzzles).max() + 1 == len(real_puzzles)  # the lists hold no transforms
    assert not any(equivalent(real_puzzles[i], real_puzzles[i + 1]) for i in range(0, 60, 2))
    # one given changed to another digit of the puzzle: same given pattern, a different puzzle
    a = grid(WIKI_PUZZLE)
    b = a.copy()
    b[0, 0] = 9 if a[0, 0] != 9 else 8
    assert not equivalent(a, b)


def test_4x4_classes_group_transforms_and_nothing_else():
    rng = np.random.default_rng(1)
    base = np.array([[1, 0, 0, 0], [0, 0, 3, 0], [0, 4, 0, 0], [0, 0, 0, 2]], np.uint8)
    other = np.array([[1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]], np.uint8)
    puzzles = np.stack([base, other] + [random_sudoku_transform(rng, 2).apply(g) for g in (base, other, base)])
    np.testing.assert_array_equal(symmetry_classes(puzzles), [0, 1, 0, 1, 0])


@needs_tdoku
def test_a_transformed_training_puzzle_in_the_test_list_is_caught(real_puzzles):
    rng = np.random.default_rng(2)
    train, test = real_puzzles[:150], real_puzzles[150:].copy()
    test[17] = random_sudoku_transform(rng).apply(train[42])
    test[99] = random_sudoku_transform(rng).apply(train[3])
    assert sorted(cross_leaks(train, test)) == [(3, 99), (42, 17)]
    assert cross_leaks(real_puzzles[:150], real_puzzles[150:]) == []


def test_share_counts_follow_sudoku_extreme():
    assert sudoku_standin.share_counts(4200) == {"easy": 1100, "hard": 3100}
    counts = sudoku_standin.share_counts(5000)
    assert sum(counts.values()) == 5000 and abs(counts["easy"] / 5000 - 1.1 / 4.2) < 1e-3


@needs_tdoku
def test_standin_build_mixes_rates_and_splits_up_to_symmetry(tmp_path):
    config = sudoku_standin.StandinConfig(output_dir=str(tmp_path), num_train=30, num_test=50, seed=3)
    out = sudoku_standin.build(config)
    train, test = read_csv(out / "train.csv"), read_csv(out / "test.csv")
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["stand_in"] and provenance["symmetry_leaks"] == 0
    for table, n in ((train, 30), (test, 50)):
        easy = sum(s in sudoku_standin.EASY_FILES for s in table.source)
        assert len(table) == n and easy == sudoku_standin.share_counts(n)["easy"]
        assert set(table.source) - {*sudoku_standin.EASY_FILES, *sudoku_standin.HARD_FILES} == set()
    for q, a, r in zip(test.question[:10], test.answer[:10], test.rating[:10]):
        result = solve(q)
        assert result.unique and (result.solution == a).all() and result.backtracks == r  # the rating column
    assert cross_leaks(train.question, test.question) == []
    assert provenance["ratings"]["test"]["puzzles"] == 50
    again = tmp_path / "again"
    sudoku_standin.build(sudoku_standin.StandinConfig(output_dir=str(again), num_train=30, num_test=50, seed=3))
    assert (again / "test.csv").read_text() == (out / "test.csv").read_text()  # a seed fixes the build


@pytest.mark.parametrize("folder", ["sudoku-extreme-standin", "sudoku-tdoku-hard"])
def test_committed_sources_have_no_symmetry_leak(folder):
    root = Path(__file__).resolve().parents[2] / "datasets" / "sources" / folder
    train, test = read_csv(root / "train.csv"), read_csv(root / "test.csv")
    assert cross_leaks(train.question, test.question) == []
    if folder == "sudoku-extreme-standin":
        for table in (train, test):
            easy = sum(s in sudoku_standin.EASY_FILES for s in table.source)
            assert easy == sudoku_standin.share_counts(len(table))["easy"]
