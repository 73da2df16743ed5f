"""The speed measurements run end to end on the tiny backbone (code path only: no timed assertions)."""

from __future__ import annotations

from hrm_bench.perf import hybrid_speed


def test_speed_report_is_written(tmp_path):
    out = tmp_path / "speed.md"
    hybrid_speed.main(["--backbone", "tiny", "--batch-size", "2", "--steps", "1", "--new-tokens", "4", "--prompt-tokens", "8", "16", "--d-h", "32", "--output", str(out)])
    text = out.read_text()
    assert "cached states" in text and "KV cache" in text and "load average" in text
    assert "| 8 | " in text and "| 16 | " in text  # one decode row per prompt length
