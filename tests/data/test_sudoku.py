"""Sudoku: solver, generator, CSV validation and the official-layout builder."""

import json
import time

import numpy as np
import pytest

from puzzle_hrm.data import sudoku
from puzzle_hrm.data.format import DatasetFormatError, read_identifiers, read_split
from puzzle_hrm.data.sudoku import (
    DEFAULT_TDOKU_ARCHIVE,
    SudokuBuildConfig,
    SudokuTable,
    build,
    generate_table,
    read_csv,
    read_tdoku,
    write_csv,
)

from puzzle_hrm.data.sudoku_solver import generate_puzzle, solve

from .test_augment import is_valid_solution

needs_tdoku = pytest.mark.skipif(not DEFAULT_TDOKU_ARCHIVE.exists(), reason="shared tdoku archive not present")

WIKI_PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
WIKI_SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def grid(text: str) -> np.ndarray:
    return np.array([0 if ch in ".0" else int(ch) for ch in text], np.uint8).reshape(9, 9)


def assert_solves(puzzle: np.ndarray, box: int = 3):
    result = solve(puzzle, box)
    assert result.unique and is_valid_solution(result.solution, box)
    givens = puzzle != 0
    np.testing.assert_array_equal(result.solution[givens], puzzle[givens])
    return result


# ----------------------------------------------------------------------------- solver


def test_solves_known_puzzle():
    result = assert_solves(grid(WIKI_PUZZLE))
    np.testing.assert_array_equal(result.solution, grid(WIKI_SOLUTION))
    assert result.backtracks == 0  # singles alone suffice


@needs_tdoku
def test_solves_real_hard_tdoku_puzzles_quickly():
    hard_lists = ("puzzles3_magictour_top1465", "puzzles6_forum_hardest_1106")
    hard = [p for name, p in read_tdoku(DEFAULT_TDOKU_ARCHIVE, hard_lists)]
    start = time.perf_counter()
    ratings = [assert_solves(grid(p)).backtracks for p in hard[:10] + hard[-10:]]
    assert time.perf_counter() - start < 10  # ~10 ms each measured; generous for slow CI
    assert max(ratings) > 0  # hard puzzles need guessing


@needs_tdoku
def test_detects_several_solutions_in_real_list():
    (_, puzzle), *_ = read_tdoku(DEFAULT_TDOKU_ARCHIVE, ("puzzles7_serg_benchmark",))
    assert solve(grid(puzzle)).num_solutions == 2


def test_detects_multiple_and_no_solutions():
    assert solve(np.zeros((4, 4), np.uint8), box=2).num_solutions == 2
    assert solve(np.zeros((9, 9), np.uint8), max_solutions=5).num_solutions == 5
    clash = grid(WIKI_PUZZLE)
    clash[0, 2] = 5  # second 5 in row 0
    assert solve(clash).num_solutions == 0 and solve(clash).solution is None
    stuck = np.zeros((9, 9), np.uint8)
    stuck[0, :8] = np.arange(1, 9)
    stuck[5, 8] = 9  # cell (0, 8) can only be 9, but column 8 already has one
    assert solve(stuck).num_solutions == 0


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("box, blanks", [(2, 7), (3, 20), (3, 45)])
def test_generator_gives_unique_puzzles_with_requested_blanks(box, blanks):
    rng = np.random.default_rng(0)
    for _ in range(3):
        puzzle, solution, rating = generate_puzzle(box, rng, num_blanks=blanks)
        assert (puzzle == 0).sum() == blanks
        result = assert_solves(puzzle, box)
        np.testing.assert_array_equal(result.solution, solution)
        assert rating == result.backtracks


def test_generate_table_ranges_filters_and_determinism():
    table = generate_table(30, 2, np.random.default_rng(1), min_blanks=6, max_blanks=8)
    blanks = (table.question == 0).sum(axis=(1, 2))
    assert blanks.min() >= 6 and blanks.max() <= 8 and len(set(blanks.tolist())) == 3
    assert len({q.tobytes() for q in table.question}) == 30
    again = generate_table(30, 2, np.random.default_rng(1), min_blanks=6, max_blanks=8)
    np.testing.assert_array_equal(table.question, again.question)
    hard = generate_table(3, 3, np.random.default_rng(2), min_rating=1)
    assert (hard.rating >= 1).all()
    with pytest.raises(RuntimeError, match="relax"):
        generate_table(1, 2, np.random.default_rng(0), min_rating=10**6)


# ----------------------------------------------------------------------------- CSV


def small_table(count: int = 5, seed: int = 0) -> SudokuTable:
    return generate_table(count, 3, np.random.default_rng(seed), min_blanks=30, max_blanks=40)


def test_csv_round_trip(tmp_path):
    table = small_table()
    write_csv(tmp_path / "t.csv", table)
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "source,question,answer,rating"
    loaded = read_csv(tmp_path / "t.csv", check_unique=True)
    assert loaded.source == table.source
    for name in ("question", "answer", "rating"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))


def _replace_row3(column: int, value: str):
    def edit(lines):
        fields = lines[3].split(",")
        fields[column] = value
        lines[3] = ",".join(fields)
    return edit


def _set_cell(column: int, cell: int, char: str):
    def edit(lines):
        fields = lines[3].split(",")
        fields[column] = fields[column][:cell] + char + fields[column][cell + 1:]
        lines[3] = ",".join(fields)
    return edit


def _swap_answer_cells(lines):
    fields = lines[3].split(",")
    a = list(fields[2])
    first_diff = next(i for i in range(1, 9) if a[i] != a[0])
    a[0], a[first_diff] = a[first_diff], a[0]  # row still a permutation, columns now broken
    fields[1], fields[2] = "." * 81, "".join(a)
    lines[3] = ",".join(fields)


def _give_wrong_digit(lines):
    fields = lines[3].split(",")
    q, a = list(fields[1]), fields[2]
    q[0] = str(int(a[0]) % 9 + 1)  # a given that differs from the answer
    fields[1] = "".join(q)
    lines[3] = ",".join(fields)


BAD_CSVS = {
    "header": (lambda lines: lines.__setitem__(0, "source,quiz,answer,rating"), "header"),
    "columns": (lambda lines: lines.__setitem__(3, lines[3] + ",extra"), "row 3: expected 4 columns, got 5"),
    "length": (_replace_row3(1, "." * 80), "row 3: question has 80 characters"),
    "alphabet": (_set_cell(1, 5, "x"), "row 3: question has character 'x'"),
    "blank in answer": (_set_cell(2, 5, "."), "row 3: answer has character '.'"),
    "rating": (_replace_row3(3, "hard"), "row 3: rating 'hard' is not an integer"),
    "invalid answer": (_swap_answer_cells, "row 3: answer is not a valid complete Sudoku"),
    "givens disagree": (_give_wrong_digit, "row 3: question givens disagree"),
}


@pytest.mark.parametrize("case", BAD_CSVS, ids=list(BAD_CSVS))
def test_csv_errors_name_file_and_row(csv_error, case):
    edit, message = BAD_CSVS[case]
    assert message in csv_error(write_csv, read_csv, small_table(), edit)


def test_csv_check_unique_flags_several_solutions(tmp_path):
    table = small_table()
    table.question[2] = 0  # blank puzzle: the answer is one of many solutions
    write_csv(tmp_path / "t.csv", table)
    read_csv(tmp_path / "t.csv")  # structurally fine
    with pytest.raises(DatasetFormatError, match=r"t\.csv: row 3: puzzle has several solutions"):
        read_csv(tmp_path / "t.csv", check_unique=True)


# ----------------------------------------------------------------------------- builder


def arrays_of(root, split):
    return read_split(root, split)[1]["all"]


def test_build_generated_4x4_official_layout(tmp_path):
    config = SudokuBuildConfig(source="generate", output_dir=str(tmp_path), box=2, num_train=12, num_test=4,
                               min_blanks=6, max_blanks=8, num_aug=2, seed=3)
    assert build(config) == tmp_path
    meta, arrays = read_split(tmp_path, "train")
    assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id) == (16, 6, 0, 0)
    assert meta.blank_identifier_id == 0
    assert (meta.num_puzzle_identifiers, meta.total_groups, meta.mean_puzzle_examples, meta.sets) == (1, 12, 1, ["all"])
    a = arrays["all"]
    assert a["inputs"].shape == (36, 16)
    np.testing.assert_array_equal(a["puzzle_indices"], np.arange(37))
    np.testing.assert_array_equal(a["group_indices"], np.arange(0, 37, 3))
    assert not a["puzzle_identifiers"].any()
    for inputs, labels in zip(a["inputs"], a["labels"]):  # tokens = digit + 1, every example valid
        question, answer = inputs.reshape(4, 4).astype(int) - 1, labels.reshape(4, 4).astype(int) - 1
        assert is_valid_solution(answer, 2) and ((question == 0) | (question == answer)).all()
        assert 6 <= (question == 0).sum() <= 8
    raw = read_csv(tmp_path / "raw" / "train.csv", box=2)
    np.testing.assert_array_equal(a["inputs"][::3], raw.question.reshape(12, 16) + 1)  # originals first in group
    test_meta, test_arrays = read_split(tmp_path, "test")
    assert test_meta.total_groups == 4 and len(test_arrays["all"]["inputs"]) == 4  # no augmentation on test
    assert meta.provenance["stand_in"] is True and meta.provenance["source"] == "generate"
    assert meta.provenance["params"]["num_aug"] == 2
    assert read_identifiers(tmp_path) == ["<blank>"]


@needs_tdoku
def test_build_tdoku_subset_is_labelled_stand_in(tmp_path):
    config = SudokuBuildConfig(source="tdoku", output_dir=str(tmp_path), max_puzzles=50, test_fraction=0.2)
    build(config)
    meta, arrays = read_split(tmp_path, "train")
    assert meta.total_groups == 40 and read_split(tmp_path, "test")[0].total_groups == 10
    prov = meta.provenance
    assert prov["stand_in"] is True and "Sudoku-Extreme" in prov["note"]
    assert prov["files"] == list(sudoku.TDOKU_FILES) and prov["dropped"]["duplicates"] > 0
    raw = read_csv(tmp_path / "raw" / "train.csv", check_unique=True)
    assert set(raw.source) <= set(sudoku.TDOKU_FILES)
    lists = {name: set() for name in sudoku.TDOKU_FILES}
    for name, puzzle in read_tdoku(DEFAULT_TDOKU_ARCHIVE):
        lists[name].add(puzzle)
    for source, question in zip(raw.source, sudoku._grid_strings(raw.question)):
        assert question in lists[source]  # real puzzles, attributed to their list
    test_raw = read_csv(tmp_path / "raw" / "test.csv")
    assert not set(sudoku._grid_strings(raw.question)) & set(sudoku._grid_strings(test_raw.question))
    np.testing.assert_array_equal(arrays["all"]["labels"], raw.answer.reshape(40, 81) + 1)


def test_build_is_deterministic(tmp_path):
    def run(name, seed):
        build(SudokuBuildConfig(source="generate", output_dir=str(tmp_path / name), box=2, num_train=10, num_test=3,
                                num_aug=3, subsample_size=8, seed=seed))
        return arrays_of(tmp_path / name, "train")

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["inputs"], c["inputs"])


def test_hub_path_and_official_filters(tmp_path, fake_hub):
    hub = fake_hub.folder
    table = small_table(12, seed=4)
    table.rating[:] = np.arange(12)
    write_csv(hub / "train.csv", table)
    write_csv(hub / "test.csv", small_table(3, seed=5))
    out = tmp_path / "out"
    sudoku.main(["--source-repo", "sapientinc/sudoku-extreme", "--output-dir", str(out), "--min-difficulty", "4",
                 "--subsample-size", "5", "--num-aug", "1"])
    fake_hub.assert_downloaded_splits("sapientinc/sudoku-extreme")
    meta, arrays = read_split(out, "train")
    assert meta.provenance["stand_in"] is False and meta.provenance["source"] == "hf://sapientinc/sudoku-extreme"
    assert meta.provenance["counts"] == {"csv_rows": 12, "after_min_difficulty": 8, "after_subsample": 5}
    originals = arrays["all"]["inputs"][::2]
    kept = {q.tobytes() for q in (table.question[4:].reshape(8, 81) + 1)}
    assert len({o.tobytes() for o in originals}) == 5 and all(o.tobytes() in kept for o in originals)
    assert read_split(out, "test")[0].total_groups == 0  # test ratings are all 0 < min_difficulty


def test_csv_folder_source_keeps_staged_provenance(tmp_path):
    build(SudokuBuildConfig(source="generate", output_dir=str(tmp_path / "a"), box=2, num_train=4, num_test=2))
    build(SudokuBuildConfig(source=str(tmp_path / "a" / "raw"), output_dir=str(tmp_path / "b"), box=2))
    assert read_split(tmp_path / "b", "train")[0].provenance["stand_in"] is True
    (tmp_path / "a" / "raw" / "provenance.json").unlink()
    build(SudokuBuildConfig(source=str(tmp_path / "a" / "raw"), output_dir=str(tmp_path / "c"), box=2))
    assert "without provenance.json" in read_split(tmp_path / "c", "train")[0].provenance["note"]
    with pytest.raises(ValueError, match="neither"):
        build(SudokuBuildConfig(source=str(tmp_path / "nowhere"), output_dir=str(tmp_path / "d")))
    assert json.loads((tmp_path / "b" / "identifiers.json").read_text()) == ["<blank>"]
