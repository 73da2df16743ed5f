"""`python -m hrm_bench.suites.parallel`: many small runs of `hrm_bench.run` at once on one machine.

A hybrid controller step on cached LLM states is bound by kernel launches and host work, not by
the GPU (results/hybrid-h100.md: ~80 ms per step at batch 64 on an H100), so one such process leaves
most of a large GPU idle; jobs that run the float32 LLM every step (LoRA, prefix) are not, and
sharing the GPU buys them nothing (results/hybrid-h200-2026-12-02.md). This runs a grid of jobs (one variant, one seed each) as separate
processes, `--jobs` at a time, sharing the machine's CPU threads evenly:

    python -m hrm_bench.suites.parallel --jobs 8 --seeds 0 1 2 \\
        --each 'suite.variants=[lora]' 'suite.variants=[hrm_prefix_centered]' \\
        --start-until 1200 --deadline 1380 --budget-key suite.train.max_train_seconds -- suite=hybrid hardware=h200

Each job is the same command a user would type, with its own log (<log_dir>/<job>.log) and Hydra
folder; every job appends its rows to the one results/runs.csv (records.append_row holds a lock).
Jobs start in the order given (each --each entry over every seed), so the first ones are the ones
that must finish. No job starts after --start-until seconds; at --deadline the running ones get
SIGTERM, save a checkpoint and stop (re-run the same command with ++suite.train.resume=true to
continue them); a stopped job writes no row. With --budget-key (e.g. suite.train.max_train_seconds)
each job is started with that override set to the time left before the deadline less --reserve
(its final evaluations and row), so it ends by itself, evaluated, instead of being stopped.
The exit status is 0 only if every job started and finished.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Job:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen | None = None
    started: float | None = None
    status: str = "waiting"  # waiting | running | finished | failed (rc) | stopped | not started
    seconds: float = 0.0


def job_name(overrides: str, seed: int) -> str:
    """A file-safe name from a job's own overrides, e.g. 'suite.variants=[lora]', 0 -> 'lora-seed0'."""
    values = [re.sub(r"[^A-Za-z0-9_.@-]+", "_", part.split("=", 1)[-1]).strip("_") for part in shlex.split(overrides)]
    label = "-".join(v for v in values if v) or "default"
    return f"{label}-seed{seed}"


def plan_jobs(each: list[str], seeds: list[int], common: list[str], log_dir: Path) -> list[Job]:
    jobs = []
    for overrides in each:
        for seed in seeds:
            name = job_name(overrides, seed)
            argv = [sys.executable, "-m", "hrm_bench.run", *common, *shlex.split(overrides), f"seed={seed}", f"hydra.run.dir={log_dir / 'hydra' / name}"]
            jobs.append(Job(name, argv, log_dir / f"{name}.log"))
    if len({job.name for job in jobs}) != len(jobs):
        raise ValueError("--each entries give two jobs the same name; make each entry differ in its values")
    return jobs


def start(job: Job, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with job.log.open("w") as log:
        log.write("$ " + shlex.join(job.argv[1:]) + "\n")
        log.flush()
        job.process = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    job.started, job.status = time.monotonic(), "running"


def poll(job: Job) -> bool:
    """True while the job runs; sets its final status once it has ended."""
    rc = job.process.poll()
    if rc is None:
        return True
    job.seconds = time.monotonic() - job.started
    if job.status != "stopped":
        job.status = "finished" if rc == 0 else f"failed ({rc})"
    return False


def run_jobs(jobs: list[Job], parallel: int, threads: int, start_until: float, deadline: float, tick: float = 2.0, grace: float = 120.0,
             budget_key: str | None = None, reserve: float = 240.0) -> list[Job]:
    """Keep `parallel` jobs running until all ran or the clock says stop; print each start and end.
    A job still running `grace` seconds after its SIGTERM (stuck before its training loop) is killed.
    With `budget_key` (a finite deadline needed), a job starting at t gets `++<budget_key>=<deadline - t - reserve>` (at least 0)."""
    if budget_key is not None and deadline == float("inf"):
        raise ValueError("a budget key needs a finite deadline to count the time left from")
    clock = time.monotonic()
    waiting, running = list(jobs), []
    while waiting or running:
        elapsed = time.monotonic() - clock
        for job in [j for j in running if not poll(j)]:
            running.remove(job)
            print(f"[{elapsed:6.0f} s] {job.status}: {job.name} ({job.seconds:.0f} s)", flush=True)
        if elapsed >= deadline + grace:
            for job in running:
                job.process.kill()
        if elapsed >= deadline:
            for job in running:
                if job.status == "running":
                    job.process.send_signal(signal.SIGTERM)  # saves a checkpoint after its current step
                    job.status = "stopped"
        while waiting and len(running) < parallel and elapsed < min(start_until, deadline):
            job = waiting.pop(0)
            if budget_key is not None:
                job.argv.append(f"++{budget_key}={max(0, round(deadline - elapsed - reserve))}")
            start(job, threads)
            running.append(job)
            print(f"[{elapsed:6.0f} s] started: {job.name} -> {job.log}", flush=True)
        if elapsed >= min(start_until, deadline):
            for job in waiting:
                job.status = "not started"
            waiting = []
        time.sleep(tick)
    return jobs


def summary(jobs: list[Job]) -> str:
    return "\n".join(f"{job.status:>12}  {job.seconds:6.0f} s  {job.name}" for job in jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--each", nargs="+", required=True, help="one job's own overrides (space-separated inside one argument), run for every seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs running at once")
    parser.add_argument("--start-until", type=float, default=float("inf"), help="seconds after which no job starts")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which running jobs are stopped (SIGTERM: checkpoint, then exit)")
    parser.add_argument("--budget-key", default=None, help="a job's time-budget override (e.g. suite.train.max_train_seconds), set from the deadline")
    parser.add_argument("--reserve", type=float, default=240.0, help="with --budget-key: seconds each job keeps before the deadline for its final evaluations")
    parser.add_argument("--log-dir", type=Path, default=Path("outputs/parallel"))
    parser.add_argument("common", nargs="*", help="overrides every job shares (after --), e.g. suite=hybrid hardware=h200")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.budget_key is not None and args.deadline == float("inf"):
        parser.error("--budget-key needs a --deadline to count the time left from")
    jobs = plan_jobs(args.each, args.seeds, args.common, args.log_dir)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(jobs)} jobs, {args.jobs} at a time, {threads} CPU thread(s) each; logs in {args.log_dir}", flush=True)
    run_jobs(jobs, args.jobs, threads, args.start_until, args.deadline, budget_key=args.budget_key, reserve=args.reserve)
    print(summary(jobs), flush=True)
    return 0 if all(job.status == "finished" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
