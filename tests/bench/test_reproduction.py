"""results/REPORT.md from a small fixture results dir: tables from rows and the reference file, plots."""

import pandas as pd
import pytest

from hrm_bench import records, run_logs
from hrm_bench.report import reproduction, seed_tables


def run_row(suite, seed, value, hardware="h100", steps=1000, data="sudoku-extreme-standin-1k-aug-1000", date="2026-12-01T10:00:00Z"):
    metric = reproduction.BENCHMARKS[suite][1]
    row = dict.fromkeys(records.RUN_COLUMNS)
    row.update(date=date.replace("10:", f"1{seed}:"), command=f"python -m hrm_bench.run suite={suite} seed={seed}", commit="abc1234",
               suite=suite, model="hrm_v1", variant="default", data=data, data_provenance="stand-in: test", seed=seed, hardware=hardware,
               device="NVIDIA H200", n_gpus=1, steps=steps, wall_s=600.0, train_examples_per_s=8000.0, **{metric: value})
    return row


@pytest.fixture
def results(tmp_path):
    rows = [run_row("sudoku", 0, 0.40), run_row("sudoku", 1, 0.50), run_row("arc1", 0, 0.10, data="arc-aug-1000"),
            run_row("sudoku", 2, 0.9, hardware="cpu", data="sudoku4-generated")]
    pd.DataFrame(rows, columns=records.RUN_COLUMNS).to_csv(tmp_path / "runs.csv", index=False)
    for row, acc in ((rows[0], [0.0, 0.2, 0.4]), (rows[1], [0.1, 0.3, 0.5])):
        run_logs.write_eval_curve(tmp_path, row, [{"step": 100 * (i + 1), "exact_accuracy": a} for i, a in enumerate(acc)])
        run_logs.write_test_time(tmp_path, row, {"exact_accuracy_by_steps": [0.1, 0.3, acc[-1], acc[-1] + 0.05],
                                                 "policy_exact_accuracy_by_steps": [0.1, 0.25, acc[-1] - 0.01, acc[-1]],
                                                 "halt_step_histogram": [5, 10, 85]})
    votes = [{"votes": v, "pass@1": 0.05 * i, "pass@2": 0.06 * i, "pass@1_all_pairs": 0.04 * i, "pass@2_all_pairs": 0.05 * i}
             for i, v in enumerate((1, 2, 4), start=1)]
    run_logs.write_test_time(tmp_path, rows[2], {"exact_accuracy_by_steps": [0.0, 0.01], "policy_exact_accuracy_by_steps": [0.0, 0.01],
                                                 "halt_step_histogram": [0, 4], "arc_votes": votes, "arc_tasks": 2, "arc_multi_test_tasks": 1})
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "maze-h100-2026-11-23.log").write_text(
        "[2026-11-23 15:19:26,026][puzzle_hrm.tracking][INFO] - step 300 {'eval/step': 300, 'eval/exact_accuracy': 0.25, 'eval/token_accuracy': 0.8}\n")
    return tmp_path


def test_report_renders_from_rows_reference_numbers_and_run_files(results):
    seed_tables.main(["--results-dir", str(results)])
    text = (results / "REPORT.md").read_text()
    refs = reproduction.read_references()
    paper = refs[(refs["kind"] == "paper") & (refs["benchmark"] == "sudoku")]["value"].iloc[0]
    assert f"| Sudoku-Extreme 1k | exact_accuracy | {reproduction.pct(paper)} |" in text  # from the data file
    assert "45.0 % ± 7.1 % (2; sudoku, h100, 1,000 steps)" in text  # mean ± sample std over the two GPU seeds
    assert "10.0 points below" in text and "1,000 of 52,083" in text  # gap and recipe fraction
    assert "python -m hrm_bench.run suite=sudoku seed=1" in text  # each table row names its command
    assert "| 15.0 % / 12.0 % | 18.0 % / 15.0 % | 2 (1) |" in text  # ARC: both rules side by side
    assert "No run of this benchmark" in text  # ARC-AGI-2 has no row: said, not invented
    curves = reproduction.training_curves(results)
    assert set(curves["run"]) >= {"maze-h100-2026-11-23.log"} and len(curves) == 7
    for name in ("eval_curves", "test_time", "halting", "throughput"):
        assert (results / "report" / f"{name}.png").stat().st_size > 5000


def test_every_reference_number_has_a_source():
    refs = reproduction.read_references()
    assert (refs["source"] != "").all() and set(refs["benchmark"]) == set(reproduction.TITLES)
    assert set(refs["kind"]) == {"paper", "peer", "verified", "rerun"} and refs["value"].between(0, 1).all()
