"""Suites: many runs under one plan, one comparison table. `kind: sweep` and `kind: hybrid` suite
files are dispatched here by `python -m hrm_bench.run` (sweep.py, hybrid.py); hybrid_diagnose.py
explains, per hybrid variant, why a controller does or does not learn."""
