"""CPU micro-benchmarks under pytest-benchmark: `python -m pytest benchmarks --benchmark-enable`.

The workloads are defined once in `hrm_bench.perf.microbench`; `python -m hrm_bench.perf.regress` (CI) times
the same ones, with the same process settings, against a committed baseline. This folder is outside
`testpaths`, so `python -m pytest` does not collect it.
"""

import pytest

from hrm_bench.perf.microbench import CALIBRATION, WORKLOADS, Bench, Workload, configure_process


@pytest.fixture(scope="session", autouse=True)
def measurement_settings() -> None:
    configure_process()


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Bench:
    return Bench(tmp_path_factory.mktemp("microbench"))


@pytest.mark.parametrize("workload", [CALIBRATION, *WORKLOADS], ids=lambda w: w.name)
def test_workload(benchmark, bench: Bench, workload: Workload) -> None:
    benchmark.extra_info["description"] = workload.description
    benchmark(workload.build(bench))
