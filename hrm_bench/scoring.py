"""Suite scores beyond exact/token accuracy, from the final evaluation's rows (in test-split order).

arc: each test pair is predicted once per augmented variant; the variants' answers are mapped back
through identifiers.json and vote (puzzle_hrm.arc_eval): pass@1, pass@2 and the ARC Prize submission.
maze: the valid-path rate (puzzle_hrm.data.maze.path_metrics). `test_time_curves`: what more test-time
compute buys, from the same evaluation: accuracy vs outer steps (every suite), pass@k under both ARC
rules vs the number of voting variants, the Maze valid-path rate vs outer steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from puzzle_hrm import arc_eval
from puzzle_hrm.data import maze

logger = logging.getLogger(__name__)

# per-row outputs of the final evaluation each builder's scores read (puzzle_hrm.evaluate.PREDICTION_FIELDS)
PREDICTION_FIELDS = {
    "arc": ("puzzle_identifiers", "predictions", "q_halt_logits"),
    "maze": ("inputs", "labels", "predictions", "step_predictions"),
}
VOTE_WEIGHTS = ("count", "q_halt")


@dataclass(frozen=True)
class ScoringConfig:
    """A suite's `scoring:` block."""

    vote: str = "count"  # ARC: count = by votes, ties by mean sigmoid(q_halt_logit) (official); q_halt = by summed sigmoid(q_halt_logit)

    def __post_init__(self):
        if self.vote not in VOTE_WEIGHTS:
            raise ValueError(f"scoring.vote must be one of {VOTE_WEIGHTS}, got {self.vote!r}")


def check_scorable(builder: str, eval_max_batches: int | None) -> None:
    """Before training: ARC's pass@k votes over every variant of every test task, so the whole test split."""
    if builder == "arc" and eval_max_batches is not None:
        raise ValueError(f"eval_max_batches={eval_max_batches}: ARC pass@k needs the whole test split; "
                         "shrink the test split instead (data.num_aug, data.max_tasks)")


def suite_scores(builder: str, data_dir: Path, rows: dict[str, torch.Tensor], config: ScoringConfig,
                 submission_path: Path) -> dict[str, float]:
    """Result-row columns from the final evaluation's rows (PREDICTION_FIELDS[builder] of them)."""
    if builder == "arc":
        return arc_scores(data_dir, rows, config.vote, submission_path)
    if builder == "maze":
        return maze_scores(rows)
    return {}


def arc_scores(data_dir: Path, rows: dict[str, torch.Tensor], vote: str, submission_path: Path) -> dict[str, float]:
    """pass@1 / pass@2 over the test tasks; writes the ARC Prize submission JSON to `submission_path`."""
    confidences = torch.sigmoid(rows["q_halt_logits"].double()).tolist()  # float64, as the official evaluator
    rule = "count" if vote == "count" else "confidence"
    scores = arc_eval.score_test_split(data_dir, rows["predictions"].numpy(), rows["puzzle_identifiers"].numpy(), confidences, rule)
    arc_eval.write_submission(submission_path, scores.top2)
    logger.info("ARC: %d tasks, %s; submission %s", len(scores.per_task), scores.overall, submission_path)
    return {"pass_at_1": scores.overall["pass@1"], "pass_at_2": scores.overall["pass@2"]}


def maze_scores(rows: dict[str, torch.Tensor]) -> dict[str, float]:
    return {"valid_path_rate": maze.path_metrics(rows["inputs"], rows["predictions"], rows["labels"])["valid_path_rate"]}


def test_time_curves(builder: str, data_dir: Path, final_eval: dict, config: ScoringConfig) -> dict:
    """The final evaluation's per-step curves and halting histogram, plus ARC's vote curve (both pass
    rules) or Maze's valid-path rate per outer step, from its kept rows."""
    curves = {key: final_eval[key] for key in ("exact_accuracy_by_steps", "policy_exact_accuracy_by_steps", "halt_step_histogram")}
    rows = final_eval.get("predictions", {})
    if builder == "arc":
        confidences = torch.sigmoid(rows["q_halt_logits"].double()).tolist()
        examples, tasks = arc_eval.split_examples(data_dir, rows["puzzle_identifiers"].numpy())
        rule = "count" if config.vote == "count" else "confidence"
        curves["arc_votes"] = arc_eval.vote_curve(rows["predictions"].numpy(), examples, tasks, confidences, rule)
        curves["arc_multi_test_tasks"] = sum(len(t.test) > 1 for t in tasks.values())
        curves["arc_tasks"] = len(tasks)
    if builder == "maze":
        steps = rows["step_predictions"]  # (N, steps, L)
        curves["valid_path_rate_by_steps"] = [maze.path_metrics(rows["inputs"], steps[:, k], rows["labels"])["valid_path_rate"]
                                              for k in range(steps.shape[1])]
    return curves
