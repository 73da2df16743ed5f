"""Validity-preserving puzzle augmentations: grid symmetries and Sudoku relabelling.

Every transform is a value that can be applied and inverted, so an augmented prediction can be mapped
back to the original puzzle (as the official ARC evaluator does with its dihedral ids).
"""

from dataclasses import dataclass

import numpy as np

# tid -> tid of the inverse transform (rot90 and rot270 undo each other, the rest are involutions)
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """One of the 8 symmetries of the square, numbered as in the official ARC builder (common.py):
    0 identity, 1 rot90, 2 rot180, 3 rot270 (counter-clockwise), 4 flip left-right, 5 flip up-down,
    6 transpose (main diagonal), 7 anti-transpose (anti-diagonal)."""
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return np.fliplr(grid)
    if tid == 5:
        return np.flipud(grid)
    if tid == 6:
        return grid.T
    if tid == 7:
        return np.rot90(grid, k=2).T  # reflect across the anti-diagonal: (i, j) -> (W-1-j, H-1-i)
    raise ValueError(f"dihedral transform id must be in 0..7, got {tid}")


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])


@dataclass(frozen=True)
class SudokuTransform:
    """A member of the Sudoku symmetry group acting on (n, n) grids with 0 = blank.

    Generalises the official `shuffle_sudoku` (build_sudoku_dataset.py) from 9x9 to n = box*box:
    relabel digits (0 stays 0), optionally transpose, then permute rows within bands and bands,
    and columns within stacks and stacks. Applied alike to puzzle and solution, it keeps a valid
    solution valid and the givens consistent with it.
    """

    digit_map: np.ndarray  # (n+1,) new digit of each old digit; digit_map[0] == 0
    transpose: bool
    row_perm: np.ndarray  # (n,) new row i takes old row row_perm[i]
    col_perm: np.ndarray  # (n,) new column j takes old column col_perm[j]

    def apply(self, grid: np.ndarray) -> np.ndarray:
        x = grid.T if self.transpose else grid
        return self.digit_map[x[np.ix_(self.row_perm, self.col_perm)]]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        inverse_digits = np.empty_like(self.digit_map)
        inverse_digits[self.digit_map] = np.arange(len(self.digit_map), dtype=self.digit_map.dtype)
        x = np.empty_like(grid)
        x[np.ix_(self.row_perm, self.col_perm)] = inverse_digits[grid]
        return x.T if self.transpose else x


def _banded_permutation(rng: np.random.Generator, box: int) -> np.ndarray:
    """Permute the `box` bands, then the `box` lines inside each band (draw order as official)."""
    bands = rng.permutation(box)
    return np.concatenate([b * box + rng.permutation(box) for b in bands])


def random_sudoku_transform(rng: np.random.Generator, box: int = 3) -> SudokuTransform:
    """Draw a transform as the official `shuffle_sudoku` does, from an explicit generator."""
    n = box * box
    digit_map = np.concatenate([[0], rng.permutation(np.arange(1, n + 1))]).astype(np.uint8)
    transpose = bool(rng.random() < 0.5)
    row_perm = _banded_permutation(rng, box)
    col_perm = _banded_permutation(rng, box)
    return SudokuTransform(digit_map, transpose, row_perm, col_perm)
