"""The reliability script's CI subset, in real processes: SIGKILL and SIGINT mid-run then resume equal an
uninterrupted run (puzzle loop and hybrid loop), SIGINT exits 130 with a resume hint, a resume into
another configuration and an unwritable results folder are one-line refusals, two concurrent
appenders keep all 200 rows."""

from hrm_bench.checks import reliability


def test_fast_reliability_cases_lose_nothing_and_refuse_in_one_line(tmp_path):
    out = tmp_path / "reliability.md"
    counts = reliability.main(["--fast", "--out", str(out)])
    text = out.read_text()
    assert counts == {"kept": 6, "one-line error": 2}, text
    assert "| 8 | 2 | 0 | 0 | 0 | 6 |" in text
    for case in ("SIGKILL mid-run", "SIGINT mid-run", "resume after SIGKILL + SIGINT == uninterrupted", "hybrid: SIGINT mid-run",
                 "hybrid: SIGKILL + SIGINT mid-run, resume == uninterrupted",
                 "two processes append 100 rows each", "resume into another model", "results folder cannot be created"):
        assert case in text
