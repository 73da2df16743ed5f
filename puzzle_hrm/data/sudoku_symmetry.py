"""Sudoku puzzles up to the symmetry group: an invariant key, an exact equivalence test, classes, leaks.

Sudoku-Extreme's card promises train and test "mathematically inequivalent": no test puzzle is a
transform of a training puzzle under digit relabelling, row permutations within bands, band
permutations, the same for columns/stacks, and transposition (the group `augment.SudokuTransform`
draws from; 9! x 2 x 6^8 elements for 9x9). A minimal string over the group would need 3.4 M grid
transforms per puzzle, so instead every puzzle gets a cheap key that the group cannot change (the
sorted multiset of per-given features: its digit's frequency, the givens in its row, column, box, band,
stack, and its digit's count in its band and stack, symmetrised over transposition), and two puzzles with
equal keys are compared exactly: row orders that keep the row given-counts times column orders that keep
the column given-counts must reproduce the other's given pattern, and the digits must map one-to-one.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FEATURE_BITS = 7  # every feature is a count <= 81 < 2**7


@functools.cache
def banded_orders(box: int) -> np.ndarray:
    """(box!^(box+1), n) every order of n lines that permutes bands and lines within bands."""
    perms = list(itertools.permutations(range(box)))
    orders = [
        [band * box + line for band, within in zip(bands, inner) for line in within]
        for bands in perms
        for inner in itertools.product(perms, repeat=box)
    ]
    return np.array(orders, np.int64)


def _box_of(puzzles: np.ndarray) -> int:
    box = int(round(puzzles.shape[-1] ** 0.5))
    if puzzles.ndim < 2 or puzzles.shape[-2:] != (box * box, box * box):
        raise ValueError(f"expected (..., n, n) Sudoku grids with n a square, got shape {puzzles.shape}")
    return box


def _sorted_features(puzzles: np.ndarray, box: int) -> np.ndarray:
    """(N, n*n) per cell one int packing counts no relabelling or line permutation changes (0 for a
    blank): digit frequency, givens in its box, row, column, band, stack, its digit in its band, stack."""
    n, count = box * box, len(puzzles)
    cells = (count, box, box, box, box)  # (N, band, row in band, stack, column in stack)
    given = (puzzles > 0).reshape(cells)
    onehot = (puzzles[..., None] == np.arange(1, n + 1)).reshape(*cells, n).astype(np.int64)
    row = given.sum((3, 4))[:, :, :, None, None]
    col = given.sum((1, 2))[:, None, None]
    boxes = given.sum((2, 4))[:, :, None, :, None]
    band = given.sum((2, 3, 4))[:, :, None, None, None]
    stack = given.sum((1, 2, 4))[:, None, None, :, None]
    freq = (onehot * onehot.sum((1, 2, 3, 4))[:, None, None, None, None]).sum(-1)
    same_band = (onehot * onehot.sum((2, 3, 4))[:, :, None, None, None]).sum(-1)
    same_stack = (onehot * onehot.sum((1, 2, 4))[:, None, None, :, None]).sum(-1)
    packed = np.zeros(cells, np.int64)
    for i, feature in enumerate((freq, boxes, row, col, band, stack, same_band, same_stack)):
        packed += np.broadcast_to(feature, cells).astype(np.int64) << (_FEATURE_BITS * i)
    return np.sort((packed * given).reshape(count, n * n), axis=1)


def invariant_keys(puzzles: np.ndarray, chunk: int = 4096) -> list[bytes]:
    """A key per (N, n, n) puzzle (0 = blank) that every group element keeps: the smaller (in
    lexicographic order) of the puzzle's and its transpose's sorted cell features. Equivalent puzzles
    share a key; puzzles sharing a key need `equivalent` to tell."""
    puzzles = np.asarray(puzzles)
    box = _box_of(puzzles)
    keys = []
    for start in range(0, len(puzzles), chunk):
        part = puzzles[start : start + chunk]
        a, b = _sorted_features(part, box), _sorted_features(part.transpose(0, 2, 1), box)
        differ = a != b
        first = differ.argmax(1)
        rows = np.arange(len(part))
        take_b = differ.any(1) & (b[rows, first] < a[rows, first])
        keys.extend(row.tobytes() for row in np.where(take_b[:, None], b, a))
    return keys


def _digits_biject(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """(S,) whether each row of x (S, g) maps onto the same row of y (S, g) by one digit bijection."""
    rows = np.arange(len(x))[:, None]
    forward, backward = np.zeros((len(x), n + 1), np.int64), np.zeros((len(x), n + 1), np.int64)
    forward[rows, x], backward[rows, y] = y, x
    return ((forward[rows, x] == y) & (backward[rows, y] == x)).all(1)


def equivalent(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> bool:
    """Exactly: is some group element g with g(a) == b? Searches (transpose, row order, column order)
    with pruning by line given-counts, then needs a one-to-one digit map on the givens."""
    a, b = np.asarray(a), np.asarray(b)
    box = _box_of(a)
    n, orders = box * box, banded_orders(box)
    b_given = b > 0
    if a.shape != b.shape or (a > 0).sum() != b_given.sum():
        return False
    b_digits = b[b_given]
    for x in (a, a.T):
        given = x > 0
        rows = orders[(given.sum(1)[orders] == b_given.sum(1)).all(1)]
        cols = orders[(given.sum(0)[orders] == b_given.sum(0)).all(1)]
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            masks = given[r[:, None, :, None], cols[None, :, None, :]]  # (R, C, n, n)
            hits = np.argwhere((masks == b_given).all((2, 3)))
            if not len(hits):
                continue
            grids = x[r[hits[:, 0], :, None], cols[hits[:, 1], None, :]]  # (S, n, n)
            if _digits_biject(grids[:, b_given], np.broadcast_to(b_digits, (len(hits), len(b_digits))), n).any():
                return True
    return False


def symmetry_classes(puzzles: np.ndarray) -> np.ndarray:
    """(N,) class id per puzzle: equal ids iff equivalent (ids number classes by first member)."""
    keys = invariant_keys(puzzles)
    buckets: dict[bytes, list[int]] = {}  # key -> first member of each class with that key
    class_of = np.empty(len(keys), np.int64)
    for i, key in enumerate(keys):
        members = buckets.setdefault(key, [])
        match = next((m for m in members if equivalent(puzzles[m], puzzles[i])), None)
        if match is None:  # a new class, represented by its first member
            members.append(i)
            match = i
        class_of[i] = match
    _, ids = np.unique(class_of, return_inverse=True)
    return ids


def cross_leaks(train: np.ndarray, test: np.ndarray) -> list[tuple[int, int]]:
    """(train row, test row) pairs that are transforms of each other (each test row with its first match)."""
    train_keys: dict[bytes, list[int]] = {}
    for i, key in enumerate(invariant_keys(train)):
        train_keys.setdefault(key, []).append(i)
    leaks = []
    for j, key in enumerate(invariant_keys(test)):
        match = next((i for i in train_keys.get(key, ()) if equivalent(train[i], test[j])), None)
        if match is not None:
            leaks.append((match, j))
    return leaks


def main(argv: Sequence[str] | None = None) -> None:
    """python -m puzzle_hrm.data.sudoku_symmetry FOLDER: count test.csv puzzles equivalent to a train.csv one."""
    import argparse

    from puzzle_hrm.data.sudoku import read_csv

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder", help="a folder with the official train.csv and test.csv")
    folder = Path(p.parse_args(argv).folder)
    train, test = (read_csv(folder / f"{split}.csv") for split in ("train", "test"))
    leaks = cross_leaks(train.question, test.question)
    print(f"{folder}: {len(leaks)} of {len(test)} test puzzles are symmetry transforms of one of the {len(train)} "
          f"training puzzles" + (f"; first (train row, test row), 1-based: {[(i + 1, j + 1) for i, j in leaks[:5]]}" if leaks else ""))


if __name__ == "__main__":
    main()
