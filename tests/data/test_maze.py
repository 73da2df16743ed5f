"""Maze: generator, shortest paths, CSV validation, path metrics and the official-layout builder."""

from collections import deque

import numpy as np
import pytest

from puzzle_hrm.data import maze
from puzzle_hrm.data.augment import dihedral_transform, inverse_dihedral_transform
from puzzle_hrm.data.format import read_identifiers, read_split
from puzzle_hrm.data.maze import (
    FREE,
    GOAL,
    PATH,
    START,
    WALL,
    MazeBuildConfig,
    MazeTable,
    build,
    chain_length,
    generate_table,
    path_metrics,
    read_csv,
    write_csv,
)

MIN_LEN = 60  # small tests: shorter than the default 110 so that generation is near-instant


def small_table(count: int = 6, seed: int = 0, loop_fraction: float = 0.05) -> MazeTable:
    return generate_table(count, np.random.default_rng(seed), MIN_LEN, loop_fraction)


def bfs_length(passable: np.ndarray, start, goal) -> int | None:
    """Independent reference: plain BFS over a 2D bool grid with bounds checks."""
    dist = {tuple(start): 0}
    queue = deque([tuple(start)])
    while queue:
        r, c = queue.popleft()
        if (r, c) == tuple(goal):
            return dist[r, c]
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            inside = 0 <= nr < passable.shape[0] and 0 <= nc < passable.shape[1]
            if inside and passable[nr, nc] and (nr, nc) not in dist:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return None


def assert_shortest_path(question: np.ndarray, answer: np.ndarray) -> int:
    """The answer marks exactly one shortest S->G path of the question; returns its length in moves."""
    (s,), (g,) = np.argwhere(question == START), np.argwhere(question == GOAL)
    shortest = bfs_length(question != WALL, s, g)
    on_path = (answer == PATH) | (answer == START) | (answer == GOAL)
    assert ((answer == question) | ((answer == PATH) & (question == FREE))).all()
    assert bfs_length(on_path, s, g) == shortest == on_path.sum() - 1  # connected, and nothing but the path
    return shortest


# ----------------------------------------------------------------------------- generator


def test_generated_mazes_hold_one_shortest_path():
    table = small_table(12)
    assert (table.question[:, [0, -1], :] == WALL).all() and (table.question[:, :, [0, -1]] == WALL).all()
    for q, a, rating in zip(table.question, table.answer, table.rating):
        assert (q == START).sum() == 1 and (q == GOAL).sum() == 1
        assert assert_shortest_path(q, a) == rating >= MIN_LEN
        assert chain_length(q, a == PATH) == rating


def test_generator_is_deterministic_and_fails_loudly():
    a, b, c = small_table(seed=1), small_table(seed=1), small_table(seed=2)
    np.testing.assert_array_equal(a.answer, b.answer)
    assert not np.array_equal(a.question, c.question)
    perfect = generate_table(5, np.random.default_rng(0), MIN_LEN, loop_fraction=0.0)  # a tree: one route
    for q in perfect.question:
        free = (q != WALL).sum()
        edges = ((q[1:] != WALL) & (q[:-1] != WALL)).sum() + ((q[:, 1:] != WALL) & (q[:, :-1] != WALL)).sum()
        assert edges == free - 1
    with pytest.raises(RuntimeError, match="lower min_path_length"):
        generate_table(1, np.random.default_rng(0), 10**4)


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_round_trip_keeps_mazes_valid(tid):
    table = small_table(3)
    for q, a, rating in zip(table.question, table.answer, table.rating):
        tq, ta = dihedral_transform(q, tid), dihedral_transform(a, tid)
        np.testing.assert_array_equal(inverse_dihedral_transform(tq, tid), q)
        np.testing.assert_array_equal(inverse_dihedral_transform(ta, tid), a)
        assert assert_shortest_path(tq, ta) == rating


# ----------------------------------------------------------------------------- CSV


def test_csv_round_trip(tmp_path):
    table = small_table()
    write_csv(tmp_path / "t.csv", table)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "source,question,answer,rating" and set(lines[1].split(",")[2]) == set("# SGo")
    loaded = read_csv(tmp_path / "t.csv")
    assert loaded.source == table.source
    for name in ("question", "answer", "rating"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))


def _edit_row3(column: int, change):
    def edit(lines):
        fields = lines[3].split(",")
        fields[column] = change(fields[column])
        lines[3] = ",".join(fields)
    return edit


def _put(char: str, old: str):
    """Replace the first `old` character of the field by `char`."""
    return lambda text: text.replace(old, char, 1)


def _drop_path_cell(text: str) -> str:
    i = text.index("o")
    return text[:i] + " " + text[i + 1:]


def _path_through_wall(text: str) -> str:
    i = text.index("#", 31)  # an inner wall cell (row 1 onwards)
    return text[:i] + "o" + text[i + 1:]


BAD_CSVS = {
    "header": (lambda lines: lines.__setitem__(0, "source,maze,answer,rating"), "header"),
    "columns": (lambda lines: lines.__setitem__(3, lines[3] + ",extra"), "row 3: expected 4 columns, got 5"),
    "length": (_edit_row3(1, lambda t: t[:-1]), "row 3: question has 899 characters"),
    "charset": (_edit_row3(2, _put("x", " ")), "row 3: answer has character 'x'"),
    "path in question": (_edit_row3(1, _put("o", " ")), "row 3: question has character 'o'"),
    "rating": (_edit_row3(3, lambda t: "hard"), "row 3: rating 'hard' is not a number"),
    "two starts": (_edit_row3(1, _put("S", " ")), "row 3: question must have exactly one 'S'"),
    "no goal": (_edit_row3(1, _put(" ", "G")), "row 3: question must have exactly one 'G'"),
    "answer differs": (_edit_row3(2, _put("#", " ")), "row 3: answer walls/S/G differ"),
    "broken path": (_edit_row3(2, _drop_path_cell), "row 3: answer 'o' cells are not a connected S->G path"),
    "path through wall": (_edit_row3(2, _path_through_wall), "row 3: answer 'o' cells are not a connected"),
}


@pytest.mark.parametrize("case", BAD_CSVS, ids=list(BAD_CSVS))
def test_csv_errors_name_file_and_row(csv_error, case):
    edit, message = BAD_CSVS[case]
    assert message in csv_error(write_csv, read_csv, small_table(4), edit)


# ----------------------------------------------------------------------------- path metrics


def ring_maze(path_cells=()) -> np.ndarray:
    """S at (1,1), G at (3,3) around a wall at (2,2): two optimal routes of 4 moves; (1..3, 4) free too."""
    grid = np.full((30, 30), WALL, np.uint8)
    grid[1:4, 1:5] = FREE
    grid[2, 2] = WALL
    grid[1, 1], grid[3, 3] = START, GOAL
    for cell in path_cells:
        grid[cell] = PATH
    return grid


TOP = [(1, 2), (1, 3), (2, 3)]
BOTTOM = [(2, 1), (3, 1), (3, 2)]


@pytest.mark.parametrize("prediction, exact, valid", [
    (TOP, True, True),
    (BOTTOM, False, True),  # another optimal path
    (TOP[:2], False, False),  # broken
    ([(1, 2), (2, 2), (3, 2)], False, False),  # through the wall at (2,2)
    ([(1, 2), (1, 3), (1, 4), (2, 4), (3, 4)], False, False),  # connected but 6 moves, not optimal
    (TOP + [(3, 1)], False, False),  # a stray 'o'
    (TOP + BOTTOM, False, False),  # both routes: a cycle, not a path
])
def test_path_metrics_cases(prediction, exact, valid):
    x, y, p = (ring_maze(cells).reshape(1, 900) for cells in ((), TOP, prediction))
    m = path_metrics(x, p, y)
    assert m["count"] == 1 and m["exact_accuracy"] == float(exact) and m["valid_path_rate"] == float(valid)


def test_path_metrics_on_generated_batch():
    table = small_table(4)
    x, y = table.question.reshape(4, 900), table.answer.reshape(4, 900)
    p = y.copy()
    p[1, (p[1] == PATH).argmax()] = FREE  # broken path
    p[2, (p[2] == WALL).argmax()] = FREE  # a wall cell predicted free: not exact, path still valid
    m = path_metrics(x, p, y)
    assert (m["exact"], m["valid_path"], m["exact_accuracy"], m["valid_path_rate"]) == (2, 3, 0.5, 0.75)
    assert path_metrics(x[:0], p[:0], y[:0])["valid_path_rate"] == 0.0


# ----------------------------------------------------------------------------- builder


def test_build_generated_official_layout_with_aug(tmp_path):
    config = MazeBuildConfig(source="generate", output_dir=str(tmp_path), num_train=5, num_test=3, aug=True,
                             min_path_length=MIN_LEN, seed=3)
    assert build(config) == tmp_path
    meta, arrays = read_split(tmp_path, "train")
    assert (meta.seq_len, meta.vocab_size, meta.pad_id, meta.ignore_label_id, meta.blank_identifier_id) == (
        900, 6, 0, 0, 0)
    assert (meta.num_puzzle_identifiers, meta.total_groups, meta.mean_puzzle_examples, meta.sets) == (1, 5, 1, ["all"])
    a = arrays["all"]
    assert a["inputs"].shape == a["labels"].shape == (40, 900)
    np.testing.assert_array_equal(a["puzzle_indices"], np.arange(41))
    np.testing.assert_array_equal(a["group_indices"], np.arange(0, 41, 8))  # 8 puzzles (dihedral images) a group
    assert not a["puzzle_identifiers"].any()
    raw = read_csv(tmp_path / "raw" / "train.csv")
    np.testing.assert_array_equal(a["inputs"][::8], raw.question.reshape(5, 900))  # tid 0 = original first
    for i, (x, y) in enumerate(zip(a["inputs"], a["labels"])):
        assert assert_shortest_path(x.reshape(30, 30), y.reshape(30, 30)) == raw.rating[i // 8]
    assert len({x.tobytes() for x in a["inputs"][:8]}) == 8
    test_meta, test_arrays = read_split(tmp_path, "test")
    assert test_meta.total_groups == 3 and len(test_arrays["all"]["inputs"]) == 3  # never augmented
    prov = meta.provenance
    assert prov["stand_in"] is True and prov["source"] == "generate" and prov["rating"] == maze.RATING_DEFINITION
    assert prov["generator_params"] == {"min_path_length": MIN_LEN, "loop_fraction": 0.02, "seed": 3}
    assert prov["params"]["aug"] is True
    assert read_identifiers(tmp_path) == ["<blank>"]


def test_hub_path_subsample_and_folder_source(tmp_path, fake_hub):
    hub = fake_hub.folder
    table = small_table(6, seed=4)
    write_csv(hub / "train.csv", table)
    write_csv(hub / "test.csv", small_table(2, seed=5))
    out = tmp_path / "out"
    maze.main(["--source-repo", "sapientinc/maze-30x30-hard-1k", "--output-dir", str(out), "--subsample-size", "4"])
    fake_hub.assert_downloaded_splits("sapientinc/maze-30x30-hard-1k")
    meta, arrays = read_split(out, "train")
    assert meta.provenance["stand_in"] is False and meta.provenance["source"] == "hf://sapientinc/maze-30x30-hard-1k"
    assert meta.provenance["counts"] == {"csv_rows": 6, "after_subsample": 4}
    kept = {q.tobytes() for q in table.question.reshape(6, 900)}
    inputs = arrays["all"]["inputs"]
    assert len(inputs) == 4 and len({x.tobytes() for x in inputs} & kept) == 4
    assert read_split(out, "test")[0].total_groups == 2
    # a CSV folder without provenance.json is taken as official; a missing one is refused
    build(MazeBuildConfig(source=str(hub), output_dir=str(tmp_path / "b")))
    assert "without provenance.json" in read_split(tmp_path / "b", "train")[0].provenance["note"]
    with pytest.raises(ValueError, match="neither"):
        build(MazeBuildConfig(source=str(tmp_path / "nowhere"), output_dir=str(tmp_path / "c")))
