import pandas as pd

from hrm_bench import perf
from hrm_bench.records import PERF_COLUMNS


def test_perf_cli_writes_a_row_per_path(tmp_path):
    perf.main(["--small", "--batch", "4", "--steps", "1", "--eval-batches", "1", "--hardware", "cpu", "--results-dir", str(tmp_path)])
    table = pd.read_csv(tmp_path / "perf.csv")
    assert list(table.columns) == list(PERF_COLUMNS)
    assert table["path"].tolist() == ["reference", "fast"]
    assert (table["train_examples_per_s"] > 0).all() and (table["eval_puzzles_per_s"] > 0).all()
    assert table["shape"].tolist() == ["sudoku 81+1"] * 2
