"""Checks of the tooling itself, not of a model: `python -m hrm_bench.checks.reliability` runs the
commands with bad input, kills, a full disk and concurrent writers, and judges each outcome."""
