"""`sudoku-extreme-standin`: real tdoku puzzles mixed, transformed, rated and split as Sudoku-Extreme is.

Sudoku-Extreme (its dataset card) mixes easy lists (kaggle, unbiased, 17-clue: 1.1 M) with hard ones
(magictour, forum_hardest_1905, forum_hardest_1106, ph_2010: 3.1 M), permutes every puzzle randomly by
row, column, box and digit, rates it by tdoku's backtrack count and keeps train and test mathematically
inequivalent. Offline we have the 17-clue list (easy) and magictour, forum_hardest_1905's SE >= 11 part
and forum_hardest_1106 (hard). This draws both shares in the card's 1.1 : 3.1 proportion, keeps one
puzzle per symmetry class (sudoku_symmetry), applies a random group element to each, solves and rates
it (sudoku_solver), and gives train and test the same mix. The result is the CSV folder `suite=sudoku`
builds from on a GPU (datasets/sources/sudoku-extreme-standin, a few MB in git):

    python -m puzzle_hrm.data.sudoku_standin --output-dir datasets/sources/sudoku-extreme-standin
    python -m puzzle_hrm.data.sudoku_symmetry datasets/sources/sudoku-tdoku-hard   # leak check of a CSV folder
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from puzzle_hrm.data import sudoku
from puzzle_hrm.data.augment import random_sudoku_transform
from puzzle_hrm.data.format import atomic_write_text
from puzzle_hrm.data.sudoku_solver import solve
from puzzle_hrm.data.sudoku_symmetry import cross_leaks, symmetry_classes

logger = logging.getLogger(__name__)

EASY_FILES = ("puzzles2_17_clue",)
HARD_FILES = ("puzzles3_magictour_top1465", "puzzles5_forum_hardest_1905_11+", "puzzles6_forum_hardest_1106")
EXTREME_SIZES = {"easy": 1.1e6, "hard": 3.1e6}  # the dataset card's shares
CARD_URL = "https://huggingface.co/datasets/sapientinc/sudoku-extreme/raw/main/README.md"


@dataclass
class StandinConfig:
    output_dir: str = "datasets/sources/sudoku-extreme-standin"
    tdoku_archive: str | None = None  # None: sudoku.DEFAULT_TDOKU_ARCHIVE
    num_train: int = 3000  # the GPU recipe subsamples 1,000 of these
    num_test: int = 5000
    seed: int = 0

    def __post_init__(self):
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(f"need num_train, num_test >= 1; got {self.num_train}, {self.num_test}")


def share_counts(total: int) -> dict[str, int]:
    """Easy / hard puzzle counts of `total` in Sudoku-Extreme's proportion (rounded, summing to total)."""
    easy = round(total * EXTREME_SIZES["easy"] / sum(EXTREME_SIZES.values()))
    return {"easy": easy, "hard": total - easy}


def _distinct(archive: Path, files: tuple[str, ...], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(puzzle strings, their list names), exact duplicates dropped, in a seeded random order."""
    first_list: dict[str, str] = {}
    for name, puzzle in sudoku.read_tdoku(archive, files):
        first_list.setdefault(puzzle, name)
    puzzles = list(first_list)
    order = rng.permutation(len(puzzles))
    return [puzzles[i] for i in order], [first_list[puzzles[i]] for i in order]


def _one_per_class(grids: np.ndarray) -> np.ndarray:
    """Indices of the first puzzle of every symmetry class, in order."""
    _, first = np.unique(symmetry_classes(grids), return_index=True)
    return np.sort(first)


def _rated_share(archive: Path, files: tuple[str, ...], count: int, taken: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[sudoku.SudokuTable, dict]:
    """`count` transformed, solved and rated puzzles from `files`, none equivalent to each other or to
    a puzzle of `taken` (grids already chosen), plus what was dropped on the way."""
    strings, names = _distinct(archive, files, rng)
    pool = sudoku._decode(archive, "puzzle", strings[: 2 * count + 100], 9, blanks=True)  # margin for drops
    keep = _one_per_class(pool)
    dropped = {"symmetry_duplicates": len(pool) - len(keep), "equivalent_to_other_share": 0, "not_unique": 0}
    if taken is not None:
        leaked = {j for _, j in cross_leaks(taken, pool[keep])}
        dropped["equivalent_to_other_share"] = len(leaked)
        keep = np.array([k for j, k in enumerate(keep) if j not in leaked], np.int64)
    rows = []
    with tqdm(total=count, desc=f"solve {','.join(files)[:40]}", disable=None) as bar:
        for i in keep:
            if len(rows) == count:
                break
            transform = random_sudoku_transform(rng)
            question = transform.apply(pool[i])
            result = solve(question)
            if not result.unique:
                dropped["not_unique"] += 1
                continue
            rows.append((names[i], question, result.solution, result.backtracks))
            bar.update()
    if len(rows) < count:
        raise RuntimeError(f"{files}: only {len(rows)} of {count} usable puzzles in the drawn pool")
    table = sudoku.SudokuTable([r[0] for r in rows], np.array([r[1] for r in rows], np.uint8),
                               np.array([r[2] for r in rows], np.uint8), np.array([r[3] for r in rows], np.int64))
    return table, dropped


def _concat(tables: list[sudoku.SudokuTable], rng: np.random.Generator) -> sudoku.SudokuTable:
    table = sudoku.SudokuTable(sum((t.source for t in tables), []), np.concatenate([t.question for t in tables]),
                               np.concatenate([t.answer for t in tables]), np.concatenate([t.rating for t in tables]))
    return table.subset(rng.permutation(len(table)))


def split_slice(splits: dict[str, dict[str, int]], share: str, split: str) -> slice:
    n_train = splits["train"][share]
    return slice(0, n_train) if split == "train" else slice(n_train, n_train + splits["test"][share])


def rating_summary(table: sudoku.SudokuTable) -> dict:
    """Rating quantiles and shares, per split, for the README and the report."""
    r = table.rating
    return {
        "puzzles": len(table),
        "mean": round(float(r.mean()), 2),
        **{f"p{q}": float(np.percentile(r, q)) for q in (50, 90, 99)},
        "max": int(r.max()),
        "share_rating_0": round(float((r == 0).mean()), 4),
        "sources": {name: int(c) for name, c in zip(*np.unique(table.source, return_counts=True))},
    }


def build_tables(config: StandinConfig) -> tuple[dict[str, sudoku.SudokuTable], dict]:
    """Train and test tables with the same easy/hard mix, disjoint up to symmetry; provenance."""
    archive = Path(config.tdoku_archive) if config.tdoku_archive else sudoku.DEFAULT_TDOKU_ARCHIVE
    rng = np.random.default_rng(config.seed)
    splits = {"train": share_counts(config.num_train), "test": share_counts(config.num_test)}
    shares, dropped = {}, {}
    taken = None
    for share, files in (("easy", EASY_FILES), ("hard", HARD_FILES)):
        total = splits["train"][share] + splits["test"][share]
        shares[share], dropped[share] = _rated_share(archive, files, total, taken, rng)
        taken = shares[share].question if taken is None else np.concatenate([taken, shares[share].question])
    tables = {  # each share's first train-count puzzles train, the rest test
        split: _concat([table.subset(np.arange(len(table))[split_slice(splits, share, split)])
                        for share, table in shares.items()], rng)
        for split in splits
    }
    leaks = cross_leaks(tables["train"].question, tables["test"].question)
    if leaks:
        raise RuntimeError(f"{len(leaks)} test puzzles are transforms of training puzzles (first: {leaks[0]})")
    provenance = {
        "source": f"sudoku-extreme-standin from tdoku:{archive.name}",
        "files": [*EASY_FILES, *HARD_FILES],
        "stand_in": True,
        "note": (
            "Stand-in for Sudoku-Extreme built like it from the real tdoku lists reachable offline (see "
            "shared/data/PROVENANCE.md): easy share puzzles2_17_clue, hard share puzzles3_magictour_top1465 + "
            "puzzles5_forum_hardest_1905_11+ (the SE>=11 part of puzzles4_forum_hardest_1905) + "
            "puzzles6_forum_hardest_1106, in the card's 1.1M:3.1M proportion in both splits; puzzles0_kaggle, "
            "puzzles1_unbiased, the rest of puzzles4_forum_hardest_1905 and ph_2010 are missing. Each puzzle "
            "is a random group transform of its list's puzzle; one puzzle per symmetry class, so train and "
            "test are mathematically inequivalent (checked: 0 leaks)."
        ),
        "rating": sudoku.RATING_DEFINITION,
        "card": CARD_URL,
        "shares": splits,
        "dropped": dropped,
        "symmetry_leaks": 0,
        "ratings": {split: rating_summary(table) for split, table in tables.items()},
        "params": asdict(config),
        "generator": "puzzle_hrm.data.sudoku_standin",
    }
    return tables, provenance


def build(config: StandinConfig) -> Path:
    """Write <output_dir>/{train,test}.csv (official layout) and provenance.json; returns output_dir."""
    tables, provenance = build_tables(config)
    out = Path(config.output_dir)
    for split, table in tables.items():
        sudoku.write_csv(out / f"{split}.csv", table)
    atomic_write_text(out / "provenance.json", json.dumps(provenance, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = StandinConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value) if value is not None else str, default=value)
    config = StandinConfig(**vars(p.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = build(config)
    print(json.dumps(json.loads((out / "provenance.json").read_text())["ratings"], indent=1))


if __name__ == "__main__":
    main()
