"""ARC evaluation: undo each augmented prediction, vote per test pair, score pass@k, write a submission.

As the official ARC evaluator (sapientinc/HRM, TRM evaluators/arc.py): every test pair is predicted once
per augmented variant of its task; each prediction is cropped at the EOS border, mapped back through the
inverse dihedral transform and colour permutation, and the variants vote. Candidates rank as there by
count, then by mean confidence (sigmoid(q_halt_logit) of the predictions that voted for them); the
alternative rule ranks by summed confidence, then count. Remaining ties: first appearance. A test pair is solved at k if one of its top-k candidates equals the true output; a task scores
the mean over its test pairs (ARC Prize scoring) and the overall score is the mean over tasks. The
notebook of the official commit the paper's numbers came from counts a task only when all its test
pairs are solved: `overall_all_pairs` (the two differ on tasks with several test inputs). `vote_curve`
scores with only the first m variants of each test pair voting, for the accuracy-vs-votes curve.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from puzzle_hrm.data.arc import (
    ARCTask,
    TestExample,
    check_examples,
    decode_grid,
    read_test_tasks,
    row_examples,
    unaugment_grid,
)
from puzzle_hrm.data.format import atomic_write_text, read_identifiers

PASS_KS = (1, 2)
VOTE_RULES = ("count", "confidence")  # count, then mean confidence (official) | summed confidence, then count


@dataclass
class ARCScores:
    per_task: dict[str, dict[str, float]]  # task id -> {"pass@1": .., "pass@2": ..}
    overall: dict[str, float]  # mean over tasks of the mean over its test pairs (ARC Prize)
    overall_all_pairs: dict[str, float]  # mean over tasks of "every test pair solved" (official notebook)
    top2: dict[str, list[list[np.ndarray]]]  # task id -> per test pair, up to 2 ranked candidate grids


def vote(grids: Sequence[np.ndarray], confidences: Sequence[float] | None = None, rule: str = "count") -> list[np.ndarray]:
    """Distinct grids ranked by `rule` (VOTE_RULES), then by first appearance. Without confidences
    every prediction counts 0, so "count" ranks by count alone."""
    if rule not in VOTE_RULES:
        raise ValueError(f"vote rule must be one of {VOTE_RULES}, got {rule!r}")
    confidences = np.zeros(len(grids)) if confidences is None else np.asarray(confidences, np.float64)
    stats: dict[tuple, list] = {}  # key -> [count, summed confidence, first index, grid]
    for i, (grid, confidence) in enumerate(zip(grids, confidences, strict=True)):
        entry = stats.setdefault((grid.shape, grid.tobytes()), [0, 0.0, i, grid])
        entry[0] += 1
        entry[1] += float(confidence)
    if rule == "count":
        ranked = sorted(stats.values(), key=lambda e: (-e[0], -e[1] / e[0], e[2]))
    else:
        ranked = sorted(stats.values(), key=lambda e: (-e[1], -e[0], e[2]))
    return [e[3] for e in ranked]


Candidates = dict[tuple[str, int], tuple[list[np.ndarray], list[float]]]  # (task, pair) -> un-augmented grids, confidences


def candidates_of(predictions: np.ndarray, examples: Sequence[TestExample], confidences: Sequence[float] | None) -> Candidates:
    """Every prediction decoded and mapped back to its task's colours and orientation, per test pair in row order."""
    if len(predictions) != len(examples) or (confidences is not None and len(confidences) != len(examples)):
        raise ValueError(f"need one prediction (and confidence) per example: {len(predictions)} vs {len(examples)}")
    candidates: Candidates = {}
    for n, example in enumerate(examples):
        grids, ws = candidates.setdefault((example.task_id, example.pair_index), ([], []))
        grids.append(unaugment_grid(decode_grid(predictions[n]), example.name))
        ws.append(0.0 if confidences is None else confidences[n])
    return candidates


def score_candidates(candidates: Candidates, tasks: dict[str, ARCTask], task_ids: Sequence[str], ks: Sequence[int] = PASS_KS,
                     rule: str = "count", max_votes: int | None = None) -> ARCScores:
    """pass@k of `task_ids` under both rules; `max_votes`: only the first that many candidates of each pair vote."""
    per_task, all_pairs, top2 = {}, {}, {}
    for task_id in task_ids:
        task = tasks[task_id]
        solved = np.zeros((len(task.test), len(ks)))
        top2[task_id] = []
        for pair_index, (_, target) in enumerate(task.test):
            grids, ws = candidates.get((task_id, pair_index), ([], []))
            ranked = vote(grids[:max_votes], ws[:max_votes], rule)
            top2[task_id].append(ranked[:2])
            for j, k in enumerate(ks):
                solved[pair_index, j] = any(np.array_equal(g, target) for g in ranked[:k])
        per_task[task_id] = {f"pass@{k}": float(s) for k, s in zip(ks, solved.mean(0))}
        all_pairs[task_id] = {f"pass@{k}": float(s) for k, s in zip(ks, solved.min(0))}
    return ARCScores(per_task, _mean_over_tasks(per_task, ks), _mean_over_tasks(all_pairs, ks), top2)


def aggregate(
    predictions: np.ndarray,
    examples: Sequence[TestExample],
    tasks: dict[str, ARCTask],
    confidences: Sequence[float] | None = None,
    ks: Sequence[int] = PASS_KS,
    rule: str = "count",
) -> ARCScores:
    """Score (N, 900) predicted token rows, row n being a prediction for test-split row `examples[n]`
    (see `read_test_examples`); `confidences` (N,) optional per-prediction confidences for `vote`."""
    task_ids = sorted({e.task_id for e in examples})
    return score_candidates(candidates_of(predictions, examples, confidences), tasks, task_ids, ks, rule)


def _mean_over_tasks(per_task: dict[str, dict[str, float]], ks: Sequence[int]) -> dict[str, float]:
    return {f"pass@{k}": float(np.mean([t[f"pass@{k}"] for t in per_task.values()])) for k in ks}


def vote_counts(max_variants: int) -> list[int]:
    """1, 2, 4, ... and the whole count: the points of the accuracy-vs-votes curve."""
    return sorted({*(2**i for i in range(max_variants.bit_length()) if 2**i <= max_variants), max_variants})


def vote_curve(predictions: np.ndarray, examples: Sequence[TestExample], tasks: dict[str, ARCTask],
               confidences: Sequence[float] | None = None, rule: str = "count") -> list[dict[str, float]]:
    """pass@k under both rules with the first m variants of each test pair voting, for m in
    `vote_counts` of the most variants any pair has; the last point is the full `aggregate`."""
    candidates = candidates_of(predictions, examples, confidences)  # un-augmented once for every point
    task_ids = sorted({e.task_id for e in examples})
    curve = []
    for m in vote_counts(max((len(grids) for grids, _ in candidates.values()), default=1)):
        scores = score_candidates(candidates, tasks, task_ids, rule=rule, max_votes=m)
        curve.append({"votes": m, **scores.overall, **{f"{k}_all_pairs": v for k, v in scores.overall_all_pairs.items()}})
    return curve


def score_test_split(
    root: str | Path, predictions: np.ndarray, puzzle_identifiers: np.ndarray, confidences: Sequence[float] | None = None, rule: str = "count"
) -> ARCScores:
    """Score (N, 900) predictions of the test split of the dataset at `root`, row n predicting test row n,
    whose puzzle identifier `puzzle_identifiers[n]` names its task and augmentation in identifiers.json."""
    examples, tasks = split_examples(root, puzzle_identifiers)
    return aggregate(predictions, examples, tasks, confidences, rule=rule)


def split_examples(root: str | Path, puzzle_identifiers: np.ndarray) -> tuple[list[TestExample], dict[str, ARCTask]]:
    """Where each predicted row of the test split at `root` comes from, checked against its tasks."""
    names = read_identifiers(root)
    if len(puzzle_identifiers) and not 0 < int(np.min(puzzle_identifiers)) <= int(np.max(puzzle_identifiers)) < len(names):
        raise ValueError(f"{root}: puzzle identifiers must lie in 1..{len(names) - 1} (identifiers.json); got "
                         f"{int(np.min(puzzle_identifiers))}..{int(np.max(puzzle_identifiers))}")
    examples = row_examples(np.asarray(puzzle_identifiers).tolist(), names)
    tasks = read_test_tasks(root)
    check_examples(examples, tasks, f"{root} (predictions)")
    return examples, tasks


def write_submission(path: str | Path, top2: dict[str, list[list[np.ndarray]]]) -> None:
    """ARC Prize format {task_id: [{"attempt_1": grid, "attempt_2": grid} per test pair]}; a missing second
    candidate repeats the first; an empty grid (or no candidate) becomes [[0]]."""
    submission = {}
    for task_id, pairs in top2.items():
        submission[task_id] = []
        for ranked in pairs:
            attempts = [g.tolist() if g.size else [[0]] for g in ranked[:2]] or [[[0]]]
            submission[task_id].append({"attempt_1": attempts[0], "attempt_2": attempts[-1]})
    atomic_write_text(path, json.dumps(submission))
