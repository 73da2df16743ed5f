"""Reports: Markdown tables and plots made from the committed result rows, no training. `python -m
hrm_bench.report` writes results/REPORT.md (reproduction.py) or, with `--suite`, one suite's table over
seeds (seed_tables.py)."""
