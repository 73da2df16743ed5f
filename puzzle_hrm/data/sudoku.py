"""Sudoku data: exact solver/rater, generator, official CSV IO and the official-layout builder.

Follows the official builder (sapientinc/HRM dataset/build_sudoku_dataset.py): CSV rows
`source,question,answer,rating` become one puzzle each (tokens = digit + 1, 0 = pad), the original
and its `num_aug` relabelled copies form one group. Offline, the CSVs can come from the real tdoku
puzzle lists (a labelled stand-in for Sudoku-Extreme) or from our generator.

    python -m puzzle_hrm.data.sudoku --source tdoku --max-puzzles 2000 --output-dir datasets/sudoku-tdoku
"""

import logging
import tarfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from puzzle_hrm.data import official_csv
from puzzle_hrm.data.augment import random_sudoku_transform
from puzzle_hrm.data.format import DatasetFormatError
from puzzle_hrm.data.official_csv import CSV_HEADER, SPLITS, OfficialTable, Staged  # noqa: F401 (re-exported)
from puzzle_hrm.data.sudoku_solver import geometry, generate_puzzle, solve

logger = logging.getLogger(__name__)

_CHECK_ROWS = 1 << 18  # rows per chunk when validating CSV answers
RATING_DEFINITION = (
    "backtracks: guesses that ended in a contradiction while puzzle_hrm.data.sudoku.solve searched for up "
    "to 2 solutions (singles propagation + MRV); analogous to, not identical with, tdoku's backtrack count"
)
# The tdoku lists that are (parts of) official Sudoku-Extreme sources; puzzles7_serg_benchmark is not one.
TDOKU_FILES = (
    "puzzles2_17_clue",
    "puzzles3_magictour_top1465",
    "puzzles5_forum_hardest_1905_11+",
    "puzzles6_forum_hardest_1106",
)
DEFAULT_TDOKU_ARCHIVE = Path(__file__).resolve().parents[2].parent / "shared/data/sudoku_tdoku_subset.tar.gz"

@dataclass
class SudokuTable(OfficialTable):
    """Rows of an official Sudoku CSV as arrays; grids are (N, n, n) uint8 with 0 = blank."""


def generate_table(
    count: int,
    box: int,
    rng: np.random.Generator,
    min_blanks: int = 0,
    max_blanks: int | None = None,
    min_rating: int = 0,
) -> SudokuTable:
    """`count` distinct unique-solution puzzles; blanks uniform in [min_blanks, max_blanks]
    (max_blanks None: minimal puzzles) and rating >= min_rating, by rejection."""
    max_attempts = 100 * count + 100
    rows, seen = [], set()
    with tqdm(total=count, desc="generate sudoku", disable=None) as bar:
        for _ in range(max_attempts):
            if len(rows) == count:
                break
            target = None if max_blanks is None else int(rng.integers(min_blanks, max_blanks + 1))
            puzzle, solution, rating = generate_puzzle(box, rng, target)
            too_few_blanks = (puzzle == 0).sum() < (min_blanks if target is None else target)
            if too_few_blanks or rating < min_rating or puzzle.tobytes() in seen:
                continue
            seen.add(puzzle.tobytes())
            rows.append((puzzle, solution, rating))
            bar.update()
    if len(rows) < count:
        raise RuntimeError(f"generated {len(rows)}/{count} puzzles in {max_attempts} attempts: relax min_rating/blanks")
    n = box * box
    return SudokuTable(
        ["generated"] * count,
        np.array([r[0] for r in rows], np.uint8).reshape(count, n, n),
        np.array([r[1] for r in rows], np.uint8).reshape(count, n, n),
        np.array([r[2] for r in rows], np.int64),
    )


# ----------------------------------------------------------------------------- official CSV IO


def _grid_strings(grids: np.ndarray, blank: str = ".") -> list[str]:
    return [(g.reshape(-1) + ord("0")).tobytes().decode().replace("0", blank) for g in grids]


def _decode(path: Path, column: str, strings: list[str], n: int, blanks: bool) -> np.ndarray:
    """(N, n, n) uint8 from equal-length digit strings; '.'/'0' = blank where `blanks`."""
    codes = np.frombuffer("".join(strings).encode("ascii", errors="replace"), np.uint8).reshape(len(strings), n * n)
    digits = np.where(codes == ord("."), ord("0"), codes).astype(np.int16) - ord("0")
    bad = (digits < (0 if blanks else 1)) | (digits > n) | ((codes == ord(".")) & (not blanks))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        char = chr(codes[row, col])
        raise DatasetFormatError(f"{path}: row {row + 1}: {column} has character {char!r} at position {col}")
    return digits.astype(np.uint8).reshape(len(strings), n, n)


def _first_invalid_row(question: np.ndarray, answer: np.ndarray, box: int) -> tuple[int, str] | None:
    """(0-based row, problem) of the first answer that is not a complete valid Sudoku or whose
    question givens disagree with it; chunked to bound memory on multi-million-row CSVs."""
    n, full = box * box, (1 << box * box) - 1
    for start in range(0, len(answer), _CHECK_ROWS):
        a, q = answer[start : start + _CHECK_ROWS], question[start : start + _CHECK_ROWS]
        bits = np.left_shift(1, a.astype(np.int32) - 1)  # one bit per digit: a unit is valid iff its OR is full
        boxes = bits.reshape(-1, box, box, box, box).transpose(0, 1, 3, 2, 4).reshape(-1, n, n)
        units = ((bits, 2), (bits, 1), (boxes, 2))  # rows, columns, boxes
        unit_ok = [(np.bitwise_or.reduce(u, axis=axis) == full).all(axis=1) for u, axis in units]
        checks = (
            (~np.logical_and.reduce(unit_ok), "answer is not a valid complete Sudoku"),
            (((q != 0) & (q != a)).any(axis=(1, 2)), "question givens disagree with the answer"),
        )
        for bad, problem in checks:
            if bad.any():
                return start + int(np.argmax(bad)), problem
    return None


def read_csv(path: str | Path, box: int = 3, check_unique: bool = False) -> SudokuTable:
    """Read and validate an official Sudoku CSV; errors name the file and the 1-based data row."""
    path, n = Path(path), box * box
    sources, questions, answers, ratings = official_csv.read_rows(path, n * n, int, "an integer")
    question = _decode(path, "question", questions, n, blanks=True)
    answer = _decode(path, "answer", answers, n, blanks=False)
    table = SudokuTable(sources, question, answer, np.array(ratings, np.int64))
    if (invalid := _first_invalid_row(question, answer, box)) is not None:
        raise DatasetFormatError(f"{path}: row {invalid[0] + 1}: {invalid[1]}")
    if check_unique:
        for row, puzzle in enumerate(tqdm(question, desc=f"check unique {path.name}", disable=None), start=1):
            count = solve(puzzle, box).num_solutions
            if count != 1:
                raise DatasetFormatError(f"{path}: row {row}: puzzle has {'no' if count == 0 else 'several'} solutions")
    logger.info("read %d rows from %s", len(table), path)
    return table


def write_csv(path: str | Path, table: SudokuTable) -> None:
    """Official layout, '.' for blanks; written atomically."""
    official_csv.write_table(path, table, _grid_strings)


# ----------------------------------------------------------------------------- offline sources


def _tdoku_texts(archive: Path, files: tuple[str, ...]) -> dict[str, str]:
    """Text of each named list, from the tar archive itself or from a folder it was extracted to."""
    if archive.is_dir():
        found = {p.name: p.read_text() for p in archive.rglob("*") if p.is_file() and p.name in files}
    else:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in files]
            found = {Path(m.name).name: tar.extractfile(m).read().decode() for m in members}
    missing = [name for name in files if name not in found]
    if missing:
        raise DatasetFormatError(f"{archive}: no puzzle list named {missing}")
    return found


def read_tdoku(archive: str | Path, files: tuple[str, ...] = TDOKU_FILES) -> list[tuple[str, str]]:
    """(list name, 81-char puzzle) pairs in file order; '#' lines are comments, '.' or '0' = blank."""
    texts = _tdoku_texts(Path(archive), files)
    entries = []
    for name in files:
        for line_no, line in enumerate(texts[name].splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) != 81 or line.strip(".0123456789"):
                raise DatasetFormatError(f"{archive}:{name}: line {line_no}: not an 81-character puzzle: {line[:90]!r}")
            entries.append((name, line.replace("0", ".")))
    return entries


def _tdoku_tables(config: "SudokuBuildConfig", rng: np.random.Generator) -> Staged:
    """Solve and rate the real tdoku puzzles, then split them into train/test CSV tables."""
    archive = Path(config.tdoku_archive) if config.tdoku_archive else DEFAULT_TDOKU_ARCHIVE
    entries = read_tdoku(archive, config.tdoku_files)
    first_list: dict[str, str] = {}  # puzzle -> the list it first appears in (exact-string dedup)
    for name, puzzle in entries:
        first_list.setdefault(puzzle, name)
    puzzles = list(first_list)
    chosen = [puzzles[i] for i in rng.permutation(len(puzzles))[: config.max_puzzles]]
    questions = _decode(archive, "puzzle", chosen, 9, blanks=True)
    results = [solve(q) for q in tqdm(questions, desc="solve tdoku", disable=None)]
    keep = [i for i, r in enumerate(results) if r.unique]
    dropped = {"duplicates": len(entries) - len(puzzles), "not_unique": len(results) - len(keep)}
    if any(dropped.values()):
        logger.warning("tdoku: dropped %s of %d puzzles read", dropped, len(entries))
    table = SudokuTable([first_list[chosen[i]] for i in keep], questions[keep],
                        np.array([results[i].solution for i in keep], np.uint8).reshape(-1, 9, 9),
                        np.array([results[i].backtracks for i in keep], np.int64))
    num_test = round(config.test_fraction * len(table))
    provenance = {
        "source": f"tdoku:{archive.name}",
        "files": list(config.tdoku_files),
        "stand_in": True,
        "note": (
            "Stand-in for Sudoku-Extreme built from real tdoku puzzle lists (see shared/data/PROVENANCE.md); "
            "the official sources puzzles0_kaggle, puzzles1_unbiased, the full puzzles4_forum_hardest_1905 and "
            "ph_2010 are not available offline. Solutions and ratings are ours; dedup is by exact string, not "
            "up to Sudoku symmetry."
        ),
        "rating": RATING_DEFINITION,
        "dropped": dropped,
    }
    split = {"train": np.arange(num_test, len(table)), "test": np.arange(num_test)}
    return {name: table.subset(idx) for name, idx in split.items()}, provenance


def _generated_tables(config: "SudokuBuildConfig", rng: np.random.Generator) -> Staged:
    count = config.num_train + config.num_test
    table = generate_table(count, config.box, rng, config.min_blanks, config.max_blanks, config.min_rating)
    provenance = {
        "source": "generate",
        "files": [],
        "stand_in": True,
        "note": "Generated by generate_table (random grid, cells blanked while unique); not Sudoku-Extreme.",
        "rating": RATING_DEFINITION,
    }
    split = {"train": np.arange(config.num_train), "test": np.arange(config.num_train, len(table))}
    return {name: table.subset(idx) for name, idx in split.items()}, provenance


# ----------------------------------------------------------------------------- builder


@dataclass
class SudokuBuildConfig:
    """Options of the official builder (first five) plus our offline sources."""

    source: str = "hf://sapientinc/sudoku-extreme"  # "hf://<repo>", a folder of train/test.csv, "tdoku", "generate"
    output_dir: str = "datasets/sudoku-extreme-full"
    subsample_size: int | None = None  # train puzzles kept, drawn uniformly without replacement
    min_difficulty: int | None = None  # keep CSV rows with rating >= this
    num_aug: int = 0  # relabelled copies per train puzzle (test: none)
    seed: int = 0
    box: int = 3  # 3: 9x9, 2: 4x4
    check_unique: bool = False  # solve every CSV row to prove a unique solution (slow for millions)
    # source="tdoku": the real puzzle lists, solved and rated by us
    tdoku_archive: str | None = None  # archive or extracted folder; None: DEFAULT_TDOKU_ARCHIVE
    tdoku_files: tuple[str, ...] = TDOKU_FILES
    max_puzzles: int | None = None  # solve only this many (after dedup and a seeded shuffle)
    test_fraction: float = 0.1
    # source="generate"
    num_train: int = 1000
    num_test: int = 200
    min_blanks: int = 0
    max_blanks: int | None = None  # None: minimal puzzles (blank while unique)
    min_rating: int = 0

    def __post_init__(self):
        geometry(self.box)  # validates box
        self.tdoku_files = tuple(self.tdoku_files)
        if self.source == "tdoku" and self.box != 3:
            raise ValueError("the tdoku lists are 9x9: use box=3")
        if self.num_aug < 0 or not 0 <= self.test_fraction < 1:
            raise ValueError(f"need num_aug >= 0, 0 <= test_fraction < 1; got {self.num_aug}, {self.test_fraction}")
        if self.max_blanks is not None and not 0 <= self.min_blanks <= self.max_blanks <= self.box**4:
            raise ValueError(f"need 0 <= min_blanks <= max_blanks <= {self.box ** 4}")



def _stage_source(config: SudokuBuildConfig, rng: np.random.Generator) -> tuple[dict[str, Path], dict]:
    """CSV file of each split plus what is known of their origin; tdoku/generate tables are first
    written as official-layout CSVs under <output_dir>/raw/ (see official_csv.stage_source)."""
    generators = {"tdoku": partial(_tdoku_tables, config, rng), "generate": partial(_generated_tables, config, rng)}
    return official_csv.stage_source(config.source, config.output_dir, generators, write_csv,
                                     hub_rating="tdoku backtrack count (official CSV column)",
                                     official_name="Sudoku-Extreme")


def _examples(
    table: SudokuTable, num_aug: int, box: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) token rows: each puzzle followed by its `num_aug` relabelled copies."""
    per_group = 1 + num_aug
    grids = np.empty((2, len(table) * per_group, box**2, box**2), np.uint8)
    grids[0, ::per_group], grids[1, ::per_group] = table.question, table.answer
    for i, (question, answer) in enumerate(zip(table.question, table.answer)):
        for k in range(1, per_group):
            transform = random_sudoku_transform(rng, box)
            grids[:, i * per_group + k] = transform.apply(question), transform.apply(answer)
    grids += 1  # tokens: 0 = pad, 1 = blank, 2.. = digits
    return grids[0].reshape(-1, box**4), grids[1].reshape(-1, box**4)


def _build_split(
    config: SudokuBuildConfig, split: str, table: SudokuTable, rng: np.random.Generator, provenance: dict
) -> Path:
    """The official convert_subset: filter, subsample (train), augment (train), tokenise, write."""
    counts = {"csv_rows": len(table)}
    if config.min_difficulty is not None:
        table = table.subset(np.flatnonzero(table.rating >= config.min_difficulty))
        counts["after_min_difficulty"] = len(table)
    table = official_csv.subsample_train(table, split, config.subsample_size, rng, counts)
    if not len(table):
        logger.warning("%s: no puzzles left after filtering (%s)", split, counts)
    num_aug = config.num_aug if split == "train" else 0
    inputs, labels = _examples(table, num_aug, config.box, rng)
    provenance = {**provenance, "generator": "puzzle_hrm.data.sudoku", "params": asdict(config), "counts": counts}
    vocab_size = config.box**2 + 2  # pad, blank, digits 1..n
    return official_csv.write_official_split(config.output_dir, split, inputs, labels, 1 + num_aug, vocab_size,
                                             provenance, logger)


def build(config: SudokuBuildConfig) -> Path:
    """Write <output_dir>/{train,test}/ and identifiers.json in the official layout; returns output_dir."""
    read = partial(read_csv, box=config.box, check_unique=config.check_unique)
    return official_csv.build_official(config, _stage_source, read, _build_split)


def main(argv: list[str] | None = None) -> None:
    official_csv.main(SudokuBuildConfig, build, argv, __doc__, source_help="hf://<repo>, a CSV folder, tdoku, generate")


if __name__ == "__main__":
    main()
