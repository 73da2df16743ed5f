import math

import pandas as pd
import pytest

from hrm_bench.report import seed_tables


def rows(*entries):
    cols = ["date", "suite", "model", "hardware", "device", "variant", "seed", "params", "train_examples_per_s", "verifier_accuracy"]
    return pd.DataFrame([dict(zip(cols, e)) for e in entries])


TABLE = rows(
    ("2026-01-01T00:00:00Z", "hybrid", "m", "cpu", "x", "a", 0, 10, 5.0, 0.9),  # replaced by the re-run below
    ("2026-01-02T00:00:00Z", "hybrid", "m", "cpu", "x", "a", 0, 10, 5.0, 0.2),
    ("2026-01-02T00:00:01Z", "hybrid", "m", "cpu", "x", "a", 1, 10, 7.0, 0.4),
    ("2026-01-02T00:00:02Z", "hybrid", "m", "cpu", "x", "b", 0, 0, None, 0.5),
    ("2026-01-02T00:00:03Z", "sudoku", "m", "cpu", "x", "a", 0, 10, 5.0, 0.0),
)


def test_newest_row_per_variant_and_seed_and_mean_std_over_seeds():
    summary = seed_tables.seed_summary(seed_tables.select_rows(TABLE, "hybrid", None, None, None), "verifier_accuracy")
    assert list(summary.index) == ["a", "b"]
    assert summary.loc["a", "mean"] == pytest.approx(0.3)
    assert summary.loc["a", "std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.2, 0.4
    assert summary.loc["a", "seeds"] == 2 and summary.loc["b", "seeds"] == 1
    assert math.isnan(summary.loc["b", "std"])


def test_since_filter_and_no_match_error():
    assert len(seed_tables.select_rows(TABLE, "hybrid", "2026-01-02T00:00:01Z", None, None)) == 2
    assert len(seed_tables.select_rows(TABLE, "hybrid", None, None, None, until="2026-01-02T00:00:01Z")) == 1  # a's seed 0, re-run
    with pytest.raises(ValueError, match="no rows of suite 'maze'"):
        seed_tables.select_rows(TABLE, "maze", None, None, None)


def test_markdown_and_plot_files(tmp_path):
    TABLE.to_csv(tmp_path / "runs.csv", index=False)
    seed_tables.main(["--suite", "hybrid", "--results-dir", str(tmp_path)])
    text = (tmp_path / "hybrid-seeds.md").read_text()
    # columns: metric, seeds, token acc, mean segments, params, steps, train ex/s, decode tok/s, peak mem (absent columns stay empty)
    assert "| a | 0.300 ± 0.141 | 2 |  |  | 10 |  | 6.0 |  |  |" in text and "| b | 0.500 | 1 |  |  | 0 |  |  |  |  |" in text
    assert (tmp_path / "hybrid-seeds.png").stat().st_size > 0


def test_side_columns_are_means_over_seeds():
    table = TABLE.assign(mean_halt_steps=[9, 2.0, 3.0, None, 1], steps=[1, 3000, 3000, 0, 1], decode_tokens_per_s=[1, 10.0, 20.0, 30.0, 1], peak_mem_gib=[1, 1.0, 2.0, 0.5, 1])
    summary = seed_tables.seed_summary(seed_tables.select_rows(table, "hybrid", None, None, None), "verifier_accuracy")
    assert summary.loc["a", ["mean_halt_steps", "steps", "decode_tokens_per_s", "peak_mem_gib"]].tolist() == [2.5, 3000, 15.0, 1.5]
    assert math.isnan(summary.loc["b", "mean_halt_steps"]) and summary.loc["b", "decode_tokens_per_s"] == 30.0
