"""ARC evaluation: un-augmenting predictions, voting, pass@k and the submission file."""

import json

import numpy as np
import pytest

from puzzle_hrm.arc_eval import aggregate, vote, write_submission
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
)
from puzzle_hrm.data.format import read_split

A = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
B = np.array([[7]], np.uint8)
C = np.array([[0, 0], [0, 9]], np.uint8)


def task(task_id, *outputs):
    return ARCTask(task_id, "evaluation", [], [(np.zeros((1, 1), np.uint8), o) for o in outputs], {})


def predict(grid, name):
    """The token row a model would emit for `grid` on the variant `name`."""
    _, tid, mapping = parse_name(name)
    return encode_grid(augment_grid(grid, tid, mapping))


def test_vote_majority_and_weights():
    assert np.array_equal(vote([A, B, B, C])[0], B)
    assert [g.shape for g in vote([A, B, C])] == [A.shape, B.shape, C.shape]  # ties: first appearance
    ranked = vote([A, B, B], weights=[0.9, 0.2, 0.3])  # one confident vote beats two unsure ones
    assert np.array_equal(ranked[0], A) and np.array_equal(ranked[1], B)


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
    # a confidence weight on the correct prediction lifts it to first place
    weighted = aggregate(np.stack(preds), examples, tasks, weights=[0.1, 0.9, 0.1, 1, 1])
    assert weighted.per_task["t1"]["pass@1"] == 1.0

    path = tmp_path / "submission.json"
    write_submission(path, scores.top2)
    sub = json.loads(path.read_text())
    assert set(sub) == {"t1", "t2"} and len(sub["t2"]) == 2
    assert sub["t1"][0] == {"attempt_1": C.tolist(), "attempt_2": A.tolist()}
    assert sub["t2"][1] == {"attempt_1": A.tolist(), "attempt_2": A.tolist()}  # one candidate: repeated


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one prediction"):
        aggregate(np.zeros((2, 900), np.uint8), [TestExample("t", 0, "t")], {"t": task("t", A)})


def test_labels_of_a_built_dataset_score_perfectly(tmp_path):
    src = tmp_path / "src" / "evaluation"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(3):
        pairs = [{"input": rng.integers(0, 10, (3, 4)).tolist(), "output": rng.integers(0, 10, (4, 2 + k)).tolist()}
                 for _ in range(2 + k)]
        (src / f"task{k}.json").write_text(json.dumps({"train": pairs[:2], "test": pairs[2:] or pairs[:1]}))
    out = build(ARCBuildConfig(source=str(tmp_path / "src"), dataset_dirs=["evaluation"], output_dir=str(tmp_path / "out"),
                               num_aug=5))
    examples, tasks = read_test_examples(out)
    _, test = read_split(out, "test")
    scores = aggregate(np.asarray(test["all"]["labels"]), examples, tasks)
    assert scores.overall == {"pass@1": 1.0, "pass@2": 1.0} and len(scores.per_task) == 3
    blank = aggregate(np.zeros_like(test["all"]["labels"]), examples, tasks)
    assert blank.overall == {"pass@1": 0.0, "pass@2": 0.0}
