"""Maze data: generator, shortest-path checks, official CSV IO, path metrics and the official-layout builder.

Follows the official builder (sapientinc/HRM dataset/build_maze_dataset.py): CSV rows
`source,question,answer,rating` hold 30x30 grids as 900-character row-major strings over "# SGo"
('#' wall, ' ' free, 'S' start, 'G' goal, 'o' path cell, answer only). Tokens = index in CHARSET + 1,
0 = pad. Each CSV row is one puzzle; with `aug` a train maze and its 7 other dihedral images are the
puzzles of one group. Offline, the CSVs come from our generator (a labelled stand-in for Maze-Hard).

    python -m puzzle_hrm.data.maze --source generate --output-dir datasets/maze-30x30-hard-gen --aug
"""

import logging
from collections import deque
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from puzzle_hrm.data import official_csv
from puzzle_hrm.data.augment import dihedral_transform
from puzzle_hrm.data.format import DatasetFormatError
from puzzle_hrm.data.official_csv import CSV_HEADER, SPLITS, OfficialTable, Staged  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

CHARSET = "# SGo"
WALL, FREE, START, GOAL, PATH = range(1, len(CHARSET) + 1)  # tokens; 0 = pad
SIDE = 30
SEQ_LEN = SIDE * SIDE
NUM_DIHEDRAL = 8
RATING_DEFINITION = "shortest-path length in moves from S to G (= number of 'o' cells + 1)"
_W = SIDE + 2  # row stride of a grid padded with one ring of walls (flat indices need no bounds checks)
_CHAR_TOKEN = np.zeros(256, np.uint8)  # ASCII code -> token, 0 = not in CHARSET
_CHAR_TOKEN[np.frombuffer(CHARSET.encode(), np.uint8)] = np.arange(1, len(CHARSET) + 1)
_TOKEN_CHAR = np.frombuffer(b"?" + CHARSET.encode(), np.uint8)  # token -> ASCII code


@dataclass
class MazeTable(OfficialTable):
    """Rows of an official Maze CSV; grids are (N, 30, 30) uint8 tokens; rating: see RATING_DEFINITION
    for generated CSVs."""


# ----------------------------------------------------------------------------- paths


def _flat_padded(mask: np.ndarray) -> np.ndarray:
    """A (30, 30) bool mask as a flat (32*32,) array with a False ring, so neighbours are i±1, i±_W."""
    return np.pad(mask, 1).ravel()


def _flat_index(grid: np.ndarray, token: int) -> int:
    r, c = np.argwhere(grid == token)[0]
    return int((r + 1) * _W + c + 1)


def bfs_distances(free: np.ndarray, start: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first search over 4-connected `free` cells of a (30, 30) grid: (dist, parent), both (30, 30);
    dist -1 where unreachable, parent = flat row-major index of the previous cell (-1 at start/unreached)."""
    open_ = _flat_padded(free)
    dist = np.full(_W * _W, -1, np.int32)
    parent = np.full(_W * _W, -1, np.int32)
    first = (start[0] + 1) * _W + start[1] + 1
    dist[first] = 0
    queue = deque([first])
    while queue:
        i = queue.popleft()
        for j in (i - _W, i + 1, i + _W, i - 1):
            if open_[j] and dist[j] < 0:
                dist[j], parent[j] = dist[i] + 1, i
                queue.append(j)
    rows, cols = np.divmod(parent, _W)
    parent = np.where(parent >= 0, (rows - 1) * SIDE + cols - 1, -1)
    return dist.reshape(_W, _W)[1:-1, 1:-1], parent.reshape(_W, _W)[1:-1, 1:-1]


def chain_length(question: np.ndarray, path: np.ndarray) -> int | None:
    """Moves from S to G if the cells `path` (bool (30, 30)) plus S and G form one simple 4-connected
    chain through cells that are free in `question` (tokens), else None. The chain must be induced
    (no two non-consecutive cells adjacent); every shortest path is, since a chord would shorten it."""
    if (path & (question != FREE)).any():
        return None
    cells = path | (question == START) | (question == GOAL)
    flat = _flat_padded(cells)
    padded = flat.reshape(_W, _W)
    degree = padded[:-2, 1:-1].astype(np.int8) + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    expected = np.where(path, 2, 0) + np.where(question == START, 1, 0) + np.where(question == GOAL, 1, 0)
    if not np.array_equal(np.where(cells, degree, 0), expected):
        return None
    # degrees 1 at S and G, 2 elsewhere: walking from S must end at G; the chain is whole iff it visits all cells
    prev, cur, goal, moves = -1, _flat_index(question, START), _flat_index(question, GOAL), 0
    while cur != goal:
        prev, cur = cur, next(j for j in (cur - _W, cur + 1, cur + _W, cur - 1) if flat[j] and j != prev)
        moves += 1
    return moves if moves + 1 == int(cells.sum()) else None


def path_metrics(inputs: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> dict:
    """Exact match and valid-path rate of (N, 900) token arrays.

    exact: prediction == label on every cell. valid path: the predicted 'o' cells together with the
    input's S and G form a simple S->G path through cells free in the input, as short as the label's
    path (so another optimal path counts). Cells other than 'o' in the prediction are not checked.
    """
    inputs, predictions, labels = (np.asarray(a).reshape(-1, SIDE, SIDE) for a in (inputs, predictions, labels))
    exact = (predictions == labels).all(axis=(1, 2))
    optimal = (labels == PATH).sum(axis=(1, 2)) + 1
    valid = np.array(
        [chain_length(x, p == PATH) == n for x, p, n in zip(inputs, predictions, optimal)], dtype=bool
    )
    count = len(inputs)
    return {
        "count": count,
        "exact": int(exact.sum()),
        "valid_path": int(valid.sum()),
        "exact_accuracy": float(exact.mean()) if count else 0.0,
        "valid_path_rate": float(valid.mean()) if count else 0.0,
    }


# ----------------------------------------------------------------------------- generator


def carve_maze(rng: np.random.Generator, loop_fraction: float = 0.0) -> np.ndarray:
    """(30, 30) bool free-cell mask: a randomized depth-first-search maze on the 14x14 lattice of odd
    cells (border, and row/column 28, stay walls), then `loop_fraction` of the remaining walls between
    two lattice cells knocked out so that several routes exist."""
    n = (SIDE - 1) // 2  # 14 lattice cells per side, at grid coordinates 1, 3, .., 27
    free = np.zeros((SIDE, SIDE), bool)
    free[1 : 2 * n : 2, 1 : 2 * n : 2] = True
    visited = np.zeros((n, n), bool)
    start = (int(rng.integers(n)), int(rng.integers(n)))
    visited[start] = True
    stack = [start]
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1))
                   if 0 <= r + dr < n and 0 <= c + dc < n and not visited[r + dr, c + dc]]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        free[r + nr + 1, c + nc + 1] = True  # the wall between (2r+1, 2c+1) and (2nr+1, 2nc+1)
        visited[nr, nc] = True
        stack.append((nr, nc))
    if loop_fraction > 0:
        between = np.zeros((SIDE, SIDE), bool)  # walls separating two lattice cells
        between[1 : 2 * n : 2, 2 : 2 * n - 1 : 2] = True
        between[2 : 2 * n - 1 : 2, 1 : 2 * n : 2] = True
        walls = np.flatnonzero(between & ~free)
        knock = rng.choice(walls, size=round(loop_fraction * len(walls)), replace=False)
        free.flat[knock] = True
    return free


def generate_maze(
    rng: np.random.Generator, min_path_length: int, loop_fraction: float = 0.0
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(question, answer, shortest-path length) token grids, or None if this maze has no pair of cells
    that far apart. S is a uniform free cell; G uniform among free cells >= min_path_length moves from it."""
    free = carve_maze(rng, loop_fraction)
    cells = np.argwhere(free)
    s = tuple(int(v) for v in cells[rng.integers(len(cells))])
    dist, parent = bfs_distances(free, s)
    far = np.argwhere(dist >= min_path_length)
    if not len(far):
        return None
    g = tuple(int(v) for v in far[rng.integers(len(far))])
    question = np.where(free, FREE, WALL).astype(np.uint8)
    question[s], question[g] = START, GOAL
    answer = question.copy()
    i = parent[g]
    while i != s[0] * SIDE + s[1]:
        answer.flat[i] = PATH
        i = parent.flat[i]
    return question, answer, int(dist[g])


def generate_table(
    count: int, rng: np.random.Generator, min_path_length: int, loop_fraction: float = 0.0
) -> MazeTable:
    """`count` distinct mazes whose shortest S->G path has >= min_path_length moves, by rejection."""
    max_attempts = 100 * count + 100
    rows, seen = [], set()
    for _ in range(max_attempts):
        if len(rows) == count:
            break
        maze = generate_maze(rng, min_path_length, loop_fraction)
        if maze is None or maze[0].tobytes() in seen:
            continue
        seen.add(maze[0].tobytes())
        rows.append(maze)
    if len(rows) < count:
        raise RuntimeError(f"generated {len(rows)}/{count} mazes in {max_attempts} attempts: lower min_path_length")
    return MazeTable(
        ["generated"] * count,
        np.array([r[0] for r in rows], np.uint8).reshape(count, SIDE, SIDE),
        np.array([r[1] for r in rows], np.uint8).reshape(count, SIDE, SIDE),
        np.array([r[2] for r in rows], np.int64),
    )


# ----------------------------------------------------------------------------- official CSV IO


def _grid_strings(grids: np.ndarray) -> list[str]:
    return [_TOKEN_CHAR[g.reshape(-1)].tobytes().decode() for g in grids]


def _decode(path: Path, column: str, strings: list[str], allowed: str) -> np.ndarray:
    """(N, 30, 30) uint8 tokens from 900-character strings over `allowed`."""
    codes = np.frombuffer("".join(strings).encode("ascii", errors="replace"), np.uint8).reshape(len(strings), SEQ_LEN)
    tokens = _CHAR_TOKEN[codes]
    bad = ~np.isin(codes, np.frombuffer(allowed.encode(), np.uint8))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        char = chr(codes[row, col])
        raise DatasetFormatError(f"{path}: row {row + 1}: {column} has character {char!r} at position {col}")
    return tokens.reshape(len(strings), SIDE, SIDE)


def _first_invalid_row(question: np.ndarray, answer: np.ndarray) -> tuple[int, str] | None:
    """(0-based row, problem) of the first maze that breaks the official answer rules."""
    checks = (
        ((question == START).sum(axis=(1, 2)) != 1, "question must have exactly one 'S'"),
        ((question == GOAL).sum(axis=(1, 2)) != 1, "question must have exactly one 'G'"),
        (((answer != PATH) & (answer != question)).any(axis=(1, 2)), "answer walls/S/G differ from the question"),
    )
    for bad, problem in checks:
        if bad.any():
            return int(np.argmax(bad)), problem
    for row, (q, a) in enumerate(zip(question, answer)):
        if chain_length(q, a == PATH) is None:
            return row, "answer 'o' cells are not a connected S->G path through free cells"
    return None


def read_csv(path: str | Path) -> MazeTable:
    """Read and validate an official Maze CSV; errors name the file and the 1-based data row."""
    path = Path(path)
    sources, questions, answers, ratings = official_csv.read_rows(
        path, SEQ_LEN, lambda rating: int(float(rating)), "a number")  # tolerate "123.0"
    question = _decode(path, "question", questions, CHARSET[:4])
    answer = _decode(path, "answer", answers, CHARSET)
    if (invalid := _first_invalid_row(question, answer)) is not None:
        raise DatasetFormatError(f"{path}: row {invalid[0] + 1}: {invalid[1]}")
    logger.info("read %d rows from %s", len(sources), path)
    return MazeTable(sources, question, answer, np.array(ratings, np.int64))


def write_csv(path: str | Path, table: MazeTable) -> None:
    """Official layout, written atomically."""
    official_csv.write_table(path, table, _grid_strings)


# ----------------------------------------------------------------------------- builder


@dataclass
class MazeBuildConfig:
    """Options of the official builder (first four) plus our generator's."""

    source: str = "hf://sapientinc/maze-30x30-hard-1k"  # "hf://<repo>", a folder of train/test.csv, "generate"
    output_dir: str = "datasets/maze-30x30-hard-1k"
    subsample_size: int | None = None  # train mazes kept, drawn uniformly without replacement
    aug: bool = False  # train: each maze plus its 7 other dihedral images, one group (test: never)
    seed: int = 0
    # source="generate"
    num_train: int = 1000
    num_test: int = 1000
    min_path_length: int = 110  # "hard": keep mazes whose shortest S->G path has >= this many moves
    # share of the perfect maze's remaining inner walls knocked out (0: one route only); with 110, 0.02 keeps
    # ~85% of mazes (~1 s per 1000), 0.1 only ~8% (and 110 is then near the longest path on offer)
    loop_fraction: float = 0.02

    def __post_init__(self):
        if not 0 <= self.loop_fraction <= 1 or self.min_path_length < 1:
            raise ValueError(f"need 0 <= loop_fraction <= 1, min_path_length >= 1; got {self.loop_fraction}, "
                             f"{self.min_path_length}")


def _generated_tables(config: MazeBuildConfig, rng: np.random.Generator) -> Staged:
    table = generate_table(config.num_train + config.num_test, rng, config.min_path_length, config.loop_fraction)
    provenance = {
        "source": "generate",
        "files": [],
        "stand_in": True,
        "note": (
            "Generated stand-in for Maze-Hard (sapientinc/maze-30x30-hard-1k is not reachable offline): "
            "randomized-DFS maze on the odd-cell lattice with loop_fraction of inner walls removed, S uniform, "
            "G uniform among cells >= min_path_length moves away, answer = one BFS shortest path."
        ),
        "rating": RATING_DEFINITION,
        "generator_params": {"min_path_length": config.min_path_length, "loop_fraction": config.loop_fraction,
                             "seed": config.seed},
    }
    train, test = np.arange(config.num_train), np.arange(config.num_train, len(table))
    return {"train": table.subset(train), "test": table.subset(test)}, provenance


def _stage_source(config: MazeBuildConfig, rng: np.random.Generator) -> tuple[dict[str, Path], dict]:
    """CSV file of each split plus what is known of their origin; generated tables are first written
    as official-layout CSVs under <output_dir>/raw/ (see official_csv.stage_source)."""
    generators = {"generate": partial(_generated_tables, config, rng)}
    return official_csv.stage_source(config.source, config.output_dir, generators, write_csv,
                                     hub_rating="official CSV rating column, as published", official_name="Maze-Hard")


def _examples(table: MazeTable, aug: bool) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) (E, 900) token rows: each maze followed, with `aug`, by dihedral images 1..7."""
    tids = range(NUM_DIHEDRAL if aug else 1)
    pairs = [(dihedral_transform(q, t), dihedral_transform(a, t)) for q, a in zip(table.question, table.answer)
             for t in tids]
    grids = np.array(pairs, np.uint8).reshape(len(pairs), 2, SEQ_LEN)
    return grids[:, 0], grids[:, 1]


def _build_split(
    config: MazeBuildConfig, split: str, table: MazeTable, rng: np.random.Generator, provenance: dict
) -> Path:
    """The official convert_subset: subsample (train), augment (train), tokenise, write."""
    counts = {"csv_rows": len(table)}
    table = official_csv.subsample_train(table, split, config.subsample_size, rng, counts)
    per_group = NUM_DIHEDRAL if config.aug and split == "train" else 1
    inputs, labels = _examples(table, per_group > 1)
    provenance = {**provenance, "generator": "puzzle_hrm.data.maze", "params": asdict(config), "counts": counts}
    vocab_size = len(CHARSET) + 1  # pad + "# SGo"
    return official_csv.write_official_split(config.output_dir, split, inputs, labels, per_group, vocab_size,
                                             provenance, logger)


def build(config: MazeBuildConfig) -> Path:
    """Write <output_dir>/{train,test}/ and identifiers.json in the official layout; returns output_dir."""
    return official_csv.build_official(config, _stage_source, read_csv, _build_split)


def main(argv: list[str] | None = None) -> None:
    official_csv.main(MazeBuildConfig, build, argv, __doc__,
                      source_help="hf://<repo>, a folder of train.csv/test.csv, or generate",
                      helps={"aug": "train: add the 7 other dihedral images of each maze"})


if __name__ == "__main__":
    main()
