"""ARC evaluation: un-augmenting predictions, voting, pass@k and the submission file."""

import json

import numpy as np
import pytest

from puzzle_hrm.arc_eval import aggregate, score_test_split, vote, vote_counts, vote_curve, write_submission
from puzzle_hrm.data.arc import (
    ARCBuildConfig,
    ARCTask,
    TestExample,
    augment_grid,
    augment_name,
    build,
    encode_grid,
    parse_name,
    read_test_examples,
    row_examples,
)
from puzzle_hrm.data.format import DatasetFormatError, read_identifiers, read_split

A = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
B = np.array([[7]], np.uint8)
C = np.array([[0, 0], [0, 9]], np.uint8)


def task(task_id, *outputs):
    return ARCTask(task_id, "evaluation", [], [(np.zeros((1, 1), np.uint8), o) for o in outputs], {})


def predict(grid, name):
    """The token row a model would emit for `grid` on the variant `name`."""
    _, tid, mapping = parse_name(name)
    return encode_grid(augment_grid(grid, tid, mapping))


def test_vote_majority_and_confidence():
    assert np.array_equal(vote([A, B, B, C])[0], B)
    assert [g.shape for g in vote([A, B, C])] == [A.shape, B.shape, C.shape]  # ties: first appearance
    # official rule: count first, equal counts by mean confidence (not by first appearance)
    assert [g.shape for g in vote([A, B, C], confidences=[0.2, 0.9, 0.5])] == [B.shape, C.shape, A.shape]
    ranked = vote([A, B, B], confidences=[0.9, 0.2, 0.3])  # two unsure votes still beat one confident one
    assert np.array_equal(ranked[0], B)
    ranked = vote([A, B, B], confidences=[0.9, 0.2, 0.3], rule="confidence")  # summed: 0.9 > 0.5
    assert np.array_equal(ranked[0], A) and np.array_equal(ranked[1], B)
    with pytest.raises(ValueError, match="vote rule"):
        vote([A], rule="majority")


def test_pass_at_k_with_augmented_predictions(tmp_path):
    rng = np.random.default_rng(0)
    names = ["t1"] + [augment_name("t1", int(rng.integers(8)), np.r_[0, rng.permutation(9) + 1]) for _ in range(2)]
    tasks = {"t1": task("t1", A), "t2": task("t2", B, C)}
    examples, preds = [], []
    # t1: wrong answer C twice, the true A once -> ranked second
    for name, grid in zip(names, (C, A, C)):
        examples.append(TestExample("t1", 0, name))
        preds.append(predict(grid, name))
    # t2: pair 0 right (B), pair 1 wrong (A instead of C) -> task score 0.5
    for pair_index, grid in ((0, B), (1, A)):
        examples.append(TestExample("t2", pair_index, "t2"))
        preds.append(predict(grid, "t2"))
    scores = aggregate(np.stack(preds), examples, tasks)
    assert scores.per_task["t1"] == {"pass@1": 0.0, "pass@2": 1.0}
    assert scores.per_task["t2"] == {"pass@1": 0.5, "pass@2": 0.5}
    assert scores.overall == {"pass@1": 0.25, "pass@2": 0.75}
    # summed confidence lifts the one confident correct prediction to first place; counting does not
    confident = [0.1, 0.9, 0.1, 1, 1]
    assert aggregate(np.stack(preds), examples, tasks, confident, rule="confidence").per_task["t1"]["pass@1"] == 1.0
    assert aggregate(np.stack(preds), examples, tasks, confident).per_task["t1"]["pass@1"] == 0.0

    path = tmp_path / "submission.json"
    write_submission(path, scores.top2)
    sub = json.loads(path.read_text())
    assert set(sub) == {"t1", "t2"} and len(sub["t2"]) == 2
    assert sub["t1"][0] == {"attempt_1": C.tolist(), "attempt_2": A.tolist()}
    assert sub["t2"][1] == {"attempt_1": A.tolist(), "attempt_2": A.tolist()}  # one candidate: repeated


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one prediction"):
        aggregate(np.zeros((2, 900), np.uint8), [TestExample("t", 0, "t")], {"t": task("t", A)})


@pytest.fixture
def built(tmp_path):
    """An ARC build of three evaluation tasks (1 to 3 test pairs) with 5 augmentations."""
    src = tmp_path / "src" / "evaluation"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(3):
        pairs = [{"input": rng.integers(0, 10, (3, 4)).tolist(), "output": rng.integers(0, 10, (4, 2 + k)).tolist()}
                 for _ in range(2 + k)]
        (src / f"task{k}.json").write_text(json.dumps({"train": pairs[:2], "test": pairs[2:] or pairs[:1]}))
    return build(ARCBuildConfig(source=str(tmp_path / "src"), dataset_dirs=["evaluation"], output_dir=str(tmp_path / "out"),
                                num_aug=5))


def test_labels_of_a_built_dataset_score_perfectly(built):
    examples, tasks = read_test_examples(built)
    _, test = read_split(built, "test")
    scores = aggregate(np.asarray(test["all"]["labels"]), examples, tasks)
    assert scores.overall == {"pass@1": 1.0, "pass@2": 1.0} and len(scores.per_task) == 3
    blank = aggregate(np.zeros_like(test["all"]["labels"]), examples, tasks)
    assert blank.overall == {"pass@1": 0.0, "pass@2": 0.0}


def test_score_test_split_maps_rows_through_identifiers(built):
    _, test = read_split(built, "test")
    split = test["all"]
    row_ids = np.repeat(split["puzzle_identifiers"], np.diff(split["puzzle_indices"]))
    examples = read_test_examples(built)[0]
    assert row_examples(row_ids.tolist(), read_identifiers(built)) == examples
    labels = np.asarray(split["labels"])
    assert score_test_split(built, labels, row_ids).overall == {"pass@1": 1.0, "pass@2": 1.0}
    first: dict[str, int] = {}
    for n, example in enumerate(examples):
        first.setdefault(example.task_id, n)
    wrong = labels.copy()
    wrong[first["task0"]] = labels[first["task1"]]  # one variant of task0 answers with task1's output: outvoted
    assert score_test_split(built, wrong, row_ids).overall["pass@1"] == 1.0
    with pytest.raises(ValueError, match=r"puzzle identifiers must lie in 1\.\."):
        score_test_split(built, labels, np.zeros_like(row_ids))  # padding rows (blank identifier 0) slipped in
    with pytest.raises(DatasetFormatError, match="row 1 .* no test pair"):
        score_test_split(built, labels[:3], np.repeat(row_ids[:1], 3))  # task0 has 1 test pair, not 3


def test_both_pass_rules_and_the_vote_curve_on_a_multi_test_task():
    rng = np.random.default_rng(3)
    names = ["m"] + [augment_name("m", int(rng.integers(8)), np.r_[0, rng.permutation(9) + 1]) for _ in range(3)]
    tasks = {"m": task("m", A, B), "s": task("s", C)}  # m has two test inputs, s one
    examples, preds = [], []
    # m: pair 0 right by every variant; pair 1: C twice, then the truth B twice (the tie goes to C, seen
    # first), so pair 1 is solved at pass@2 once B votes and never at pass@1
    for pair_index, answers in ((0, (A, A, A, A)), (1, (C, C, B, B))):
        for name, grid in zip(names, answers):
            examples.append(TestExample("m", pair_index, name))
            preds.append(predict(grid, name))
    examples.append(TestExample("s", 0, "s"))
    preds.append(predict(C, "s"))
    scores = aggregate(np.stack(preds), examples, tasks)
    assert scores.per_task["m"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert scores.overall == {"pass@1": 0.75, "pass@2": 1.0}  # per task: mean over its test inputs
    assert scores.overall_all_pairs == {"pass@1": 0.5, "pass@2": 1.0}  # per task: all test inputs right
    curve = vote_curve(np.stack(preds), examples, tasks)
    assert [c["votes"] for c in curve] == [1, 2, 4]
    assert [c["pass@2"] for c in curve] == [0.75, 0.75, 1.0]  # B votes only from the third variant on
    assert [c["pass@2_all_pairs"] for c in curve] == [0.5, 0.5, 1.0]
    assert curve[-1]["pass@1"] == scores.overall["pass@1"]
    assert vote_counts(1001) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1001] and vote_counts(1) == [1]
