"""`python -m hrm_bench.perf`: the throughput benchmark (hrm_bench.perf.throughput)."""

from hrm_bench.perf.throughput import main

main()
