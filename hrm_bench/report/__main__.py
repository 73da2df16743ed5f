"""`python -m hrm_bench.report`: results/REPORT.md, or one suite's seeds table (hrm_bench.report.seed_tables)."""

from hrm_bench.report.seed_tables import main

main()
