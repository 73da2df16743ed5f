import pandas as pd
import pytest

from hrm_bench.perf.curves import compare


def test_compare_measures_fast_against_the_bf16_yardstick():
    curves = pd.DataFrame({"reference": [2.0, 1.0, 0.5], "fast": [2.1, 1.0, 0.5], "reference-fp32": [2.0, 0.8, 0.5]})
    summary = compare(curves, window=1)
    assert summary["fast_vs_reference"] == pytest.approx(0.1 / 3)
    assert summary["max_fast_vs_reference"] == pytest.approx(0.1)
    assert summary["reference_vs_fp32"] == pytest.approx(0.2 / 3)


def test_compare_smooths_over_the_window():
    curves = pd.DataFrame({"reference": [1.0, 1.0], "fast": [1.2, 0.8], "reference-fp32": [1.0, 1.0]})
    assert compare(curves, window=2)["fast_vs_reference"] == pytest.approx(0.1)  # step noise averages out


def test_compare_scores_every_extra_fast_curve_against_the_reference():
    curves = pd.DataFrame({"reference": [2.0, 1.0], "fast": [2.0, 1.0], "fast-fp8": [2.3, 1.1], "reference-fp32": [2.0, 0.8]})
    summary = compare(curves, window=1)
    assert summary["fast_vs_reference"] == 0.0
    assert summary["fast-fp8_vs_reference"] == pytest.approx(0.2) and summary["max_fast-fp8_vs_reference"] == pytest.approx(0.3)
