"""Performance: how fast the HRM and the hybrid train and evaluate, and whether the fast paths compute
the same thing. `python -m hrm_bench.perf` is the throughput benchmark (throughput.py); the other tools
run as `python -m hrm_bench.perf.<module>` (profile_step, curves, scaling, hybrid_speed, regress)."""
