"""`python -m hrm_bench.perf.regress`: the CPU performance-regression check that CI runs.

Times the micro-benchmark workloads of `hrm_bench.perf.microbench` (the same ones `benchmarks/` runs
under pytest-benchmark) and fails when any of them has become slower than the committed baseline
by more than a threshold.

Measurement (settings shared with benchmarks/ in `microbench.configure_process`): one torch
thread, an allocator that keeps freed memory, and CPU time of the process (`time.process_time`),
so time spent descheduled while a neighbour runs on our core does not count. Every workload is
warmed up, then timed in samples of several calls (about `SAMPLE_S` each) over many rounds; each
round times the calibration kernel and every workload once, in a shuffled order, so the workloads
are interleaved and machine-speed drift hits them all alike. A workload's score is the median over
rounds of (its time / the calibration kernel's time in the same round): a ratio, so the machine's
speed cancels, and a median, so a burst of load in a few rounds does not move it.

Check: slowdown = score / baseline score; the run fails (exit 1) when any slowdown exceeds the
threshold (`DEFAULT_THRESHOLD`, chosen from the run-to-run spread measured in results/regress.md).
`--update-baseline` writes the scores, with device, torch, date and commit, to the baseline file.

Demonstration: HRM_BENCH_INJECT_SLOWDOWN=loss:1.6 (comma-separated name:factor pairs) stretches
the named workload's every call to `factor` times its duration with a CPU-bound spin, here in the
timing harness only, never in the library code paths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hrm_bench import records
from hrm_bench.perf.microbench import CALIBRATION, THREADS, WORKLOADS, Bench, Work, Workload, configure_process
from hrm_bench.profiles import device_facts
from hrm_bench.run import REPO_ROOT
from puzzle_hrm.data.format import atomic_write_text

DEFAULT_BASELINE = REPO_ROOT / "results" / "regress-baseline.json"
DEFAULT_THRESHOLD = 1.30
DEFAULT_ROUNDS = 100
SAMPLE_S = 0.01  # target duration of one timed sample
WARMUP_S = 0.3  # per workload, at least WARMUP_CALLS calls
WARMUP_CALLS = 3
INJECT_ENV = "HRM_BENCH_INJECT_SLOWDOWN"
Clock = Callable[[], float]
CLOCK: Clock = time.process_time  # CPU seconds of this process: time descheduled is not counted


@dataclass(frozen=True)
class Comparison:
    name: str
    score: float  # time / calibration time, this run
    baseline: float | None  # the same in the baseline; None for a workload the baseline lacks
    threshold: float

    @property
    def slowdown(self) -> float | None:
        return None if self.baseline is None else self.score / self.baseline

    @property
    def regressed(self) -> bool:
        return self.slowdown is not None and self.slowdown > self.threshold

    @property
    def status(self) -> str:
        if self.slowdown is None:
            return "new (no baseline)"
        return "REGRESSION" if self.regressed else "ok"


# ---- injected slowdown ---------------------------------------------------------------------------


def parse_slowdowns(text: str, names: Sequence[str]) -> dict[str, float]:
    """'loss:1.6,loader:2' -> {'loss': 1.6, 'loader': 2.0}; names must be workloads, factors >= 1."""
    slowdowns = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\w+):(\d+(?:\.\d+)?)", item)
        if match is None or match[1] not in names or float(match[2]) < 1.0:
            raise ValueError(f"{INJECT_ENV}: expected name:factor with a name in {list(names)} and factor >= 1, got {item!r}")
        slowdowns[match[1]] = float(match[2])
    return slowdowns


def slowed(work: Work, factor: float, clock: Clock = CLOCK) -> Work:
    """`work`, then a CPU-bound spin for (factor - 1) times its duration: factor times as slow."""

    def run() -> None:
        start = clock()
        work()
        end = start + factor * (clock() - start)
        while clock() < end:
            pass

    return run


# ---- timing --------------------------------------------------------------------------------------


def time_calls(work: Work, calls: int, clock: Clock = CLOCK) -> float:
    """Seconds per call over `calls` back-to-back calls."""
    start = clock()
    for _ in range(calls):
        work()
    return (clock() - start) / calls


def calls_per_sample(work: Work, clock: Clock = CLOCK) -> int:
    """Warm `work` up (WARMUP_S, at least WARMUP_CALLS calls); calls making a sample of ~SAMPLE_S."""
    fastest, spent, calls = math.inf, 0.0, 0
    while spent < WARMUP_S or calls < WARMUP_CALLS:
        seconds = time_calls(work, 1, clock)
        fastest, spent, calls = min(fastest, seconds), spent + seconds, calls + 1
    return max(1, round(SAMPLE_S / fastest))


def measure_rounds(works: Mapping[str, Work], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of every work in every round; each round visits them in a shuffled order."""
    calls = {name: calls_per_sample(work) for name, work in works.items()}
    samples: dict[str, list[float]] = {name: [] for name in works}
    order, rng = list(works), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            samples[name].append(time_calls(works[name], calls[name]))
    return samples


def scores(samples: Mapping[str, Sequence[float]], reference: str = CALIBRATION.name) -> dict[str, float]:
    """Per workload: the median over rounds of its time over the reference's time in that round."""
    return {
        name: statistics.median(t / c for t, c in zip(times, samples[reference], strict=True))
        for name, times in samples.items()
        if name != reference
    }


def build_works(workloads: Sequence[Workload], workdir: Path, slowdowns: Mapping[str, float]) -> dict[str, Work]:
    bench = Bench(workdir)
    works = {w.name: w.build(bench) for w in workloads}
    return {name: slowed(work, slowdowns[name]) if name in slowdowns else work for name, work in works.items()}


# ---- baseline and comparison ---------------------------------------------------------------------


def compare(current: Mapping[str, float], baseline: Mapping[str, float], threshold: float) -> list[Comparison]:
    return [Comparison(name, score, baseline.get(name), threshold) for name, score in current.items()]


def report_table(comparisons: Sequence[Comparison], samples: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """One row per workload: median CPU ms per call, score, baseline score, slowdown, status."""
    rows = [
        {
            "workload": c.name,
            "cpu_ms_per_call": statistics.median(samples[c.name]) * 1e3,
            "score": c.score,
            "baseline": c.baseline,
            "slowdown": c.slowdown,
            "status": c.status,
        }
        for c in comparisons
    ]
    calibration_ms = statistics.median(samples[CALIBRATION.name]) * 1e3
    rows.append({"workload": CALIBRATION.name, "cpu_ms_per_call": calibration_ms, "score": 1.0, "status": "reference"})
    return pd.DataFrame(rows)


def run_record(current: Mapping[str, float], rounds: int) -> dict:
    """This run's scores with what they were measured on: the baseline file's content."""
    facts = device_facts("cpu")
    return {
        **records.run_stamp("hrm_bench.perf.regress", REPO_ROOT),
        "device": facts["device_name"],
        "torch": facts["torch"],
        "python": platform.python_version(),
        "threads": THREADS,
        "rounds": rounds,
        "scores": dict(current),
    }


def read_baseline(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"no baseline at {path}: create it with `python -m hrm_bench.perf.regress --update-baseline`")
    return json.loads(path.read_text())


def environment_note(baseline: Mapping[str, object], current: Mapping[str, object]) -> str | None:
    """A warning when the baseline comes from another CPU or torch: scores need not carry over."""
    differs = [f"{key} {baseline.get(key)!r} -> {current[key]!r}" for key in ("device", "torch") if baseline.get(key) != current[key]]
    return "note: baseline measured elsewhere (" + "; ".join(differs) + "); refresh it with --update-baseline" if differs else None


# ---- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="fail above this slowdown (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--update-baseline", action="store_true", help="write this run's scores to --baseline")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_process()
    slowdowns = parse_slowdowns(os.environ.get(INJECT_ENV, ""), [w.name for w in WORKLOADS])
    if slowdowns and args.update_baseline:
        raise SystemExit(f"refusing to write a baseline with {INJECT_ENV} set")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hrm-regress-") as workdir:
        samples = measure_rounds(build_works((CALIBRATION, *WORKLOADS), Path(workdir), slowdowns), args.rounds)
    current = scores(samples)
    record = run_record(current, args.rounds)
    if args.update_baseline:
        atomic_write_text(args.baseline, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.baseline}")
    baseline = read_baseline(args.baseline)
    comparisons = compare(current, baseline["scores"], args.threshold)
    print(records.markdown_table(report_table(comparisons, samples).astype("string").fillna("")))
    print(f"{args.rounds} rounds, {time.perf_counter() - started:.0f} s, {THREADS} thread; injected: {slowdowns or 'none'}")
    note = environment_note(baseline, record)
    if note:
        print(note)
    failed = [c.name for c in comparisons if c.regressed]
    if failed:
        print(f"FAIL: slower than {args.threshold}x the baseline: {', '.join(failed)}")
        return 1
    print(f"PASS: every workload within {args.threshold}x of {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
