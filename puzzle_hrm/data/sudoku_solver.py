"""Exact n×n Sudoku solver (uniqueness check + difficulty rating) and a unique-solution generator.

The rating is the number of guesses our search undid (see RATING_DEFINITION in sudoku.py); the
generator blanks cells of a random full grid while the solution stays unique.
"""

import functools
import random
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- solver
# Cells hold candidate bitmasks: bit d-1 set <=> digit d still possible; pure Python ints beat numpy at
# this size. Measured on one CPU core, full search for up to 2 solutions, first 500 puzzles of each
# tdoku list: 17-clue 1.0 ms mean; magictour top1465 6 ms mean / 107 ms max; forum_hardest_1905_11+
# 12 ms mean; forum_hardest_1106 27 ms mean / 166 ms max. All 99,633 distinct puzzles of the four
# default lists: 12 minutes.


@dataclass(frozen=True)
class _Geometry:
    n: int
    units: tuple[tuple[int, ...], ...]  # rows, columns, boxes (cell indices)
    peers: tuple[tuple[int, ...], ...]  # cells sharing a unit with each cell
    full: int  # all n candidate bits


@functools.cache
def geometry(box: int) -> _Geometry:
    if box not in (2, 3):
        raise ValueError(f"box must be 2 (4x4) or 3 (9x9), got {box}")
    n = box * box
    rows = [[r * n + c for c in range(n)] for r in range(n)]
    cols = [[r * n + c for r in range(n)] for c in range(n)]
    corners = [(r, c) for r in range(0, n, box) for c in range(0, n, box)]
    boxes = [[(r + i) * n + c + j for i in range(box) for j in range(box)] for r, c in corners]
    units = tuple(tuple(u) for u in rows + cols + boxes)
    peers = tuple(tuple(sorted({p for u in units if c in u for p in u} - {c})) for c in range(n * n))
    return _Geometry(n, units, peers, (1 << n) - 1)


def _propagate(cand: list[int], todo: list[int], geo: _Geometry) -> bool:
    """Naked singles (a solved cell's digit leaves its peers) and hidden singles (a digit with one
    place left in a unit goes there), to a fixed point. Returns False on a contradiction."""
    while True:
        while todo:
            cell = todo.pop()
            m = cand[cell]
            for p in geo.peers[cell]:
                pm = cand[p]
                if pm & m:
                    pm ^= m
                    if not pm:
                        return False
                    cand[p] = pm
                    if not pm & (pm - 1):
                        todo.append(p)
        for unit in geo.units:
            once = twice = 0  # digits seen at least once / at least twice in this unit
            for c in unit:
                twice |= once & cand[c]
                once |= cand[c]
            if once != geo.full:
                return False  # some digit has no place left
            only = once & ~twice  # digits with exactly one place in this unit
            for c in unit if only else ():
                m = cand[c] & only
                if m and m != cand[c]:
                    if m & (m - 1):
                        return False  # one cell is the only place for two digits
                    cand[c] = m
                    todo.append(c)
        if not todo:
            return True


class _Search:
    """Depth-first search with minimum-remaining-values branching over propagated candidates."""

    def __init__(self, geo: _Geometry, max_solutions: int, rnd: random.Random | None):
        self.geo, self.max_solutions, self.rnd = geo, max_solutions, rnd
        self.solutions: list[list[int]] = []
        self.backtracks = 0

    def run(self, cand: list[int]) -> None:
        cell, fewest = -1, self.geo.n + 1
        for c, m in enumerate(cand):
            if m & (m - 1) and m.bit_count() < fewest:
                cell, fewest = c, m.bit_count()
                if fewest == 2:
                    break
        if cell < 0:
            self.solutions.append(cand)
            return
        guesses = [1 << d for d in range(self.geo.n) if cand[cell] >> d & 1]
        if self.rnd is not None:
            self.rnd.shuffle(guesses)
        for bit in guesses:
            child = cand.copy()
            child[cell] = bit
            if not _propagate(child, [cell], self.geo):
                self.backtracks += 1
                continue
            self.run(child)
            if len(self.solutions) >= self.max_solutions:
                return


@dataclass
class SolveResult:
    solution: np.ndarray | None  # (n, n) uint8, the first solution found
    num_solutions: int  # capped at max_solutions (2: "two or more")
    backtracks: int  # our difficulty rating, see RATING_DEFINITION

    @property
    def unique(self) -> bool:
        return self.num_solutions == 1


def solve(
    puzzle: np.ndarray, box: int = 3, max_solutions: int = 2, rng: np.random.Generator | None = None
) -> SolveResult:
    """Exact solve of an n x n puzzle (0 = blank). With max_solutions=2 it also proves uniqueness;
    `rng` randomises the digit order of guesses (used to draw random full grids). Hard 9x9 puzzles
    take about 5-30 ms on one core (measurements above)."""
    geo = geometry(box)
    cells = np.asarray(puzzle).reshape(-1).tolist()
    if len(cells) != geo.n**2 or not all(0 <= d <= geo.n for d in cells):
        raise ValueError(f"expected {geo.n ** 2} cells with values 0..{geo.n}")
    cand = [1 << (d - 1) if d else geo.full for d in cells]
    rnd = random.Random(int(rng.integers(2**63))) if rng is not None else None
    search = _Search(geo, max_solutions, rnd)
    if _propagate(cand, [c for c, d in enumerate(cells) if d], geo):
        search.run(cand)
    solution = None
    if search.solutions:
        solution = np.array([m.bit_length() for m in search.solutions[0]], dtype=np.uint8).reshape(geo.n, geo.n)
    return SolveResult(solution, len(search.solutions), search.backtracks)


# ----------------------------------------------------------------------------- generator


def generate_puzzle(
    box: int, rng: np.random.Generator, num_blanks: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Random full grid, then blank cells in random order whenever the solution stays unique.

    Stops at `num_blanks` blanks (None: when no cell can go, i.e. a minimal puzzle); returns fewer
    blanks if the puzzle became minimal first. Returns (puzzle, solution, rating).
    """
    n = box * box
    solution = solve(np.zeros((n, n), np.uint8), box, max_solutions=1, rng=rng).solution
    puzzle = solution.reshape(-1).copy()
    target = n * n if num_blanks is None else num_blanks
    blanks, rating = 0, 0
    for cell in rng.permutation(n * n):
        if blanks == target:
            break
        digit, puzzle[cell] = puzzle[cell], 0
        result = solve(puzzle, box)
        if result.unique:
            blanks, rating = blanks + 1, result.backtracks
        else:
            puzzle[cell] = digit
    return puzzle.reshape(n, n), solution, rating
