"""Augmentations: dihedral symmetries and validity-preserving Sudoku transforms."""

import numpy as np
import pytest

from puzzle_hrm.data.augment import (
    DIHEDRAL_INVERSE,
    dihedral_transform,
    inverse_dihedral_transform,
    random_sudoku_transform,
)
from puzzle_hrm.data.sudoku_solver import generate_puzzle

GRID = np.arange(12).reshape(3, 4)  # non-square, all values distinct

EXPECTED = {  # official ids (ARC builder common.py)
    0: GRID,
    1: np.rot90(GRID),
    2: np.rot90(GRID, 2),
    3: np.rot90(GRID, 3),
    4: GRID[:, ::-1],
    5: GRID[::-1, :],
    6: GRID.T,
    7: np.fliplr(np.rot90(GRID)),
}


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_matches_official_ids_and_round_trips(tid):
    out = dihedral_transform(GRID, tid)
    np.testing.assert_array_equal(out, EXPECTED[tid])
    np.testing.assert_array_equal(inverse_dihedral_transform(out, tid), GRID)


def test_dihedral_group_is_complete():
    square = np.arange(9).reshape(3, 3)
    images = {dihedral_transform(square, tid).tobytes() for tid in range(8)}
    assert len(images) == 8
    assert all(DIHEDRAL_INVERSE[DIHEDRAL_INVERSE[t]] == t for t in range(8))
    with pytest.raises(ValueError):
        dihedral_transform(square, 8)


def is_valid_solution(grid: np.ndarray, box: int) -> bool:
    """Independent check: every row, column and box holds 1..n exactly once."""
    n = box * box
    boxes = [grid[r : r + box, c : c + box].ravel() for r in range(0, n, box) for c in range(0, n, box)]
    units = list(grid) + list(grid.T) + boxes
    return all(sorted(u.tolist()) == list(range(1, n + 1)) for u in units)


@pytest.mark.parametrize("box", [2, 3])
def test_sudoku_transform_keeps_puzzles_valid_and_inverts(box):
    rng = np.random.default_rng(box)
    puzzle, solution, _ = generate_puzzle(box, rng, num_blanks=box**4 // 2)
    images = set()
    for _ in range(20):
        t = random_sudoku_transform(rng, box)
        new_puzzle, new_solution = t.apply(puzzle), t.apply(solution)
        assert is_valid_solution(new_solution, box)
        givens = new_puzzle != 0
        np.testing.assert_array_equal(new_puzzle[givens], new_solution[givens])
        assert givens.sum() == (puzzle != 0).sum()
        np.testing.assert_array_equal(t.invert(new_puzzle), puzzle)
        np.testing.assert_array_equal(t.invert(new_solution), solution)
        images.add(new_solution.tobytes())
    assert len(images) > 15  # transforms really vary


def test_sudoku_transform_is_deterministic_and_uses_each_part():
    a, b = (random_sudoku_transform(np.random.default_rng(7)) for _ in range(2))
    for field in ("digit_map", "row_perm", "col_perm"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.transpose == b.transpose
    transforms = [random_sudoku_transform(np.random.default_rng(s)) for s in range(40)]
    assert {t.transpose for t in transforms} == {True, False}
    assert all(t.digit_map[0] == 0 and sorted(t.digit_map[1:]) == list(range(1, 10)) for t in transforms)
    for t in transforms:  # rows stay inside their band, bands move as wholes
        bands = t.row_perm.reshape(3, 3) // 3
        assert (bands == bands[:, :1]).all() and sorted(bands[:, 0]) == [0, 1, 2]
