import pandas as pd
import pytest
import torch

from hrm_bench.perf import throughput
from hrm_bench.records import PERF_COLUMNS


def test_perf_cli_writes_a_row_per_path(tmp_path):
    throughput.main(["--small", "--batch", "4", "--steps", "1", "--eval-batches", "1", "--hardware", "cpu", "--results-dir", str(tmp_path)])
    table = pd.read_csv(tmp_path / "perf.csv")
    assert list(table.columns) == list(PERF_COLUMNS)
    assert table["path"].tolist() == ["reference", "fast"]
    assert (table["train_examples_per_s"] > 0).all() and (table["eval_puzzles_per_s"] > 0).all()
    assert table["shape"].tolist() == ["sudoku 81+1"] * 2


def test_lever_specs_parse_and_name_what_differs_from_the_default():
    assert throughput.Levers.parse("default") == throughput.Levers()
    levers = throughput.Levers.parse("compile_mode=reduce-overhead,precision=fp8,compile_loss=false")
    assert (levers.compile_mode, levers.precision, levers.compile_loss) == ("reduce-overhead", "fp8", False)
    assert levers.config == "compile_mode=reduce-overhead precision=fp8 compile_loss=False"
    with pytest.raises(ValueError, match="unknown levers"):
        throughput.Levers.parse("fusion=on")


def test_perf_cli_measures_each_lever_set_as_its_own_row(tmp_path):
    throughput.main(["--small", "--batch", "4", "--steps", "1", "--eval-batches", "1", "--hardware", "cpu", "--results-dir", str(tmp_path),
               "--path", "reference", "--levers", "default", "attn_backend=sdpa_math"])
    assert pd.read_csv(tmp_path / "perf.csv")["config"].tolist() == ["default", "attn_backend=sdpa_math"]


def test_official_path_needs_a_checkout_of_the_official_code(tmp_path):
    from hrm_bench.perf.official_code import import_official, sdpa_flash_attn_func

    with pytest.raises(FileNotFoundError, match="not a checkout of sapientinc/HRM"):
        import_official(tmp_path)
    q, k, v = (torch.randn(2, 5, 3, 8) for _ in range(3))  # flash_attn_func layout (B, L, H, head_dim)
    expected = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5, -1)
    torch.testing.assert_close(sdpa_flash_attn_func(q, k, v), torch.einsum("bhlm,bmhd->blhd", expected, v))
